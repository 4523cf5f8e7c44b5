"""The daemon's configuration: one YAML file, validated; an error names the field and the file.

Every section has defaults, so an empty file (or none) runs the demo pipeline: one
synthetic camera, one synthetic microphone, the shipped model on the best backend here.
``configs/streamfuse.yaml`` lists every setting with its default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from .errors import ConfigError
from .sync import MS, SyncConfig

__all__ = [
    "CameraConfig",
    "EngineConfig",
    "HttpConfig",
    "MicConfig",
    "RunConfig",
    "SyncSection",
    "load_config",
]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class CameraConfig(_Section):
    name: str = "front"
    """Stream id; the camera publishes on topic ``video/<name>``."""
    source: str = "synthetic"
    """Device index, video file, stream URL, or ``synthetic``."""
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    jpeg: int | None = None
    """Publish JPEG at this quality instead of raw pixels (for remote links)."""


class MicConfig(_Section):
    name: str = "mic0"
    source: str = "synthetic"
    """PortAudio device name or index, audio file, or ``synthetic``."""
    rate: int = 16_000
    window_ms: float = 1000.0
    hop_ms: float = 500.0


class SyncSection(_Section):
    policy: Literal["nearest-center", "k-frames"] = "nearest-center"
    tolerance_ms: float = 50.0
    max_wait_ms: float = 200.0
    offsets_ms: dict[str, float] = msgspec.field(default_factory=dict)
    """Per topic: how late that sensor's clock runs (subtracted from its times)."""


class EngineConfig(_Section):
    backend: str = "auto"
    model: str | None = None
    """ONNX model with streamfuse metadata; default: the one shipped with the package."""
    device: str | None = None
    """For a named backend: ``cpu``, ``cuda`` or ``cuda:N`` (``auto`` picks its own)."""
    precision: Literal["fp32", "fp16", "int8"] | None = None
    max_batch: int = 8
    output: str = "tcp://127.0.0.1:5560"
    """Where classifications are published (robotics apps connect here)."""
    sndhwm: int = 100
    """Per subscriber: classifications queued before a slow one starts losing them."""
    mic_timeout_ms: float = 2500.0
    """With no audio for this long, classify frames alone (``degraded``, audio missing)."""
    threads: int | None = None


class HttpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 9464
    """``/healthz`` and ``/metrics``; 0 turns the server off."""


class RunConfig(_Section):
    cameras: list[CameraConfig] = msgspec.field(default_factory=lambda: [CameraConfig()])
    mic: MicConfig = msgspec.field(default_factory=MicConfig)
    sync: SyncSection = msgspec.field(default_factory=SyncSection)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    run_dir: str = ""
    """Where the sensors' ipc:// endpoints live (default: a fresh folder under /tmp)."""
    restart_backoff_s: tuple[float, float] = (0.5, 10.0)
    """A crashed child restarts after the first delay, doubling up to the second."""
    hang_timeout_s: float = 10.0
    """A running child silent this long (no heartbeat) is killed and restarted; 0: never."""

    def __post_init__(self) -> None:
        names = [c.name for c in self.cameras]
        if not names:
            raise ConfigError("cameras", "list at least one camera")
        if len(set(names)) != len(names):
            raise ConfigError("cameras", f"camera names must differ, got {names}")
        for i, cam in enumerate(self.cameras):
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", cam.name):
                raise ConfigError(f"cameras[{i}].name", f"{cam.name!r}: use letters, digits, _ . -")
        if self.hang_timeout_s < 0:
            raise ConfigError("hang_timeout_s", f"must be >= 0, got {self.hang_timeout_s}")
        if not 1 <= self.engine.max_batch <= 256:
            raise ConfigError("engine.max_batch", f"must be 1..256, got {self.engine.max_batch}")

    # --- derived -------------------------------------------------------------------

    def camera_topic(self, cam: CameraConfig) -> str:
        return f"video/{cam.name}"

    @property
    def mic_topic(self) -> str:
        return f"audio/{self.mic.name}"

    def endpoint(self, topic: str) -> str:
        return f"ipc://{self.run_dir}/{topic.replace('/', '-')}"

    def sync_config(self) -> SyncConfig:
        return SyncConfig(
            cameras=tuple(self.camera_topic(c) for c in self.cameras),
            policy=self.sync.policy,
            tolerance=int(self.sync.tolerance_ms * MS),
            max_wait=int(self.sync.max_wait_ms * MS),
            offsets={k: int(v * MS) for k, v in self.sync.offsets_ms.items()},
            retain=2000 * MS,
        )


def _explain(exc: msgspec.ValidationError, file: str) -> ConfigError:
    """``Object contains unknown field `fpss` - at `$.cameras[0]``` -> field cameras[0].fpss."""
    text = str(exc)
    problem, _, where = text.partition(" - at `")
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    unknown = re.match(r"Object contains unknown field `([^`]+)`", problem)
    if unknown:
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        problem = "unknown setting (see configs/streamfuse.yaml for the known ones)"
    return ConfigError(path or "config", problem, file=file)


def load_config(
    path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Read and validate ``path`` (YAML or JSON; None: all defaults), then apply overrides
    (``{"camera": SRC, "mic": SRC}`` replace the first camera's and the mic's source)."""
    file = str(path) if path else "defaults"
    raw: Any = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError("--config", f"{path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("--config", f"{path} cannot be read: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError("--config", f"{path} must hold a mapping of settings")
    try:
        cfg = msgspec.convert(raw, RunConfig)
    except msgspec.ValidationError as exc:
        raise _explain(exc, file) from None
    except ConfigError as err:
        raise ConfigError(err.field, err.problem, file=file) from None
    overrides = overrides or {}
    if overrides.get("camera"):
        cfg.cameras[0].source = overrides["camera"]
    if overrides.get("mic"):
        cfg.mic.source = overrides["mic"]
    if overrides.get("output"):
        cfg.engine.output = overrides["output"]
    if overrides.get("http_port") is not None:
        cfg.http.port = overrides["http_port"]
    if not cfg.run_dir:
        import tempfile

        cfg.run_dir = tempfile.mkdtemp(prefix="streamfuse-")
    return cfg


def dump_config(cfg: RunConfig) -> bytes:
    """The resolved configuration as JSON (what the supervisor hands its children)."""
    return msgspec.json.encode(cfg)

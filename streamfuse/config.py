"""The daemon's configuration: one YAML file, validated; an error names the field and the file.

Every section has defaults, so an empty file (or none) runs the demo pipeline: one
synthetic camera, one synthetic microphone, the shipped model on the best backend here.
``streamfuse config defaults`` prints every setting with its default and meaning, generated
from the typed schema below (``configs/streamfuse.yaml`` is its output).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

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
    "SecurityConfig",
    "SyncSection",
    "defaults_yaml",
    "load_config",
]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


def _opt(description: str, **bounds: Any) -> Any:
    """Field metadata: what it means (the defaults file's comment) and its valid range."""
    return msgspec.Meta(description=description, **bounds)


Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Source = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Millis = Annotated[float, msgspec.Meta(ge=-60_000.0, le=60_000.0)]
TOPIC = r"^[A-Za-z0-9_.-]{1,64}/[A-Za-z0-9_.-]{1,64}$"
Delay = Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)]


# What a camera and the microphone share: an outside publisher instead of a started source.
Endpoint = Annotated[
    str,
    _opt(
        "an outside publisher to subscribe to, not started (tcp:// or ipc://)",
        pattern=r"^(tcp|ipc)://.+",
    ),
]
ServerKey = Annotated[str, _opt("its CURVE public key file (a tcp:// publisher)", min_length=1)]
Clock = Annotated[
    Literal["local", "wall"],
    _opt("local: t_capture is this box's clock; wall: map t_wall (beyond loopback)"),
]
ClockError = Annotated[
    float, _opt("a known bound on its clock's error (else what it says)", ge=0, le=60_000)
]


class _Sensor(_Section):
    """A camera or the microphone: a ``source`` streamfuse starts, or an outside publisher's
    ``endpoint`` it subscribes to (neither: a synthetic source)."""

    def __post_init__(self) -> None:
        source, endpoint = getattr(self, "source"), getattr(self, "endpoint")  # noqa: B009
        if source is not None and endpoint is not None:  # msgspec adds where: cameras[0]
            raise ValueError("give a source to start or an endpoint to subscribe to, not both")
        if source is None and endpoint is None:
            setattr(self, "source", "synthetic")  # noqa: B010


class CameraConfig(_Sensor):
    name: Annotated[Name, _opt("stream id; the camera publishes on topic video/<name>")] = "front"
    source: (
        Annotated[Source, _opt("device index (0), video file, http/rtsp/udp URL, synthetic")] | None
    ) = None
    endpoint: Endpoint | None = None
    topic: Annotated[str, _opt("its topic (default video/<name>)", pattern=TOPIC)] | None = None
    server_key: ServerKey | None = None
    clock: Clock | None = None
    clock_error_ms: ClockError | None = None
    fps: (
        Annotated[float, _opt("synthetic/devices: frame rate; files: decimate", gt=0, le=1000)]
        | None
    ) = None
    width: (
        Annotated[int, _opt("resize frames to this width (null: as captured)", ge=16, le=16384)]
        | None
    ) = None
    height: Annotated[int, _opt("and this height", ge=16, le=16384)] | None = None
    jpeg: (
        Annotated[int, _opt("publish JPEG at this quality instead of raw pixels", ge=1, le=100)]
        | None
    ) = None


class MicConfig(_Sensor):
    name: Annotated[Name, _opt("stream id; topic audio/<name>")] = "mic0"
    source: (
        Annotated[Source, _opt("PortAudio device name or index (pulse, 2), audio file, synthetic")]
        | None
    ) = None
    endpoint: Endpoint | None = None
    topic: Annotated[str, _opt("its topic (default audio/<name>)", pattern=TOPIC)] | None = None
    server_key: ServerKey | None = None
    clock: Clock | None = None
    clock_error_ms: ClockError | None = None
    rate: Annotated[int, _opt("sample rate, Hz", ge=1000, le=384_000)] = 16_000
    window_ms: Annotated[float, _opt("the model's window", ge=10.0, le=10_000.0)] = 1000.0
    hop_ms: Annotated[
        float, _opt("one classification per camera every hop", ge=10.0, le=10_000.0)
    ] = 500.0


class SyncSection(_Section):
    policy: Annotated[Literal["nearest-center", "k-frames"], _opt("nearest-center or k-frames")] = (
        "nearest-center"
    )
    tolerance_ms: Annotated[
        float, _opt("a frame farther from the window centre is not paired", ge=0.0, le=10_000.0)
    ] = 50.0
    max_wait_ms: Annotated[
        float, _opt("an incomplete window leaves this late, degraded", ge=0.0, le=60_000.0)
    ] = 200.0
    offsets_ms: Annotated[
        dict[str, Millis], _opt("per topic, how late its clock runs, e.g. {video/front: 40}")
    ] = msgspec.field(default_factory=dict)


class TritonSection(_Section):
    """``engine.backend: triton``: inference on a Triton Inference Server (KServe v2, gRPC)."""

    url: Annotated[str, _opt("the server's gRPC address, host:port", min_length=1)] = (
        "127.0.0.1:8001"
    )
    model_name: (
        Annotated[
            str, _opt("the model's name there (null: engine.model's file stem)", min_length=1)
        ]
        | None
    ) = None
    model_version: Annotated[str, _opt('its version ("": the server\'s choice)')] = ""
    timeout_ms: Annotated[
        float, _opt("a request not answered this soon has failed (then fallback)", gt=0, le=60_000)
    ] = 200.0
    contract: Annotated[
        Literal["file", "server"],
        _opt("file: engine.model's; server: the model config's streamfuse.contract parameter"),
    ] = "file"
    shared_memory: Annotated[
        Literal["auto", "off"],
        _opt("auto: inputs through system shared memory when the server is on this host"),
    ] = "auto"
    ssl: Annotated[bool, _opt("TLS to the server")] = False
    root_certificates: Annotated[str, _opt("TLS: CA bundle file")] | None = None
    private_key: Annotated[str, _opt("TLS: this client's key file")] | None = None
    certificate_chain: Annotated[str, _opt("TLS: this client's certificate file")] | None = None


class EngineConfig(_Section):
    backend: Annotated[
        str,
        _opt("auto | onnxruntime | torch | tensorrt | triton (streamfuse backends)", min_length=1),
    ] = "auto"
    model: (
        Annotated[str, _opt("ONNX with streamfuse metadata; null: the shipped model", min_length=1)]
        | None
    ) = None
    device: (
        Annotated[
            str,
            _opt("for a named backend: cpu | cuda | cuda:N", pattern=r"^(cpu|cuda(:[0-9]{1,2})?)$"),
        ]
        | None
    ) = None
    precision: (
        Annotated[
            Literal["fp32", "fp16", "int8"], _opt("fp32 | fp16 | int8; null: the backend's default")
        ]
        | None
    ) = None
    max_batch: Annotated[int, _opt("most samples in one inference", ge=1, le=256)] = 8
    output: Annotated[
        str,
        _opt(
            "where classifications are published (topic result/<camera>)",
            pattern=r"^(tcp|ipc)://.+",
        ),
    ] = "tcp://127.0.0.1:5560"
    sndhwm: Annotated[
        int, _opt("per subscriber: results queued before a slow one loses some", ge=1, le=1_000_000)
    ] = 100
    mic_timeout_ms: Annotated[
        float, _opt("no audio this long: classify frames alone, degraded", ge=0.0, le=600_000.0)
    ] = 2500.0
    threads: (
        Annotated[int, _opt("CPU threads for the runtime (null: its own choice)", ge=1, le=1024)]
        | None
    ) = None
    standby: Annotated[
        bool,
        _opt(
            "keep a second engine loaded and in sync that takes over at once if the first dies"
            " (costs its memory; false: a restart loads the model again, ~1 s)"
        ),
    ] = True
    fallback: (
        Annotated[
            str,
            _opt(
                "a remote backend's failed request runs here instead (onnxruntime); null: "
                "the results are degraded (inference_unavailable)",
                min_length=1,
            ),
        ]
        | None
    ) = None
    triton: TritonSection = msgspec.field(default_factory=TritonSection)


class HttpConfig(_Section):
    host: Annotated[str, _opt("address of /healthz and /metrics", min_length=1)] = "127.0.0.1"
    port: Annotated[int, _opt("/healthz and /metrics; 0 turns the server off", ge=0, le=65535)] = (
        9464
    )


class FoxgloveConfig(_Section):
    host: Annotated[str, _opt("address of the live Foxglove WebSocket server", min_length=1)] = (
        "127.0.0.1"
    )
    port: (
        Annotated[int, _opt("its port (run --foxglove [HOST:]PORT); null: off", ge=1, le=65535)]
        | None
    ) = None
    fps: Annotated[
        float, _opt("camera images sent at most this often, per camera", gt=0, le=120)
    ] = 10.0


class SecurityConfig(_Section):
    key: (
        Annotated[str, _opt("this daemon's CURVE secret key file (streamfuse keys generate)")]
        | None
    ) = None
    authorized_keys: (
        Annotated[str, _opt("a folder of the public keys let in to engine.output (any if null)")]
        | None
    ) = None
    insecure: Annotated[bool, _opt("allow TCP beyond loopback without CURVE (warned)")] = False


class RunConfig(_Section):
    cameras: Annotated[
        list[CameraConfig], _opt("one capture process per camera", max_length=64)
    ] = msgspec.field(default_factory=lambda: [CameraConfig()])
    mic: MicConfig = msgspec.field(default_factory=MicConfig)
    sync: SyncSection = msgspec.field(default_factory=SyncSection)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    foxglove: FoxgloveConfig = msgspec.field(default_factory=FoxgloveConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    run_dir: Annotated[
        str,
        _opt('where the sensors\' ipc:// endpoints live; "": a fresh /tmp folder', max_length=80),
    ] = ""
    restart_backoff_s: Annotated[
        tuple[Delay, Delay],
        _opt("first and largest delay before restarting a child (doubling between them)"),
    ] = (0.2, 10.0)
    restart_reset_s: Annotated[
        float,
        _opt("a child up this long restarts after the first delay again", gt=0.0, le=86_400.0),
    ] = 30.0
    hang_timeout_s: Annotated[
        float,
        _opt(
            "a child silent this long (3 heartbeats) is killed, restarted; 0: never",
            ge=0.0,
            le=3600.0,
        ),
    ] = 3.0

    def __post_init__(self) -> None:
        topics = [t for t, _ in self.sensors()]
        if len(set(topics)) != len(topics):
            raise ConfigError("cameras", f"two sensors publish on one topic: {topics}")
        for i, cam in enumerate(self.cameras):
            if not self.camera_topic(cam).startswith("video/"):
                raise ConfigError(f"cameras[{i}].topic", "a camera's topic starts video/")
        if not self.mic_topic.startswith("audio/"):
            raise ConfigError("mic.topic", "a microphone's topic starts audio/")
        names = [c.name for c in self.cameras]
        if not names:
            raise ConfigError("cameras", "list at least one camera")
        if len(set(names)) != len(names):
            raise ConfigError("cameras", f"camera names must differ, got {names}")
        low, high = self.restart_backoff_s
        if low > high:
            raise ConfigError(
                "restart_backoff_s", f"the first delay {low} exceeds the largest {high}"
            )
        if self.mic.hop_ms > self.mic.window_ms:
            raise ConfigError(
                "mic.hop_ms", f"{self.mic.hop_ms} is longer than window_ms {self.mic.window_ms}"
            )
        _check_endpoint("engine.output", self.engine.output)
        if not self.security.insecure:
            self._check_curve()
        # Sensor endpoints are ipc://<run_dir>/<topic>; "" becomes /tmp/streamfuse-XXXXXXXX.
        run_dir = self.run_dir or "/tmp/streamfuse-XXXXXXXX"
        for topic, sensor in self.sensors():
            _check_endpoint("run_dir", f"ipc://{run_dir}/{topic.replace('/', '-')}")
            if sensor.endpoint is not None:
                _check_endpoint("endpoint", sensor.endpoint)

    def _check_curve(self) -> None:
        """TCP beyond loopback is CURVE-authenticated, or the config says it may not be."""
        from .security import leaves_box

        hint = "(streamfuse keys generate), or set security.insecure: true"
        if leaves_box(self.engine.output) and self.security.key is None:
            raise ConfigError(
                "engine.output", f"{self.engine.output} leaves this box: set security.key {hint}"
            )
        for i, (topic, sensor) in enumerate(self.sensors()):
            where = f"cameras[{i}]" if i < len(self.cameras) else "mic"
            ep = sensor.endpoint
            if ep is not None and leaves_box(ep) and sensor.server_key is None:
                raise ConfigError(
                    f"{where}.server_key", f"{ep} ({topic}) is beyond this box: give its key {hint}"
                )

    def curve_clients(self) -> dict[str, Any]:
        """endpoint -> the CurveClient to connect with: external sources that have a
        server_key, and engine.output where it is a CURVE server (with this daemon's key)."""
        from .security import CurveClient

        out: dict[str, Any] = {}
        for topic, sensor in self.sensors():
            if sensor.endpoint is not None and sensor.server_key is not None:
                out[sensor.endpoint] = CurveClient.to(sensor.server_key, self.security.key, topic)
        server = self.curve_server()
        if server is not None:
            out[self.engine.output] = CurveClient(server.public, server.public, server.secret)
        return out

    def curve_server(self) -> Any:
        """The CurveServer engine.output binds as, where it leaves the box (None: plain)."""
        from .security import CurveServer, leaves_box, load_secret

        if self.security.key is None or not leaves_box(self.engine.output):
            return None
        public, secret = load_secret(self.security.key, "security.key")
        return CurveServer(public, secret, authorized=self.security.authorized_keys)

    # --- derived -------------------------------------------------------------------

    def camera_topic(self, cam: CameraConfig) -> str:
        return cam.topic or f"video/{cam.name}"

    @property
    def mic_topic(self) -> str:
        return self.mic.topic or f"audio/{self.mic.name}"

    def endpoint(self, topic: str) -> str:
        """Where a started sensor of ``topic`` binds: ``ipc://<run_dir>/<topic>``."""
        return f"ipc://{self.run_dir}/{topic.replace('/', '-')}"

    def sensors(self) -> list[tuple[str, CameraConfig | MicConfig]]:
        """Every sensor with its topic: the cameras, then the microphone."""
        return [*((self.camera_topic(c), c) for c in self.cameras), (self.mic_topic, self.mic)]

    def clock_of(self, topic: str) -> str:
        """``wall`` (map through t_wall) or ``local`` (this box's CLOCK_MONOTONIC)."""
        from .security import leaves_box

        sensor = dict(self.sensors()).get(topic)
        if sensor is None or sensor.endpoint is None:
            return "local"  # started here
        return sensor.clock or ("wall" if leaves_box(sensor.endpoint) else "local")

    def source_endpoint(self, topic: str) -> str:
        """Where the sensor of ``topic`` publishes: its own endpoint if it is external."""
        sensor = dict(self.sensors()).get(topic)
        if sensor is not None and sensor.endpoint is not None:
            return sensor.endpoint
        return self.endpoint(topic)

    def sync_config(self, k: int = 1) -> SyncConfig:
        """``k``: frames per window a temporal model takes (the ``k-frames`` policy); 1:
        the policy's own default."""
        extra: dict[str, Any] = {"k": k} if k > 1 else {}
        return SyncConfig(
            cameras=tuple(self.camera_topic(c) for c in self.cameras),
            policy=self.sync.policy,
            **extra,
            tolerance=int(self.sync.tolerance_ms * MS),
            max_wait=int(self.sync.max_wait_ms * MS),
            offsets={k: int(v * MS) for k, v in self.sync.offsets_ms.items()},
            retain=2000 * MS,
        )


def _check_endpoint(field: str, endpoint: str) -> None:
    """A tcp:// endpoint names a port 1-65535 (or ``*``); an ipc:// path fits a socket path."""
    from .security import tcp_address

    address = tcp_address(endpoint)
    if address is not None:
        host, port = address
        if not host or not (port == "*" or (port.isdigit() and 1 <= int(port) <= 65535)):
            raise ConfigError(field, f"{endpoint!r}: use tcp://HOST:PORT with PORT 1-65535")
    elif len(endpoint.partition("://")[2].encode()) > 107:
        raise ConfigError(field, f"{endpoint!r}: an ipc path is at most 107 bytes")


def _explain(exc: msgspec.ValidationError, file: str) -> ConfigError:
    """``Object contains unknown field `fpss` - at `$.cameras[0]``` -> field cameras[0].fpss."""
    text = str(exc)
    problem, _, where = text.partition(" - at `")
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    unknown = re.match(r"Object contains unknown field `([^`]+)`", problem)
    if unknown:
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        problem = "unknown setting (`streamfuse config defaults` lists every setting)"
    return ConfigError(path or "config", problem, file=file)


def load_config(
    path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Read and validate ``path`` (YAML or JSON; None: all defaults), then apply overrides
    (``{"camera": SRC, "mic": SRC}`` replace the first camera's and the mic's source) and
    validate the result again, so a flag is held to the same ranges as the file."""
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
            raise ConfigError("--config", f"{path} is not valid YAML: {_one_line(exc)}") from None
        except RecursionError:
            raise ConfigError("--config", f"{path} is nested too deeply to be a config") from None
        if not isinstance(raw, dict):
            raise ConfigError("--config", f"{path} must hold a mapping of settings")
    cfg = _convert(raw, file)
    overrides = overrides or {}
    if overrides.get("camera"):
        cfg.cameras[0].source, cfg.cameras[0].endpoint = overrides["camera"], None
    if overrides.get("mic"):
        cfg.mic.source, cfg.mic.endpoint = overrides["mic"], None
    if overrides.get("camera_endpoint"):
        cfg.cameras[0].source, cfg.cameras[0].endpoint = None, overrides["camera_endpoint"]
    if overrides.get("mic_endpoint"):
        cfg.mic.source, cfg.mic.endpoint = None, overrides["mic_endpoint"]
    if overrides.get("output"):
        cfg.engine.output = overrides["output"]
    if overrides.get("http_port") is not None:
        cfg.http.port = overrides["http_port"]
    if overrides.get("foxglove"):
        host, _, port = str(overrides["foxglove"]).rpartition(":")
        if not port.isdigit():
            raise ConfigError("--foxglove", f"{overrides['foxglove']!r}: give [HOST:]PORT")
        cfg.foxglove.host, cfg.foxglove.port = host or cfg.foxglove.host, int(port)
    if any(v is not None for v in overrides.values()):
        cfg = validate(cfg, f"{file} with command-line overrides")
    return cfg


def validate(cfg: RunConfig, what: str) -> RunConfig:
    """Check a config changed after loading (a resolved run_dir) against the same rules."""
    return _convert(msgspec.to_builtins(cfg), what)


def _convert(raw: Any, file: str) -> RunConfig:
    try:
        return msgspec.convert(raw, RunConfig)
    except msgspec.ValidationError as exc:
        raise _explain(exc, file) from None
    except ConfigError as err:
        raise ConfigError(err.field, err.problem, file=file) from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def defaults_yaml() -> str:
    """Every setting with its default, meaning and range, as a commented YAML file that
    ``load_config`` reads back to the defaults (``streamfuse config defaults``)."""
    lines = [
        "# streamfuse run --config FILE: every setting with its default",
        "# (printed by `streamfuse config defaults`, generated from the typed schema).",
        "# Unknown keys are errors naming the key and the file; [a..b] is a setting's valid range.",
        "",
    ]
    _emit(RunConfig(), lines, indent="")
    return "\n".join(lines) + "\n"


def _emit(section: msgspec.Struct, lines: list[str], indent: str, first: str = "") -> None:
    info = msgspec.inspect.type_info(type(section))
    assert isinstance(info, msgspec.inspect.StructType)
    for i, f in enumerate(info.fields):
        value = getattr(section, f.name)
        lead = first if i == 0 and first else indent
        note = _note(f.type)
        if isinstance(value, msgspec.Struct):
            lines.append(_commented(f"{lead}{f.name}:", note))
            _emit(value, lines, indent + "  ")
        elif isinstance(value, list) and value and isinstance(value[0], msgspec.Struct):
            lines.append(_commented(f"{lead}{f.name}:", note))
            for item in value:
                _emit(item, lines, indent + "    ", first=indent + "  - ")
        else:
            lines.append(_commented(f"{lead}{f.name}: {_scalar(value)}", note))
        if not indent:
            lines.append("")


def _commented(text: str, note: str) -> str:
    return f"{text:<28}  # {note}" if note else text


def _scalar(value: Any) -> str:
    flow = yaml.safe_dump(msgspec.to_builtins(value), default_flow_style=True, width=1000)
    return flow.strip().removesuffix("...").strip()


def _note(t: Any) -> str:
    """A field's description and range from its msgspec metadata."""
    description, bounds = "", ""
    for part in _flatten(t):
        if isinstance(part, msgspec.inspect.Metadata):
            description = (part.extra_json_schema or {}).get("description", description)
        low = getattr(part, "ge", None) if getattr(part, "gt", None) is None else part.gt
        high = getattr(part, "le", None) if getattr(part, "lt", None) is None else part.lt
        if low is not None and high is not None:
            opening = "[" if getattr(part, "gt", None) is None else "("
            bounds = f" {opening}{_number(low)}..{_number(high)}]"
    return description + bounds


def _number(x: float) -> str:
    if not float(x).is_integer():
        return f"{x:g}"
    return f"{int(x):_}" if abs(x) >= 100_000 else str(int(x))


def _flatten(t: Any) -> list[Any]:
    if isinstance(t, msgspec.inspect.Metadata):
        return [t, *_flatten(t.type)]
    if isinstance(t, msgspec.inspect.UnionType):
        return [p for member in t.types for p in _flatten(member)]
    if isinstance(t, msgspec.inspect.TupleType):
        return [p for member in t.item_types[:1] for p in _flatten(member)]
    return [t]


def dump_config(cfg: RunConfig) -> bytes:
    """The resolved configuration as JSON (what the supervisor hands its children)."""
    return msgspec.json.encode(cfg)

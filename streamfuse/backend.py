"""One interface over the inference runtimes: TensorRT, torch (CPU/CUDA), ONNX Runtime.

A model is an ONNX file whose metadata holds its input contract (written by
``streamfuse export``); :class:`ModelInfo` reads it. A backend loads a model, warms up,
infers a batch, and says which device and precision it runs on. Backends are plugins found
through the ``streamfuse.backends`` entry-point group, so a third party adds one by
declaring it; :func:`open_backend` with ``"auto"`` picks the best one this machine can run
and logs which and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from importlib import metadata, resources
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from .errors import BackendError, ConfigError

__all__ = [
    "AUTO_ORDER",
    "Backend",
    "BackendOptions",
    "ModelInfo",
    "Outputs",
    "available_backends",
    "default_model_path",
    "open_backend",
]

log = logging.getLogger(__name__)

Precision = Literal["fp64", "fp32", "fp16", "int8"]
#: output name -> (batch, n_labels) float32 probabilities
Outputs = dict[str, np.ndarray]

#: What ``auto`` tries, best first: (backend, device).
AUTO_ORDER: tuple[tuple[str, str], ...] = (
    ("tensorrt", "cuda"),
    ("torch", "cuda"),
    ("onnxruntime", "cpu"),
    ("torch", "cpu"),
)


def default_model_path() -> Path:
    """The model that ships with the package (AV-digits, ONNX, with its contract)."""
    return Path(str(resources.files("streamfuse_plugins.models") / "default" / "av_digits.onnx"))


@dataclass(frozen=True)
class ModelInfo:
    """An exported model and the input contract stored in its metadata."""

    path: Path
    labels: tuple[str, ...]
    image: dict[str, Any]
    """``input``, ``shape`` [C, H, W], ``dtype``, ``range``, ``color``, ``from_frame``."""
    audio: dict[str, Any]
    """``input``, ``sample_rate``, ``samples``, ``channels``, ``dtype``, ``range``."""
    outputs: tuple[str, ...]
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path | None = None) -> ModelInfo:
        """Read ``path`` (default: the shipped model); errors name the file and the problem."""
        p = Path(path) if path is not None else default_model_path()
        if not p.is_file():
            raise ConfigError("model", f"{p} does not exist")
        raw = p.read_bytes()
        try:
            import onnx

            proto = onnx.load_from_string(raw)
        except Exception as exc:
            raise ConfigError("model", f"{p} is not a readable ONNX model: {exc}") from None
        if not proto.graph.node:  # protobuf parses an empty file as an empty model
            raise ConfigError("model", f"{p} is not a readable ONNX model: it has no graph")
        props = {e.key: e.value for e in proto.metadata_props}
        need = ("streamfuse.labels", "streamfuse.image", "streamfuse.audio", "streamfuse.outputs")
        missing = [k for k in need if k not in props]
        if missing:
            raise ConfigError(
                "model",
                f"{p} lacks streamfuse metadata {missing}; export it with `streamfuse export`",
            )
        try:
            meta = {
                k.removeprefix("streamfuse."): json.loads(v) if v[:1] in "[{" else v
                for k, v in props.items()
                if k.startswith("streamfuse.")
            }
        except json.JSONDecodeError as exc:
            raise ConfigError("model", f"{p} has malformed streamfuse metadata: {exc}") from None
        return cls(
            path=p,
            labels=tuple(meta["labels"]),
            image=dict(meta["image"]),
            audio=dict(meta["audio"]),
            outputs=tuple(meta["outputs"]),
            sha256=hashlib.sha256(raw).hexdigest(),
            metadata=meta,
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.image["shape"]
        return int(c), int(h), int(w)

    @property
    def audio_samples(self) -> int:
        return int(self.audio["samples"])

    def example_inputs(self, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Fixed inputs of the contract's shapes (for warm-up, parity tests, benchmarks)."""
        rng = np.random.default_rng(seed)
        image = rng.random((batch, *self.image_shape), dtype=np.float32)
        audio = (rng.standard_normal((batch, self.audio_samples)) * 0.1).astype(np.float32)
        return image, audio


@dataclass(frozen=True)
class BackendOptions:
    """How to run. ``precision=None`` means the backend's default (fp16 on TensorRT and
    torch CUDA, fp32 on CPU)."""

    device: str = "cpu"
    precision: Precision | None = None
    max_batch: int = 8
    cache_dir: Path | None = None
    """TensorRT engine cache; default ``$STREAMFUSE_CACHE`` or ``~/.cache/streamfuse``."""
    cuda_graphs: bool = True
    """torch CUDA: capture a CUDA graph per batch size (1, 2, 4, ... max_batch)."""
    threads: int | None = None
    """CPU threads for ONNX Runtime and torch (default: the runtime's own choice)."""
    calibration: Path | None = None
    """TensorRT INT8: an ``.npz`` with ``image`` and ``audio`` arrays to calibrate on."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError("backend.max_batch", f"must be >= 1, got {self.max_batch}")
        if self.precision not in (None, "fp64", "fp32", "fp16", "int8"):
            raise ConfigError(
                "backend.precision", f"{self.precision!r}; choose fp64, fp32, fp16 or int8"
            )


class Backend(Protocol):
    """What every backend plugin provides."""

    name: ClassVar[str]
    device: str
    precision: Precision
    max_batch: int

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        """Why this backend cannot run on ``device`` here, or ``None`` if it can."""
        ...

    def warmup(self) -> None:
        """Run every batch size the backend will see, so the first real call is not slow."""
        ...

    def infer(self, image: np.ndarray, audio: np.ndarray) -> Outputs:
        """``image`` (B, C, H, W) float32, ``audio`` (B, N) float32, B <= max_batch."""
        ...

    def close(self) -> None: ...


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group="streamfuse.backends")}


def backend_names() -> list[str]:
    """The installed backends (entry points of group ``streamfuse.backends``)."""
    return sorted(_entry_points())


def _backend_class(name: str) -> type[Any]:
    eps = _entry_points()
    if name not in eps:
        raise ConfigError("backend", f"unknown backend {name!r}; installed: {sorted(eps)} or auto")
    try:
        cls: type[Any] = eps[name].load()
        return cls
    except Exception as exc:  # a plugin that fails to import is "unavailable", not a crash
        raise BackendError(name, f"plugin failed to load: {exc}") from None


def no_nvidia_gpu() -> str | None:
    """Why no NVIDIA GPU can be here (no device node), or None; cheap, imports nothing, so
    ``auto`` on a CPU box never pays for importing torch to learn that CUDA is absent."""
    import glob

    nodes = glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/nvhost-ctrl-gpu")  # + Jetson
    return None if nodes else "no NVIDIA GPU device here (/dev/nvidia*)"


def _usable(name: str, device: str) -> str | None:
    """Why (name, device) cannot run here, or None."""
    try:
        reason: str | None = _backend_class(name).unavailable(device)
    except BackendError as err:
        reason = err.problem
    return reason


def available_backends() -> list[dict[str, Any]]:
    """Every (backend, device) pair ``auto`` considers, with why it is or is not usable."""
    rows = []
    for name, device in AUTO_ORDER:
        reason = _usable(name, device)
        rows.append(
            {"backend": name, "device": device, "available": reason is None, "reason": reason}
        )
    return rows


def _skipped(rows: list[dict[str, Any]]) -> str:
    return "; ".join(f"{r['backend']} on {r['device']}: {r['reason']}" for r in rows)


def open_backend(
    name: str = "auto", model: ModelInfo | None = None, options: BackendOptions | None = None
) -> Backend:
    """Load ``model`` (default: the shipped one) on backend ``name`` and warm it up."""
    model = model or ModelInfo.load()
    options = options or BackendOptions()
    if name == "auto":
        rows: list[dict[str, Any]] = []
        usable = None
        for candidate, device in AUTO_ORDER:  # stop at the first: probe no more than needed
            reason = _usable(candidate, device)
            row = {"backend": candidate, "device": device, "available": reason is None}
            rows.append({**row, "reason": reason})
            if reason is None:
                usable = rows[-1]
                break
        if usable is None:
            raise BackendError("auto", "no backend can run here: " + _skipped(rows))
        skipped = _skipped(rows[:-1])
        log.info(
            "backend auto: %s on %s%s",
            usable["backend"],
            usable["device"],
            f" (skipped {skipped})" if skipped else "",
        )
        name, options = usable["backend"], replace(options, device=usable["device"])
    cls = _backend_class(name)
    reason = cls.unavailable(options.device)
    if reason is not None:
        raise BackendError(name, f"cannot run on {options.device}: {reason}")
    backend: Backend = cls(model, options)
    backend.warmup()
    log.info(
        "backend %s ready on %s, %s, batch <= %d",
        name,
        backend.device,
        backend.precision,
        backend.max_batch,
    )
    return backend

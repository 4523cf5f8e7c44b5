"""One interface over the inference runtimes: TensorRT, torch (CPU/CUDA), ONNX Runtime.

A model is an ONNX file whose metadata holds its contract (:mod:`streamfuse.contract`,
written by ``streamfuse export`` or ``streamfuse model annotate``); :class:`ModelInfo` reads
it and checks it against the graph. A backend loads a model, warms up,
infers a batch, and says which device and precision it runs on. Backends are plugins found
through the ``streamfuse.backends`` entry-point group, so a third party adds one by
declaring it; :func:`open_backend` with ``"auto"`` picks the best one this machine can run
and logs which and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from importlib import metadata, resources
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from .contract import (
    AudioSpec,
    Contract,
    ImageSpec,
    check_graph,
    from_legacy,
    graph_tensors,
)
from .errors import BackendError, ConfigError

__all__ = [
    "AUTO_ORDER",
    "Backend",
    "BackendOptions",
    "Inputs",
    "ModelInfo",
    "Outputs",
    "RemoteBackend",
    "available_backends",
    "default_model_path",
    "open_backend",
]

log = logging.getLogger(__name__)

Precision = Literal["fp64", "fp32", "fp16", "int8"]
#: output name -> (batch, n_labels) float32, as the graph gives them (logits or probabilities)
Outputs = dict[str, np.ndarray]
#: graph input name -> (batch, ...) array of the contract's dtype
Inputs = dict[str, np.ndarray]

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
    """An ONNX model and its contract (:mod:`streamfuse.contract`), checked against the graph."""

    path: Path
    contract: Contract
    sha256: str
    input_shapes: dict[str, tuple[int, ...]]
    """Graph input -> one sample's shape (no batch axis), as the preprocessor makes it."""
    batch_limit: int | None = None
    """1 where the graph fixes its batch at 1; None: dynamic."""
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    """Every ``streamfuse.*`` metadata entry (JSON values decoded), the contract included."""

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
        try:
            meta = {
                k.removeprefix("streamfuse."): json.loads(v) if v[:1] in "[{" else v
                for k, v in props.items()
                if k.startswith("streamfuse.")
            }
        except json.JSONDecodeError as exc:
            raise ConfigError("model", f"{p} has malformed streamfuse metadata: {exc}") from None
        return cls.from_proto(p, proto, meta, hashlib.sha256(raw).hexdigest())

    @classmethod
    def from_proto(cls, p: Path, proto: Any, meta: dict[str, Any], sha: str) -> ModelInfo:
        if "contract" in meta:
            contract = Contract.parse(meta["contract"], where=f"model {p}: contract")
        elif all(k in meta for k in ("labels", "image", "audio", "outputs")):
            contract = from_legacy(meta)
        else:
            raise ConfigError(
                "model",
                f"{p} has no streamfuse contract in its metadata; give it one with "
                "`streamfuse model annotate` (docs/models.md)",
            )
        try:
            contract = check_graph(contract, proto)
        except ConfigError as err:
            raise ConfigError(err.field, f"{err.problem} (model {p})") from None
        ins = {t.name: t for t in graph_tensors(proto)[0]}
        shapes: dict[str, tuple[int, ...]] = {}
        if contract.image is not None:
            shapes[contract.image.input] = contract.image.shape()
        if (au := contract.audio) is not None:  # (log-mel may carry a channel axis)
            shapes[au.input] = audio_shape(au, len(ins[au.input].shape))
        fixed = any(t.shape and t.shape[0] == 1 for t in ins.values())
        return cls(p, contract, sha, shapes, 1 if fixed else None, meta)

    @classmethod
    def served(
        cls, where: str, contract: Contract, input_shapes: dict[str, tuple[int, ...]]
    ) -> ModelInfo:
        """A model known only by its contract and its inputs' shapes, as a server serves it
        (no local file: ``sha256`` is that of the contract's JSON)."""
        sha = hashlib.sha256(contract.to_json().encode()).hexdigest()
        return cls(Path(where), contract, sha, input_shapes, None, {"contract": contract})

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.contract.labels)

    @property
    def image(self) -> ImageSpec | None:
        return self.contract.image

    @property
    def audio(self) -> AudioSpec | None:
        return self.contract.audio

    @property
    def outputs(self) -> tuple[str, ...]:
        """The graph outputs the engine reads: fused, then the image and audio heads."""
        return tuple(self.contract.output_names())

    def input_dtype(self, name: str) -> np.dtype[Any]:
        spec = self.image if self.image is not None and self.image.input == name else self.audio
        assert spec is not None
        return np.dtype(spec.dtype)

    def example_inputs(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Fixed inputs of the contract's shapes and dtypes (warm-up, parity, benchmarks)."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for name, shape in self.input_shapes.items():
            dtype = self.input_dtype(name)
            if dtype == np.uint8:
                feeds[name] = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
            elif self.image is not None and name == self.image.input:
                feeds[name] = rng.random((batch, *shape), dtype=np.float32).astype(dtype)
            else:
                feeds[name] = (rng.standard_normal((batch, *shape)) * 0.1).astype(dtype)
        return feeds


def audio_shape(au: AudioSpec, rank: int) -> tuple[int, ...]:
    """One sample's audio input shape for a graph input of ``rank`` (batch included)."""
    if au.features == "pcm":
        return (au.channels, au.samples) if au.channels > 1 else (au.samples,)
    mel = au.mel()
    one = (mel.n_mels, mel.frames(au.samples))
    return (au.channels, *one) if rank == 4 else one


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
    """TensorRT INT8: an ``.npz`` with one array per graph input to calibrate on."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The backend's own section of ``engine`` (``engine.triton`` for ``triton``)."""

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

    def infer(self, inputs: Inputs) -> Outputs:
        """One batch: every graph input of the contract by name, (B, ...) with B <=
        max_batch; returns at least the contract's outputs."""
        ...

    def close(self) -> None: ...


class RemoteBackend(Backend, Protocol):
    """A backend whose requests leave the process (``triton``): the engine submits a batch
    and collects the answer later, so its loop never waits on the network."""

    timeout_s: float
    """A request not answered this soon has failed."""
    max_in_flight: int
    """Requests it takes out at once (the engine waits for the oldest beyond that)."""

    def submit(self, inputs: Inputs) -> Future[Outputs]:
        """Send one batch; the future holds its outputs or the error."""
        ...


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
    if model.batch_limit is not None and options.max_batch > model.batch_limit:
        log.info("model %s takes batches of %d: max_batch lowered", model.path, model.batch_limit)
        options = replace(options, max_batch=model.batch_limit)
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

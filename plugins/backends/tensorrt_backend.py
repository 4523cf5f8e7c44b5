"""TensorRT (10.x tensor-name API): ONNX -> cached engine -> execute_async_v3 on torch buffers.

Written against NVIDIA's documented Python API and type-checked with ``tensorrt-stubs``;
see ``docs/backends.md`` for what has and has not run on real TensorRT.

- Build: ``OnnxParser`` -> ``IBuilderConfig`` (FP16 by default; FP32; INT8 with an entropy
  calibrator over an ``.npz``), one optimization profile covering batch 1..max_batch, a
  timing cache reused across builds, a progress monitor, ``build_serialized_network``.
- Cache: :class:`streamfuse.enginecache.EngineCache`, keyed on the ONNX sha256, TensorRT
  version, GPU name and compute capability, precision, profile and builder flags.
- Run: I/O buffers are torch CUDA tensors allocated once at max_batch (their addresses set
  once with ``set_tensor_address``); each call sets the input shapes, enqueues with
  ``execute_async_v3`` on the backend's own CUDA stream, and copies out through pinned memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from streamfuse.backend import (
    BackendOptions,
    Inputs,
    ModelInfo,
    Outputs,
    Precision,
    no_nvidia_gpu,
)
from streamfuse.enginecache import CacheHit, EngineCache, atomic_write
from streamfuse.errors import BackendError

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30
#: phase name, step, steps in phase (None when the phase starts or ends)
ProgressFn = Callable[[str, int, int], None]


def check_tensorrt() -> str:
    """TensorRT's version, or ImportError saying why (``tensorrt-stubs`` alone imports as an
    empty namespace package, so "it imports" is not enough)."""
    import tensorrt as trt

    if not hasattr(trt, "Builder"):
        raise ImportError("the importable 'tensorrt' has no Builder (stub-only package?)")
    return trt.__version__


def _device_index(device: str) -> int:
    return int(device.partition(":")[2] or 0)


def cache_keys(
    model: ModelInfo, precision: Precision, max_batch: int, device: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(slot key: what was asked for, full key: everything an engine depends on)."""
    import tensorrt as trt
    import torch

    idx = _device_index(device)
    major, minor = torch.cuda.get_device_capability(idx)
    slot = {"model_sha256": model.sha256, "precision": precision, "max_batch": max_batch}
    key = {
        **slot,
        "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(idx),
        "compute_capability": f"{major}.{minor}",
        "profile": _profile(model, max_batch),
        "flags": _flags(precision),
        "workspace": WORKSPACE_BYTES,
    }
    return slot, key


def _profile(model: ModelInfo, max_batch: int) -> dict[str, list[list[int]]]:
    """Per input: [min, opt, max] shapes. opt = max_batch: the engine batches under load."""
    shapes = {name: list(shape) for name, shape in model.input_shapes.items()}
    return {n: [[1, *s], [max_batch, *s], [max_batch, *s]] for n, s in shapes.items()}


def _flags(precision: Precision) -> list[str]:
    return {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"]}[precision]


def _progress_monitor(progress: ProgressFn) -> Any:
    import tensorrt as trt

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            progress(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            progress(phase_name, step + 1, self.steps.get(phase_name, 0))
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            n = self.steps.pop(phase_name, 0)
            progress(phase_name, n, n)

    return Monitor()


def _calibrator(model: ModelInfo, path: Path, batch: int) -> Any:
    """INT8 entropy calibration over an ``.npz`` holding one array per graph input.

    Implicit quantization is deprecated since TensorRT 10.1 (explicit Q/DQ in the ONNX is its
    successor); it still builds on 10.x."""
    import tensorrt as trt
    import torch

    try:
        data = np.load(path)
        arrays = {n: np.asarray(data[n], model.input_dtype(n)) for n in model.input_shapes}
    except Exception as exc:
        raise BackendError("tensorrt", f"calibration file {path}: {exc}") from None

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.at = 0
            self.dev = {n: torch.from_numpy(a[:batch].copy()).cuda() for n, a in arrays.items()}
            self.n = min(len(a) for a in arrays.values())

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int]:
            if self.at + batch > self.n:
                return []  # no more data: calibration ends
            sl = slice(self.at, self.at + batch)
            for n, a in arrays.items():
                self.dev[n].copy_(torch.from_numpy(a[sl]))
            self.at += batch
            return [int(self.dev[n].data_ptr()) for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return Calibrator()


def build_serialized(
    model: ModelInfo,
    precision: Precision,
    max_batch: int,
    timing_cache: Path,
    *,
    calibration: Path | None = None,
    progress: ProgressFn | None = None,
) -> bytes:
    """Parse the ONNX model and build a serialized engine (a plan). Slow: minutes on Jetson."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError("tensorrt", f"ONNX parser rejected {model.path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    for flag in _flags(precision):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if precision == "int8":
        if calibration is None:
            raise BackendError("tensorrt", "int8 needs --calibration FILE.npz (image, audio)")
        config.int8_calibrator = _calibrator(model, calibration, min(8, max_batch))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in _profile(model, max_batch).items():
        profile.set_shape(name, trt.Dims(lo), trt.Dims(opt), trt.Dims(hi))
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning(
            "timing cache %s does not fit this TensorRT/GPU; starting a new one", timing_cache
        )
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    if progress is not None:
        config.progress_monitor = _progress_monitor(progress)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError("tensorrt", f"engine build failed for {model.path} (see log above)")
    atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def get_engine(
    model: ModelInfo,
    options: BackendOptions,
    progress: ProgressFn | None = None,
) -> tuple[CacheHit, dict[str, Any], EngineCache]:
    """The engine for ``model`` from the cache, built (once across processes) if needed."""
    check_tensorrt()
    precision: Precision = options.precision or "fp16"
    cache = EngineCache(options.cache_dir)
    slot, key = cache_keys(model, precision, options.max_batch, options.device)
    timing = cache.root / f"timing-{key['gpu'].replace(' ', '_')}-{key['tensorrt']}.cache"
    hit = cache.get_or_build(
        slot,
        key,
        lambda: build_serialized(
            model,
            precision,
            options.max_batch,
            timing,
            calibration=options.calibration,
            progress=progress,
        ),
    )
    return hit, slot, cache


class TensorRTBackend:
    name: ClassVar[str] = "tensorrt"

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        try:
            check_tensorrt()
        except ImportError as exc:
            return f"tensorrt is not importable: {exc}"
        if not device.startswith("cuda"):
            return "TensorRT runs on cuda devices only"
        if (no_gpu := no_nvidia_gpu()) is not None:
            return no_gpu
        try:
            import torch
        except ImportError as exc:
            return f"torch (for CUDA buffers) is not importable: {exc}"
        if not torch.cuda.is_available():
            return "no CUDA GPU visible to torch"
        return None

    def __init__(self, model: ModelInfo, options: BackendOptions) -> None:
        import tensorrt as trt
        import torch

        self.model = model
        self.device = options.device if ":" in options.device else "cuda:0"
        self.precision: Precision = options.precision or "fp16"
        self.max_batch = options.max_batch
        self._torch = torch
        hit, slot, cache = get_engine(model, options)
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        engine = self._runtime.deserialize_cuda_engine(hit.data)
        if engine is None and not hit.built:
            log.warning("cached engine %s does not deserialize; rebuilding", hit.path)
            cache.invalidate(slot)
            hit, _, _ = get_engine(model, options)
            engine = self._runtime.deserialize_cuda_engine(hit.data)
        if engine is None:
            raise BackendError(self.name, f"cannot deserialize engine {hit.path}")
        self.engine_path = hit.path
        self._engine: trt.ICudaEngine = engine
        self._context = engine.create_execution_context()
        self._stream = torch.cuda.Stream(torch.device(self.device))
        self._buffers: dict[str, Any] = {}
        self._pinned: dict[str, Any] = {}
        self._inputs: list[str] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            dims = engine.get_tensor_shape(name)
            shape = [self.max_batch if dims[i] < 0 else dims[i] for i in range(len(dims))]
            buf = torch.empty(shape, dtype=dtype, device=self.device)
            self._buffers[name] = buf
            self._pinned[name] = torch.empty(shape, dtype=dtype, pin_memory=True)
            self._context.set_tensor_address(name, buf.data_ptr())
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(name)

    def warmup(self) -> None:
        """Run every batch size of the profile (1..max_batch) once."""
        for b in range(1, self.max_batch + 1):
            self.infer(self.model.example_inputs(b))

    def infer(self, inputs: Inputs) -> Outputs:
        n = next(iter(inputs.values())).shape[0]
        if n > self.max_batch:
            raise BackendError(self.name, f"batch {n} > max_batch {self.max_batch}")
        feeds = inputs
        with self._torch.cuda.stream(self._stream):
            for name in self._inputs:
                self._pinned[name].numpy()[:n] = feeds[name]
                self._buffers[name][:n].copy_(self._pinned[name][:n], non_blocking=True)
                self._context.set_input_shape(name, tuple(self._buffers[name][:n].shape))
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise BackendError(self.name, "execute_async_v3 failed (see TensorRT log)")
            for name in self.model.outputs:
                self._pinned[name][:n].copy_(self._buffers[name][:n], non_blocking=True)
        self._stream.synchronize()
        return {name: self._pinned[name].numpy()[:n].copy() for name in self.model.outputs}

    def close(self) -> None:
        del self._context
        del self._engine

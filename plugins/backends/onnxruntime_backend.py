"""ONNX Runtime: the CPU box's backend (and CUDA through its CUDA provider, where installed)."""

from __future__ import annotations

from typing import ClassVar

from streamfuse.backend import BackendOptions, Inputs, ModelInfo, Outputs, Precision
from streamfuse.errors import BackendError


class OnnxRuntimeBackend:
    name: ClassVar[str] = "onnxruntime"

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return f"onnxruntime is not importable: {exc}"
        if (
            device.startswith("cuda")
            and "CUDAExecutionProvider" not in ort.get_available_providers()
        ):
            return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider"
        if device != "cpu" and not device.startswith("cuda"):
            return f"unknown device {device!r} (cpu or cuda)"
        return None

    def __init__(self, model: ModelInfo, options: BackendOptions) -> None:
        import onnxruntime as ort

        if options.precision not in (None, "fp32"):
            raise BackendError(
                self.name, f"runs the model as exported (fp32), not {options.precision}"
            )
        self.model = model
        self.device = options.device
        self.precision: Precision = "fp32"
        self.max_batch = options.max_batch
        so = ort.SessionOptions()
        # Its thread pool spins after each run by default, burning a core's share while the
        # engine waits for the next window (a few runs a second): let the threads sleep.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads:
            so.intra_op_num_threads = options.threads
        so.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            index = int(self.device.partition(":")[2] or 0)
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))  # type: ignore[arg-type]
        try:
            self._sess = ort.InferenceSession(str(model.path), so, providers=providers)
        except Exception as exc:
            raise BackendError(self.name, f"cannot load {model.path}: {exc}") from None

    def warmup(self) -> None:
        for b in sorted({1, self.max_batch}):
            self.infer(self.model.example_inputs(b))

    def infer(self, inputs: Inputs) -> Outputs:
        got = self._sess.run(list(self.model.outputs), inputs)
        return dict(zip(self.model.outputs, got, strict=True))

    def close(self) -> None:
        del self._sess

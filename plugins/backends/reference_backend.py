"""The reference backend: the ONNX model evaluated in float64 by ``onnx.reference``
(numpy), its outputs rounded to float32. Slow, and the same bits on every CPU.

Why: fp32 runtimes pick kernels by instruction set (AVX-512, AVX2, NEON), and each sums in
its own order, so ONNX Runtime gives scores that differ in the last bits between machines
(measured: up to 4 ulp between an AVX-512 box and the same wheel on an emulated AVX2 CPU).
Lockstep replay promises the same bytes everywhere, so it runs this instead: in float64 the
kernels still differ, but by ~1e-16 relative, far below the float32 rounding of the result.
Two machines disagree only where a value lands within that distance of a float32 rounding
boundary: about one value in 10^8 (see docs/recording.md for what was verified).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from streamfuse.backend import BackendOptions, Inputs, ModelInfo, Outputs, Precision
from streamfuse.errors import BackendError


def to_float64(model: Any) -> Any:
    """A copy of ONNX ``model`` computing in float64: initializers, constants, casts, and
    graph inputs/outputs/value infos declared float become double."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)

    def widen(t: onnx.TensorProto) -> None:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))

    for t in m.graph.initializer:
        widen(t)
    for node in m.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                widen(attr.t)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
    for v in [*m.graph.input, *m.graph.output, *m.graph.value_info]:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m


class ReferenceBackend:
    name: ClassVar[str] = "reference"

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        if device != "cpu":
            return f"runs on the CPU only, not {device!r}"
        try:
            from onnx.reference import ReferenceEvaluator  # noqa: F401
        except ImportError as exc:
            return f"onnx.reference is not importable: {exc}"
        return None

    def __init__(self, model: ModelInfo, options: BackendOptions) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        if options.precision not in (None, "fp64"):
            raise BackendError(self.name, f"computes in fp64, not {options.precision}")
        self.model = model
        self.device = "cpu"
        self.precision: Precision = "fp64"
        self.max_batch = options.max_batch
        try:
            self._eval = ReferenceEvaluator(to_float64(onnx.load(str(model.path))))
        except Exception as exc:
            raise BackendError(self.name, f"cannot load {model.path}: {exc}") from None

    def warmup(self) -> None:
        self.infer(self.model.example_inputs(1))

    def infer(self, inputs: Inputs) -> Outputs:
        feeds = {k: v if v.dtype.kind in "iu" else v.astype(np.float64) for k, v in inputs.items()}
        got = self._eval.run(list(self.model.outputs), feeds)
        outs = zip(self.model.outputs, got, strict=True)
        return {k: np.asarray(v).astype(np.float32) for k, v in outs}

    def close(self) -> None:
        del self._eval

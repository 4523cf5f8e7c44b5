"""ONNX export with the model's input contract in its metadata, checked against torch with
ONNX Runtime, and the check that every op is one TensorRT's ONNX parser supports."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamfuse.backend import ModelInfo
from streamfuse.contract import METADATA_KEY, AudioSpec, Contract, ImageSpec, OutputSpec
from streamfuse.errors import ConfigError

from .fusion import Exportable, FusionNet
from .train import LABELS

OPSET = 17
INPUTS = ("image", "audio")
OUTPUTS = ("probs", "image_probs", "audio_probs")

# ONNX ops the TensorRT ONNX parser supports (onnx-tensorrt docs/operators.md, TensorRT
# 8.4 through 10.x), limited to those a network like ours could plausibly emit.
TENSORRT_OPS = frozenset(
    [
        "Abs",
        "Add",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "Flatten",
        "Floor",
        "Gather",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Greater",
        "Identity",
        "LeakyRelu",
        "Less",
        "Log",
        "LogSoftmax",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "Min",
        "Mul",
        "Neg",
        "Pad",
        "Pow",
        "PRelu",
        "Range",
        "ReduceL2",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Resize",
        "Shape",
        "Sigmoid",
        "Sin",
        "Slice",
        "Softmax",
        "Softplus",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tanh",
        "Tile",
        "TopK",
        "Transpose",
        "Unsqueeze",
        "Where",
    ]
)


def model_contract(net: FusionNet) -> Contract:
    """The shipped model family's contract (:mod:`streamfuse.contract`): a gray square
    centre crop, area-resized, pixels in [0, 1]; mono PCM; three probability heads."""
    cfg = net.cfg
    fused, image, audio = OUTPUTS
    return Contract(
        labels=list(LABELS),
        outputs=OutputSpec(fused=fused, image=image, audio=audio),
        output_kind="probabilities",
        image=ImageSpec(
            input=INPUTS[0],
            layout="NCHW",
            color="gray",
            dtype="float32",
            size=(cfg.image_size, cfg.image_size),
            resize="center-crop",
            interpolation="area",
        ),
        audio=AudioSpec(input=INPUTS[1], sample_rate=cfg.sample_rate, samples=cfg.window_samples),
        name="av-digits",
        description="spoken + written digits 0-9 (FSDD + MNIST), streamfuse's demo model",
    )


def contract(net: FusionNet) -> dict[str, str]:
    """What a consumer must feed the model: stored as ONNX metadata, read back by the engine."""
    return {
        METADATA_KEY: model_contract(net).to_json(),
        "streamfuse.fusion": net.cfg.fusion,
        "streamfuse.config": json.dumps(net.cfg.to_dict()),
    }


def export_onnx(
    net: FusionNet, path: Path, extra_metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    """Write ``path`` (opset 17, dynamic batch) and verify it with ONNX Runtime."""
    import onnx

    cfg = net.cfg
    net.eval()
    model = Exportable(net).eval()
    # A batch of 2: exporting with 1 can freeze the batch dimension.
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, cfg.image_size, cfg.image_size, generator=g)
    audio = torch.randn(2, cfg.window_samples, generator=g) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deliberate: it emits opset 17 with plain ops, where the
        # dynamo exporter emits opset 18 and needs onnxscript. It warns about itself.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", ".*Constant folding", UserWarning)
        torch.onnx.export(
            model,
            (image, audio),
            str(path),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes={name: {0: "batch"} for name in (*INPUTS, *OUTPUTS)},
        )
    proto = onnx.load(str(path))
    for key, value in {**contract(net), **(extra_metadata or {})}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    report = verify(model, path)
    report["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    report["bytes"] = path.stat().st_size
    return report


def verify(model: Exportable, path: Path, batches: tuple[int, ...] = (1, 3, 8)) -> dict[str, Any]:
    """Max |torch - ONNX Runtime| over fixed inputs at several batch sizes; raises if > 1e-4."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    cfg = model.net.cfg
    for b in batches:
        g = torch.Generator().manual_seed(b)
        image = torch.rand(b, 1, cfg.image_size, cfg.image_size, generator=g)
        audio = torch.randn(b, cfg.window_samples, generator=g) * 0.2
        with torch.no_grad():
            ref = [t.numpy() for t in model(image, audio)]
        got = sess.run(list(OUTPUTS), {"image": image.numpy(), "audio": audio.numpy()})
        worst = max(worst, *(float(np.abs(r - o).max()) for r, o in zip(ref, got, strict=True)))
    if worst > 1e-4:
        raise ConfigError("export", f"ONNX Runtime differs from torch by {worst:.2e} (> 1e-4)")
    return {"max_abs_diff": worst, "batches": list(batches), "opset": OPSET}


def graph_ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def read_contract(path: Path) -> dict[str, Any]:
    """The contract stored in an exported model's metadata (builtins; defaults omitted)."""
    return ModelInfo.load(path).contract.to_builtins()

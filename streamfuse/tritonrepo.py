"""A Triton Inference Server model repository for a streamfuse model.

    DIR/<name>/config.pbtxt       platform onnxruntime_onnx, dynamic batching, the
    DIR/<name>/1/model.onnx       contract's inputs and outputs, the contract itself
    DIR/<name>_trt/...            (with --plan ENGINE: platform tensorrt_plan, model.plan)

The config is built as Triton's own ``ModelConfig`` protobuf (``tritonclient`` ships
``model_config_pb2``) and written in its text format, so what is written parses as Triton
parses it. The contract travels in ``parameters["streamfuse.contract"]``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .backend import ModelInfo
from .contract import METADATA_KEY, graph_tensors
from .errors import ConfigError

__all__ = ["export_repo", "model_config"]

_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8",
          "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}  # fmt: skip


def _pb() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise ConfigError(
            "triton", f"needs tritonclient (pip install 'streamfuse[triton]'): {exc}"
        ) from None
    return model_config_pb2


def model_config(
    model: ModelInfo, name: str, max_batch: int, platform: str = "onnxruntime_onnx"
) -> Any:
    """Triton's ModelConfig for ``model`` (a ``model_config_pb2.ModelConfig``)."""
    import onnx

    pb = _pb()
    cfg = pb.ModelConfig(name=name, platform=platform)
    batched = model.batch_limit is None
    cfg.max_batch_size = max_batch if batched else 0
    for input_name, shape in model.input_shapes.items():
        dims = list(shape) if batched else [1, *shape]
        dtype = _TYPES[str(np.dtype(model.input_dtype(input_name)))]
        cfg.input.append(pb.ModelInput(name=input_name, data_type=dtype, dims=dims))
    _, outs = graph_tensors(onnx.load(str(model.path), load_external_data=False))
    by_name = {t.name: t for t in outs}
    for output in model.outputs:
        t = by_name[output]
        n = len(model.labels)
        cfg.output.append(pb.ModelOutput(name=output, data_type=_TYPES[t.dtype],
                                         dims=[n] if batched else [1, n]))  # fmt: skip
    if batched:
        cfg.dynamic_batching.max_queue_delay_microseconds = 1000
    cfg.parameters[METADATA_KEY].string_value = model.contract.to_json()
    return cfg


def export_repo(
    model: ModelInfo, out: Path, *, name: str, max_batch: int, plan: Path | None = None
) -> list[Path]:
    """Write the repository; returns the files written."""
    from google.protobuf import text_format

    written = []
    models = [(name, "onnxruntime_onnx", model.path, "model.onnx")]
    if plan is not None:
        if not plan.is_file():
            raise ConfigError("--plan", f"{plan} does not exist (streamfuse build-engine)")
        models.append((f"{name}_trt", "tensorrt_plan", plan, "model.plan"))
    for model_name, platform, source, filename in models:
        folder = out / model_name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        config = model_config(model, model_name, max_batch, platform)
        text = text_format.MessageToString(config)
        text_format.Parse(text, _pb().ModelConfig())  # what Triton reads back
        (folder / "config.pbtxt").write_text(text)
        shutil.copyfile(source, folder / "1" / filename)
        written += [folder / "config.pbtxt", folder / "1" / filename]
    return written

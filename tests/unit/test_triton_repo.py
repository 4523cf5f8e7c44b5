"""`streamfuse triton export-repo`: the repository's config.pbtxt, read back with Triton's
own ModelConfig protobuf (tritonclient ships it), says what the contract says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamfuse.backend import ModelInfo, default_model_path
from streamfuse.cli import main

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (dev extra)")


def _read(path: Path) -> object:
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), pb.ModelConfig())


def test_the_exported_repository_is_what_triton_reads(tmp_path: Path) -> None:
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"(a TensorRT engine from build-engine)")
    res = CliRunner().invoke(main, ["triton", "export-repo", str(tmp_path / "repo"), "--json",
                                    "--max-batch", "16", "--plan", str(plan)])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["model_name"] == "av_digits"
    repo = tmp_path / "repo"
    assert (
        repo / "av_digits" / "1" / "model.onnx"
    ).read_bytes() == default_model_path().read_bytes()
    assert (repo / "av_digits_trt" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    model = ModelInfo.load()
    for name, platform in (("av_digits", "onnxruntime_onnx"), ("av_digits_trt", "tensorrt_plan")):
        cfg = _read(repo / name / "config.pbtxt")
        assert (cfg.name, cfg.platform, cfg.max_batch_size) == (name, platform, 16)
        assert [(i.name, list(i.dims), pb.DataType.Name(i.data_type)) for i in cfg.input] == [
            ("image", [1, 32, 32], "TYPE_FP32"), ("audio", [16000], "TYPE_FP32")]  # fmt: skip
        assert [(o.name, list(o.dims)) for o in cfg.output] == [
            ("probs", [10]), ("image_probs", [10]), ("audio_probs", [10])]  # fmt: skip
        assert cfg.HasField("dynamic_batching")
        stored = json.loads(cfg.parameters["streamfuse.contract"].string_value)
        assert stored == model.contract.to_builtins()


def test_a_uint8_nhwc_model_and_a_missing_plan(tmp_path: Path) -> None:
    import yaml

    from streamfuse.contract import annotate, load_contract_file

    from .. import colour_model as C

    bare, out = tmp_path / "bare.onnx", tmp_path / "colours.onnx"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(C.build(bare)))
    annotate(bare, load_contract_file(tmp_path / "c.yaml"), out)
    res = CliRunner().invoke(
        main, ["triton", "export-repo", str(tmp_path / "r"), "--model", str(out)]
    )
    assert res.exit_code == 0, res.output
    cfg = _read(tmp_path / "r" / "colours" / "config.pbtxt")
    assert [(i.name, list(i.dims), pb.DataType.Name(i.data_type)) for i in cfg.input] == [
        ("pixels", [96, 128, 3], "TYPE_UINT8"), ("mel", [40, 32], "TYPE_FP32")]  # fmt: skip
    res = CliRunner().invoke(
        main, ["triton", "export-repo", str(tmp_path / "r2"), "--plan", "nope.plan"]
    )
    assert res.exit_code == 2 and "error: --plan: nope.plan does not exist" in res.output

"""`streamfuse train`, `eval` and `export` end to end on the real AV-digits data (small runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ..conftest import require_data
from .helpers import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def data() -> Path:
    return require_data("fsdd", "mnist")


def test_train_writes_checkpoint_card_and_verified_onnx(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    res = run_cli(
        "train",
        "--config",
        "configs/train/av-digits.yaml",
        "--epochs",
        "1",
        "--limit",
        "192",
        "--out",
        str(out),
        "--data",
        str(data),
        "--json",
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    card = json.loads(res.stdout)
    assert {p.name for p in out.iterdir()} >= {"model.pt", "model.onnx", "model_card.json"}
    assert card["onnx"]["max_abs_diff"] <= 1e-4
    assert set(card["metrics"]) == {"espeak (trained voices)", "espeak (held-out voices)"}
    # (a random 192 clips of them) never the two held-out espeak voices
    assert set(card["data"]["train_speakers"]) <= {
        "george",
        "jackson",
        "nicolas",
        "theo",
        "yweweler",
        "espeak-f2",
        "espeak-f4",
        "espeak-m1",
        "espeak-m3",
    }
    # export again from the checkpoint, human output
    res = run_cli(
        "export", "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "again.onnx")
    )
    assert res.returncode == 0, res.stderr
    assert "opset 17" in res.stdout and (tmp_path / "again.onnx").stat().st_size > 100_000
    # every backend of this machine runs what `export` wrote, and they agree
    from streamfuse.backend import BackendOptions, ModelInfo, open_backend

    model = ModelInfo.load(tmp_path / "again.onnx")
    inputs = model.example_inputs(2)
    ort_out = open_backend("onnxruntime", model).infer(inputs)
    torch_out = open_backend("torch", model, BackendOptions()).infer(inputs)
    assert np.abs(ort_out["probs"] - torch_out["probs"]).max() <= 1e-4


def test_eval_reports_every_condition_for_a_held_out_speaker(data: Path) -> None:
    res = run_cli(
        "eval",
        "--config",
        "configs/train/av-digits.yaml",
        "--speakers",
        "theo",
        "--epochs",
        "1",
        "--limit",
        "192",
        "--baselines",
        "--data",
        str(data),
        "--json",
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out["per_speaker"]) == {"theo"}
    assert set(out["mean"]) == {
        "clean",
        "degraded",
        "image blank",
        "audio blank",
        "image-only model",
        "audio-only model",
    }
    assert all(0 <= v <= 1 for cond in out["mean"].values() for v in cond.values())
    assert set(out["targets"]) == {
        "fused clean",
        "degraded: fused - best single",
        "image blank: fused - audio-only model",
        "audio blank: fused - image-only model",
    }


def test_bad_model_command_input_is_a_clear_error(tmp_path: Path) -> None:
    res = run_cli("eval", "--speakers", "bob")
    assert res.returncode == 2 and "--speakers: unknown ['bob']" in res.stderr
    res = run_cli(
        "export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.onnx")
    )
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("train", "--data", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "no AV-digits data" in res.stderr

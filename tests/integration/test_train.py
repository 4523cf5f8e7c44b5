"""`streamfuse train`, `eval` and `export` end to end on the real AV-digits data (small runs)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ..conftest import require_data
from .helpers import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def data() -> Path:
    return require_data("fsdd", "mnist")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One expert cache for the module's small runs (eval's experts serve train)."""
    return {"STREAMFUSE_CACHE": str(tmp_path_factory.mktemp("cache"))}


def test_train_writes_checkpoint_card_and_verified_onnx(
    tmp_path: Path, data: Path, cache: dict[str, str]
) -> None:
    out = tmp_path / "run"
    res = run_cli(
        "train",
        "--config",
        "configs/train/av-digits.yaml",
        "--epochs",
        "1",
        "--limit",
        "96",
        "--out",
        str(out),
        "--data",
        str(data),
        "--json",
        timeout=400,
        env=cache,
    )
    assert res.returncode == 0, res.stderr
    card = json.loads(res.stdout)
    assert card["fusion"] == "stacked"
    # progress on stderr: 9 experts (3 image, the 5 folds' audio experts whose outputs the
    # stacker learns from, and the one on every speaker), or fewer where cached
    assert (
        "experts (" in res.stderr
        and "audio expert (george+jackson+nicolas+theo+yweweler)" in res.stderr
    )
    assert {p.name for p in out.iterdir()} >= {"model.pt", "model.onnx", "model_card.json"}
    assert card["onnx"]["max_abs_diff"] <= 1e-4
    assert set(card["metrics"]) == {"espeak (trained voices)", "espeak (held-out voices)"}
    # (a random 96 clips of them) never the two held-out espeak voices
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


def test_eval_reports_every_condition_and_target_for_a_held_out_speaker(
    data: Path, cache: dict[str, str]
) -> None:
    res = run_cli(
        "eval",
        "--config",
        "configs/train/av-digits.yaml",
        "--speakers",
        "theo",
        "--epochs",
        "1",
        "--limit",
        "96",
        "--baselines",
        "--data",
        str(data),
        "--json",
        timeout=400,
        env=cache,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out["per_speaker"]) == {"theo"}
    conditions = {
        "clean", "degraded", "image degraded", "audio degraded", "image blank", "audio blank"
    }  # fmt: skip
    assert set(out["mean"]) == set(out["worst"]) == conditions
    row = out["per_speaker"]["theo"]["clean"]
    assert {"fused", "image", "audio", "fused ece", "image ece", "audio ece"} <= set(row)
    assert {"late (uncalibrated mean)", "product (calibrated)", "stacker fitted in sample"} <= set(
        row
    )
    assert all(0 <= v <= 1 for cond in out["mean"].values() for v in cond.values())
    # 8 targets per fold, 2 on means; each says PASS or FAIL from its own numbers
    assert len(out["targets"]) == 10
    for t in out["targets"]:
        assert t["pass"] == (t["value"] >= t["needs"] - 1e-9)
    assert {t["fold"] for t in out["targets"]} == {"theo", "mean"}
    # progress on stderr; theo's fold needs an expert per other speaker that never heard it
    # (trained without theo and that speaker: only eval trains these)
    assert "held out theo" in res.stderr
    assert "audio expert (george+jackson+nicolas)" in res.stderr
    if "cached in" in res.stderr:  # after the train test: its experts are reused
        cached = int(res.stderr.split(" cached in")[0].rsplit("; ", 1)[1])
        assert cached >= 4  # 3 image experts and theo's fold expert


def test_bad_model_command_input_is_a_clear_error(tmp_path: Path) -> None:
    # a card that cannot be written to is refused before the evaluation, not after it
    cards = {"missing": None, "garbage": b"\x00garbage", "list": b"[1, 2]"}
    for name, content in cards.items():
        if content is not None:
            (tmp_path / f"{name}.json").write_bytes(content)
    runs: dict[str, tuple[str, ...]] = {
        "speakers": ("eval", "--speakers", "bob"),
        "checkpoint": ("export", "--checkpoint", str(tmp_path / "none.pt"),
                       "--out", str(tmp_path / "x.onnx")),
        "data": ("train", "--data", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "o")),
        **{f"card {name}": ("eval", "--config", "configs/train/av-digits.yaml", "--speakers",
                            "theo", "--card", str(tmp_path / f"{name}.json")) for name in cards},
    }  # fmt: skip
    with ThreadPoolExecutor(len(runs)) as pool:  # each imports torch: side by side
        res = dict(zip(runs, pool.map(lambda argv: run_cli(*argv), runs.values()), strict=True))
    for name, r in res.items():
        assert r.returncode == 2 and "Traceback" not in r.stderr, (name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (name, r.stderr)
    assert "--speakers: unknown ['bob']" in res["speakers"].stderr
    assert "does not exist" in res["checkpoint"].stderr
    assert "no AV-digits data" in res["data"].stderr
    for name in cards:
        assert (
            "--card" in res[f"card {name}"].stderr and "training" not in res[f"card {name}"].stderr
        )

"""Bring your own model: a model unlike the shipped one (RGB NHWC uint8 + log-mel at 8 kHz,
three labels; tests/colour_model.py) given its contract with ``streamfuse model annotate``
and run by the real daemon from files, with no code change; audio-only and image-only
variants; and a hot swap under load that loses no window."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamfuse.backend import ModelInfo, default_model_path

from .. import colour_model as C
from .helpers import free_port, http_json, run_cli, wait_for, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SEQUENCE = ["red", "green", "blue", "blue", "red", "green", "green", "blue", "red", "red"]


def _model(tmp: Path, name: str, **parts: bool) -> Path:
    bare = tmp / f"{name}.bare.onnx"
    contract = tmp / f"{name}.yaml"
    contract.write_text(yaml.safe_dump(C.build(bare, **parts)))
    out = tmp / f"{name}.onnx"
    res = run_cli("model", "annotate", str(bare), "--contract", str(contract), "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("byom")
    video, wav = C.write_session(tmp, SEQUENCE)
    return {
        "video": video,
        "wav": wav,
        "both": _model(tmp, "colours"),
        "image": _model(tmp, "image-only", audio=False),
        "audio": _model(tmp, "audio-only", image=False),
        "temporal": _model(tmp, "temporal", frames=3),
    }


def _config(tmp: Path, session: dict[str, Path], model: Path, **sections: Any) -> Path:
    path, _ = write_config(
        tmp,
        cameras=[{"name": "front", "source": str(session["video"])}],
        mic={"source": str(session["wav"]), "window_ms": 1000, "hop_ms": 1000},
        engine={"model": str(model), "standby": False},
        http={"port": 0},
        # two daemons share two cores here: let a late frame still make its window
        sync={"max_wait_ms": 3000, **sections.pop("sync", {})},
        **sections,
    )
    return path


def _truth(r: dict[str, Any]) -> str:
    """The label shown and played in the second this window covers (windows = seconds)."""
    t0 = next(i["media_t0"] for i in r["inputs"] if i["stream"] == "audio/mic0")
    return SEQUENCE[round(t0 / 1e9)]


def _results(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _start(r: dict[str, Any]) -> float:
    return next(i["media_t0"] for i in r["inputs"] if i["stream"] == "audio/mic0") / 1e9


@pytest.fixture(scope="module")
def runs(session: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each model's daemon over the session files, two at a time: kind -> its results.
    (Four at once on two cores can start a camera more than the supervisor's 2 s epoch
    margin late; its first frames are then in the past and the synchronizer forgets them.)"""
    outs = {}
    for pair in (("both", "image"), ("audio", "temporal")):
        procs = {}
        for kind in pair:
            d = tmp_path_factory.mktemp(kind)
            sync = {"sync": {"policy": "k-frames"}} if kind == "temporal" else {}
            config = _config(d, session, session[kind], **sync)
            argv = [sys.executable, "-m", "streamfuse", "run", "--config", str(config), "--json"]
            argv.append("--until-eof")
            procs[kind] = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        for kind, p in procs.items():
            outs[kind] = p.communicate(timeout=200)
            assert p.returncode == 0, f"{kind}: {outs[kind][1][-2000:]}"
    return {kind: _results(out) for kind, (out, _) in outs.items()}


def test_a_model_unlike_the_shipped_one_classifies_every_window_right(
    session: dict[str, Path], runs: dict[str, Any]
) -> None:
    results = runs["both"]
    sha = ModelInfo.load(session["both"]).sha256[:12]
    assert [round(_start(r)) for r in results] == list(range(len(SEQUENCE)))  # each once
    for r in results:
        want = _truth(r)
        assert (r["label"], r["image_label"], r["audio_label"]) == (want, want, want), r
        assert not r["degraded"] and r["model"] == sha and r["stream"] == "front"
        assert 0.9 < r["score"] <= 1.0


@pytest.mark.parametrize("kind", ["image", "audio", "temporal"])
def test_image_only_audio_only_and_temporal_models_run(kind: str, runs: dict[str, Any]) -> None:
    results = runs[kind]
    assert [round(_start(r)) for r in results] == list(range(len(SEQUENCE)))
    for r in results:
        assert r["label"] == _truth(r), r
        assert not r["degraded"], (r["missing"], r["reasons"], r["inputs"])
        if kind == "temporal":  # three heads; K = 3 frames of the window in each sample
            assert r["image_label"] == r["audio_label"] == r["label"]
            continue
        # one head, the fused one: no image_* / audio_* of their own
        assert r["image_label"] is None and r["audio_label"] is None
        assert 0 < r["score"] <= 1.0  # audio: logits, softmaxed by the engine
    stream = {"image": "front", "audio": "mic0", "temporal": "front"}[kind]
    assert {r["stream"] for r in results} == {stream}
    if kind == "audio":  # the camera's frames are not its inputs
        assert all(len(r["inputs"]) == 1 for r in results)


def _metric(port: int, pattern: str) -> float | None:
    try:
        status, text = http_json(port, "/metrics")
    except OSError:  # (not serving yet)
        return None
    m = re.search(pattern + r" ([0-9.e+]+)$", text, re.M) if status == 200 else None
    return float(m.group(1)) if m else None


def test_a_swap_under_load_loses_no_window_and_a_bad_model_is_refused(
    session: dict[str, Path], tmp_path: Path
) -> None:
    """Served from files at their own pace: the shipped model first; a corrupt file put in
    its place is refused (counted) while the shipped model keeps serving, and so is a model
    that does not fit the sensors; then the colour model (replaced atomically, SIGHUP) is
    swapped in between two batches."""
    served = tmp_path / "model.onnx"
    shutil.copyfile(default_model_path(), served)
    port = free_port()
    path, _ = write_config(
        tmp_path,
        cameras=[{"name": "front", "source": str(session["video"])}],
        mic={"source": str(session["wav"]), "window_ms": 1000, "hop_ms": 250},
        engine={"model": str(served), "standby": False},
        http={"port": port},
    )
    argv = [
        sys.executable,
        "-m",
        "streamfuse",
        "run",
        "--config",
        str(path),
        "--json",
        "--until-eof",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # serving
        garbage = tmp_path / "garbage.onnx"
        garbage.write_bytes(b"\x08\x07not a model" * 100)
        os.replace(garbage, served)
        failed = r'streamfuse_errors_total\{kind="model_swap_failed",stream="result/"\}'
        wait_for(lambda: _metric(port, failed), 10, "the corrupt model counted as a failed swap")
        # a model whose contract does not fit the sensors (K frames, nearest-center policy)
        shutil.copyfile(session["temporal"], tmp_path / "next.onnx")
        os.replace(tmp_path / "next.onnx", served)
        wait_for(lambda: _metric(port, failed) == 2 or None, 10, "the misfit counted as failed")
        shutil.copyfile(session["both"], tmp_path / "next.onnx")
        os.replace(tmp_path / "next.onnx", served)
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    results = [first, *_results(out)]
    old, new = (
        ModelInfo.load(default_model_path()).sha256[:12],
        ModelInfo.load(session["both"]).sha256[:12],
    )
    models = [r["model"] for r in results]
    switch = models.index(new)
    assert switch > 0 and models == [old] * switch + [new] * (len(models) - switch), models
    assert [r["seq"] for r in results] == list(range(len(results)))  # no result lost
    starts = [_start(r) for r in results]
    assert starts == [k * 0.25 for k in range(len(results))]  # no window lost or doubled
    assert len(results) == 4 * len(SEQUENCE) - 3  # every 1 s window of the file, hop 250 ms
    for r in results[switch:]:
        if starts[results.index(r)] % 1 == 0:  # a window on a whole second: one colour
            assert r["label"] == _truth(r), r
    totals = sorted(r["latency"]["total"] for r in results)
    at = results[switch]["latency"]["total"] / 1e6
    median, top = totals[len(totals) // 2] / 1e6, totals[-1] / 1e6
    print(f"swap at window {switch}: total {at:.1f} ms, median {median:.1f}, max {top:.1f}")

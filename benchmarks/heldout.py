"""End to end on a speaker the model never heard: the real daemon, from files.

    python benchmarks/heldout.py [--speaker george] [--json]

Holds one FSDD speaker out: the fold's model is the cross-fitted recipe trained without that
speaker (its experts come from the cache `streamfuse eval` fills, or are trained here), exported
to ONNX. Two sessions in the demo's format are built from that speaker's recordings and from
MNIST images no part of training saw (the last 20 % of each digit): a clean one (60 s) and one
where each second is one of five conditions in turn (100 s): clean, image noisy (heavy pixel
noise, left half covered), camera black, audio noisy (0 dB white noise), mic silent. Both go
through `streamfuse run --json --until-eof` with that model; each window is scored from the
result's own fields (fused ``label``, ``image_label``, ``audio_label``) against the digit of
its second. Prints a table per condition; exit 1 when fused falls below the better head in any.

Needs the training extra (torch) and the data (STREAMFUSE_DATA or ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CONDITIONS = ("clean", "image noisy", "camera black", "audio noisy", "mic silent")
HEADS = (("fused", "label"), ("image", "image_label"), ("audio", "audio_label"))


def fold_model(speaker: str, out: Path, config: str) -> Path:
    """Export the cross-fitted model of the fold that holds ``speaker`` out."""
    from streamfuse_plugins.models import crossfit as C
    from streamfuse_plugins.models.export import export_onnx

    from streamfuse.modelcli import load_train_config

    cfg = load_train_config(config, {})
    corpus = C.Corpus.load(cfg)
    fold = C.plan(corpus, speaker)
    nets = C.ensure_experts(cfg, C.experts_for(corpus, [fold]), lambda s: print(s, file=sys.stderr))
    assert all(speaker not in s.speakers for s in (fold.audio, *fold.oof_audio.values()))
    path = out / f"without-{speaker}.onnx"
    export_onnx(C.build(cfg, corpus, fold, nets), path)
    return path


def sessions(speaker: str, out: Path, seed: int) -> dict[str, tuple[Any, list[str]]]:
    """The clean and the per-second-degraded session; per second the condition's name."""
    from streamfuse_plugins.demo.session import RATE, real_material, write_session
    from streamfuse_plugins.models import data as D

    root = D.data_root(None)
    images, labels = D.load_mnist(root)
    clips = [c for c in D.load_clips(root, RATE, voices=False) if c.speaker == speaker]
    rng = np.random.default_rng(seed)

    def material(n: int) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        digits = [int(d) for d in rng.integers(0, 10, n)]
        pics, pcm = real_material(images, labels, clips, digits, rng)
        return digits, pics, [D.fit_audio(x, RATE) for x in pcm]

    digits, pics, pcm = material(60)
    clean = write_session(out / "clean", digits, pics, pcm)
    digits, pics, pcm = material(100)
    conds = [CONDITIONS[k % len(CONDITIONS)] for k in range(len(digits))]
    for k, cond in enumerate(conds):
        if cond == "image noisy":
            x = pics[k] / 255.0 + rng.standard_normal(pics[k].shape) * 0.5
            x[:, : x.shape[1] // 2] = 0
            pics[k] = (np.clip(x, 0, 1) * 255).astype(np.uint8)
        elif cond == "camera black":
            pics[k] = np.zeros_like(pics[k])
        elif cond == "audio noisy":  # 0 dB over the second, as `streamfuse eval` defines it
            power = float(np.mean(pcm[k] ** 2))
            pcm[k] = (pcm[k] + rng.standard_normal(RATE) * np.sqrt(power)).astype(np.float32)
        elif cond == "mic silent":
            pcm[k] = np.zeros(RATE, np.float32)
    degraded = write_session(out / "degraded", digits, pics, pcm)
    return {"clean": (clean, ["clean"] * 60), "degraded": (degraded, conds)}


def run_daemon(session: Any, model: Path, tmp: Path) -> list[dict[str, Any]]:
    import yaml

    cfg = {
        "cameras": [{"name": "front", "source": str(session.video)}],
        "mic": {"source": str(session.audio)},
        "engine": {"model": str(model), "output": f"ipc://{tmp}/result"},
        "http": {"port": 0},
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamfuse",
            "run",
            "--config",
            str(tmp / "run.yaml"),
            "--json",
            "--until-eof",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0:
        raise SystemExit(f"streamfuse run failed ({res.returncode}): {res.stderr[-2000:]}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def grade(
    results: list[dict[str, Any]], digits: list[int], conds: list[str]
) -> dict[str, dict[str, float]]:
    from streamfuse_plugins.demo.session import expected_digit

    hits: dict[str, dict[str, int]] = {}
    for r in results:
        want = expected_digit(r, digits)
        if want is None:
            continue
        t0 = next(i["media_t0"] for i in r["inputs"] if i["stream"].startswith("audio/"))
        row = hits.setdefault(conds[round(t0 / 1e9)], {"n": 0, **{h: 0 for h, _ in HEADS}})
        row["n"] += 1
        for head, field in HEADS:
            row[head] += r.get(field) == str(want)
    return {c: {"windows": v["n"], **{h: v[h] / v["n"] for h, _ in HEADS}} for c, v in hits.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speaker", default="george", help="FSDD speaker to hold out")
    ap.add_argument("--config", default="configs/train/av-digits.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"model without {args.speaker} ...", file=sys.stderr)
        model = fold_model(args.speaker, tmp, args.config)
        table: dict[str, dict[str, float]] = {}
        for name, (session, conds) in sessions(args.speaker, tmp, args.seed).items():
            print(
                f"session {name}: {len(session.digits)} s through the daemon ...", file=sys.stderr
            )
            run_dir = tmp / f"run-{name}"
            run_dir.mkdir()
            graded = grade(run_daemon(session, model, run_dir), session.digits, conds)
            for cond, row in graded.items():
                key = "clean session" if name == "clean" else cond
                table[key] = row
    ok = all(row["fused"] >= max(row["image"], row["audio"]) for row in table.values())
    report = {
        "speaker": args.speaker,
        "table": table,
        "pass": ok,
        "seconds": round(time.monotonic() - t0),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"held-out speaker {args.speaker}: per-window accuracy from the daemon's results")
        print(f"{'condition':<16} {'windows':>7} {'fused':>6} {'image':>6} {'audio':>6}")
        for cond, row in table.items():
            mark = "" if row["fused"] >= max(row["image"], row["audio"]) else "  fused < best head"
            print(
                f"{cond:<16} {row['windows']:>7} {row['fused']:6.3f} {row['image']:6.3f}"
                f" {row['audio']:6.3f}{mark}"
            )
        print(
            ("PASS" if ok else "FAIL")
            + f": fused >= the better head in every condition ({report['seconds']} s)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

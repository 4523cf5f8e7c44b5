"""CPU latency of the shipped default model: ONNX Runtime vs torch eager, batch 1/4/8.

    python benchmarks/model.py [--iters 200] [--write docs/benchmarks.md]

A first measurement for the backends issue (which will run this through the backend
interface, with TensorRT and CUDA where present).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from streamfuse_plugins.models import data as D
from streamfuse_plugins.models.export import read_contract
from streamfuse_plugins.models.fusion import Exportable, FusionConfig, FusionNet

sys.path.insert(0, str(Path(__file__).parent))
from transport import write_section

MODEL = Path(D.__file__).parent / "default" / "av_digits.onnx"


def timed(fn, iters: int) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(10):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t) / 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    net = FusionNet(FusionConfig(**read_contract(MODEL)["config"])).eval()  # same architecture
    model = Exportable(net).eval()
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    rows = []
    for batch in (1, 4, 8):
        image = np.random.default_rng(0).random((batch, 1, 32, 32), dtype=np.float32)
        audio = (np.random.default_rng(1).standard_normal((batch, 16000)) * 0.1).astype(np.float32)
        feeds = {"image": image, "audio": audio}
        ti, ta = torch.from_numpy(image), torch.from_numpy(audio)

        def run_torch(ti: torch.Tensor = ti, ta: torch.Tensor = ta) -> None:
            with torch.inference_mode():
                model(ti, ta)

        for name, fn in (
            ("onnxruntime", lambda feeds=feeds: sess.run(None, feeds)),
            ("torch eager", run_torch),
        ):
            lat = timed(fn, args.iters)
            rows.append(
                (
                    batch,
                    name,
                    statistics.median(lat),
                    float(np.percentile(lat, 99)),
                    batch * 1000 / statistics.median(lat),
                )
            )
            print(
                f"batch {batch} {name:<12} p50 {rows[-1][2]:.2f} ms  p99 {rows[-1][3]:.2f} ms  {rows[-1][4]:.0f}/s",
                flush=True,
            )
    ref = {b: p50 for b, n, p50, _, _ in rows if n == "onnxruntime"}
    lines = [
        "## Model: CPU latency of the shipped default model",
        "",
        f"Command: `python benchmarks/model.py --iters {args.iters} --write docs/benchmarks.md`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}, torch {torch.__version__}  ",
        f"Model: plugins/models/default/av_digits.onnx; {args.iters} timed runs after 10 warm-up; "
        "torch eager runs the same architecture (random weights: speed only). Target (backends issue): "
        "ONNX Runtime batch 1 <= 5 ms.",
        "",
        "| batch | runtime | p50 ms | p99 ms | samples/s | p50 vs onnxruntime |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for b, n, p50, p99, tput in rows:
        lines.append(f"| {b} | {n} | {p50:.2f} | {p99:.2f} | {tput:.0f} | {p50 / ref[b]:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        write_section(args.write, "model", table)


if __name__ == "__main__":
    main()

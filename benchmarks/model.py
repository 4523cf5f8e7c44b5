"""Latency and throughput of the shipped default model per backend, batch 1/4/8.

    python benchmarks/model.py [--iters 300] [--write docs/benchmarks.md]

Runs every backend this machine has through the backend interface (what the engine uses):
ONNX Runtime and torch eager on CPU; on a CUDA GPU also torch eager, torch CUDA graphs
(fp32 and fp16), ONNX Runtime's CUDA provider and TensorRT where installed. Targets:
ONNX Runtime CPU batch 1 <= 5 ms; CUDA graph >= 2x faster than eager at batch 1.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamfuse.backend import BackendOptions, ModelInfo, available_backends, open_backend

sys.path.insert(0, str(Path(__file__).parent))
from transport import write_section

#: (label, backend, options) — those the machine cannot run are listed as skipped.
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("onnxruntime cpu", "onnxruntime", {"device": "cpu"}),
    ("torch cpu eager", "torch", {"device": "cpu"}),
    (
        "torch cuda eager fp32",
        "torch",
        {"device": "cuda", "precision": "fp32", "cuda_graphs": False},
    ),
    (
        "torch cuda graph fp32",
        "torch",
        {"device": "cuda", "precision": "fp32", "cuda_graphs": True},
    ),
    (
        "torch cuda eager fp16",
        "torch",
        {"device": "cuda", "precision": "fp16", "cuda_graphs": False},
    ),
    (
        "torch cuda graph fp16",
        "torch",
        {"device": "cuda", "precision": "fp16", "cuda_graphs": True},
    ),
    ("onnxruntime cuda", "onnxruntime", {"device": "cuda"}),
    ("tensorrt fp16", "tensorrt", {"device": "cuda", "precision": "fp16"}),
]


def timed(fn, iters: int) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(20):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t) / 1e6)
    return out


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "cpu"
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]} x{len(names)}" if names else "cpu"


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "no CUDA GPU"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = ModelInfo.load()
    reasons = {(r["backend"], r["device"]): r["reason"] for r in available_backends()}
    rows, skipped = [], []
    for label, name, opts in VARIANTS:
        cls_reason = reasons.get((name, opts["device"]))
        if name == "onnxruntime" and opts["device"] == "cuda":
            from streamfuse_plugins.backends.onnxruntime_backend import OnnxRuntimeBackend

            cls_reason = OnnxRuntimeBackend.unavailable("cuda")
        if cls_reason:
            skipped.append(f"{label}: {cls_reason}")
            continue
        backend = open_backend(name, model, BackendOptions(max_batch=8, **opts))
        for batch in (1, 4, 8):
            feeds = model.example_inputs(batch)
            lat = timed(lambda b=backend, f=feeds: b.infer(f), args.iters)
            p50 = statistics.median(lat)
            rows.append((batch, label, p50, float(np.percentile(lat, 99)), batch * 1000 / p50))
            print(
                f"batch {batch} {label:<24} p50 {p50:.3f} ms  p99 {rows[-1][3]:.3f} ms  {rows[-1][4]:.0f}/s",
                flush=True,
            )
        backend.close()
    ref = {b: p50 for b, n, p50, _, _ in rows if n == "onnxruntime cpu"}
    lines = [
        "## Model: latency per backend (shipped default model)",
        "",
        f"Command: `python benchmarks/model.py --iters {args.iters} --write docs/benchmarks.md`  ",
        f"Machine: {platform.machine()}, {cpu_name()}, GPU: {device_name()}, "
        f"Python {platform.python_version()}  ",
        f"Each backend through `streamfuse.backend` (inputs from numpy, outputs back to numpy); {args.iters} "
        "timed calls after 20 warm-up. Targets: onnxruntime cpu batch 1 <= 5 ms; CUDA graph >= 2x eager at batch 1.",
        "",
        "| batch | backend | p50 ms | p99 ms | samples/s | p50 vs onnxruntime cpu |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for b, n, p50, p99, tput in rows:
        lines.append(f"| {b} | {n} | {p50:.3f} | {p99:.3f} | {tput:.0f} | {p50 / ref[b]:.2f}x |")
    if skipped:
        lines += ["", "Not run here: " + "; ".join(skipped) + "."]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        write_section(args.write, "model", table)


if __name__ == "__main__":
    main()

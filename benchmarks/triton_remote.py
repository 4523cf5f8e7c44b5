"""1, 2 and 4 engines (simulated boxes: processes on this machine) against one Triton
Inference Server, against each running ONNX Runtime itself.

    python benchmarks/triton_remote.py [--seconds 5] [--repeats 3] [--write docs/benchmarks.md]

The server is nvidia-pytriton's bundled tritonserver serving the shipped model through its
Python backend, ONNX Runtime inside (tests/triton_server.py, in .venv-triton: `make test`
builds it). Each engine process drives the backend the engine uses (``TritonBackend`` with
submit/collect, or ``OnnxRuntimeBackend``), batch 1, the model's example inputs:

- saturated: as many classifications as it can (up to 4 requests out for Triton);
- paced: 20 classifications/s per engine, the latency of each (request to answer).

Reported: medians over repeats; throughput summed over the engines; latency p50/p99 over
all engines' requests, and what Triton adds over local ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
TRITON_PY = Path(os.environ.get("STREAMFUSE_TRITON_PYTHON", ROOT / ".venv-triton/bin/python"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(kind: str, url: str, seconds: float, rate: float) -> dict[str, Any]:
    from streamfuse.backend import BackendOptions, ModelInfo, open_backend

    model = ModelInfo.load()
    # (a long timeout: this measures the server, not the engine's deadline)
    settings = {"url": url, "model_name": "av_digits", "timeout_ms": 10_000}
    settings = settings if kind == "triton" else {}
    backend: Any = open_backend(kind, model, BackendOptions(max_batch=1, settings=settings))
    feeds = model.example_inputs(1)
    lat: list[float] = []
    done = 0
    end = time.perf_counter() + seconds
    if rate <= 0 and kind == "triton":  # saturated, up to max_in_flight out
        out: deque[tuple[float, Any]] = deque()
        while time.perf_counter() < end:
            while len(out) < backend.max_in_flight:
                out.append((time.perf_counter(), backend.submit(feeds)))
            t0, fut = out.popleft()
            fut.result(timeout=15)
            lat.append(time.perf_counter() - t0)
            done += 1
    else:
        period = 1.0 / rate if rate > 0 else 0.0
        due = time.perf_counter()
        while time.perf_counter() < end:
            if period:
                due += period
                time.sleep(max(0.0, due - time.perf_counter()))
            t0 = time.perf_counter()
            backend.infer(feeds)
            lat.append(time.perf_counter() - t0)
            done += 1
    backend.close()
    return {"done": done, "seconds": seconds, "latency_s": lat}


def _run(kind: str, engines: int, url: str, seconds: float, rate: float) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", kind, "--url", url, "--seconds", str(seconds),
            "--rate", str(rate)]  # fmt: skip
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(engines)]
    outs = [json.loads(p.communicate(timeout=seconds + 120)[0]) for p in procs]
    lat = sorted(t for o in outs for t in o["latency_s"])
    return {
        "per_s": sum(o["done"] / o["seconds"] for o in outs),
        "p50_ms": lat[len(lat) // 2] * 1e3,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--url", default="", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.url, args.seconds, args.rate)))
        return
    if not TRITON_PY.is_file():
        sys.exit(f"needs {TRITON_PY} with nvidia-pytriton (make test builds .venv-triton)")
    from streamfuse.backend import default_model_path

    port = _port()
    log = open(os.devnull, "w")  # noqa: SIM115 - the server's own log, for its lifetime
    server = subprocess.Popen(
        [str(TRITON_PY), "-m", "tests.triton_server", str(default_model_path()), "av_digits",
         str(port), str(_port()), str(_port())],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if line.startswith("ready"):
                break
        # (its log keeps coming on stdout: drain it so the server never blocks on it)
        import threading

        threading.Thread(target=server.stdout.read, daemon=True).start()
        url = f"127.0.0.1:{port}"
        rows = []
        for engines in (1, 2, 4):
            row: dict[str, Any] = {"engines": engines}
            for kind in ("triton", "onnxruntime"):
                for mode, rate in (("saturated", 0.0), ("paced", 20.0)):
                    runs = [
                        _run(kind, engines, url, args.seconds, rate) for _ in range(args.repeats)
                    ]
                    for key in ("per_s", "p50_ms", "p99_ms"):
                        row[f"{kind}_{mode}_{key}"] = round(
                            statistics.median(r[key] for r in runs), 2
                        )
            print(row, file=sys.stderr)
            rows.append(row)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        log.close()
    print(json.dumps(rows))
    if args.write:
        from transport import write_section

        lines = [
            "## Triton: 1, 2 and 4 engines against one server",
            "",
            f"`python benchmarks/triton_remote.py --seconds {args.seconds:g} --repeats {args.repeats}` "
            f"on {platform.machine()} ({os.cpu_count()} cores), Python {platform.python_version()}: "
            "nvidia-pytriton's tritonserver (Python backend, ONNX Runtime inside) serving the "
            "shipped model on this same machine; each engine a process driving the backend, "
            "batch 1. Saturated: classifications/s summed over the engines. Paced: 20/s per "
            "engine, latency request to answer. Medians of repeats.",
            "",
            "| engines | Triton /s | local ORT /s | Triton p50 / p99 ms (paced) | local p50 / p99 ms | added p50 / p99 ms |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            add50 = r["triton_paced_p50_ms"] - r["onnxruntime_paced_p50_ms"]
            add99 = r["triton_paced_p99_ms"] - r["onnxruntime_paced_p99_ms"]
            lines.append(
                f"| {r['engines']} | {r['triton_saturated_per_s']:.0f} | "
                f"{r['onnxruntime_saturated_per_s']:.0f} | {r['triton_paced_p50_ms']:.1f} / "
                f"{r['triton_paced_p99_ms']:.1f} | {r['onnxruntime_paced_p50_ms']:.1f} / "
                f"{r['onnxruntime_paced_p99_ms']:.1f} | {add50:+.1f} / {add99:+.1f} |"
            )
        lines += [
            "",
            "On this 2-core box the server, its Python backend and every engine share the same "
            "two cores, and the Python backend (a pytriton proxy process per request hop) is "
            "most of the round trip: what a real GPU server with the onnxruntime or "
            "tensorrt_plan backend (`streamfuse triton export-repo`) costs is not measured here.",
            "",
        ]
        write_section(args.write, "triton", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

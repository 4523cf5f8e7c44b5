"""What CURVE costs: one camera's frames over tcp:// with and without it, in the same run.

    python benchmarks/curve.py [--frames 600] [--repeat 3] [--write docs/benchmarks.md]

A sender process publishes raw frames (640x480 and 1920x1080, bgr8) as fast as the receiver
takes them (lossless) and paced at 30 Hz; the receiver (here) subscribes over
tcp://127.0.0.1, plain or CURVE (keys from streamfuse.security, the sender a CURVE server
that lets in the receiver's key). Reports fps and p50/p99 capture-to-receive latency,
medians of the repeats, and CURVE's ratio to plain TCP.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from model import cpu_name
from peers import frame, pace
from transport import write_section

from streamfuse.messages import VideoFrame
from streamfuse.security import CurveClient, CurveServer, generate_keys, load_secret
from streamfuse.transport import Publisher, Subscriber

SHAPES = {"640x480": (480, 640, 3), "1920x1080": (1080, 1920, 3)}


def send(ep: str, shape: tuple[int, ...], n: int, rate: float | None, keys: str | None) -> None:
    curve = None
    if keys:
        public, secret = load_secret(f"{keys}/sender.key_secret", "sender")
        curve = CurveServer(public, secret, authorized=f"{keys}/allowed")
    img = frame(shape)
    with Publisher(ep, sndhwm=8, lossless=True, curve=curve) as pub:
        pub.wait_for_subscriber(20)
        start = time.monotonic_ns()
        for i in range(n):
            pace(i, start, rate)
            hdr = VideoFrame(
                stream="bench", seq=i, t_capture=time.monotonic_ns(), width=shape[1],
                height=shape[0],
            )  # fmt: skip
            pub.send("video/bench", hdr, img)


def receive(ep: str, n: int, keys: str | None) -> tuple[list[int], float]:
    curve = None
    if keys:
        curve = CurveClient.to(f"{keys}/sender.key", f"{keys}/receiver.key_secret", "bench")
    lat: list[int] = []
    with Subscriber(ep, rcvhwm=8, curve=curve) as sub:
        first = None
        while len(lat) < n:
            env = sub.recv(timeout=20)
            if env is None:
                break
            now = time.monotonic_ns()
            first = first or now
            lat.append(now - env.header.t_capture)
    return lat, (time.monotonic_ns() - first) / 1e9 if first else 0.0


def run_one(
    shape: tuple[int, ...], n: int, rate: float | None, keys: str | None, port: int
) -> dict[str, float]:
    ep = f"tcp://127.0.0.1:{port}"
    proc = mp.get_context("spawn").Process(target=send, args=(ep, shape, n, rate, keys))
    proc.start()
    lat, span = receive(ep, n, keys)
    proc.join(30)
    if proc.is_alive():
        proc.kill()
    arr = np.array(lat) / 1e6
    return {
        "fps": (len(lat) - 1) / span if span > 0 else 0.0,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    keys = tempfile.mkdtemp(prefix="sf-curve-")
    generate_keys(keys, "sender")
    generate_keys(keys, "receiver")
    Path(keys, "allowed").mkdir()
    Path(keys, "allowed", "receiver.key").write_text(Path(keys, "receiver.key").read_text())
    rows = []
    port = 47000
    for size, shape in SHAPES.items():
        for rate in (None, 30.0):
            n = args.frames if rate is None else min(args.frames, 150)
            res = {}
            for mode in ("plain", "curve"):
                runs = []
                for _ in range(args.repeat):
                    port += 1
                    runs.append(run_one(shape, n, rate, keys if mode == "curve" else None, port))
                res[mode] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            p, c = res["plain"], res["curve"]
            label = "full speed" if rate is None else "30 Hz"
            rows.append(
                f"| {size} | {label} | {p['fps']:.0f} | {c['fps']:.0f} | {c['fps'] / p['fps']:.2f}x "
                f"| {p['p50_ms']:.2f} | {c['p50_ms']:.2f} | {c['p50_ms'] / p['p50_ms']:.2f}x "
                f"| {p['p99_ms']:.2f} | {c['p99_ms']:.2f} |"
            )
            print(rows[-1], flush=True)
    body = (
        "## CURVE: what authentication costs over tcp://\n\n"
        f"`python benchmarks/curve.py --frames {args.frames} --repeat {args.repeat} --write "
        f"docs/benchmarks.md` on {cpu_name()}, Python {platform.python_version()}: one camera "
        "process to a subscriber over tcp://127.0.0.1, raw bgr8, lossless; plain TCP and CURVE "
        f"in the same run, medians of {args.repeat}; 30 Hz rows send 150 frames.\n\n"
        "| frame | rate | plain fps | CURVE fps | ratio | plain p50 ms | CURVE p50 ms | ratio "
        "| plain p99 ms | CURVE p99 ms |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        + "\n".join(rows)
        + "\n"
    )
    print(body)
    if args.write:
        write_section(args.write, "curve", body)


if __name__ == "__main__":
    main()

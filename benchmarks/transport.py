"""Frames from one process to another: streamfuse vs iceoryx2, eCAL, Zenoh, imagezmq and
multiprocessing.Queue.

Measures delivered frames/s and one-way latency (receiver's CLOCK_MONOTONIC minus the
sender's, same box) at full speed and at 30 Hz, for 640x480x3, 1920x1080x3 and 3840x2160x3
uint8 frames. Every peer runs in the same invocation, alternating, so the ratios compare
like with like. The same-host peers (benchmarks/peers.py) are driven as their own docs say;
one that is not installed is left out, and the table says so.

    python benchmarks/transport.py [--repeat 3] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import peers
from peers import frame, pace

SIZES = {"640x480": (480, 640, 3), "1920x1080": (1080, 1920, 3), "3840x2160": (2160, 3840, 3)}
if os.environ.get("SF_SIZES"):
    SIZES = {k: v for k, v in SIZES.items() if k in os.environ["SF_SIZES"].split(",")}
FULL_N = {"640x480": 1500, "1920x1080": 400, "3840x2160": 120}
PACED_N = 150  # 5 s at 30 Hz
SF_HWM = int(os.environ.get("SF_HWM", "8"))


# -- streamfuse --------------------------------------------------------------------------


def sf_send(ep: str, shape: tuple[int, ...], n: int, rate: float | None, mode: str) -> None:
    """``mode``: ``loan`` fills the frame straight into the shared-memory slot (what the
    camera process does: it decodes into the loaned array), ``copy`` sends an existing array
    (copied into the slot), ``socket`` turns shared memory off (the payload crosses the socket)."""
    from streamfuse import Publisher, VideoFrame

    img = frame(shape)
    with Publisher(ep, sndhwm=SF_HWM, lossless=True, shm=mode != "socket") as pub:
        pub.wait_for_subscriber(10)
        start = time.monotonic_ns()
        for i in range(n):
            pace(i, start, rate)
            pixels = img
            if mode == "loan":  # the sensor's readout, before its capture time is taken
                pixels = pub.loan("video/bench", shape)
                pixels[...] = img
            hdr = VideoFrame(
                stream="bench",
                seq=i,
                t_capture=time.monotonic_ns(),
                width=shape[1],
                height=shape[0],
            )
            pub.send("video/bench", hdr, pixels)


def sf_recv(ep: str, n: int, copy: bool = True) -> tuple[list[int], float]:
    from streamfuse import Subscriber, image_array

    lat: list[int] = []
    with Subscriber(ep, rcvhwm=SF_HWM, shm_copy=copy) as sub:
        first = None
        while len(lat) < n:
            env = sub.recv(timeout=10)
            if env is None:
                break
            now = time.monotonic_ns()
            first = first or now
            image_array(env)  # what an application does: a (H, W, 3) view of the pixels
            lat.append(now - env.header.t_capture)
        span = (time.monotonic_ns() - first) / 1e9 if first else 0.0
    return lat, span


# -- imagezmq (REQ/REP, the popular way to send OpenCV frames over ZeroMQ) ------------------


def izmq_send(ep: str, shape: tuple[int, ...], n: int, rate: float | None) -> None:
    import imagezmq

    img = frame(shape)
    sender = imagezmq.ImageSender(connect_to=ep)
    start = time.monotonic_ns()
    for i in range(n):
        pace(i, start, rate)
        sender.send_image(str(time.monotonic_ns()), img)
    sender.close()


def izmq_recv(ep: str, n: int) -> tuple[list[int], float]:
    import imagezmq

    hub = imagezmq.ImageHub(open_port=ep.replace("127.0.0.1", "*"))
    lat: list[int] = []
    first = None
    for _ in range(n):
        msg, _img = hub.recv_image()
        now = time.monotonic_ns()
        first = first or now
        lat.append(now - int(msg))
        hub.send_reply(b"OK")
    span = (time.monotonic_ns() - first) / 1e9 if first else 0.0
    hub.close()
    return lat, span


# -- multiprocessing.Queue ------------------------------------------------------------------

_QUEUE: Any = None


def mpq_send(ep: str, shape: tuple[int, ...], n: int, rate: float | None) -> None:
    img = frame(shape)
    start = time.monotonic_ns()
    for i in range(n):
        pace(i, start, rate)
        _QUEUE.put((time.monotonic_ns(), img))


def mpq_recv(ep: str, n: int) -> tuple[list[int], float]:
    lat: list[int] = []
    first = None
    for _ in range(n):
        t, _img = _QUEUE.get(timeout=30)
        now = time.monotonic_ns()
        first = first or now
        lat.append(now - t)
    span = (time.monotonic_ns() - first) / 1e9 if first else 0.0
    return lat, span


def _init_queue(q: Any) -> None:
    global _QUEUE
    _QUEUE = q


PEERS: dict[str, tuple[Callable[..., None], Callable[..., tuple[list[int], float]]]] = {
    "streamfuse shm+loan, view": (partial(sf_send, mode="loan"), partial(sf_recv, copy=False)),
    "streamfuse shm+loan": (partial(sf_send, mode="loan"), sf_recv),
    "streamfuse shm": (partial(sf_send, mode="copy"), sf_recv),
    "streamfuse socket": (partial(sf_send, mode="socket"), sf_recv),
    "iceoryx2 loan, view": (peers.iox_send, peers.iox_recv),
    "eCAL shm": (peers.ecal_send, peers.ecal_recv),
    "Zenoh shm": (peers.zenoh_send, peers.zenoh_recv),
    "imagezmq": (izmq_send, izmq_recv),
    "multiprocessing.Queue": (mpq_send, mpq_recv),
}
PACKAGES = {"iceoryx2": "iceoryx2", "eCAL": "ecal", "Zenoh": "zenoh"}
"""The peers that need a package, by the first word of their name."""
ABSENT = {
    peer: f"{pkg} is not installed"
    for peer in PEERS
    if (pkg := PACKAGES.get(peer.split()[0])) and importlib.util.find_spec(pkg) is None
}
PEERS = {k: v for k, v in PEERS.items() if k not in ABSENT}
if os.environ.get("SF_PEERS"):  # e.g. SF_PEERS=iceoryx2,streamfuse shm+loan
    PEERS = {
        k: v
        for k, v in PEERS.items()
        if any(k.startswith(p) for p in os.environ["SF_PEERS"].split(","))
    }


def _sender_main(
    peer: str, ep: str, shape: tuple[int, ...], n: int, rate: float | None, q: Any
) -> None:
    _init_queue(q)
    PEERS[peer][0](ep, shape, n, rate)


def run_one(
    peer: str, shape: tuple[int, ...], n: int, rate: float | None, port: int
) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue(maxsize=4)
    _init_queue(q)
    # streamfuse's default local endpoints are ipc://; imagezmq's API is built around tcp://;
    # iceoryx2 and eCAL name a service/topic; Zenoh's sessions meet on tcp/127.0.0.1.
    ep = (
        f"ipc:///tmp/sf-bench-{port}"
        if peer.startswith("streamfuse")
        else f"sf-bench-{port}"
        if peer.split()[0] in ("iceoryx2", "eCAL")
        else f"tcp://127.0.0.1:{port}"
    )
    proc = ctx.Process(target=_sender_main, args=(peer, ep, shape, n, rate, q))
    proc.start()
    lat, span = PEERS[peer][1](ep, n)  # the receiver runs here, in the parent
    proc.join(30)
    if proc.is_alive():
        proc.kill()
    arr = np.array(lat) / 1e6
    return {
        "fps": (len(lat) - 1) / span if span > 0 else 0.0,
        "p50_ms": float(np.percentile(arr, 50)) if len(arr) else float("nan"),
        "p99_ms": float(np.percentile(arr, 99)) if len(arr) else float("nan"),
        "received": len(lat),
        "sent": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--write", type=Path, default=None, help="Markdown file to write the table into."
    )
    args = ap.parse_args()
    port = 47000
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for r in range(args.repeat):
        for size, shape in SIZES.items():
            for mode, n, rate in (("full speed", FULL_N[size], None), ("30 Hz", PACED_N, 30.0)):
                for peer in PEERS:
                    port += 1
                    res = run_one(peer, shape, n, rate, port)
                    results.setdefault((size, mode, peer), []).append(res)
                    print(
                        f"[{r + 1}/{args.repeat}] {size:>9} {mode:>10} {peer:<26} "
                        f"{res['fps']:8.0f} fps  p50 {res['p50_ms']:7.3f} ms  p99 {res['p99_ms']:7.3f} ms"
                        f"  {res['received']}/{res['sent']}",
                        flush=True,
                    )
    table = render(results, args.repeat)
    print(table)
    if args.write:
        write_section(args.write, "transport", table)


def render(results: dict[tuple[str, str, str], list[dict[str, float]]], repeat: int) -> str:
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("fps", "p50_ms", "p99_ms")}
        for k, v in results.items()
    }
    lost = {k: sum(r["sent"] - r["received"] for r in v) for k, v in results.items()}
    lines = [
        "## Transport: one frame from one process to another",
        "",
        "Command: `python benchmarks/transport.py --repeat "
        f"{repeat} --write docs/benchmarks.md` (or `make bench`)  ",
        f"Machine: {platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}  ",
        f"Medians of {repeat} runs; all peers in the same run. streamfuse: "
        "PUB/SUB over ipc:// (its default for local endpoints), lossless mode (sender waits "
        f"at HWM {SF_HWM} and for the reader before reusing a slot); `shm`: the payload goes "
        "through a ring of 8 shared-memory slots, only the header crosses the socket, the "
        "subscriber copies the frame out (`streamfuse/shm.py`); `view`: the subscriber reads "
        "the slot in place (`Subscriber(shm_copy=False)`, no copy anywhere); `shm+loan`: the sender fills "
        "the frame straight into the slot (`Publisher.loan`, as the camera process decodes "
        "into it) before taking its capture time, so no copy is left on the sender; `socket`: "
        "shared memory off, zero-copy send through the socket. imagezmq: REQ/REP over "
        "tcp://127.0.0.1 (one frame in flight; its sender holds the frame before taking the "
        "time). iceoryx2, eCAL and Zenoh: driven as their docs say, lossless, loopback only "
        "(benchmarks/peers.py says how each is set up). Latency: receiver's CLOCK_MONOTONIC "
        "minus sender's at send. `vs best peer`: against the best of the peers that are not "
        "streamfuse in that cell (lower is better for streamfuse).",
        "",
        "| frame | rate | peer | frames/s | p50 ms | p99 ms | lost | p50 vs best peer | p99 vs best peer |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    best: dict[tuple[str, str], dict[str, float]] = {}
    for size in SIZES:
        for mode in ("full speed", "30 Hz"):
            others = [med[(size, mode, p)] for p in PEERS if not p.startswith("streamfuse")]
            best[(size, mode)] = {
                m: min((o[m] for o in others), default=float("nan")) for m in ("p50_ms", "p99_ms")
            }
            ref = best[(size, mode)]
            for peer in PEERS:
                m = med[(size, mode, peer)]
                lines.append(
                    f"| {size} | {mode} | {peer} | {m['fps']:.0f} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | "
                    f"{lost[(size, mode, peer)]} | {m['p50_ms'] / ref['p50_ms']:.2f}x | {m['p99_ms'] / ref['p99_ms']:.2f}x |"
                )
    lines += [
        "",
        "At 30 Hz frames/s is the pacing rate; the latency columns are what matter there.",
    ]
    if ABSENT:
        lines.append("Not run: " + "; ".join(f"{k}: {v}" for k, v in ABSENT.items()) + ".")
    lines += [
        "",
        "Goals (issue 20), streamfuse's fastest path (`shm+loan, view`) against the best peer:",
        "",
    ]
    fast = "streamfuse shm+loan, view"
    for size, mode, metric, limit, what in [
        (
            "1920x1080",
            "full speed",
            "p50_ms",
            1.5,
            "1080p full speed: p50 within 1.5x of the best peer",
        ),
        *((size, "30 Hz", "p99_ms", 1.0, f"{size} 30 Hz: the best p99 of all") for size in SIZES),
    ]:
        if (size, mode, fast) not in med:
            continue
        ratio = med[(size, mode, fast)][metric] / best[(size, mode)][metric]
        verdict = "PASS" if ratio <= limit else "FAIL"
        lines.append(f"- {verdict}: {what} ({ratio:.2f}x)")
    return "\n".join(lines) + "\n"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the block between ``<!-- name:begin -->`` and ``<!-- name:end -->``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()

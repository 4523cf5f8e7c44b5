"""Does a stalled Foxglove client slow the engine? Result latency and rate, with none.

    python benchmarks/live.py [--seconds 15] [--repeat 2] [--write docs/benchmarks.md]

The real daemon (synthetic 640x480 camera at 30 fps, microphone, default 2 windows/s) with
the live view on (`run --foxglove`, images at 30 fps so that a stalled reader has the most
queued against it). Per repeat, three phases of ``--seconds`` each, one subscriber of the
results all along: no Foxglove client; a client subscribed to every channel that reads; a
client subscribed to every channel that never reads (its TCP window fills, the server drops
its oldest). Reports the median and p90 of the results' own capture-to-publication latency
and their rate per phase, medians over repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from engine import free_port, wait_healthy
from model import cpu_name
from transport import write_section

from streamfuse import Client

SUBPROTOCOLS = ["foxglove.sdk.v1", "foxglove.websocket.v1"]


def _subscribe_all(ws) -> None:  # type: ignore[no-untyped-def]
    channels: list[int] = []
    deadline = time.monotonic() + 10
    while len(channels) < 5 and time.monotonic() < deadline:
        msg = ws.recv(timeout=5)
        if isinstance(msg, str) and (doc := json.loads(msg))["op"] == "advertise":
            channels += [c["id"] for c in doc["channels"]]
    subs = [{"id": k, "channelId": c} for k, c in enumerate(channels)]
    ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))


def phase(client: Client, seconds: float) -> tuple[list[float], float]:
    end, lat = time.monotonic() + seconds, []
    while time.monotonic() < end:
        if (r := client.recv(timeout=0.1)) is not None:
            lat.append(r.latency["total"] / 1e6)
    return lat, len(lat) / seconds


def one(seconds: float) -> dict[str, tuple[float, float, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="sf-live-", dir="/tmp"))
    port, ws_port, output = free_port(), free_port(), f"ipc://{tmp}/result"
    config = {"engine": {"output": output}, "http": {"port": port}, "foxglove": {"fps": 30}}
    (tmp / "c.yaml").write_text(json.dumps(config))
    daemon = subprocess.Popen([sys.executable, "-m", "streamfuse", "run", "--config",
                               str(tmp / "c.yaml"), "--foxglove", str(ws_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    out: dict[str, tuple[float, float, float]] = {}
    try:
        wait_healthy(port)
        with Client(output) as client:
            client.recv(timeout=15)

            def record(name: str) -> None:
                lat, rate = phase(client, seconds)
                out[name] = (float(np.median(lat)), float(np.percentile(lat, 90)), rate)

            record("no client")
            with connect(f"ws://127.0.0.1:{ws_port}", subprotocols=SUBPROTOCOLS) as ws:  # type: ignore[arg-type]
                _subscribe_all(ws)
                stop = threading.Event()

                def drain() -> None:
                    while not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            ws.recv(timeout=0.1)

                reader = threading.Thread(target=drain, daemon=True)
                reader.start()
                record("a client reading everything")
                stop.set()
                reader.join()
            with connect(f"ws://127.0.0.1:{ws_port}", subprotocols=SUBPROTOCOLS) as ws:  # type: ignore[arg-type]
                _subscribe_all(ws)
                record("a client that never reads")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    runs = []
    for k in range(args.repeat):
        runs.append(one(args.seconds))
        print(f"repeat {k + 1}: {json.dumps(runs[-1])}", flush=True)
    base = statistics.median(r["no client"][0] for r in runs)
    rows = []
    for name in runs[0]:
        p50 = statistics.median(r[name][0] for r in runs)
        p90 = statistics.median(r[name][1] for r in runs)
        rate = statistics.median(r[name][2] for r in runs)
        rows.append(f"| {name} | {p50:.1f} ms | {p90:.1f} ms | {rate:.2f}/s | {p50 / base:.2f} |")
    body = (
        "## Live Foxglove view: does a stalled client slow the engine?\n\n"
        f"`python benchmarks/live.py --seconds {args.seconds:g} --repeat {args.repeat} "
        f"--write docs/benchmarks.md` on {cpu_name()}: `streamfuse run --foxglove` (synthetic "
        "640x480 camera at 30 fps, images served at 30 fps, 2 windows/s), one results "
        "subscriber all along; per phase the results' own capture-to-publication latency, "
        f"medians over {args.repeat} repeats.\n\n"
        "| Foxglove client | latency p50 | p90 | results | p50 vs none |\n|---|---:|---:|---:|---:|\n"
        + "\n".join(rows)
        + "\n"
    )
    print(body)
    if args.write:
        write_section(args.write, "live", body)


if __name__ == "__main__":
    main()

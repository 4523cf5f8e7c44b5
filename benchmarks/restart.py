"""How fast the engine is back after kill -9: its loop running, its first result out.

    python benchmarks/restart.py [--kills 5] [--write docs/benchmarks.md]

The real daemon (synthetic camera and microphone, 2 windows/s, default restart delay 0.2 s);
the engine is killed -9 once per fresh daemon, ``--kills`` times (a daemon whose child keeps
crashing backs off: 0.2 s, 0.4 s, ... until it has run for 30 s). Times are the
engine's own clock: its first heartbeat's send time less its uptime (the loop started), a
result's capture time plus its latency ledger (published). Both sockets are read all along
(libzmq attaches a reconnected pipe only when a socket is next used). Target: < 1 s to the
first result (issue 12).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from engine import free_port, healthz
from model import cpu_name
from transport import write_section

from streamfuse import Client
from streamfuse.transport import Subscriber


def wait_ok(port: int) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (h := healthz(port))["status"] == "ok":
                return h
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the daemon is not healthy")


def one_kill(hop_ms: int) -> tuple[float, float]:
    """A fresh daemon (so the restart delay is the first one, 0.2 s), one kill -9."""
    tmp = Path(tempfile.mkdtemp(prefix="sf-restart-", dir="/tmp"))
    port, output = free_port(), f"ipc://{tmp}/result"
    config = {"engine": {"output": output}, "http": {"port": port}, "mic": {"hop_ms": hop_ms}}
    (tmp / "c.yaml").write_text(json.dumps(config))
    daemon = subprocess.Popen([sys.executable, "-m", "streamfuse", "run", "--config",
                               str(tmp / "c.yaml")], stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with Client(output) as client, Subscriber(output, ["heartbeat/result/"]) as beats:
            engine = wait_ok(port)["children"]["engine"]["pid"]
            assert client.recv(timeout=15) is not None
            time.sleep(1.5)
            os.kill(engine, signal.SIGKILL)
            killed = time.monotonic_ns()
            loop = first = None
            deadline = time.monotonic() + 30
            while loop is None or first is None:
                assert time.monotonic() < deadline, "the engine did not come back"
                b = beats.recv(timeout=0)
                if b is not None and b.header.pid not in (0, engine):  # type: ignore[union-attr]
                    loop = b.header.t_capture - b.header.uptime_ns  # type: ignore[union-attr]
                r = client.recv(timeout=0.02)
                if r is not None and (p := r.t_capture + r.latency["total"]) > killed:
                    first = first or p
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    return (loop - killed) / 1e9, (first - killed) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for hop in (500, 250):
        runs = [one_kill(hop) for _ in range(args.kills)]
        for loop, first in runs:
            print(f"hop {hop} ms: loop {loop:.2f} s, first result {first:.2f} s", flush=True)
        loops, firsts = [r[0] for r in runs], [r[1] for r in runs]
        rows.append(
            f"| {hop} ms{' (default)' if hop == 500 else ''} "
            f"| {statistics.median(loops):.2f} s ({min(loops):.2f}-{max(loops):.2f}) "
            f"| {statistics.median(firsts):.2f} s ({min(firsts):.2f}-{max(firsts):.2f}) |"
        )
    body = (
        "## Engine restart after kill -9\n\n"
        f"`python benchmarks/restart.py --kills {args.kills} --write docs/benchmarks.md` on "
        f"{cpu_name()}: a fresh daemon per kill (its first restart delay, 0.2 s); medians "
        f"(min-max) of {args.kills} kills, on the engine's clock. A result needs a window that "
        "ends after the restart, so the first one comes within a hop (plus `max_wait` for "
        "the frames it missed) of the loop starting. Target: first result < 1 s.\n\n"
        "| window hop | engine loop running | first result published |\n|---|---:|---:|\n"
        + "\n".join(rows)
        + "\n"
    )
    print(body)
    if args.write:
        write_section(args.write, "restart", body)


if __name__ == "__main__":
    main()

"""How fast results come back after the engine is killed -9, and whether any window is lost.

    python benchmarks/restart.py [--kills 5] [--write docs/benchmarks.md]

The real daemon (synthetic camera and microphone, default restart delay 0.2 s), with its
standby engine (the default) and without; the engine is killed -9 once per fresh daemon,
``--kills`` times (a daemon whose child keeps crashing backs off: 0.2 s, 0.4 s, ... until it
has run for 30 s). Times are the engine's own clock: its first heartbeat's send time less
its uptime (serving), a result's capture time plus its latency ledger (published). Both
sockets are read all along. Target: < 1 s to the first result (issue 12).
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

from streamfuse import Classification, Client
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


phase = random.Random(12)


def one_kill(hop_ms: int, standby: bool) -> dict[str, float]:
    """A fresh daemon (so the restart delay is the first one, 0.2 s), one kill -9."""
    tmp = Path(tempfile.mkdtemp(prefix="sf-restart-", dir="/tmp"))
    port, output = free_port(), f"ipc://{tmp}/result"
    config = {
        "engine": {"output": output, "standby": standby},
        "http": {"port": port},
        "mic": {"hop_ms": hop_ms},
    }
    (tmp / "c.yaml").write_text(json.dumps(config))
    daemon = subprocess.Popen([sys.executable, "-m", "streamfuse", "run", "--config",
                               str(tmp / "c.yaml")], stderr=subprocess.DEVNULL)  # fmt: skip
    windows: list[int] = []  # the microphone window (seq) of each result, in arrival order

    def take(r: Classification) -> None:
        windows.extend(i.seq for i in r.inputs if i.stream.startswith("audio/"))

    try:
        with Client(output) as client, Subscriber(output, ["heartbeat/result/"]) as beats:
            health = wait_ok(port)
            engine = health["children"]["engine"]["pid"]
            if standby:  # the standby has its model loaded and follows the sensors
                while not health["children"]["standby"]["running"]:
                    health = wait_ok(port)
            first_result = client.recv(timeout=15)
            assert first_result is not None
            take(first_result)
            # at a random point of the window schedule (seeded: the same points each run)
            end = time.monotonic() + 1.5 + phase.uniform(0, hop_ms / 1e3)
            while time.monotonic() < end:
                if (r := client.recv(timeout=0.02)) is not None:
                    take(r)
            os.kill(engine, signal.SIGKILL)
            killed = time.monotonic_ns()
            loop = first = None
            latency = 0.0
            deadline = time.monotonic() + 30
            settle = None
            while settle is None or time.monotonic() < settle:
                assert time.monotonic() < deadline, "the engine did not come back"
                b = beats.recv(timeout=0)
                if loop is None and b is not None and b.header.pid not in (0, engine):  # type: ignore[union-attr]
                    loop = b.header.t_capture - b.header.uptime_ns  # type: ignore[union-attr]
                r = client.recv(timeout=0.02)
                if r is None:
                    continue
                take(r)
                if first is None and (p := r.t_capture + r.latency["total"]) > killed:
                    first, latency = p, r.latency["total"] / 1e6
                    settle = time.monotonic() + 2 * hop_ms / 1e3
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert loop is not None and first is not None
    got = set(windows)
    return {
        "loop": (loop - killed) / 1e9,
        "first": (first - killed) / 1e9,
        "latency_ms": latency,
        "lost": len(set(range(min(got), max(got) + 1)) - got),
        "doubled": len(windows) - len(got),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    rows = []

    def spread(xs: list[float], unit: str = " s", fmt: str = ".2f") -> str:
        return f"{statistics.median(xs):{fmt}}{unit} ({min(xs):{fmt}}-{max(xs):{fmt}})"

    for standby, hop in ((True, 500), (True, 250), (False, 500), (False, 250)):
        runs = [one_kill(hop, standby) for _ in range(args.kills)]
        for r in runs:
            print(f"standby {standby}, hop {hop} ms: " + json.dumps(r), flush=True)
        col = {k: [r[k] for r in runs] for k in runs[0]}
        rows.append(
            f"| {'on (default)' if standby else 'off'} | {hop} ms{' (default)' if hop == 500 else ''} "
            f"| {spread(col['loop'])} | {spread(col['first'])} "
            f"| {spread(col['latency_ms'], ' ms', '.0f')} "
            f"| {sum(col['lost']):.0f} / {sum(col['doubled']):.0f} |"
        )
    body = (
        "## Engine restart after kill -9\n\n"
        f"`python benchmarks/restart.py --kills {args.kills} --write docs/benchmarks.md` on "
        f"{cpu_name()}: a fresh daemon per kill (synthetic camera and microphone), the engine "
        f"killed -9 once at a random point between two windows, medians (min-max) of {args.kills} kills, on the engine's clock. "
        "*Serving*: the new engine's first heartbeat (the standby taking over, or a restarted "
        "engine's loop running after the 0.2 s restart delay). *First result*: the first "
        "classification published after the kill, and its capture-to-publication latency "
        "(a window that ended while no engine ran waits for one). *Lost / doubled*: "
        "microphone windows, over all kills, with no result or two, as one subscriber "
        "connected all along saw them. Target (issue 12): first result < 1 s.\n\n"
        "| standby | window hop | serving | first result | its latency | lost / doubled |\n"
        "|---|---|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n"
    )
    print(body)
    if args.write:
        write_section(args.write, "restart", body)


if __name__ == "__main__":
    main()

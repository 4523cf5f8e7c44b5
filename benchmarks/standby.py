"""What the standby engine costs: CPU and memory of each process of a running daemon.

    python benchmarks/standby.py [--seconds 30] [--write docs/benchmarks.md]

`streamfuse run` with its defaults (synthetic 640x480 camera at 30 fps, microphone, 2
windows/s, standby on); after 8 s of warm-up, each child's CPU time over ``--seconds``
(share of one core) and its RSS at the end (shared libraries included), from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from engine import free_port, wait_healthy
from model import cpu_name
from transport import write_section


def cpu_s_and_rss_mib(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    rss = int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
    return cpu, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sf-standby-", dir="/tmp"))
    port = free_port()
    config = {"engine": {"output": f"ipc://{tmp}/result"}, "http": {"port": port}}
    (tmp / "c.yaml").write_text(json.dumps(config))
    daemon = subprocess.Popen([sys.executable, "-m", "streamfuse", "run", "--config",
                               str(tmp / "c.yaml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_healthy(port)
        time.sleep(8)
        pids = {n: c["pid"] for n, c in wait_healthy(port)["children"].items() if c["pid"]}
        before = {n: cpu_s_and_rss_mib(p) for n, p in pids.items()}
        time.sleep(args.seconds)
        after = {n: cpu_s_and_rss_mib(p) for n, p in pids.items()}
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    rows = [
        f"| {n} | {100 * (after[n][0] - before[n][0]) / args.seconds:.1f} % | {after[n][1]:.0f} MiB |"
        for n in pids
    ]
    body = (
        "## What the standby engine costs\n\n"
        f"`python benchmarks/standby.py --seconds {args.seconds:g} --write docs/benchmarks.md` "
        f"on {cpu_name()}: `streamfuse run` defaults (one synthetic 640x480 camera at 30 fps, "
        "2 windows/s, `engine.standby: true`), CPU over the window as a share of one core, "
        "RSS at its end (shared libraries counted in each process).\n\n"
        "| process | CPU | RSS |\n|---|---:|---:|\n" + "\n".join(rows) + "\n"
    )
    print(body)
    if args.write:
        write_section(args.write, "standby", body)


if __name__ == "__main__":
    main()

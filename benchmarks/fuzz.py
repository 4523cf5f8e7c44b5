"""Fuzz the whole running daemon through its sensors' endpoints.

    python benchmarks/fuzz.py [--messages 1000000] [--seed 0] [--write docs/benchmarks.md]

A real `streamfuse run --record` (supervisor, engine, recorder) whose camera and microphone
are external: this script binds their endpoints and plays a hostile sensor (data and
heartbeat topics, which the engine, the supervisor and the recorder all read). It sends a clean session, then ``--messages`` messages drawn at random from:
raw random frames (1-4 parts), structure-aware hostile headers (the real keys, values at
and past every edge, nested arrays, non-UTF-8 and foreign topics), valid-but-absurd
messages (seq 2**64-1, a 1 Hz window, NaN samples, a result on a heartbeat topic), and
valid frames and windows; then a clean session again. Lossless publishers, so every
message reaches both readers.

Passes when: every process is alive at the end, none was restarted, /healthz is ok, the
daemon exits 0 on SIGTERM, the last clean session is classified, the recording is readable,
and the engine's and the supervisor's memory grew by less than 32 MiB. Reports rejections by reason, rates, and memory before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import psutil

from streamfuse import Client
from streamfuse.messages import AudioWindow, Classification, Heartbeat, VideoFrame
from streamfuse.record import read_recording
from streamfuse.transport import Publisher, Subscriber

sys.path.insert(0, str(Path(__file__).parent))
from engine import free_port, healthz
from model import cpu_name
from transport import write_section

MS = 1_000_000
KEYS = sorted(
    {f for t in (VideoFrame, AudioWindow, Classification, Heartbeat) for f in t.__struct_fields__}
)
EDGES: list[Any] = [-1, 0, 1, 2**31, 2**32, 2**62 - 1, 2**62, 2**63 - 1, 2**64 - 1, -(2**63)]
EDGES += [float("nan"), float("inf"), -0.0, 1e308, "", "x" * 5000, b"\xff\xfe", None, True]


def hostile_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth < 3 and r < 0.1:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 3 and r < 0.2:
        return {rng.choice(KEYS): hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if r < 0.6:
        return rng.choice(EDGES)
    return rng.choice([rng.randrange(-(2**63), 2**64), rng.random() * 1e6, "front", "mic0"])


def hostile(rng: random.Random, topics: list[bytes]) -> list[bytes]:
    """One message of the mix (not a clean one)."""
    topic = rng.choice(topics)
    r = rng.random()
    if r < 0.3:  # raw random frames
        return [topic] + [rng.randbytes(rng.randrange(64)) for _ in range(rng.randrange(1, 4))]
    if r < 0.7:  # structure-aware hostile header
        kind = rng.choice(["video", "audio", "classification", "heartbeat", "x", 3])
        header: dict[str, Any] = {"v": 1, "kind": kind, "stream": "front", "t_capture": 1}
        for _ in range(rng.randrange(6)):
            header[rng.choice(KEYS)] = hostile_value(rng)
        raw = msgpack.packb(header, use_bin_type=True)
        if rng.random() < 0.05:
            raw = b"\x91" * rng.randrange(1, 2000) + raw
        if rng.random() < 0.1:
            topic = rng.choice([b"video/front\xff", b"video/front-" + rng.randbytes(4)])
        return [topic, raw, rng.randbytes(rng.randrange(256))]
    absurd = {  # valid types, absurd meaning
        "video": {"kind": "video", "width": 4, "height": 4, "seq": 2**64 - 1},
        "audio": {"kind": "audio", "sample_rate": 1, "channels": 1, "n_samples": 4},
    }[rng.choice(["video", "audio"])]
    header = {"v": 1, "stream": "front", "t_capture": 1, **absurd}
    payload = bytes(48) if absurd["kind"] == "video" else np.full(4, np.nan, "<f4").tobytes()
    return [topic, msgpack.packb(header), payload]


def clean_session(cam: Publisher, mic: Publisher, seq0: int) -> int:
    """2.5 s of frames and three windows, ending now; returns the next seq."""
    t0 = time.monotonic_ns() - 600 * MS
    frame = np.zeros((480, 640, 3), np.uint8)
    for i in range(75):
        hdr = VideoFrame(stream="front", seq=seq0 + i, t_capture=t0 + i * 33 * MS, width=640,
                         height=480)  # fmt: skip
        cam.send("video/front", hdr, frame)
    for k in range(3):
        w = AudioWindow(stream="mic0", seq=seq0 + k, t_capture=t0 + k * 500 * MS,
                        sample_rate=16000, channels=1, n_samples=16000)  # fmt: skip
        mic.send("audio/mic0", w, np.zeros(16000, np.float32))
    return seq0 + 75


def wait_drained(output: str, timeout: float = 600) -> float:
    """Until the engine's counts (received + rejected + dropped) stop moving: it has read
    the whole flood. Returns that moment (monotonic seconds)."""
    last, since = -1, time.monotonic()
    with Subscriber(output, ["heartbeat/"]) as hb:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            env = hb.recv(timeout=2)
            if env is None or not isinstance(env.header, Heartbeat):
                continue
            total = sum(env.header.received.values()) + sum(env.header.drops.values())
            if total == last:
                return since
            last, since = total, time.monotonic()
    raise AssertionError("the engine did not drain the flood")


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="sf-fuzz-", dir="/tmp"))
    cam_ep, mic_ep, output = (f"ipc://{tmp}/{n}" for n in ("cam", "mic", "result"))
    port = free_port()
    config = {  # the whole daemon, its camera and microphone played by this script
        "cameras": [{"name": "front", "endpoint": cam_ep}],
        "mic": {"name": "mic0", "endpoint": mic_ep},
        "engine": {"output": output, "backend": "onnxruntime"},
        "http": {"port": port},
        "run_dir": str(tmp / "run"),
    }
    (tmp / "c.yaml").write_text(json.dumps(config))
    cam = Publisher(cam_ep, lossless=True, sndhwm=1000)
    mic = Publisher(mic_ep, lossless=True, sndhwm=1000)
    out = tmp / "fuzz.mcap"
    log = open(tmp / "daemon.log", "w+")  # noqa: SIM115
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamfuse",
            "run",
            "--config",
            str(tmp / "c.yaml"),
            "--record",
            str(out),
            "--json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )  # fmt: skip  (a file: a pipe nobody reads until the end fills and stalls the daemon)
    client = Client(output)
    try:
        assert cam.wait_for_subscriber(60, b"video/front"), "the engine did not connect"
        assert mic.wait_for_subscriber(30, b"audio/mic0")
        deadline = time.monotonic() + 60
        while True:
            try:
                health = healthz(port)
                ch = health["children"]
                if health["status"] == "ok" and ch["recorder"]["pid"] and ch["standby"]["pid"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the daemon did not come up"
            time.sleep(0.2)
        time.sleep(1.0)  # the recorder and the client connect too
        pids = {"supervisor": daemon.pid} | {
            n: health["children"][n]["pid"] for n in ("engine", "standby", "recorder")
        }
        seq = clean_session(cam, mic, 0)
        before = [client.recv(timeout=15) for _ in range(3)]
        assert all(before), "no classification before fuzzing"
        rss0 = {n: rss_mib(p) for n, p in pids.items()}
        start = time.monotonic()
        for n in range(args.messages):
            pub = cam if n % 4 else mic
            t = [b"audio/mic0", b"heartbeat/audio/mic0"] if pub is mic else [
                b"video/front", b"heartbeat/video/front"
            ]  # fmt: skip
            pub._sock.send_multipart(hostile(rng, t))
            if n % 100_000 == 99_999:
                print(f"  {n + 1:,} sent ({(n + 1) / (time.monotonic() - start):,.0f}/s)",
                      file=sys.stderr, flush=True)  # fmt: skip
        sent_s = time.monotonic() - start
        drained_s = wait_drained(output) - start
        clean_session(cam, mic, seq)
        after = []  # the clean session after the flood: still classified
        deadline = time.monotonic() + 120
        while len(after) < 3 and time.monotonic() < deadline:
            r = client.recv(timeout=5)
            if r is not None and not r.degraded:
                after.append(r)
        with Subscriber(output, ["heartbeat/"]) as hb:
            env = hb.recv(timeout=10)
        beat = env.header if env is not None and isinstance(env.header, Heartbeat) else None
        health = healthz(port)
        rss1 = {n: rss_mib(p) for n, p in pids.items()}
        alive = {n: psutil.pid_exists(p) for n, p in pids.items()}
    finally:
        client.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
        log.seek(0)
        err = log.read()
        cam.close()
        mic.close()
    recording = read_recording(out)
    report = {
        "messages": args.messages,
        "send_rate": round(args.messages / sent_s),
        "engine_read_all_s": round(drained_s, 1),
        "alive_at_end": alive,
        "daemon_exit_status": daemon.returncode,
        "restarts": {n: c["restarts"] for n, c in health["children"].items()},
        "healthz_at_end": health["status"],
        "classified_after": len(after),
        "engine_rejected": {
            k.removeprefix("rejected_"): v for k, v in sorted((beat.drops if beat else {}).items())
        },
        "engine_errors": dict(beat.errors) if beat is not None else {},
        "supervisor_rejected": health.get("rejected", {}),
        "recording_readable": recording.problem is None,
        "recorded_messages": len(recording.messages),
        "rss_mib_before": {k: round(v, 1) for k, v in rss0.items()},
        "rss_mib_after": {k: round(v, 1) for k, v in rss1.items()},
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    ok = (
        all(alive.values())
        and daemon.returncode == 0
        and not any(report["restarts"].values())
        and health["status"] == "ok"
        and len(after) == 3
        and report["recording_readable"]
        and rss1["engine"] - rss0["engine"] < 32
        and rss1["supervisor"] - rss0["supervisor"] < 32
        and rss1["standby"] - rss0["standby"] < 32
    )
    report["pass"] = ok
    if not ok:
        print(err[-3000:], file=sys.stderr)
    print(json.dumps(report, indent=None if args.json else 2))
    if args.write:
        rows = "\n".join(f"| {k} | {json.dumps(v)} |" for k, v in report.items() if k != "machine")
        body = (
            "## Reliability: a hostile camera and microphone against the whole daemon\n\n"
            f"`python benchmarks/fuzz.py --messages {args.messages} --write docs/benchmarks.md`"
            f" on {report['machine']}: `streamfuse run --record` (supervisor, engine, "
            "recorder) with both sensors external, played by the script on their ipc:// "
            "endpoints.\n\n| | |\n|---|---|\n" + rows + "\n"
        )
        write_section(args.write, "fuzz", body)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""`streamfuse run` as a user runs it: real child processes, real sockets, real files.

One long-running daemon (synthetic sensors) serves the read-only checks: health, metrics,
the Python client (blocking and asyncio), the C subscriber, the robot example and a slow
subscriber. Tests that break things (kill -9 the engine, a missing microphone, SIGTERM,
systemd) start their own.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from streamfuse import Client
from streamfuse.messages import Classification

from ..conftest import Children, require_system
from .helpers import http_json, pid_alive, run_cli, wait_healthy, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("daemon")
    path, cfg = write_config(tmp, mic={"hop_ms": 125})  # 8 windows/s (see STALL_RESULTS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamfuse", "run", "--config", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Both pipes drained all along: a 64 KiB pipe nobody reads (results come 4/s) would
    # block the supervisor after a few tens of seconds, and later tests see a frozen daemon.
    lines: queue.Queue[str] = queue.Queue()
    err: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    stop = threading.Event()
    stalled: Client | None = None
    try:
        health = wait_healthy(cfg["http"]["port"])
        # For the slow-subscriber test (the module's last): a client that reads one result
        # and then nothing while every other test runs, and one that reads all along,
        # stamping each result with its own receive time.
        stalled = Client(cfg["engine"]["output"], rcvhwm=2)
        first = stalled.recv(timeout=30)
        assert first is not None
        watched: list[tuple[int, Classification]] = []
        watching = threading.Thread(target=_watch, args=(cfg, watched, stop), daemon=True)
        watching.start()
        yield {"proc": proc, "cfg": cfg, "health": health, "output": cfg["engine"]["output"],
               "lines": lines, "stalled": stalled, "stalled_first": first.seq, "watched": watched,
               "stall_began": time.monotonic_ns()}  # fmt: skip
    finally:
        stop.set()
        if stalled is not None:
            stalled.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        proc.stdout.close()
        proc.stderr.close()


def _watch(
    cfg: dict[str, Any], out: list[tuple[int, Classification]], stop: threading.Event
) -> None:
    with Client(cfg["engine"]["output"]) as client:
        while not stop.is_set():
            r = client.recv(timeout=0.5)
            if r is not None:
                out.append((time.monotonic_ns(), r))


RATE = 'streamfuse_stream_rate_hz{stream="video/front"}'


def _metric(text: str, name: str) -> float:
    return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(name)), 0.0)


def test_health_and_metrics(daemon: dict[str, Any]) -> None:
    port = daemon["cfg"]["http"]["port"]
    status, health = http_json(port, "/healthz")
    assert status == 200 and health["status"] == "ok"
    assert set(health["children"]) == {"engine", "standby", "camera front", "mic mic0"}
    assert all(c["running"] for c in health["children"].values())
    needles = (
        'streamfuse_latency_seconds_bucket{le="0.01",stage="total"}',
        'streamfuse_latency_seconds_count{stage="inference"}',
        'streamfuse_stream_rate_hz{stream="video/front"}',
        'streamfuse_stream_rate_hz{stream="audio/mic0"}',
        'streamfuse_queue_depth{queue="video/front"}',
        'streamfuse_child_restarts_total{child="engine"} 0.0',
        'streamfuse_classifications_total{camera="front"}',
    )
    deadline = time.monotonic() + 15  # until heartbeats with rates and a result have come
    while True:
        status, text = http_json(port, "/metrics")
        rate = _metric(text, RATE)
        if status == 200 and rate > 0 and all(n in text for n in needles):
            break
        assert time.monotonic() < deadline, [n for n in needles if n not in text]
        time.sleep(0.1)
    assert 0.66 < rate / 30 < 1.33  # the synthetic camera's 30 fps, as the camera measures it
    assert http_json(port, "/nope")[0] == 404


def test_json_lines_are_complete_classifications(daemon: dict[str, Any]) -> None:
    lines = daemon["lines"]
    while not lines.empty():  # the newest, not what queued up while other tests ran
        lines.get_nowait()
    decoder = msgspec.json.Decoder(Classification)
    first = decoder.decode(lines.get(timeout=15))
    while first.degraded:  # the first windows may start before the camera's first frame
        assert first.missing == ["video/front"]
        first = decoder.decode(lines.get(timeout=15))
    results = [first, *(decoder.decode(lines.get(timeout=15)) for _ in range(5))]
    for r in results:
        assert r.stream == "front" and r.label in {str(i) for i in range(10)}
        assert 0 < r.score <= 1 and next(t[0] for t in r.topk) == r.label
        assert {i.stream for i in r.inputs} == {"video/front", "audio/mic0"}
        audio = next(i for i in r.inputs if i.stream == "audio/mic0")
        frame = next(i for i in r.inputs if i.stream == "video/front")
        assert audio.t1 - audio.t0 == 1_000_000_000  # one 1 s window
        assert abs(frame.t0 - (audio.t0 + audio.t1) // 2) <= 50_000_000  # nearest the centre
        assert r.t_capture == max(audio.t1, frame.t0)
        stages = ["transport", "queue", "sync_wait", "dispatch", "preprocess", "inference",
                  "publish"]  # fmt: skip
        assert list(r.latency) == [*stages, "total"]  # in order (docs/protocol.md)
        assert r.latency["total"] == sum(r.latency[k] for k in stages)  # exactly
        assert r.latency["inference"] > 0 and r.latency["preprocess"] > 0
        assert all(v >= 0 for v in r.latency.values())
        assert not r.degraded and r.backend.startswith(("onnxruntime/", "tensorrt/", "torch/"))
        assert len(r.model) == 12
    seqs = [r.seq for r in results]
    assert seqs == list(range(seqs[0], seqs[0] + 6))


def test_client_blocking_async_and_topic_filter(daemon: dict[str, Any]) -> None:
    with Client(daemon["output"]) as client:
        got = [client.recv(timeout=10) for _ in range(3)]
    assert all(isinstance(r, Classification) for r in got)
    assert client.missed == 0 and client.rejected == 0

    async def take(n: int) -> list[Classification]:
        out = []
        async with Client(daemon["output"], topics=["result/front"]) as c:
            async for r in c:
                out.append(r)
                if len(out) == n:
                    break
        return out

    assert len(asyncio.run(asyncio.wait_for(take(2), 20))) == 2
    with Client(daemon["output"], topics=["result/back"]) as nobody:
        assert nobody.recv(timeout=1.5) is None  # no camera called "back"


def test_c_subscriber_reads_the_protocol(daemon: dict[str, Any], tmp_path: Path) -> None:
    require_system("c-toolchain")
    cc = shutil.which("cc")
    exe = tmp_path / "subscriber"
    src = ROOT / "examples" / "c" / "subscriber.c"
    build = subprocess.run(
        [str(cc), "-O2", "-Wall", "-Werror", "-o", str(exe), str(src), "-lzmq", "-lmsgpackc"],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run(
        [str(exe), daemon["output"], "3"], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 3 and "3 classifications, 0 rejected" in run.stderr
    for line in lines:
        fields = dict(f.split("=") for f in line.split()[1:])
        assert line.startswith("front ") and fields["label"] in {str(i) for i in range(10)}
        assert 0 < float(fields["score"]) <= 1 and int(fields["total_ns"]) > 0


def test_robot_example_reacts(daemon: dict[str, Any]) -> None:
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "robot_app.py"),
            "--endpoint",
            daemon["output"],
            "--count",
            "3",
            "--label",
            "0",
            "--min-score",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    # the synthetic tone/pattern is not a digit, but the app prints one line per result
    assert len(res.stdout.splitlines()) == 3


def test_crashed_engine_is_restarted_and_sigterm_leaves_no_process(
    tmp_path: Path, children: Children
) -> None:
    path, cfg = write_config(tmp_path)
    port = cfg["http"]["port"]
    sup = children.streamfuse("run", "--config", str(path))
    health = wait_healthy(port)
    engine_pid = health["children"]["engine"]["pid"]
    os.kill(engine_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        h = http_json(port, "/healthz")[1]
        if h["children"]["engine"]["restarts"] == 1 and h["children"]["engine"]["running"]:
            break
        time.sleep(0.2)
    assert h["children"]["engine"]["exit_codes"] == [-signal.SIGKILL]
    health = wait_healthy(port)  # the new engine heartbeats
    with Client(cfg["engine"]["output"]) as client:
        assert client.recv(timeout=15) is not None  # and classifies again
    pids = [c["pid"] for c in health["children"].values() if c["pid"]]
    assert all(pid_alive(p) for p in pids)
    t0 = time.monotonic()
    status, _out, err = children.stop(sup, timeout=20)
    assert status == 0, err
    assert time.monotonic() - t0 < 10
    assert not any(pid_alive(p) for p in pids)
    assert "the standby (pid" in err and "took over" in err  # (without one: test_supervision)


def test_a_hung_engine_is_killed_and_restarted(tmp_path: Path, children: Children) -> None:
    path, cfg = write_config(tmp_path, hang_timeout_s=1.5)
    port = cfg["http"]["port"]
    sup = children.streamfuse("run", "--config", str(path))
    pid = wait_healthy(port)["children"]["engine"]["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive, but silent: a hang
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            engine = http_json(port, "/healthz")[1]["children"]["engine"]
            if engine["hangs"] == 1 and engine["running"] and engine["pid"] != pid:
                break
            time.sleep(0.2)
        assert engine["hangs"] == 1 and engine["restarts"] == 1, engine
        assert not pid_alive(pid)
        wait_healthy(port)
        with Client(cfg["engine"]["output"]) as client:
            assert client.recv(timeout=15) is not None
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    status, _, err = children.stop(sup)
    assert status == 0 and "sent no heartbeat for 1.5 s: killing it" in err


def test_killed_supervisor_takes_its_children_along(tmp_path: Path, children: Children) -> None:
    path, cfg = write_config(tmp_path)
    sup = children.streamfuse("run", "--config", str(path))
    pids = [c["pid"] for c in wait_healthy(cfg["http"]["port"])["children"].values()]
    sup.kill()
    sup.communicate(timeout=10)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids)


@pytest.mark.parametrize(
    ("sections", "missing", "left", "child", "name"),
    [
        (
            {"mic": {"source": "no-such-microphone-xyz"}, "engine": {"mic_timeout_ms": 800}},
            "audio/mic0",
            "video/front",
            "mic mic0",
            "no-such-microphone-xyz",
        ),
        (
            {"cameras": [{"name": "front", "source": "/nonexistent/no-such-camera.mp4"}]},
            "video/front",
            "audio/mic0",
            "camera front",
            "no-such-camera.mp4",
        ),
    ],
    ids=["microphone", "camera"],
)
def test_a_missing_sensor_degrades_to_the_other_one(
    sections: dict[str, Any],
    missing: str,
    left: str,
    child: str,
    name: str,
    tmp_path: Path,
    children: Children,
) -> None:
    """A sensor that does not exist: its process fails with an error naming it, is retried
    with backoff (counted), and the engine classifies from the other sensor, degraded."""
    if missing.startswith("audio/"):
        require_system("portaudio")  # without it the error names PortAudio, not the device
    path, cfg = write_config(tmp_path, **sections)
    sup = children.streamfuse("run", "--config", str(path))
    port = cfg["http"]["port"]
    wait_healthy(port)
    with Client(cfg["engine"]["output"]) as client:
        results = [client.recv(timeout=15) for _ in range(3)]
    assert all(r is not None and r.degraded and r.missing == [missing] for r in results)
    assert all(r is not None and [i.stream for i in r.inputs] == [left] for r in results)
    assert http_json(port, "/healthz")[1]["children"][child]["restarts"] >= 1
    status, _, err = children.stop(sup)
    assert status == 0
    assert name in err  # the sensor's process said what it could not open


def test_systemd_ready_watchdog_and_stopping(tmp_path: Path, children: Children) -> None:
    path, _cfg = write_config(tmp_path)
    addr = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    sock.settimeout(30)
    try:
        sup = children.streamfuse(
            "run", "--config", str(path), env={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "400000"}
        )
        got = [sock.recv(4096).decode() for _ in range(3)]
        assert got[0].startswith("READY=1\nSTATUS=engine up")
        assert got[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        children.stop(sup)
        rest = []
        sock.settimeout(2)
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert rest[-1] == "STOPPING=1"
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("cameras:\n  - name: front\n    fpss: 30\n", "cameras[0].fpss in {file}: unknown setting"),
        ("engine:\n  max_batch: many\n", "engine.max_batch in {file}: Expected `int`, got `str`"),
        ("mic: [1, 2\n", "--config: {file} is not valid YAML"),
        ("- just\n- a list\n", "--config: {file} must hold a mapping"),
        ("cameras: []\n", "cameras in {file}: list at least one camera"),
        ("engine:\n  model: /nonexistent/m.onnx\n", "model: /nonexistent/m.onnx does not exist"),
        ("engine:\n  backend: tpu\n", "engine.backend: unknown backend 'tpu'"),
    ],
)
def test_config_errors_name_the_field_and_the_file(
    yaml_text: str, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    res = run_cli("run", "--config", str(path), timeout=30)
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: {message.format(file=path)}" or res.stderr.startswith(
        f"error: {message.format(file=path)}"
    )
    assert "Traceback" not in res.stderr


# Results queued for the stalled client before it loses some: engine.sndhwm (4) + its rcvhwm
# (2) + what the Unix socket (208 KB, each result its own ~1 KB buffer) and libzmq hold:
# ~175 (a relay made to wait for slow readers, XPUB_NODROP, stops there). 350 (~45 s at 8
# windows/s, about as long as the module's other tests take) is twice that.
STALL_RESULTS = 350


def test_a_subscriber_that_stops_reading_does_not_slow_the_others(
    daemon: dict[str, Any],
) -> None:
    """The publisher never waits for a subscriber: a client that stopped reading (for the
    whole module, far past what the buffers hold) loses its own results, counted, while a
    reader beside it loses none and gets each as soon as before. A publisher that waited
    for the slow one (XPUB_NODROP) would stop delivering to both once the buffers fill."""
    watched, stalled = daemon["watched"], daemon["stalled"]
    deadline = time.monotonic() + 150
    while sum(t > daemon["stall_began"] for t, _ in watched) < STALL_RESULTS:
        assert time.monotonic() < deadline, f"{len(watched)} results in 150 s"
        time.sleep(0.2)
    during = [(t, r) for t, r in watched[:] if t > daemon["stall_began"]]
    seqs = [r.seq for _, r in during]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the reader beside it lost some"
    gaps = [(b - a) / 1e9 for (a, _), (b, _) in itertools.pairwise(during)]
    assert max(gaps) < 2.0, f"a {max(gaps):.1f} s pause in delivery (windows come every 0.125 s)"
    # its own latency, receive time - capture time (not the daemon's ledger): as before
    lag = sorted((t - r.t_capture) / 1e6 for t, r in during)
    assert lag[len(lag) // 2] < 50 and lag[int(len(lag) * 0.99)] < 500, lag[-5:]
    # and the daemon's ledger agrees with it: total is what it says, the rest is the hop
    # from the engine through the supervisor's relay to this reader (the clock is this box's)
    hop = sorted((t - r.t_capture - r.latency["total"]) / 1e6 for t, r in during)
    assert hop[0] >= 0 and hop[len(hop) // 2] < 5, (hop[:3], hop[len(hop) // 2], hop[-3:])
    # now it reads, up to the newest result the other reader has: the gap is counted
    newest, got = seqs[-1], []
    while not got or got[-1] < newest:
        r = stalled.recv(timeout=5)
        assert r is not None, f"the stalled client stopped at seq {got[-1:]}, not {newest}"
        got.append(r.seq)
    assert stalled.missed > 0, f"the stalled client lost nothing: buffers held {len(got)}"
    assert stalled.missed == got[-1] - daemon["stalled_first"] - len(got)  # every lost one

"""Claims of the README and docs that no other test reached, each checked as a user would
see it: real processes, sockets and files."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from streamfuse import Client
from streamfuse import messages as m
from streamfuse.transport import Publisher, Subscriber

from ..conftest import Children
from .helpers import collect, http_json, pid_alive, wait_for, wait_healthy, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_t_wall_is_the_wall_clock_time_of_t_capture(endpoint: str, children: Children) -> None:
    """docs/protocol.md: `t_wall` is CLOCK_REALTIME at the moment `t_capture` names (what
    maps times between hosts), not the time of sending or anything else."""
    children.streamfuse(
        "capture", "camera", "--source", "synthetic", "--topic", "video/front",
        "--endpoint", endpoint, "--fps", "30",
    )  # fmt: skip
    with Subscriber(endpoint, ["video/"]) as sub:
        frames = collect(sub, 10, timeout=30)
        offset = time.time_ns() - time.monotonic_ns()
    assert len(frames) == 10
    for env in frames:
        h = env.header
        assert abs((h.t_wall - h.t_capture) - offset) < 5_000_000, (h.t_wall, h.t_capture)


def test_http_port_0_serves_nothing_and_the_daemon_runs(tmp_path: Path, children: Children) -> None:
    """README: `http.port: 0` turns /healthz and /metrics off."""
    path, cfg = write_config(tmp_path, http={"port": 0})
    sup = children.streamfuse("run", "--config", str(path))
    with Client(cfg["engine"]["output"]) as client:
        assert client.recv(timeout=60) is not None  # it classifies
    tree = [psutil.Process(sup.pid), *psutil.Process(sup.pid).children(recursive=True)]
    listening = [
        (p.pid, c.laddr)
        for p in tree
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening == [], listening  # no HTTP server, nor anything else on TCP
    status, _, err = children.stop(sup)
    assert status == 0, err


def test_a_failing_sensor_is_restarted_after_a_backoff_that_doubles_to_its_cap(
    tmp_path: Path, children: Children
) -> None:
    """README: a child that exits restarts after restart_backoff_s[0], doubling up to
    restart_backoff_s[1] (here 0.2 s -> 1.0 s): the delays the supervisor logs, in order."""
    path, cfg = write_config(
        tmp_path, cameras=[{"name": "front", "source": "/nonexistent/no-such-camera.mp4"}]
    )
    sup = children.streamfuse("run", "--config", str(path))
    port = cfg["http"]["port"]
    wait_healthy(port)  # the engine heartbeats (it classifies audio alone)
    wait_for(
        lambda: http_json(port, "/healthz")[1]["children"]["camera front"]["restarts"] >= 4,
        60,
        "the camera restarted 4 times",
    )
    status, _, err = children.stop(sup)
    assert status == 0, err
    delays = [
        float(x)
        for x in re.findall(r"camera front exited with status \d+; restarting in ([\d.]+) s", err)
    ]
    assert delays[:4] == [0.2, 0.4, 0.8, 1.0], delays  # 1.6 capped at 1.0


def test_the_backoff_starts_over_once_a_child_has_run_restart_reset_s(
    tmp_path: Path, children: Children
) -> None:
    """README: the delay doubles while a child keeps exiting and is 0.2 s again once it has
    run for `restart_reset_s` (30 s by default; 2 s here): a camera killed three times
    at once waits 0.2, 0.4, 0.8 s; killed after 2.5 s up, 0.2 s again, not 1.0 s."""
    path, cfg = write_config(tmp_path, restart_backoff_s=[0.2, 5.0], restart_reset_s=2.0)
    sup = children.streamfuse("run", "--config", str(path))
    port = cfg["http"]["port"]

    def camera() -> dict[str, Any]:
        child: dict[str, Any] = http_json(port, "/healthz")[1]["children"]["camera front"]
        return child

    def started(after: int | None) -> int | None:
        c = camera()
        return c["pid"] if c["running"] and c["pid"] != after else None

    wait_healthy(port)
    pid = None
    for up in (0.0, 0.0, 0.0, 2.5):
        pid = wait_for(lambda: started(pid), 30, "the camera up again")  # noqa: B023
        time.sleep(up)  # how long it runs is the point here, not a wait for a state
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: camera()["restarts"] == 4, 30, "the fourth restart")
    status, _, err = children.stop(sup)
    assert status == 0, err
    delays = [
        float(x)
        for x in re.findall(r"camera front exited with status -9; restarting in ([\d.]+) s", err)
    ]
    assert delays == [0.2, 0.4, 0.8, 0.2], delays


def test_a_child_that_ignores_sigterm_is_killed_after_5_s(
    tmp_path: Path, children: Children
) -> None:
    """README/reliability: SIGTERM ends every process; one that does not go within 5 s
    (here a camera stopped with SIGSTOP: its SIGTERM stays pending) is killed, and the
    supervisor still ends cleanly, saying so."""
    path, cfg = write_config(tmp_path)
    sup = children.streamfuse("run", "--config", str(path))
    camera = wait_healthy(cfg["http"]["port"])["children"]["camera front"]["pid"]
    os.kill(camera, signal.SIGSTOP)
    t0 = time.monotonic()
    status, _, err = children.stop(sup, timeout=30)
    took = time.monotonic() - t0
    assert status == 0, err
    assert 5.0 <= took < 12, took
    assert f"pid {camera} did not stop in 5 s; killing it" in err
    assert not pid_alive(camera)


def test_healthz_is_503_while_the_engine_is_silent_and_200_when_it_is_back(
    tmp_path: Path, children: Children
) -> None:
    """README: /healthz is 503 while the engine sends no heartbeat (here: SIGSTOPped, no
    standby, a hang timeout long enough not to kill it), 200 again once it does."""
    path, cfg = write_config(tmp_path, engine={"standby": False}, hang_timeout_s=60)
    sup = children.streamfuse("run", "--config", str(path))
    port = cfg["http"]["port"]
    engine = wait_healthy(port)["children"]["engine"]["pid"]
    os.kill(engine, signal.SIGSTOP)
    try:
        got = wait_for(lambda: (r := http_json(port, "/healthz"))[0] == 503 and r, 15, "a 503")
        assert got[1]["status"] == "unhealthy" and got[1]["children"]["engine"]["running"]
    finally:
        os.kill(engine, signal.SIGCONT)
    wait_healthy(port, timeout=15)
    assert http_json(port, "/healthz")[1]["children"]["engine"]["restarts"] == 0
    status, _, err = children.stop(sup)
    assert status == 0, err


def test_the_samples_of_a_window_are_one_batch_split_at_max_batch(
    tmp_path: Path, children: Children
) -> None:
    """docs/architecture.md: the samples that become ready together (one per camera per
    audio window) form the batch, and `max_batch` bounds it. Three cameras, max_batch 2:
    of each window's three results two share one batch's preprocess and inference times,
    the third has its own (unbatched: three apart; unbounded: all three alike)."""
    path, cfg = write_config(
        tmp_path, cameras=[{"name": n} for n in ("a", "b", "c")],
        engine={"max_batch": 2, "standby": False},
    )  # fmt: skip
    sup = children.streamfuse("run", "--config", str(path))
    windows: dict[int, list[tuple[int, int]]] = {}
    with Client(cfg["engine"]["output"]) as client:
        while sum(len(v) == 3 for v in windows.values()) < 4:
            r = client.recv(timeout=60)
            assert r is not None, windows
            audio = next(i for i in r.inputs if i.stream == "audio/mic0")
            stages = (r.latency["preprocess"], r.latency["inference"])
            windows.setdefault(audio.t0, []).append(stages)
    status, _, err = children.stop(sup)
    assert status == 0, err
    for batches in (v for v in windows.values() if len(v) == 3):
        assert sorted(batches.count(b) for b in set(batches)) == [1, 2], batches


def test_a_gap_upstream_is_reported_as_lost_when_the_recording_ends(
    tmp_path: Path, endpoint: str, children: Children
) -> None:
    """docs/recording.md: anything lost upstream shows as a sequence gap, reported per
    topic when the recording ends (`LOST n`); the messages that came are all in the file."""
    from streamfuse.record import read_recording

    out = tmp_path / "gap.mcap"
    sent = [0, 1, 2, 6, 7, 8, 9]  # 3, 4, 5 never reach the recorder
    with Publisher(endpoint) as pub, Subscriber(endpoint, ["video/"]) as probe:
        rec = children.streamfuse("record", "--endpoint", endpoint, "--out", str(out))
        assert pub.wait_for_subscriber(30, prefix=b"")  # the recorder takes every topic
        for seq in sent:
            img = np.full((4, 4, 3), seq, np.uint8)
            pub.send("video/front", m.VideoFrame(stream="front", seq=seq, t_capture=1 + seq,
                                                 width=4, height=4), img)  # fmt: skip
        assert len(collect(probe, len(sent), timeout=10)) == len(sent)  # out, to both readers
        status, stdout, err = children.stop(rec)
    assert status == 0, err
    assert re.search(r"^\s+video/front\s+7  LOST 3$", stdout, re.M), stdout
    recording = read_recording(out)
    assert [x.envelope().header.seq for x in recording.messages] == sent

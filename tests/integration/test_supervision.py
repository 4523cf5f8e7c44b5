"""The supervisor against children that misbehave: stopped by someone else, hung, killed;
and the engine's way back after a crash."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from streamfuse import Client
from streamfuse.transport import Subscriber

from ..conftest import Children
from .helpers import (
    http_json,
    pid_alive,
    run_cli,
    wait_for,
    wait_healthy,
    wait_results,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _child(port: int, name: str) -> dict:  # type: ignore[type-arg]
    return http_json(port, "/healthz")[1]["children"][name]  # type: ignore[no-any-return]


def test_a_live_camera_stopped_by_sigterm_is_restarted(tmp_path: Path, children: Children) -> None:
    """Its exit status is 0, but its source is live (no ``eof``): it must come back."""
    path, cfg = write_config(tmp_path)
    sup = children.streamfuse("run", "--config", str(path))
    port = cfg["http"]["port"]
    first = wait_healthy(port)["children"]["camera front"]["pid"]
    os.kill(first, signal.SIGTERM)
    again = wait_for(
        lambda: (c := _child(port, "camera front"))["pid"] not in (None, first) and c,
        15,
        "the camera restarted",
    )
    assert again["restarts"] == 1 and again["exit_codes"] == [0]
    wait_healthy(port)
    # the engine held views on the old camera's ring while the new camera brought a new
    # one: it goes on classifying, neither it nor its standby restarted
    wait_results(port, wait_results(port, 0) + 8)
    engines = [_child(port, n) for n in ("engine", "standby")]
    assert [(e["restarts"], e["exit_codes"]) for e in engines] == [(0, []), (0, [])], engines
    status, _, err = children.stop(sup)
    assert status == 0 and "ended (end of its source)" not in err


def test_a_hung_camera_is_killed_within_three_heartbeats_by_default(
    tmp_path: Path, children: Children
) -> None:
    path, cfg = write_config(tmp_path)
    assert "hang_timeout_s" not in cfg  # the default: 3 s
    sup = children.streamfuse("run", "--config", str(path))
    port = cfg["http"]["port"]
    pid = wait_healthy(port)["children"]["camera front"]["pid"]
    # hung once running: after its first heartbeat (before it, start-up has 30 s of grace)
    wait_for(
        lambda: "video/front" in http_json(port, "/healthz")[1]["heartbeat_age_s"],
        15,
        "the camera's first heartbeat",
    )
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(lambda: _child(port, "camera front")["hangs"] >= 1, 10, "hang detected")
        took = time.monotonic() - stopped
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    # the last heartbeat was up to 1 s before the stop; the loop looks every 50 ms
    assert took <= 3.5, took
    children.stop(sup)


def test_a_killed_engine_hands_over_to_its_standby_and_no_window_is_lost(
    tmp_path: Path, children: Children
) -> None:
    """kill -9 of the engine: the standby (model loaded, following the sensors) takes over;
    a subscriber connected all along sees every microphone window classified exactly once
    and the result sequence go on without a gap or a restart; a new standby comes up."""
    path, cfg = write_config(tmp_path)
    assert "standby" not in cfg.get("engine", {})  # the default: on
    sup = children.streamfuse("run", "--config", str(path))
    port = cfg["http"]["port"]
    health = wait_healthy(port)
    standby = wait_for(lambda: _child(port, "standby")["pid"], 15, "the standby started")
    engine = health["children"]["engine"]["pid"]
    windows: list[int] = []
    with Client(cfg["engine"]["output"]) as client:

        def take(until: float) -> None:
            while time.monotonic() < until:
                if (r := client.recv(timeout=0.02)) is not None:
                    windows.extend(i.seq for i in r.inputs if i.stream == "audio/mic0")

        assert client.recv(timeout=15) is not None
        take(time.monotonic() + 2.0)  # the standby has been following for a while
        before = len(windows)
        os.kill(engine, signal.SIGKILL)
        killed = time.monotonic()
        took_over = wait_for(
            lambda: (c := _child(port, "engine"))["pid"] == standby and c, 15, "the takeover"
        )
        served_s = time.monotonic() - killed
        take(time.monotonic() + 2.5)  # five windows more
        streams = dict(client.streams)
    assert took_over["restarts"] == 1 and took_over["exit_codes"] == [-9]
    assert len(windows) > before + 3, "results go on after the takeover"
    assert windows == list(range(windows[0], windows[0] + len(windows))), windows
    (results,) = streams.values()
    assert results.gaps == 0 and results.reordered == 0, results
    assert served_s < 5.0, served_s  # ~0.05 s (benchmarks/restart.py); room for a loaded CI
    again = wait_for(
        lambda: (c := _child(port, "standby"))["pid"] not in (None, standby) and c,
        15,
        "a new standby",
    )
    assert again["restarts"] == 0  # replaced, not crashed
    status, _, err = children.stop(sup)
    assert status == 0 and f"the standby (pid {standby}) took over" in err


def test_a_hung_engine_is_killed_and_the_standby_classifies_its_windows_late(
    tmp_path: Path, children: Children
) -> None:
    """SIGSTOP of the engine: ~3 s later it is killed as hung and the standby takes over;
    the windows of those seconds come out then (late, whole: the standby kept their frames),
    none lost, none twice. (engine.sndhwm at its default, 100: the helpers' 4 would drop
    most of the burst of late results for any subscriber.)"""
    path, cfg = write_config(tmp_path, engine={"sndhwm": 100})
    sup = children.streamfuse("run", "--config", str(path))
    port = cfg["http"]["port"]
    engine = wait_healthy(port)["children"]["engine"]["pid"]
    standby = wait_for(lambda: _child(port, "standby")["pid"], 15, "the standby started")
    got: list[tuple[int, bool, int]] = []  # window seq, degraded, latency
    with Client(cfg["engine"]["output"]) as client:

        def take(until: float) -> None:
            while time.monotonic() < until:
                if (r := client.recv(timeout=0.02)) is not None:
                    (w,) = (i.seq for i in r.inputs if i.stream == "audio/mic0")
                    got.append((w, r.degraded, r.latency["total"]))

        assert client.recv(timeout=15) is not None
        take(time.monotonic() + 1.5)
        os.kill(engine, signal.SIGSTOP)
        try:
            wait_for(lambda: _child(port, "engine")["pid"] == standby, 20, "the takeover")
        finally:
            if pid_alive(engine):
                os.kill(engine, signal.SIGKILL)
        take(time.monotonic() + 1.5)
    windows = [w for w, _, _ in got]
    assert windows == list(range(windows[0], windows[0] + len(windows))), windows
    late = [(w, degraded) for w, degraded, total in got if total > 500_000_000]
    assert len(late) >= 6, got  # the hang's (2-4 s at 4 windows/s), classified after it
    assert not any(degraded for _, degraded in late), late
    assert _child(port, "engine")["hangs"] == 1
    children.stop(sup)


def test_a_standby_that_dies_is_restarted_and_the_engine_goes_on(
    tmp_path: Path, children: Children
) -> None:
    path, cfg = write_config(tmp_path)
    sup = children.streamfuse("run", "--config", str(path))
    port = cfg["http"]["port"]
    engine = wait_healthy(port)["children"]["engine"]["pid"]
    standby = wait_for(lambda: _child(port, "standby")["pid"], 15, "the standby started")
    os.kill(standby, signal.SIGKILL)
    again = wait_for(
        lambda: (c := _child(port, "standby"))["pid"] not in (None, standby) and c,
        15,
        "the standby restarted",
    )
    assert again["restarts"] == 1 and again["exit_codes"] == [-9]
    assert _child(port, "engine")["pid"] == engine and wait_healthy(port)["status"] == "ok"
    children.stop(sup)


def test_without_a_standby_the_engine_is_back_soon_after_kill_9(
    tmp_path: Path, children: Children
) -> None:
    """``engine.standby: false``, the default restart delay (0.2 s), no torch import: the
    new engine's loop starts and its first result follows with the next window (degraded:
    its middle frame came before the new engine was there); the first whole one within a
    window more. Times are the engine's own (its heartbeat's send time less its uptime; a
    result's capture time plus its latency ledger)."""
    path, cfg = write_config(tmp_path)
    cfg.pop("restart_backoff_s")  # the default
    cfg.setdefault("engine", {})["standby"] = False
    path.write_text(yaml.safe_dump(cfg))
    sup = children.streamfuse("run", "--config", str(path))
    health = wait_healthy(cfg["http"]["port"])
    assert "standby" not in health["children"]
    engine = health["children"]["engine"]["pid"]
    loop_started = first = whole = None
    with (
        Client(cfg["engine"]["output"]) as client,
        Subscriber(cfg["engine"]["output"], ["heartbeat/result/"]) as beats,
    ):
        assert client.recv(timeout=15) is not None and beats.recv(timeout=5) is not None
        os.kill(engine, signal.SIGKILL)
        killed = time.monotonic_ns()
        deadline = time.monotonic() + 15
        while whole is None or loop_started is None:
            assert time.monotonic() < deadline, (loop_started, first, whole)
            b = beats.recv(timeout=0)
            if b is not None and b.header.pid not in (0, engine):  # type: ignore[union-attr]
                loop_started = b.header.t_capture - b.header.uptime_ns  # type: ignore[union-attr]
            r = client.recv(timeout=0.02)
            if r is None or min(i.t0 for i in r.inputs) < killed - 2 * 10**9:
                continue
            published = r.t_capture + r.latency["total"]
            if published > killed:  # the old engine is gone: this is the new one's
                first = first or published
                if not r.degraded:
                    whole = published
    back, first_s, whole_s = ((t - killed) / 1e9 for t in (loop_started, first, whole))
    print(f"engine kill -9 -> loop {back:.2f} s, first result {first_s:.2f} s, "
          f"first whole {whole_s:.2f} s")  # fmt: skip
    # Behaviour, with room for a loaded machine; the times are measured, quietly, by
    # benchmarks/restart.py (docs/benchmarks.md).
    # (CI, after the rest of the suite, saw 2.1 s to the loop and 3.3 s to the first result.)
    assert back < 10.0 and first_s < back + 4.0, (back, first_s)
    assert first_s <= whole_s < first_s + 3.0, whole_s
    children.stop(sup)


def test_the_output_port_in_use_is_one_line_at_start(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path, _ = write_config(tmp_path, engine={"output": f"tcp://127.0.0.1:{port}"})
        res = run_cli("run", "--config", str(path), timeout=30)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"error: engine.output: tcp://127.0.0.1:{port}: the port is in use by another process"
    ]


def test_a_recorder_that_dies_is_restarted_onto_a_new_part(
    tmp_path: Path, children: Children
) -> None:
    """Never silently: the first part is whole up to the kill (a readable MCAP, or one
    `streamfuse recover` completes), the second goes on, /healthz counts the restart and
    the summary names both files."""
    from streamfuse.record import read_recording

    path, cfg = write_config(tmp_path)
    out = tmp_path / "session.mcap"
    sup = children.streamfuse("run", "--config", str(path), "--record", str(out), "--json")
    port = cfg["http"]["port"]
    recorder = wait_healthy(port)["children"]["recorder"]["pid"]
    wait_results(port, 3)  # the first part holds frames and results
    os.kill(recorder, signal.SIGKILL)
    part = tmp_path / "session.part1.mcap"
    wait_for(lambda: part.exists() and part.stat().st_size > 0, 15, "a second part")
    assert _child(port, "recorder")["restarts"] == 1
    wait_results(port, wait_results(port, 0) + 4)  # and results come after the restart
    status, _, err = children.stop(sup)
    assert status == 0, err
    summary = json.loads(err.strip().splitlines()[-1])["summary"]
    assert summary["recorded"] == [str(out), str(part)]
    second = read_recording(part)
    assert second.problem is None and any(m.topic == "result/front" for m in second.messages)
    fixed = tmp_path / "fixed.mcap"
    assert run_cli("recover", str(out), str(fixed)).returncode == 0
    assert any(m.topic == "video/front" for m in read_recording(fixed).messages)

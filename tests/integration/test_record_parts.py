"""Recordings split by size or time, and a disk that fills up: real files, sockets and
processes (a small tmpfs mounted for the test where root)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader

from streamfuse import Client
from streamfuse.messages import VideoFrame
from streamfuse.record import read_recording, record, split_part
from streamfuse.transport import Publisher

from ..conftest import Children, require_system
from .helpers import free_port, http_json, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _messages(paths: list[Path]) -> list[tuple[str, int, bytes]]:
    out = []
    for p in paths:
        rec = read_recording(p)
        assert rec.problem is None and rec.truncated_at is None, p
        with open(p, "rb") as f:  # complete: a summary and an index of its own
            assert make_reader(f).get_summary() is not None, p
        out += [
            (m.topic, m.envelope().header.seq, b"".join(map(bytes, m.frames))) for m in rec.messages
        ]
    return out


@pytest.mark.parametrize("split", [{"split_size": 1_000_000}, {"split_duration": 1.0}])
def test_the_parts_of_a_split_recording_together_are_the_unsplit_one(
    split: dict[str, Any], tmp_path: Path
) -> None:
    """Two recorders of one lossless stream, one split: each part a complete MCAP, and the
    parts' messages in order are exactly the unsplit file's (none lost or doubled at a cut)."""
    endpoint = f"ipc://{tmp_path}/cam"
    stop = threading.Event()
    summaries: dict[str, Any] = {}

    def run(name: str, **kw: Any) -> None:
        summaries[name] = record([endpoint], ["video/"], tmp_path / f"{name}.mcap", stop, **kw)

    threads = [
        threading.Thread(target=run, args=("whole",)),
        threading.Thread(target=run, args=("split",), kwargs=split),
    ]
    rng = np.random.default_rng(1)
    with Publisher(endpoint, lossless=True, shm=False) as pub:
        for t in threads:
            t.start()
        assert pub.wait_for_subscriber(10, b"video/front", count=2)
        for i in range(90):  # 3 s of 100 KB frames at 30 fps: ~9 MB
            img = rng.integers(0, 255, (120, 280, 3), np.uint8)
            pub.send("video/front", VideoFrame(stream="front", seq=i, t_capture=i + 1,
                                               width=280, height=120), img)  # fmt: skip
            time.sleep(1 / 30)
        stop.set()
        for t in threads:
            t.join(60)
    parts = [Path(p) for p in summaries["split"].parts]
    assert len(parts) >= 3 and parts[0] == split_part(tmp_path / "split.mcap", 0)
    assert [p.name for p in parts] == [f"split.{k:03d}.mcap" for k in range(len(parts))]
    whole = _messages([tmp_path / "whole.mcap"])
    assert [seq for _, seq, _ in whole] == list(range(90))
    assert _messages(parts) == whole
    if "split_size" in split:  # a part is cut at the first message past the size
        assert all(p.stat().st_size < 1_000_000 + 400_000 for p in parts)


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """An 8 MB tmpfs of our own: a disk that fills up in seconds."""
    require_system("tmpfs")
    where = Path(tempfile.mkdtemp(prefix="sf-disk-", dir="/tmp"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:  # root, but not allowed to mount (a container): say so
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


@pytest.mark.parametrize("min_free", [2.0, 0.0])
def test_a_disk_that_fills_stops_the_recording_cleanly_and_results_go_on(
    min_free: float, small_disk: Path, tmp_path: Path, children: Children
) -> None:
    """`run --record` onto an 8 MB disk (two cameras fill it): with --min-free 2 the
    recording stops with the disk still 2 MB free, its file complete; with --min-free 0
    when the disk is full (the file readable up to its last chunk). Either way one
    `error:` line, the recorder not restarted, /healthz ok and saying recording stopped,
    and classifications go on."""
    cfg = {
        "cameras": [
            {"name": n, "source": "synthetic", "width": 640, "height": 480}
            for n in ("front", "side")
        ],
        "engine": {"output": f"ipc://{tmp_path}/result"},
        "http": {"port": free_port()},
        "run_dir": str(tmp_path / "run"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = small_disk / "s.mcap"
    sup = children.streamfuse("run", "--config", str(tmp_path / "c.yaml"), "--record", str(out),
                              "--min-free", str(min_free))  # fmt: skip
    port = cfg["http"]["port"]
    wait_healthy(port)
    deadline = time.monotonic() + 60
    # The recorder says "stopped" (its last heartbeat) a moment before its process is reaped.
    while not (
        (health := http_json(port, "/healthz")[1])["recording"]["state"] == "stopped"
        and health["children"]["recorder"]["done"]
    ):
        assert time.monotonic() < deadline, (health["recording"], health["children"]["recorder"])
        time.sleep(0.2)
    assert health["status"] == "ok"
    assert health["children"]["recorder"]["exit_codes"] == [3]
    assert "the disk" in health["recording"]["reason"]
    with Client(cfg["engine"]["output"]) as client:  # results go on after the stop
        got = [client.recv(timeout=10) for _ in range(3)]
        assert all(got)
    status, _, err = children.stop(sup)
    assert status == 0, err
    errors = [line for line in err.splitlines() if line.startswith("error: record:")]
    assert len(errors) == 1, err
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    rec = read_recording(out)
    assert len([m for m in rec.messages if m.topic == "video/front"]) > 10
    if min_free:
        assert "less than --min-free 2 MB; the file is complete" in errors[0]
        assert free >= 1_500_000, free
        assert rec.problem is None and rec.truncated_at is None
    else:
        assert errors[0].endswith("stopped: the disk is full"), errors[0]

"""Sensors streamfuse does not start: a camera written in C from docs/protocol.md, on TCP,
subscribed to by the daemon; stale while it is gone, picked up again when it returns."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from streamfuse import Client

from ..conftest import Children, require_system
from .helpers import free_port, http_json, wait_healthy, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def c_publisher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_system("c-toolchain")
    exe = tmp_path_factory.mktemp("c") / "publisher"
    build = subprocess.run(
        [shutil.which("cc") or "cc", "-O2", "-Wall", "-Werror", "-o", str(exe),
         str(ROOT / "examples" / "c" / "publisher.c"), "-lzmq", "-lmsgpackc"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    return exe


def _results(client: Client, n: int) -> list:  # type: ignore[type-arg]
    out = []
    deadline = time.monotonic() + 20
    while len(out) < n and time.monotonic() < deadline:
        r = client.recv(timeout=2)
        if r is not None:
            out.append(r)
    return out


def _source(port: int, topic: str) -> dict:  # type: ignore[type-arg]
    return http_json(port, "/healthz")[1]["sources"][topic]  # type: ignore[no-any-return]


def test_a_camera_in_c_on_tcp_feeds_the_daemon_and_comes_back(
    c_publisher: Path, tmp_path: Path, children: Children
) -> None:
    camera = f"tcp://127.0.0.1:{free_port()}"
    path, cfg = write_config(tmp_path, cameras=[{"name": "front", "endpoint": camera}])
    pub = children.start([str(c_publisher), camera, "video/front"])
    sup = children.streamfuse("run", "--config", str(path))
    port = cfg["http"]["port"]
    health = wait_healthy(port)
    assert set(health["children"]) == {"engine", "standby", "mic mic0"}  # the camera: not ours
    with Client(cfg["engine"]["output"]) as client:
        live = _results(client, 4)[-2:]  # the first may predate the camera's connection
        assert len(live) == 2 and not any(r.degraded for r in live), live
        assert all([i.stream for i in r.inputs] == ["video/front", "audio/mic0"] for r in live)
        src = _source(port, "video/front")
        assert src["external"] and src["endpoint"] == camera and not src["stale"]
        children.stop(pub)  # the camera goes away: stale, results degraded, nothing restarted
        deadline = time.monotonic() + 15
        while not _source(port, "video/front")["stale"]:
            assert time.monotonic() < deadline, "never stale"
            client.recv(timeout=0.5)
        gone = _results(client, 3)[-1:]
        assert gone and gone[0].degraded and gone[0].missing == ["video/front"]
        pub = children.start([str(c_publisher), camera, "video/front"])  # back again
        deadline = time.monotonic() + 20
        while (r := client.recv(timeout=2)) is None or r.degraded:
            assert time.monotonic() < deadline, "not picked up again"
        deadline = time.monotonic() + 5  # the engine's next heartbeat says so
        while _source(port, "video/front")["stale"]:
            assert time.monotonic() < deadline, "still stale"
            client.recv(timeout=0.2)
    status, _, err = children.stop(sup)
    assert status == 0, err

"""Two hosts: a camera in its own network namespace, joined to the daemon's by a veth pair
(addresses of our own, 10.231.x), the link authenticated with CURVE. A camera in C and the
daemon's own camera process; the right keys pair frames, a wrong key is refused and
counted. Needs root (network namespaces); CI runs as root."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamfuse import Client
from streamfuse.security import generate_keys
from streamfuse.transport import Subscriber

from ..conftest import Children, require_system
from .helpers import free_port, wait_healthy, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
CAMERA_IP, DAEMON_IP = "10.231.0.1", "10.231.0.2"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def camera_host() -> Iterator[list[str]]:
    """A network namespace at 10.231.0.1; yields the argv prefix that runs a command in it."""
    require_system("netns")
    tag = uuid.uuid4().hex[:6]
    ns, here, there = f"sf-cam-{tag}", f"sfa{tag}", f"sfb{tag}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", here, "type", "veth", "peer", "name", there)
        sh("ip", "link", "set", there, "netns", ns)
        sh("ip", "addr", "add", f"{DAEMON_IP}/24", "dev", here)
        sh("ip", "link", "set", here, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{CAMERA_IP}/24", "dev", there)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", there, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ["ip", "netns", "exec", ns]
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("camera", "daemon", "stranger"):
        generate_keys(folder, name)
    (folder / "allowed").mkdir()
    shutil.copy(folder / "daemon.key", folder / "allowed" / "daemon.key")
    return folder


@pytest.fixture(scope="module")
def c_camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_system("c-toolchain")
    exe = tmp_path_factory.mktemp("c") / "publisher"
    src = ROOT / "examples" / "c" / "publisher.c"
    sh(shutil.which("cc") or "cc", "-O2", "-o", str(exe), str(src), "-lzmq", "-lmsgpackc")
    return exe


def _results(client: Client, n: int, timeout: float = 25) -> list:  # type: ignore[type-arg]
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        if (r := client.recv(timeout=1)) is not None:
            out.append(r)
    return out


def _engine_beat(output: str) -> dict[str, int]:
    with Subscriber(output, ["heartbeat/result/"]) as sub:
        env = sub.recv(timeout=5)
    assert env is not None
    return dict(env.header.drops)  # type: ignore[union-attr]


@pytest.mark.parametrize("camera", ["c", "streamfuse"])
def test_a_camera_on_another_host_over_curve(
    camera: str,
    camera_host: list[str],
    keys: Path,
    c_camera: Path,
    tmp_path: Path,
    children: Children,
) -> None:
    port = 5555 if camera == "c" else 5556
    endpoint = f"tcp://{CAMERA_IP}:{port}"
    if camera == "c":  # a CURVE server that lets any key in
        argv = [str(c_camera), endpoint, "video/front", "100000", str(keys / "camera.key_secret")]
    else:  # streamfuse's own, letting in only the daemon's key
        argv = [sys.executable, "-m", "streamfuse", "capture", "camera", "--source", "synthetic",
                "--topic", "video/front", "--endpoint", endpoint, "--width", "64",
                "--height", "48", "--key", str(keys / "camera.key_secret"),
                "--authorized-keys", str(keys / "allowed")]  # fmt: skip
    children.start([*camera_host, *argv], env={"PYTHONPATH": str(ROOT)})
    security = {"key": str(keys / "daemon.key_secret")}
    # The namespaces share one kernel, so one CLOCK_MONOTONIC: say so (beyond loopback the
    # default maps through t_wall, which this unsynchronized box could not vouch for).
    front = {
        "name": "front",
        "endpoint": endpoint,
        "server_key": str(keys / "camera.key"),
        "clock": "local",
    }
    path, cfg = write_config(tmp_path, cameras=[front], security=security)
    sup = children.streamfuse("run", "--config", str(path))
    wait_healthy(cfg["http"]["port"])
    with Client(cfg["engine"]["output"]) as client:
        live = [r for r in _results(client, 6) if not r.degraded]
    assert len(live) >= 2, "no frames from the camera host"
    assert all(r.inputs[0].stream == "video/front" for r in live)
    children.stop(sup)

    # The same camera with a key the daemon does not expect: refused, counted, degraded.
    front["server_key"] = str(keys / "stranger.key")
    (tmp_path / "wrong").mkdir()
    path, cfg = write_config(tmp_path / "wrong", cameras=[front], security=security)
    sup = children.streamfuse("run", "--config", str(path))
    wait_healthy(cfg["http"]["port"])
    with Client(cfg["engine"]["output"]) as client:
        results = _results(client, 3)
    assert results and all(r.degraded and r.missing == ["video/front"] for r in results)
    assert _engine_beat(cfg["engine"]["output"]).get("rejected_auth_failed", 0) >= 1
    status, _, err = children.stop(sup)
    assert status == 0, err


def test_an_app_on_another_host_reads_results_over_curve(
    camera_host: list[str], keys: Path, tmp_path: Path, children: Children
) -> None:
    """engine.output on the daemon's address beyond loopback is a CURVE server: the C
    subscriber (fresh key pair) reads it from the camera's host with the daemon's public
    key, and the Python Client too; without the key nothing arrives."""
    require_system("c-toolchain")
    exe = tmp_path / "subscriber"
    sh(shutil.which("cc") or "cc", "-O2", "-o", str(exe),
       str(ROOT / "examples" / "c" / "subscriber.c"), "-lzmq", "-lmsgpackc")  # fmt: skip
    output = f"tcp://{DAEMON_IP}:{free_port()}"
    path, cfg = write_config(
        tmp_path,
        engine={"output": output},
        security={"key": str(keys / "daemon.key_secret")},
    )
    sup = children.streamfuse("run", "--config", str(path))
    wait_healthy(cfg["http"]["port"])
    app = subprocess.run(
        [*camera_host, str(exe), output, "3", str(keys / "daemon.key")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert app.returncode == 0 and "3 classifications, 0 rejected" in app.stderr, app.stderr
    assert len(app.stdout.splitlines()) == 3
    with Client(output, server_key=str(keys / "daemon.key")) as client:
        assert client.recv(timeout=15) is not None
    with Client(output, server_key=str(keys / "stranger.key")) as wrong:
        assert wrong.recv(timeout=2) is None
    status, _, err = children.stop(sup)
    assert status == 0, err


SKEWED_CAMERA = """
import sys, time
import numpy as np
from streamfuse.messages import Heartbeat, VideoFrame
from streamfuse.transport import Publisher
SKEW = 3_000_000_000  # this camera's CLOCK_MONOTONIC runs 3 s ahead of the daemon's box
with Publisher(sys.argv[1], shm=False) as pub:
    frame, seq, beat = np.zeros((48, 64, 3), np.uint8), 0, 0.0
    while True:
        t = time.monotonic_ns() + SKEW
        pub.send("video/front", VideoFrame(stream="front", seq=seq, t_capture=t,
                 t_wall=time.time_ns(), width=64, height=48), frame)
        if time.monotonic() - beat > 0.5:  # says its realtime clock is not synchronized
            pub.send("heartbeat/video/front", Heartbeat(stream="front", seq=seq, t_capture=t,
                     t_wall=time.time_ns(), clock_sync="unsynced"))
            beat = time.monotonic()
        seq += 1
        time.sleep(1 / 30)
"""


@pytest.mark.parametrize("bound_ms", [1.0, None], ids=["clock-bound-given", "clock-unsynced"])
def test_a_camera_whose_clock_runs_3_s_ahead_is_mapped_or_refused(
    bound_ms: float | None, camera_host: list[str], tmp_path: Path, children: Children
) -> None:
    """Beyond loopback, times go through t_wall: with a known bound on the clocks' error
    (the two namespaces share one kernel clock) the frames pair with the windows of the
    same moment, and the engine reports the 3 s offset; with no such knowledge (the camera
    says its clock is unsynchronized) the camera is refused: degraded, clock_unsynced."""
    endpoint = f"tcp://{CAMERA_IP}:{free_port()}"
    children.start([*camera_host, sys.executable, "-c", SKEWED_CAMERA, endpoint],
                   env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    front = {"name": "front", "endpoint": endpoint, "clock_error_ms": bound_ms}
    path, cfg = write_config(tmp_path, cameras=[front], security={"insecure": True})
    sup = children.streamfuse("run", "--config", str(path))
    assert wait_healthy(cfg["http"]["port"])["insecure"] is True
    with Client(cfg["engine"]["output"]) as client:
        results = _results(client, 6)[2:]  # once the camera is connected
    beat = _engine_beat_header(cfg["engine"]["output"])
    assert results
    if bound_ms is not None:
        assert not any(r.degraded for r in results), results
        for r in results:
            frame, audio = r.inputs
            centre = (audio.t0 + audio.t1) // 2
            assert abs(frame.t0 - centre) <= 50_000_000  # the sync tolerance, on our clock
        assert abs(beat.clock_offsets_ns["video/front"] - 3_000_000_000) < 50_000_000
    else:
        assert all(r.degraded and r.reasons == {"video/front": "clock_unsynced"} for r in results)
        assert beat.drops.get("clock_unsynced", 0) >= 1
    children.stop(sup)


def _engine_beat_header(output: str) -> Any:
    with Subscriber(output, ["heartbeat/result/"]) as sub:
        env = sub.recv(timeout=5)
    assert env is not None
    return env.header

"""CURVE on real sockets: keys written by `streamfuse keys generate` (zmq.auth's format), the
right key gets through, a wrong one is refused and counted on both sides, never a crash."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq.auth

from streamfuse import messages as m
from streamfuse.security import CurveClient, CurveServer, generate_keys, leaves_box, load_secret
from streamfuse.transport import Publisher, Subscriber

from .helpers import free_port, run_cli

pytestmark = pytest.mark.integration


def beat(seq: int) -> m.Heartbeat:
    return m.Heartbeat(stream="x", seq=seq, t_capture=seq + 1)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for name in ("camera", "daemon", "stranger"):
        generate_keys(tmp_path / "keys", name)
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "daemon.key").write_text((tmp_path / "keys" / "daemon.key").read_text())
    return tmp_path


def test_keys_generate_writes_zmq_auth_certificates(tmp_path: Path) -> None:
    res = run_cli("keys", "generate", str(tmp_path), "front", "--json")
    assert res.returncode == 0, res.stderr
    public, secret = zmq.auth.load_certificate(str(tmp_path / "front.key_secret"))
    assert public == zmq.auth.load_certificate(str(tmp_path / "front.key"))[0] and secret
    assert (tmp_path / "front.key_secret").stat().st_mode & 0o077 == 0


def _pair(keys: Path, server_key: str, client_key: str) -> tuple[Publisher, Subscriber]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub_public, pub_secret = load_secret(str(keys / "keys" / "camera.key_secret"), "x")
    server = CurveServer(pub_public, pub_secret, authorized=str(keys / "allowed"))
    client = CurveClient.to(
        str(keys / "keys" / f"{server_key}.key"),
        str(keys / "keys" / f"{client_key}.key_secret"),
        "x",
    )
    return Publisher(endpoint, curve=server), Subscriber(endpoint, ["heartbeat/"], curve=client)


def test_the_right_keys_get_through(keys: Path) -> None:
    pub, sub = _pair(keys, server_key="camera", client_key="daemon")
    with pub, sub:
        assert pub.wait_for_subscriber(10)
        pub.send("heartbeat/x", beat(0))
        got = sub.recv(timeout=5)
    assert got is not None and got.header.seq == 0 and pub.auth_refused == 0


def test_a_publisher_with_another_key_is_refused_and_counted(keys: Path) -> None:
    pub, sub = _pair(keys, server_key="stranger", client_key="daemon")  # not the camera's
    with pub, sub:
        assert not pub.wait_for_subscriber(1.5)
        pub.send("heartbeat/x", beat(0))
        assert sub.recv(timeout=1) is None
    assert sub.rejected["auth_failed"] >= 1


def test_a_subscriber_whose_key_is_not_authorized_is_refused_and_counted(keys: Path) -> None:
    pub, sub = _pair(keys, server_key="camera", client_key="stranger")
    with pub, sub:
        deadline = time.monotonic() + 5
        while pub.auth_refused == 0 and time.monotonic() < deadline:
            assert not pub.wait_for_subscriber(0.1)
            sub.recv(timeout=0.05)
        pub.send("heartbeat/x", beat(0))
        assert sub.recv(timeout=1) is None
    assert pub.auth_refused >= 1 and sub.rejected["auth_failed"] >= 1


@pytest.mark.parametrize(
    ("endpoint", "off_box"),
    [
        ("tcp://127.0.0.1:5560", False), ("tcp://localhost:1", False), ("tcp://[::1]:1", False),
        ("ipc:///tmp/x", False), ("tcp://0.0.0.0:5560", True), ("tcp://*:5560", True),
        ("tcp://10.200.0.1:5555", True), ("tcp://camera-box.local:5555", True),
    ],
)  # fmt: skip
def test_which_endpoints_leave_the_box(endpoint: str, off_box: bool) -> None:
    assert leaves_box(endpoint) is off_box


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["capture", "camera", "--source", "synthetic", "--topic", "video/x", "--endpoint",
          "tcp://127.0.0.1:0", "--key", "/nonexistent.key_secret"], "--key"),
        (["subscribe", "--endpoint", "tcp://127.0.0.1:1", "--server-key", "/etc/hostname"],
         "--server-key"),
        (["keys", "generate", "/proc/no/such", "front"], "DIRECTORY"),
        (["keys", "generate", "/tmp", "../escape"], "NAME"),
    ],
)  # fmt: skip
def test_bad_keys_and_key_paths_are_one_line(args: list[str], needle: str) -> None:
    res = run_cli(*args, timeout=30)
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {needle}"), res.stderr


def test_a_config_whose_key_file_is_garbage_is_one_line_before_anything_starts(
    tmp_path: Path,
) -> None:
    (tmp_path / "bad.key").write_text("not a certificate\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        "cameras: [{name: front, endpoint: 'tcp://10.231.9.9:5555', "
        f"server_key: '{tmp_path / 'bad.key'}'}}]\n"
    )
    res = run_cli("run", "--config", str(config), timeout=30)
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "bad.key" in lines[0] and lines[0].startswith("error: "), lines

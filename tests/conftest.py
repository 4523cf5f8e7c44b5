"""Shared fixtures: real sockets, real child processes, a real PulseAudio server.

A test whose system part (ffmpeg, PulseAudio, PortAudio) is missing skips with the reason on
a user's machine; under CI (``CI`` set) it fails instead, so CI proves every one of them ran.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

IN_CI = bool(os.environ.get("CI"))


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a system part a test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (apt-get install it; see .ci/run)")
    assert path is not None
    return path


def data_dir() -> Path | None:
    """The shared real-data folder: $STREAMFUSE_DATA or ../shared/data, if present."""
    env = os.environ.get("STREAMFUSE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    return next((p for p in candidates if p.is_dir()), None)


@pytest.fixture
def endpoint() -> Iterator[str]:
    """A fresh ipc:// endpoint, short enough for the 107-byte socket path limit."""
    path = Path(tempfile.gettempdir()) / f"sf-{uuid.uuid4().hex[:12]}"
    yield f"ipc://{path}"
    path.unlink(missing_ok=True)


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    """A private context whose sockets are all closed with linger=0 at the end."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


class Children:
    """Starts ``python -m streamfuse ...`` (or any command) and never leaves one behind."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def streamfuse(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return self.start([sys.executable, "-m", "streamfuse", *args], env=env)

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 10) -> tuple[int, str, str]:
        """SIGTERM, wait, and return (status, stdout, stderr)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def wait(self, proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
        """Wait for a child to exit by itself (end of file) and return (status, out, err)."""
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.close()


@pytest.fixture(scope="session")
def pulse() -> Iterator[dict[str, str]]:
    """A private PulseAudio server with a 16 kHz mono null sink ``vsink`` whose monitor is
    the default source. Yields the environment children need to reach it."""
    require_tool("pulseaudio")
    require_tool("pactl")
    require_tool("paplay")
    runtime = tempfile.mkdtemp(prefix="sf-pulse-")
    env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "PULSE_RUNTIME_PATH": f"{runtime}/pulse"}
    subprocess.run(
        [
            "pulseaudio",
            "-D",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "-n",
            "--load=module-native-protocol-unix",
            "--load=module-always-sink",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=30,
    )
    deadline = time.monotonic() + 10
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail("PulseAudio did not come up within 10 s")
        time.sleep(0.1)
    for cmd in (
        ["pactl", "load-module", "module-null-sink", "sink_name=vsink", "rate=16000", "channels=1"],
        ["pactl", "set-default-source", "vsink.monitor"],
        ["pactl", "set-default-sink", "vsink"],
    ):
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=10)
    extra = {"XDG_RUNTIME_DIR": runtime, "PULSE_RUNTIME_PATH": f"{runtime}/pulse"}
    yield extra
    subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=10)
    shutil.rmtree(runtime, ignore_errors=True)

"""Shared fixtures: real sockets, real child processes, a real PulseAudio server.

A test whose system part (:data:`SYSTEM_PARTS`) or real data is missing skips with one
uniformly worded reason on a user's machine; under CI (``CI`` set) it fails instead, so CI
proves every one of them ran. ``STREAMFUSE_TEST_HIDE=portaudio,ffmpeg`` makes the tests treat
those parts as absent: how to see what a machine without them gets (README, Development).
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from hypothesis import settings

IN_CI = bool(os.environ.get("CI"))


#: Under ``mutmut run`` (which sets MUTANT_UNDER_TEST) each property draws a tenth of its
#: examples: hundreds of mutated copies each rerun the tests (docs/testing.md, Mutation score).
EXAMPLE_SCALE = 0.1 if "MUTANT_UNDER_TEST" in os.environ else 1.0
if EXAMPLE_SCALE < 1:  # and the properties that keep Hypothesis's default of 100
    settings.register_profile("mutation", max_examples=10, deadline=None)
    settings.load_profile("mutation")


def examples(n: int) -> int:
    """Hypothesis's ``max_examples`` for a property that draws ``n`` in a normal run."""
    return max(10, round(n * EXAMPLE_SCALE))


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a system part a test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def _has_c_toolchain() -> bool:
    headers = all(Path(f"/usr/include/{h}").exists() for h in ("zmq.h", "msgpack.h"))
    return shutil.which("cc") is not None and headers


# name -> (what provides it, how to tell it is here)
SYSTEM_PARTS: dict[str, tuple[str, Callable[[], bool]]] = {
    "ffmpeg": ("apt-get install ffmpeg", lambda: shutil.which("ffmpeg") is not None),
    "pulseaudio": (
        "apt-get install pulseaudio pulseaudio-utils",
        lambda: all(shutil.which(t) for t in ("pulseaudio", "pactl", "paplay", "parec")),
    ),
    "portaudio": (
        "apt-get install libportaudio2",
        lambda: ctypes.util.find_library("portaudio") is not None,
    ),
    "c-toolchain": ("apt-get install gcc libzmq3-dev libmsgpack-dev", _has_c_toolchain),
    "qemu": ("apt-get install qemu-user", lambda: shutil.which("qemu-x86_64") is not None),
    "systemd-analyze": (
        "apt-get install systemd",
        lambda: shutil.which("systemd-analyze") is not None,
    ),
    "netns": (
        "root and iproute2, for network namespaces",
        lambda: os.geteuid() == 0 and shutil.which("ip") is not None,
    ),
    "node": (
        "nodejs and npm; `make test` installs tests/ts",
        lambda: (
            shutil.which("node") is not None
            and (Path(__file__).parent / "ts" / "node_modules" / "@mcap" / "core").is_dir()
        ),
    ),
    "tmpfs": (
        "root and mount, for a small disk that fills up",
        lambda: os.geteuid() == 0 and shutil.which("mount") is not None,
    ),
}
TOOLS = {"ffmpeg": "ffmpeg", "pactl": "pulseaudio", "paplay": "pulseaudio", "qemu-x86_64": "qemu"}
HIDDEN = {p.strip() for p in os.environ.get("STREAMFUSE_TEST_HIDE", "").split(",") if p.strip()}


def require_system(part: str) -> None:
    """Skip (locally) or fail (in CI) unless the system part ``part`` is here."""
    how, present = SYSTEM_PARTS[part]
    hidden = part in HIDDEN
    reason = f"needs {part}, which is absent here ({how}; .ci/run does)"
    require(not hidden and present(), reason + (" [STREAMFUSE_TEST_HIDE]" if hidden else ""))


def require_tool(name: str) -> str:
    """The path of a command-line tool of a system part (e.g. ``paplay`` of pulseaudio)."""
    part = TOOLS.get(name)
    if part is not None:
        require_system(part)
    path = shutil.which(name)
    require(path is not None, f"needs {name}, which is absent here (.ci/run installs it)")
    assert path is not None
    return path


def data_dir() -> Path | None:
    """The shared real-data folder: $STREAMFUSE_DATA or ../shared/data, if present."""
    env = os.environ.get("STREAMFUSE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    return next((p for p in candidates if p.is_dir()), None)


def require_data(*parts: str) -> Path:
    """The data folder, holding every one of ``parts`` (e.g. ``fsdd``, ``mnist``); skip with
    one wording where it is absent. Data, unlike system parts, may be absent even in CI."""
    root = data_dir()
    missing = [p for p in parts if root is None or not (root / p).exists()]
    if root is None or missing or "data" in HIDDEN:
        pytest.skip(
            f"needs the real data {', '.join(missing or parts)}, absent here "
            "(set STREAMFUSE_DATA to the data folder, or put it at ../shared/data)"
        )
    return root


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
            # a Python child that has to be aborted (stop() below) prints every thread's stack
            env={"PYTHONFAULTHANDLER": "1", **os.environ, **(env or {})},
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 10) -> tuple[int, str, str]:
        """SIGTERM, wait, and return (status, stdout, stderr). A child still there after
        ``timeout`` is aborted (SIGABRT: its threads' stacks on stderr) and the test fails
        saying where it was stuck."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=10)
            pytest.fail(f"{proc.args!r} did not stop within {timeout} s of SIGTERM:\n{err[-6000:]}")
        return proc.returncode, out, err

    def wait(self, proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
        """Wait for a child to exit by itself (end of file) and return (status, out, err)."""
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:  # a grandchild that outlived it may hold its pipes open: do not wait for ever
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                for pipe in (p.stdout, p.stderr):
                    if pipe is not None:
                        pipe.close()


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.close()


def wait_playing(pulse: dict[str, str], timeout: float = 10) -> None:
    """Until the null sink ``vsink``'s monitor delivers sound, read with ``parec`` (a sink
    waking from suspend delivers its first blocks ~1-2 s late, in bursts: a capture that
    starts then sees its clock jump). A condition with a deadline, not a fixed sleep."""
    import numpy as np

    env = {**os.environ, **pulse}
    rec = subprocess.Popen(
        ["parec", "--latency-msec=20", "-d", "vsink.monitor", "--format=s16le", "--rate=16000",
         "--channels=1", "--raw"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert rec.stdout is not None
    deadline = time.monotonic() + timeout
    try:
        sounding = 0  # blocks of 20 ms with the player in them (an idle null sink gives zeros)
        while sounding < 5:
            block = rec.stdout.read(640)
            assert block and time.monotonic() < deadline, f"vsink silent after {timeout} s"
            sounding += int(np.abs(np.frombuffer(block, "<i2")).max() > 64)
    finally:
        rec.kill()
        rec.wait()
        rec.stdout.close()


@pytest.fixture(scope="session")
def pulse() -> Iterator[dict[str, str]]:
    """A private PulseAudio server with a 16 kHz mono null sink ``vsink`` whose monitor is
    the default source. Yields the environment children need to reach it."""
    require_system("pulseaudio")
    require_system("portaudio")  # the tests capture from it through PortAudio
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

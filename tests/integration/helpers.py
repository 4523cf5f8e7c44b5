"""Small helpers for integration tests (no fixtures here)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from streamfuse.messages import Envelope
from streamfuse.transport import Subscriber


def collect(sub: Subscriber, n: int, timeout: float, topic: bytes | None = None) -> list[Envelope]:
    """Receive up to ``n`` messages (optionally only of ``topic``) within ``timeout`` s."""
    out: list[Envelope] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        env = sub.recv(timeout=max(0.0, deadline - time.monotonic()))
        if env is not None and (topic is None or env.topic == topic):
            out.append(env)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m streamfuse ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "streamfuse", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )

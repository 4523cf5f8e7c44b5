"""Small helpers for integration tests (no fixtures here)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from streamfuse.messages import Envelope
from streamfuse.transport import Subscriber

T = TypeVar("T")


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


def write_config(tmp: Path, **sections: Any) -> tuple[Path, dict[str, Any]]:
    cfg: dict[str, Any] = {
        "run_dir": str(tmp / "run"),
        "engine": {"output": f"ipc://{tmp}/result", "sndhwm": 4},
        "http": {"port": free_port()},
        "mic": {"hop_ms": 250},
        "restart_backoff_s": [0.2, 1.0],
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp / "streamfuse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def http_json(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            body = r.read().decode()
            return r.status, json.loads(body) if path == "/healthz" else body
    except urllib.error.HTTPError as err:
        body = err.read().decode()
        return err.code, json.loads(body) if path == "/healthz" else body


def wait_healthy(port: int, timeout: float = 60, want: str = "ok") -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            _, last = http_json(port, "/healthz")
            if last["status"] == want:
                return last  # type: ignore[no-any-return]
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"daemon not {want} after {timeout} s: {last}")


def wait_for(cond: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``cond`` until it returns something truthy (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := cond():
            return got
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def wait_results(port: int, n: int, timeout: float = 30) -> int:
    """Wait until the daemon has seen ``n`` classifications in all (/healthz); their count."""
    deadline = time.monotonic() + timeout
    seen = 0
    while (seen := sum(http_json(port, "/healthz")[1]["classifications"].values())) < n:
        assert time.monotonic() < deadline, f"{seen} classifications after {timeout} s, not {n}"
        time.sleep(0.1)
    return seen


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False

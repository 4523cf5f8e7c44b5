"""`streamfuse subscribe`, `streamfuse demo` and `streamfuse devices` as a user runs them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ..conftest import Children
from .helpers import run_cli

pytestmark = pytest.mark.integration


def test_subscribe_prints_json_lines_and_a_summary(endpoint: str, children: Children) -> None:
    cam = children.streamfuse(
        "capture",
        "camera",
        "--source",
        "synthetic",
        "--topic",
        "video/front",
        "--endpoint",
        endpoint,
        "--width",
        "64",
        "--height",
        "48",
        "--fps",
        "50",
    )
    res = run_cli(
        "subscribe", "--endpoint", endpoint, "--topic", "video/", "--count", "20", "--json"
    )
    children.stop(cam)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 20
    first = lines[0]
    assert first["topic"] == "video/front" and first["kind"] == "video"
    assert (first["width"], first["height"], first["payload_bytes"]) == (64, 48, 64 * 48 * 3)
    assert [x["seq"] for x in lines] == list(range(lines[0]["seq"], lines[0]["seq"] + 20))
    summary = json.loads(res.stderr.strip().splitlines()[-1])
    (row,) = summary["summary"]
    assert row["received"] == 20 and row["gaps"] == 0 and 35 < row["rate_hz"] < 65


def test_subscribe_human_output(endpoint: str, children: Children) -> None:
    mic = children.streamfuse(
        "capture",
        "mic",
        "--source",
        "synthetic",
        "--topic",
        "audio/mic0",
        "--endpoint",
        endpoint,
        "--window-ms",
        "100",
        "--hop-ms",
        "100",
        "--heartbeat",
        "0.2",
    )
    res = run_cli("subscribe", "--endpoint", endpoint, "--count", "12")
    children.stop(mic)
    assert res.returncode == 0, res.stderr
    assert "audio/mic0" in res.stdout and "16000 Hz x1 f32le 1600 samples (100 ms)" in res.stdout
    assert "heartbeat/audio/mic0" in res.stdout
    assert "-- summary --" in res.stdout


def test_demo_classifies_the_generated_session() -> None:
    """The README's main command, short: generated digit video + spoken digits through the
    whole daemon, graded against the known sequence."""
    res = run_cli("demo", "--digits", "6", "--seed", "3", "--json", timeout=90)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["graded"] == 6  # one window per second of the session
    assert report["accuracy"] >= 5 / 6
    # Off a terminal: one line per classification as it happens, adding up to the report.
    lines = [line for line in res.stderr.splitlines() if "  expected " in line]
    assert sum(line.endswith(" ok") for line in lines) == report["correct"]
    assert sum(line.endswith((" ok", " WRONG")) for line in lines) == report["graded"]
    assert len(lines) == 2 * 6 - 1  # a window every half second, graded or not
    assert re.search(r"^metrics on http://127\.0\.0\.1:\d+/metrics$", res.stderr, re.M)
    assert 0 < report["total_ms_p50"] < 100
    assert report["backend"].startswith("onnxruntime/") or report["backend"].startswith("tensorrt")


def test_devices_lists_what_exists(pulse: dict[str, str]) -> None:
    """Against what is there: the V4L2 nodes (none can be emulated here), and with a
    PulseAudio server up, PortAudio's `pulse` input; without it, no microphone at all."""
    res = run_cli("devices", "--json", env=pulse)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    nodes = sorted(Path("/dev").glob("video*"))
    assert [c.rsplit("(", 1)[1].rstrip(")") for c in out["cameras"]] == [str(n) for n in nodes]
    assert any(re.fullmatch(r"\d+: pulse \(\d+ in, \d+ Hz\)", m) for m in out["microphones"])
    assert all(re.fullmatch(r"\d+: .+ \(\d+ in, \d+ Hz\)", m) for m in out["microphones"])
    text = run_cli("devices", env=pulse).stdout
    assert text.startswith("cameras:\n") and "microphones:\n" in text and ": pulse (" in text


def test_unknown_command_and_option_are_usage_errors() -> None:
    res = run_cli("capture", "camera", "--sauce", "x")
    assert res.returncode == 2 and "No such option '--sauce'" in res.stderr

"""The microphone capture process: real PortAudio capture from a PulseAudio null sink, audio
files through libsndfile + soxr, and the synthetic tone."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamfuse import messages as m
from streamfuse.transport import Subscriber

from ..conftest import Children, require_tool, wait_playing
from .helpers import collect, run_cli

pytestmark = pytest.mark.integration
NS = 1_000_000_000


def tone(path: Path, freq: float, seconds: float, rate: int, channels: int = 1) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.repeat(x[:, None], channels, axis=1), rate, subtype="PCM_16")
    return path


def peak_hz(env: m.Envelope) -> float:
    x = m.audio_array(env)[:, 0].astype(np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * env.header.sample_rate / len(x))


def test_real_portaudio_capture_recovers_the_tone_and_the_sample_clock(
    tmp_path: Path, endpoint: str, children: Children, pulse: dict[str, str]
) -> None:
    wav = tone(tmp_path / "a880.wav", 880.0, 10.0, 16000)
    # Start playing first: PulseAudio delivers the first blocks 1-2 s late otherwise.
    player = children.start(
        [require_tool("paplay"), "--latency-msec=20", "-d", "vsink", str(wav)], env=pulse
    )
    wait_playing(pulse)  # not a fixed sleep: until the sink runs with the player in it
    with Subscriber(endpoint, ["audio/"]) as sub:
        mic = children.streamfuse(
            "capture",
            "mic",
            "--source",
            "pulse",
            "--topic",
            "audio/mic0",
            "--endpoint",
            endpoint,
            "--rate",
            "16000",
            "--window-ms",
            "200",
            "--hop-ms",
            "100",
            "--wait-for-subscriber",
            "10",
            env=pulse,
        )
        windows = collect(sub, 25, timeout=30)
        received_at = time.monotonic_ns()
        status, _, err = children.stop(mic)
    assert player.poll() is None, "the tone ended before capture did; the test needs a longer tone"
    assert status == 0, err
    assert len(windows) == 25, err
    h = windows[0].header
    assert isinstance(h, m.AudioWindow) and (h.sample_rate, h.channels, h.n_samples) == (
        16000,
        1,
        3200,
    )
    assert h.media_pos is None  # a live device
    loud = [w for w in windows if np.abs(m.audio_array(w)).max() > 0.1]
    assert len(loud) >= 20, "the null sink's monitor delivered silence"
    assert all(abs(peak_hz(w) - 880) <= 10 for w in loud)
    # Windows start every 100 ms of samples, on CLOCK_MONOTONIC, and are recent.
    starts = np.array([w.header.t_capture for w in windows])
    assert np.all(np.abs(np.diff(starts) - NS // 10) < 5_000_000), np.diff(starts)
    assert 0 < received_at - windows[-1].header.t_end < 2 * NS


def test_a_device_that_stops_delivering_starts_a_new_timeline_counted_clock_resync(
    tmp_path: Path, endpoint: str, children: Children, pulse: dict[str, str]
) -> None:
    """README: a jump in the device's clock starts a new timeline, counted `clock_resync`.
    The sink is suspended for 2 s under a real PortAudio capture (no samples arrive, the
    clock goes on): the windows after it carry the times they were heard at, not the old
    timeline's, and the heartbeat counts one resync; 100 ms apart on either side."""
    wav = tone(tmp_path / "a440.wav", 440.0, 30.0, 16000)
    children.start(
        [require_tool("paplay"), "--latency-msec=20", "-d", "vsink", str(wav)], env=pulse
    )
    wait_playing(pulse)
    pactl = require_tool("pactl")
    with Subscriber(endpoint, ["audio/", "heartbeat/"]) as sub:
        mic = children.streamfuse(
            "capture", "mic", "--source", "pulse", "--topic", "audio/mic0",
            "--endpoint", endpoint, "--rate", "16000", "--window-ms", "200",
            "--hop-ms", "100", "--wait-for-subscriber", "10", env=pulse,
        )  # fmt: skip
        before = collect(sub, 10, timeout=30, topic=b"audio/mic0")
        subprocess.run([pactl, "suspend-sink", "vsink", "1"], env=pulse, check=True)
        try:
            time.sleep(2.0)  # the outage is the point of the test
        finally:
            subprocess.run([pactl, "suspend-sink", "vsink", "0"], env=pulse, check=True)
        windows, resyncs = [], 0
        deadline = time.monotonic() + 30
        while (len(windows) < 20 or not resyncs) and time.monotonic() < deadline:
            env = sub.recv(timeout=1.0)
            if env is not None and isinstance(env.header, m.AudioWindow):
                windows.append(env)
            elif env is not None and isinstance(env.header, m.Heartbeat):
                resyncs = env.header.errors.get("clock_resync", 0)
        received_at = time.monotonic_ns()
        status, _, err = children.stop(mic)
    assert status == 0, err
    assert resyncs == 1, err
    starts = np.array([w.header.t_capture for w in [*before, *windows]])
    steps = np.diff(starts)
    jumps = np.flatnonzero(np.abs(steps - NS // 10) >= 5_000_000)
    assert len(jumps) == 1, steps  # one new timeline; 100 ms steps on both sides of it
    assert 1.8 * NS < steps[jumps[0]] < 3.0 * NS, steps[jumps[0]]  # the 2 s without samples
    assert 0 < received_at - windows[-1].header.t_end < 2 * NS  # still the time heard at


def test_wav_file_is_resampled_windowed_and_timed_by_media_position(
    tmp_path: Path, endpoint: str, children: Children
) -> None:
    wav = tone(tmp_path / "stereo8k.wav", 1000.0, 3.0, 8000, channels=2)
    with Subscriber(endpoint, ["audio/"]) as sub:
        proc = children.streamfuse(
            "capture",
            "mic",
            "--source",
            str(wav),
            "--topic",
            "audio/file",
            "--endpoint",
            endpoint,
            "--rate",
            "16000",
            "--window-ms",
            "500",
            "--hop-ms",
            "250",
            "--fast",
            "--wait-for-subscriber",
            "10",
            "--sample-format",
            "s16le",
            "--json",
        )
        windows = collect(sub, 11, timeout=30)
        status, out, err = children.wait(proc)
    assert status == 0, err
    assert json.loads(out)["ended"] == "eof"
    # 3 s at 16 kHz, 0.5 s windows every 0.25 s: 11 whole windows.
    assert [w.header.seq for w in windows] == list(range(11))
    assert [w.header.media_pos for w in windows] == [i * NS // 4 for i in range(11)]
    t = np.array([w.header.t_capture for w in windows])
    assert np.all(t - t[0] == np.arange(11) * NS // 4)
    h = windows[3].header
    assert (h.sample_rate, h.channels, h.sample_format, h.n_samples) == (16000, 1, "s16le", 8000)
    assert abs(peak_hz(windows[3]) - 1000) <= 4


def test_synthetic_tone_arrives_in_real_time(endpoint: str, children: Children) -> None:
    with Subscriber(endpoint, ["audio/"]) as sub:
        proc = children.streamfuse(
            "capture",
            "mic",
            "--source",
            "synthetic:440",
            "--topic",
            "audio/syn",
            "--endpoint",
            endpoint,
            "--window-ms",
            "250",
            "--hop-ms",
            "250",
        )
        windows = collect(sub, 6, timeout=20)
        now = time.monotonic_ns()
        children.stop(proc)
    assert len(windows) == 6
    assert all(abs(peak_hz(w) - 440) <= 8 for w in windows)
    assert 0 <= now - windows[-1].header.t_end < NS // 2


def test_missing_microphone_is_one_line_and_devices_lists_what_exists(
    endpoint: str, pulse: dict[str, str]
) -> None:
    res = run_cli(
        "capture",
        "mic",
        "--source",
        "no-such-mic",
        "--topic",
        "audio/x",
        "--endpoint",
        endpoint,
        env=pulse,
    )
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    one = re.fullmatch(
        r"error: no microphone 'no-such-mic' on this machine "
        r"\((\d+) found; `streamfuse devices` lists them\)",
        lines[0] if len(lines) == 1 else "",
    )
    assert one is not None, res.stderr
    mics = json.loads(run_cli("devices", "--json", env=pulse).stdout)["microphones"]
    assert any("pulse" in m for m in mics), mics  # the PulseAudio server the test started
    assert int(one.group(1)) == len(mics)


@pytest.mark.parametrize("content", [b"RIFF\x10\x00\x00\x00WAVEfmt garbage", b"\x00" * 64, b""])
def test_corrupt_audio_file_is_a_clear_error(tmp_path: Path, endpoint: str, content: bytes) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(content)
    res = run_cli(
        "capture", "mic", "--source", str(bad), "--topic", "audio/x", "--endpoint", endpoint
    )
    assert res.returncode == 2
    assert f"error: {bad}: not an audio file libsndfile can decode" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--source", "/no/such.wav"], "no such audio file"),
        (["--source", "synthetic", "--rate", "0"], "rate: must be a positive"),
        (["--source", "synthetic", "--hop-ms", "-5"], "window-ms/hop-ms"),
        (["--source", "synthetic", "--sample-format", "u8"], "--sample-format"),
    ],
)
def test_bad_arguments_are_clear_errors(endpoint: str, args: list[str], needle: str) -> None:
    res = run_cli("capture", "mic", *args, "--topic", "audio/x", "--endpoint", endpoint)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr

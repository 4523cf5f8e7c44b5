"""A real recording through the real capture processes into the synchronizer: the film clip
in ../shared/data (24 fps video, 44.1 kHz audio), as a video file + wav file, and with its
audio played through the PulseAudio virtual microphone."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamfuse import messages as m
from streamfuse.sync import Bundle, SyncConfig, Synchronizer
from streamfuse.transport import Subscriber

from ..conftest import Children, require_data, require_tool, wait_playing

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MS = 1_000_000
S = 1_000_000_000
FRAME = S // 24


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The clip's video, and its audio track as a wav (what a recorder would have written)."""
    path = (
        require_data("av-clips/big_buck_bunny_0_30.webm") / "av-clips" / "big_buck_bunny_0_30.webm"
    )
    wav = tmp_path_factory.mktemp("clip") / "audio.wav"
    subprocess.run(
        [
            require_tool("ffmpeg"),
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(path),
            "-vn",
            "-t",
            "12",
            "-c:a",
            "pcm_s16le",
            str(wav),
        ],
        check=True,
        timeout=60,
    )
    return path, wav


def synchronize(sub: Subscriber, cfg: SyncConfig, windows: int, timeout: float) -> list[Bundle]:
    """Feed what arrives into a Synchronizer until ``windows`` bundles came out."""
    sync = Synchronizer(cfg)
    out: list[Bundle] = []
    deadline = time.monotonic() + timeout
    while len(out) < windows and time.monotonic() < deadline:
        env = sub.recv(timeout=0.05)
        now = time.monotonic_ns()
        out += sync.poll(now) if env is None else sync.push(env, now)
    return out


def test_file_sources_pair_frames_with_windows_at_the_clips_own_timing(
    clip: tuple[Path, Path], children: Children, endpoint: str
) -> None:
    video, wav = clip
    cam_ep, mic_ep = endpoint + "-cam", endpoint + "-mic"
    epoch = time.monotonic_ns() + 3600 * S  # far ahead: no deadline fires, completeness decides
    common = ["--fast", "--epoch-ns", str(epoch), "--wait-for-subscriber", "20"]
    with Subscriber([cam_ep, mic_ep], ["video/", "audio/"]) as sub:
        children.streamfuse(
            "capture",
            "camera",
            "--source",
            str(video),
            "--topic",
            "video/clip",
            "--endpoint",
            cam_ep,
            "--width",
            "320",
            "--height",
            "180",
            "--max-messages",
            str(24 * 11),
            *common,
        )
        children.streamfuse(
            "capture",
            "mic",
            "--source",
            str(wav),
            "--topic",
            "audio/clip",
            "--endpoint",
            mic_ep,
            "--window-ms",
            "1000",
            "--hop-ms",
            "500",
            *common,
        )
        cfg = SyncConfig(cameras=("video/clip",), tolerance=FRAME // 2 + MS, max_wait=S)
        bundles = synchronize(sub, cfg, windows=19, timeout=120)
    assert len(bundles) == 19  # 10 s of whole windows, every 0.5 s
    for b in bundles:
        assert not b.partial and b.audio is not None
        (f,) = b.frames["video/clip"]
        centre = b.audio.header.media_pos + S // 2
        # The paired frame is the clip's frame nearest the window's centre...
        assert abs(f.header.media_pos - centre) <= FRAME // 2 + 3 * MS
        # ...and capture times carry exactly the media timing (shared epoch).
        assert f.header.t_capture - epoch == f.header.media_pos
        assert b.audio.header.t_capture - epoch == b.audio.header.media_pos


def test_live_microphone_through_pulseaudio_pairs_with_the_video_of_the_same_moment(
    clip: tuple[Path, Path], children: Children, endpoint: str, pulse: dict[str, str]
) -> None:
    video, wav = clip
    cam_ep, mic_ep = endpoint + "-cam", endpoint + "-mic"
    reference, ref_rate = sf.read(wav, dtype="float32", always_2d=True)
    reference = soxr.resample(reference.mean(axis=1), ref_rate, 16000)
    # Play the audio and the video from the same instant: video capture time = epoch + media.
    epoch = time.monotonic_ns()
    children.start(
        [require_tool("paplay"), "--latency-msec=20", "-d", "vsink", str(wav)], env=pulse
    )
    children.streamfuse(
        "capture",
        "camera",
        "--source",
        str(video),
        "--topic",
        "video/clip",
        "--endpoint",
        cam_ep,
        "--width",
        "320",
        "--height",
        "180",
        "--epoch-ns",
        str(epoch),
        env=pulse,
    )
    wait_playing(pulse)  # not a fixed sleep: until the sink runs with the player in it
    with Subscriber([cam_ep, mic_ep], ["video/", "audio/"]) as sub:
        children.streamfuse(
            "capture",
            "mic",
            "--source",
            "pulse",
            "--topic",
            "audio/live",
            "--endpoint",
            mic_ep,
            "--window-ms",
            "1000",
            "--hop-ms",
            "500",
            env=pulse,
        )
        cfg = SyncConfig(cameras=("video/clip",), tolerance=FRAME // 2 + MS, max_wait=300 * MS)
        bundles = synchronize(sub, cfg, windows=10, timeout=40)
    assert len(bundles) >= 8
    for b in bundles:  # the synchronizer's part: the frame nearest each window's centre
        assert b.audio is not None and not b.partial
        (f,) = b.frames["video/clip"]
        assert abs(f.header.t_capture - (b.audio.header.t_capture + S // 2)) <= FRAME // 2 + MS
    # The timestamps' part: where in the soundtrack were these windows really? Join the first
    # halves of consecutive windows (hop = half a window) and find them in the reference.
    starts = [b.audio.header.t_capture for b in bundles]  # type: ignore[union-attr]
    # Live windows: one hop apart give or take the timeline's few ms of correction.
    assert np.all(np.abs(np.diff(starts) - S // 2) < 5 * MS), np.diff(starts)

    def lag_ms(part: list[Bundle]) -> float:
        """How far the capture clock says these windows start after where the soundtrack
        shows they really start (cross-correlation against the clip's audio)."""
        heard = np.concatenate([m.audio_array(b.audio)[:8000, 0] for b in part])  # type: ignore[arg-type]
        assert np.abs(heard).max() > 0.01, "the virtual microphone heard silence"
        expected = (part[0].audio.header.t_capture - epoch) * 16000 // S  # type: ignore[union-attr]
        lo = max(0, expected - 3 * 16000)
        seg = reference[lo : expected + 16000 + len(heard)]
        n = len(seg) + len(heard)
        spec = np.fft.rfft(seg, n) * np.conj(np.fft.rfft(heard, n))
        corr = np.fft.irfft(spec, n)[: len(seg) - len(heard) + 1]
        return float((expected - lo - int(np.argmax(corr))) * 1000 / 16000)

    half = len(bundles) // 2
    first, second = lag_ms(bundles[:half]), lag_ms(bundles[half:])
    # The lag is paplay's start-up plus PulseAudio's latency: unknown, but it must not change
    # while the clip plays, or the microphone's times would not follow the clip's timing.
    assert 0 <= first < 2500, first
    assert abs(first - second) < 10, (first, second)

"""The camera capture process: real OpenCV decoding of real files and a live HTTP stream."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfuse import messages as m
from streamfuse.transport import Subscriber

from ..conftest import Children, require_tool
from .helpers import collect, free_port, run_cli

pytestmark = pytest.mark.integration


def make_video(
    path: Path, *, seconds: float, fps: int, size: str = "320x240", color: str | None = None
) -> Path:
    ffmpeg = require_tool("ffmpeg")
    src = f"color=c={color}:size={size}:rate={fps}" if color else f"testsrc=size={size}:rate={fps}"
    subprocess.run(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"{src}:duration={seconds}",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path


def test_video_file_is_decoded_and_published_frame_by_frame(
    tmp_path: Path, endpoint: str, children: Children
) -> None:
    video = make_video(tmp_path / "red.mp4", seconds=2, fps=24, color="red")
    with Subscriber(endpoint, ["video/"]) as sub:
        proc = children.streamfuse(
            "capture",
            "camera",
            "--source",
            str(video),
            "--topic",
            "video/front",
            "--endpoint",
            endpoint,
            "--fast",
            "--wait-for-subscriber",
            "10",
            "--json",
        )
        frames = collect(sub, 48, timeout=30)
        status, out, err = children.wait(proc)
    assert status == 0, err
    assert json.loads(out.strip().splitlines()[-1])["ended"] == "eof"
    assert [f.header.seq for f in frames] == list(range(48))
    h = frames[0].header
    assert isinstance(h, m.VideoFrame) and (h.width, h.height, h.pixel_format) == (320, 240, "bgr8")
    # Real decoding: the pixels are the red ffmpeg drew (BGR), give or take YUV rounding.
    b, g, r = m.image_array(frames[10]).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 40 and b < 40
    # Media positions step by one frame period and capture time = epoch + media position.
    pos = np.array([f.header.media_pos for f in frames])
    assert np.allclose(np.diff(pos), 1e9 / 24, atol=2e6)
    t = np.array([f.header.t_capture for f in frames])
    assert np.all(t - pos == t[0] - pos[0])


@pytest.mark.parametrize("resize", [False, True])
def test_frames_decoded_into_shared_memory_are_each_the_frame_opencv_decodes(
    tmp_path: Path, endpoint: str, children: Children, resize: bool
) -> None:
    """On ipc:// the camera decodes (or resizes) each frame straight into the publisher's
    next shared-memory slot: every frame must still be exactly OpenCV's own decode."""
    video = make_video(tmp_path / "moving.mp4", seconds=2, fps=24)  # testsrc: every frame new
    cap = cv2.VideoCapture(str(video))
    want = []
    while (got := cap.read())[0]:
        want.append(
            cv2.resize(got[1], (256, 192), interpolation=cv2.INTER_AREA) if resize else got[1]
        )
    cap.release()
    size = ["--width", "256", "--height", "192"] if resize else []  # 147 KB: over 64 KiB
    with Subscriber(endpoint, ["video/"]) as sub:
        proc = children.streamfuse(
            "capture", "camera", "--source", str(video), "--topic", "video/front",
            "--endpoint", endpoint, "--fast", "--wait-for-subscriber", "10", *size,
        )  # fmt: skip
        frames = collect(sub, len(want), timeout=30)
        status, _out, err = children.wait(proc)
    assert status == 0, err
    assert len(frames) == len(want) == 48
    assert sub.shm_received == 48 and not sub.rejected  # none went inline, none torn
    for i, (f, ref) in enumerate(zip(frames, want, strict=True)):
        assert np.array_equal(m.image_array(f), ref), f"frame {i} differs from OpenCV's decode"


def test_file_plays_at_its_native_rate_by_default(
    tmp_path: Path, endpoint: str, children: Children
) -> None:
    video = make_video(tmp_path / "clip.mp4", seconds=2, fps=24)
    with Subscriber(endpoint, ["video/"]) as sub:
        proc = children.streamfuse(
            "capture",
            "camera",
            "--source",
            str(video),
            "--topic",
            "video/front",
            "--endpoint",
            endpoint,
            "--wait-for-subscriber",
            "10",
        )
        frames = collect(sub, 48, timeout=30)
        arrival = time.monotonic_ns()
        children.stop(proc)
    assert len(frames) == 48
    span = (frames[-1].header.t_capture - frames[0].header.t_capture) / 1e9
    assert span == pytest.approx(47 / 24, abs=0.01)
    # Published when due: the last frame is not sent long before its capture time.
    assert -0.05 < (arrival - frames[-1].header.t_capture) / 1e9 < 0.5


def test_resize_and_jpeg(tmp_path: Path, endpoint: str, children: Children) -> None:
    with Subscriber(endpoint, ["video/"]) as sub:
        proc = children.streamfuse(
            "capture",
            "camera",
            "--source",
            "synthetic",
            "--topic",
            "video/side",
            "--endpoint",
            endpoint,
            "--width",
            "160",
            "--height",
            "120",
            "--jpeg",
            "80",
            "--fps",
            "60",
        )
        frames = collect(sub, 5, timeout=20)
        status, _, err = children.stop(proc)
    assert status == 0, err
    h = frames[-1].header
    assert isinstance(h, m.VideoFrame) and h.encoding == "jpeg" and h.stream == "side"
    img = cv2.imdecode(np.frombuffer(frames[-1].payload, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (120, 160, 3)


def test_live_http_stream_is_read_and_reopened_after_it_drops(
    endpoint: str, children: Children
) -> None:
    ffmpeg = require_tool("ffmpeg")
    port = free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    serve = [
        ffmpeg,
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=640x480:rate=30",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-pix_fmt",
        "yuv420p",
        "-f",
        "mpegts",
        "-listen",
        "1",
        url,
    ]
    server = children.start(serve)
    with Subscriber(endpoint, ["video/", "heartbeat/"]) as sub:
        cam = children.streamfuse(
            "capture",
            "camera",
            "--source",
            url,
            "--topic",
            "video/net",
            "--endpoint",
            endpoint,
            "--heartbeat",
            "0.5",
        )
        first = collect(sub, 60, timeout=30, topic=b"video/net")
        assert len(first) == 60
        assert (first[0].header.width, first[0].header.height) == (640, 480)
        # Grab times, so the first second may be a burst of frames FFmpeg had buffered while
        # the stream was opening; after that they come at the stream's 30 fps.
        steady = first[30:]
        fps = 29 * 1e9 / (steady[-1].header.t_capture - steady[0].header.t_capture)
        assert 20 < fps < 40
        server.kill()
        server.wait()
        time.sleep(1.0)  # let the stream stay down for a while: a real gap
        children.start(serve)
        resumed = collect(sub, 10, timeout=40, topic=b"video/net")
        assert len(resumed) == 10, "the camera did not reopen the stream"
        beats = [e.header for e in collect(sub, 3, timeout=5, topic=b"heartbeat/video/net")]
        status, _, err = children.stop(cam)
    assert status == 0, err
    assert beats and beats[-1].errors.get("stream_gap", 0) >= 1
    # the gap it names is at least the second the server was gone, and the reopen came by
    # the backoff's steps (0.25 + 0.5 + 1 s after the loss, then 2 s more), not at once
    down = re.search(r"was down for ([\d.]+) s", beats[-1].last_error or "")
    assert down is not None and 1.0 <= float(down.group(1)) < 5.0, beats[-1].last_error


@pytest.mark.parametrize("index", ["7", "99"])
def test_a_missing_device_is_one_line_without_opencv_warnings(endpoint: str, index: str) -> None:
    """OpenCV warns twice (``[ WARN:0@...] ... can't open camera by index``) before our
    error unless its logging is turned down: the whole of stderr is the one error line."""
    res = run_cli(
        "capture", "camera", "--source", index, "--topic", "video/x", "--endpoint", endpoint
    )
    assert res.returncode == 2
    cameras = json.loads(run_cli("devices", "--json").stdout)["cameras"]
    found = f"{len(cameras)} found" if cameras else "none found"
    assert res.stderr.splitlines() == [
        f"error: no camera '{index}' on this machine ({found}; `streamfuse devices` lists them)"
    ]


@pytest.mark.parametrize("content", [b"", b"\x00" * 1000, b"not a video at all" * 100])
def test_corrupt_video_file_is_a_clear_error(tmp_path: Path, endpoint: str, content: bytes) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(content)
    res = run_cli(
        "capture", "camera", "--source", str(bad), "--topic", "video/x", "--endpoint", endpoint
    )
    assert res.returncode == 2
    assert f"error: {bad}: not a video OpenCV/FFmpeg can decode" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--source", "/no/such.mp4", "--topic", "video/x"], "no such video file"),
        (
            ["--source", "synthetic", "--topic", "video/x", "--endpoint", "bogus"],
            "cannot bind 'bogus'",
        ),
        (["--source", "synthetic", "--topic", "heartbeat/x"], "--topic"),
        (["--source", "synthetic", "--topic", "video/x", "--jpeg", "500"], "--jpeg"),
    ],
)
def test_bad_arguments_are_clear_errors(endpoint: str, args: list[str], needle: str) -> None:
    if "--endpoint" not in args:
        args = [*args, "--endpoint", endpoint]
    res = run_cli("capture", "camera", *args)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


def test_sigterm_stops_cleanly_with_a_summary(endpoint: str, children: Children) -> None:
    with Subscriber(endpoint, ["video/"]) as sub:
        proc = children.streamfuse(
            "capture",
            "camera",
            "--source",
            "synthetic",
            "--topic",
            "video/front",
            "--endpoint",
            endpoint,
            "--json",
        )
        assert len(collect(sub, 3, timeout=20)) == 3
        status, out, err = children.stop(proc)
    assert status == 0, err
    summary = json.loads(out)
    assert summary["ended"] == "stopped" and summary["sent"] >= 3

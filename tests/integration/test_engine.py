"""The engine in-process behind real sockets: garbage on its inputs is counted and skipped,
an undecodable frame is blanked and reported, and classification goes on."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest

from streamfuse.config import load_config
from streamfuse.engine import Engine
from streamfuse.messages import AudioWindow, Classification, Heartbeat, VideoFrame
from streamfuse.transport import Publisher, Subscriber

pytestmark = pytest.mark.integration

MS = 1_000_000


@contextlib.contextmanager
def engine_behind_sockets(
    tmp_path: Path, lossless: bool = False
) -> Iterator[tuple[Engine, Publisher, Publisher, Subscriber]]:
    """The engine in a thread, with a camera and a microphone publisher bound where it
    connects, and a subscriber of its results and heartbeats."""
    cfg = load_config(
        None, {"output": f"ipc://{tmp_path}/result", "http_port": 0, "camera": "synthetic"}
    )
    cfg.run_dir = str(tmp_path)
    cfg.engine.backend = "onnxruntime"
    engine = Engine(cfg)
    stop = threading.Event()
    cam = Publisher(cfg.endpoint("video/front"), lossless=lossless)
    mic = Publisher(cfg.endpoint("audio/mic0"), lossless=lossless)
    out = Subscriber(cfg.engine.output, ["result/", "heartbeat/"])
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert cam.wait_for_subscriber(10, topic=b"video/front")
        assert mic.wait_for_subscriber(10, topic=b"audio/mic0")
        # and the results' subscription is through: a heartbeat of the engine arrives
        deadline = time.monotonic() + 10
        while not isinstance(getattr(out.recv(timeout=0.5), "header", None), Heartbeat):
            assert time.monotonic() < deadline, "no heartbeat from the engine"
        yield engine, cam, mic, out
        assert thread.is_alive(), "the engine ended"
    finally:
        stop.set()
        thread.join(10)
        for s in (cam, mic, out):
            s.close()
    assert not thread.is_alive()


def send_session(cam: Publisher, mic: Publisher, broken: bool = False) -> None:
    """2.5 s of a "7" at 30 fps and three 1 s windows, in capture order as sensors deliver
    them (a window when it has ended); with ``broken`` the centre frame of the second window
    is a broken JPEG and the next one the wrong size."""
    # recent enough that no window's deadline (its end + max_wait) has passed on arrival
    t0 = time.monotonic_ns() - 600 * MS
    frame = np.zeros((480, 640, 3), np.uint8)
    cv2.putText(frame, "7", (250, 330), cv2.FONT_HERSHEY_SIMPLEX, 8, (255, 255, 255), 30)
    pcm = np.zeros(16000, np.float32)
    windows = [t0 + k * 500 * MS for k in range(3)]
    for i in range(75):  # 2.5 s at 30 fps
        t = t0 + i * 33 * MS
        while windows and windows[0] + 1000 * MS <= t:  # this window has ended: it comes now
            k = 3 - len(windows)
            window = AudioWindow(stream="mic0", seq=k, t_capture=windows.pop(0),
                                 sample_rate=16000, channels=1, n_samples=16000)  # fmt: skip
            mic.send("audio/mic0", window, pcm)
        hdr = VideoFrame(stream="front", seq=i, t_capture=t, width=640, height=480)
        if broken and i == 30:  # window [0.5 s, 1.5 s): its centre frame is a broken JPEG
            hdr.encoding = "jpeg"
            cam.send("video/front", hdr, b"\xff\xd8\xff\xe0 broken jpeg")
        elif broken and i == 31:
            cam.send("video/front", hdr, b"short")  # size_mismatch
        else:
            cam.send("video/front", hdr, frame)
    for k, start in enumerate(windows, start=3 - len(windows)):
        window = AudioWindow(stream="mic0", seq=k, t_capture=start, sample_rate=16000,
                             channels=1, n_samples=16000)  # fmt: skip
        mic.send("audio/mic0", window, pcm)


def collect_results(out: Subscriber, n: int) -> tuple[list[Classification], Heartbeat | None]:
    """``n`` classifications, then the engine's next heartbeat (15 s at most)."""
    results: list[Classification] = []
    beat: Heartbeat | None = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (len(results) < n or beat is None):
        env = out.recv(timeout=0.5)
        if env is None:
            continue
        if isinstance(env.header, Classification):
            results.append(env.header)
        elif isinstance(env.header, Heartbeat) and len(results) >= n:
            beat = env.header
    return results, beat


def test_garbage_in_is_counted_and_the_engine_keeps_classifying(tmp_path: Path) -> None:
    with engine_behind_sockets(tmp_path) as (_engine, cam, mic, out):
        raw = cam._sock  # what a broken or hostile peer could send
        raw.send_multipart([b"video/front", b"\xc1 not msgpack"])
        raw.send_multipart([b"video/front"])
        v2 = msgspec.msgpack.encode({"kind": "video", "v": 2, "stream": "front", "t_capture": 1})
        raw.send_multipart([b"video/front", v2])
        send_session(cam, mic, broken=True)
        results, beat = collect_results(out, 3)
    assert len(results) == 3
    assert [r.degraded for r in results] == [False, True, False]
    assert results[1].missing == ["video/front"]
    assert [r.image_label for r in (results[0], results[2])] == ["7", "7"]
    assert beat is not None
    assert beat.drops.get("rejected_malformed") == 2
    assert beat.drops.get("rejected_unknown_version") == 1
    assert beat.drops.get("rejected_size_mismatch") == 1
    assert beat.errors == {"preprocess": 1}
    assert beat.last_error is not None  # the broken JPEG's, naming the camera
    assert beat.last_error.startswith("video/front:") and "JPEG payload does not decode" in (
        beat.last_error
    )


def test_hostile_messages_are_rejected_by_reason_and_never_stop_the_engine(
    tmp_path: Path,
) -> None:
    """Each of these killed the engine or stalled it (issue 12's probes): a seq of 2**64-1,
    a topic that is not UTF-8, a header of 1000 nested arrays, a window at 1 Hz (a 16000 s
    window), NaN samples; plus a result sent on a heartbeat topic, and 5000 topics the
    endpoint does not own. All are counted by reason; none creates per-topic state."""
    # lossless: every message reaches the engine, so each one must be counted
    with engine_behind_sockets(tmp_path, lossless=True) as (_engine, cam, mic, out):
        raw, mic_raw = cam._sock, mic._sock
        frame = {"kind": "video", "v": 1, "stream": "front", "t_capture": 1, "width": 2}
        raw.send_multipart([b"video/front", msgspec.msgpack.encode({**frame, "seq": 2**64 - 1})])
        raw.send_multipart([b"video/front\xff", msgspec.msgpack.encode(frame)])
        raw.send_multipart([b"video/front", b"\x91" * 1000 + b"\xc0"])
        window = {"kind": "audio", "v": 1, "stream": "mic0", "t_capture": 1, "channels": 1}
        slow = msgspec.msgpack.encode({**window, "sample_rate": 1, "n_samples": 16000})
        mic_raw.send_multipart([b"audio/mic0", slow, bytes(64000)])
        nan = AudioWindow(stream="mic0", t_capture=1, sample_rate=16000, channels=1, n_samples=4)
        mic.send("audio/mic0", nan, np.full(4, np.nan, np.float32))
        forged = Classification(stream="front", t_capture=1, label="0", score=1.0)
        cam.send("heartbeat/video/front", forged)
        for i in range(5000):
            cam.send(f"video/front-{i}", VideoFrame(stream="x", t_capture=1, width=1, height=1),
                     bytes(3))  # fmt: skip
        send_session(cam, mic)
        results, beat = collect_results(out, 3)
    assert [r.label for r in results] == [r.image_label for r in results] == ["7"] * 3
    assert beat is not None
    assert beat.drops.get("rejected_invalid") == 4  # seq, sample rate, NaN, result as heartbeat
    assert beat.drops.get("rejected_malformed") == 1  # the nested arrays
    assert beat.drops.get("rejected_foreign_topic") == 5001  # not UTF-8 + 5000 others
    assert set(beat.received) == {"video/front", "audio/mic0"}  # no state for the rest

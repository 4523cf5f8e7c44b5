"""The engine in-process behind real sockets: garbage on its inputs is counted and skipped,
an undecodable frame is blanked and reported, and classification goes on."""

from __future__ import annotations

import threading
import time
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


def test_garbage_in_is_counted_and_the_engine_keeps_classifying(tmp_path: Path) -> None:
    cfg = load_config(
        None, {"output": f"ipc://{tmp_path}/result", "http_port": 0, "camera": "synthetic"}
    )
    cfg.run_dir = str(tmp_path)
    cfg.engine.backend = "onnxruntime"
    engine = Engine(cfg)
    stop = threading.Event()
    cam = Publisher(cfg.endpoint("video/front"))
    mic = Publisher(cfg.endpoint("audio/mic0"))
    out = Subscriber(cfg.engine.output, ["result/", "heartbeat/"])
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert cam.wait_for_subscriber(10, topic=b"video/front")
        assert mic.wait_for_subscriber(10, topic=b"audio/mic0")
        time.sleep(0.3)  # the engine's own result subscription (out) settles too
        raw = cam._sock  # what a broken or hostile peer could send
        raw.send_multipart([b"video/front", b"\xc1 not msgpack"])
        raw.send_multipart([b"video/front"])
        v2 = msgspec.msgpack.encode({"kind": "video", "v": 2, "stream": "front", "t_capture": 1})
        raw.send_multipart([b"video/front", v2])
        # recent enough that no window's deadline (its end + max_wait) has passed on arrival
        t0 = time.monotonic_ns() - 600 * MS
        frame = np.zeros((480, 640, 3), np.uint8)
        cv2.putText(frame, "7", (250, 330), cv2.FONT_HERSHEY_SIMPLEX, 8, (255, 255, 255), 30)
        for i in range(75):  # 2.5 s at 30 fps
            t = t0 + i * 33 * MS
            hdr = VideoFrame(stream="front", seq=i, t_capture=t, width=640, height=480)
            if i == 30:  # window [0.5 s, 1.5 s): its centre frame is a broken JPEG
                hdr.encoding = "jpeg"
                cam.send("video/front", hdr, b"\xff\xd8\xff\xe0 broken jpeg")
            elif i == 31:
                cam.send("video/front", hdr, b"short")  # size_mismatch
            else:
                cam.send("video/front", hdr, frame)
        pcm = np.zeros(16000, np.float32)
        for k in range(3):
            mic.send(
                "audio/mic0",
                AudioWindow(
                    stream="mic0",
                    seq=k,
                    t_capture=t0 + k * 500 * MS,
                    sample_rate=16000,
                    channels=1,
                    n_samples=16000,
                ),
                pcm,
            )
        results: list[Classification] = []
        beat: Heartbeat | None = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (len(results) < 3 or beat is None):
            env = out.recv(timeout=0.5)
            if env is None:
                continue
            if isinstance(env.header, Classification):
                results.append(env.header)
            elif isinstance(env.header, Heartbeat) and len(results) >= 3:
                beat = env.header
    finally:
        stop.set()
        thread.join(10)
        for s in (cam, mic, out):
            s.close()
    assert not thread.is_alive()
    assert len(results) == 3
    assert [r.degraded for r in results] == [False, True, False]
    assert results[1].missing == ["video/front"]
    assert [r.image_label for r in (results[0], results[2])] == ["7", "7"]
    assert beat is not None
    assert beat.drops.get("rejected_malformed") == 2
    assert beat.drops.get("rejected_unknown_version") == 1
    assert beat.drops.get("rejected_size_mismatch") == 1
    assert beat.errors == {"preprocess": 1}
    assert "broken" not in (beat.last_error or "") or "video/front" in (beat.last_error or "")

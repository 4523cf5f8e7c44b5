"""Cameras through OpenCV: V4L2 device indices, video files, and http/rtsp/udp streams."""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from streamfuse.capture import SourceBase, VideoOptions
from streamfuse.errors import DeviceNotFound, SourceError
from streamfuse.messages import VideoFrame

from ._common import WallClock, decode_buffer, video_sample

log = logging.getLogger(__name__)

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_TIMEOUT_MS = 5000


def list_cameras() -> list[str]:
    """V4L2 capture devices on this machine, as ``index: name (/dev/videoN)``."""
    found = []
    for dev in sorted(glob.glob("/dev/video*"), key=lambda p: int(re.sub(r"\D", "", p) or 0)):
        idx = re.sub(r"\D", "", dev)
        name_file = Path(f"/sys/class/video4linux/video{idx}/name")
        name = name_file.read_text().strip() if name_file.exists() else "?"
        found.append(f"{idx}: {name} ({dev})")
    return found


class OpenCVCamera(SourceBase):
    """``--source 0`` (device), ``--source clip.mp4`` (file), ``--source rtsp://...`` (stream).

    Files play at their native rate (``realtime``) or as fast as they decode, with capture
    time = session epoch + media position. Devices and streams are stamped at grab time; a
    stream that stops delivering is reopened with exponential backoff and the gap reported.
    """

    def __init__(self, arg: str, opts: VideoOptions) -> None:
        super().__init__()
        import cv2

        self._cv2 = cv2
        self.opts = opts
        self._wall = WallClock()
        self._cap: Any = None
        self._shape: tuple[int, ...] | None = None  # of the last frame: the next decodes in place
        self._next_due = 0  # media ns of the next frame to keep when --fps decimates a file
        if re.fullmatch(r"\d+|/dev/video\d+", arg):
            self.mode = "device"
            self.target: str | int = int(re.sub(r"\D", "", arg))
            self.description = f"camera {arg}"
            self._open_device()
        elif _URL.match(arg):
            self.mode = "stream"
            self.target = arg
            self.description = arg
            self._backoff = 0.25
            self._gap_started: int | None = None
            self._try_open_stream()  # failing here is not fatal: read() keeps retrying
        else:
            self.mode = "file"
            self.target = arg
            self.description = arg
            self._open_file(arg)

    # -- opening -------------------------------------------------------------------------

    def _open_device(self) -> None:
        cv2 = self._cv2
        cap = cv2.VideoCapture(self.target, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise DeviceNotFound("camera", str(self.target), list_cameras())
        if self.opts.width and self.opts.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.opts.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.opts.height)
        if self.opts.fps:
            cap.set(cv2.CAP_PROP_FPS, self.opts.fps)
        self._cap = cap

    def _open_file(self, path: str) -> None:
        cv2 = self._cv2
        if not os.path.isfile(path):
            raise SourceError(path, "no such video file")
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        if not cap.isOpened() or cap.get(cv2.CAP_PROP_FRAME_WIDTH) <= 0:
            cap.release()
            raise SourceError(path, "not a video OpenCV/FFmpeg can decode (corrupt or unsupported)")
        self.native_fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        self._epoch = self.opts.epoch_ns if self.opts.epoch_ns is not None else time.monotonic_ns()
        self._cap = cap

    def _try_open_stream(self) -> bool:
        cv2 = self._cv2
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            _TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            _TIMEOUT_MS,
        ]
        cap = cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            self._cap = cap
            return True
        cap.release()
        return False

    # -- reading -------------------------------------------------------------------------

    def read(self) -> list[tuple[VideoFrame, object]] | None:
        if self.mode == "file":
            return self._read_file()
        if self.mode == "stream":
            return self._read_stream()
        return self._read_device()

    def _decode(self, fetch: Any) -> tuple[bool, Any]:
        """``fetch`` (the capture's ``read`` or ``retrieve``) into the publisher's next slot
        where the frame will be sent as it is (see ``decode_buffer``)."""
        buf = decode_buffer(self.opts, self._shape)
        ok, frame = fetch() if buf is None else fetch(buf)
        if ok:
            self._shape = frame.shape
        return ok, frame

    def _read_file(self) -> list[tuple[VideoFrame, object]] | None:
        cv2 = self._cv2
        ok, frame = self._decode(self._cap.read)
        if not ok:
            frames = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
            pos = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES))
            if frames > 0 and pos < frames - 1:
                self.fail("read_failed", f"decoding stopped at frame {pos} of {frames}")
            return None
        media = round(self._cap.get(cv2.CAP_PROP_POS_MSEC) * 1e6)
        if self.opts.fps:
            if media < self._next_due:
                return []
            self._next_due += round(1e9 / self.opts.fps)
        t = self._epoch + media
        if self.opts.realtime and not self.opts.wait_until(t):
            return []
        return [video_sample(frame, self.opts, t, self._wall, media_pos=media)]

    def _read_device(self) -> list[tuple[VideoFrame, object]] | None:
        if not self._cap.grab():
            self.fail("read_failed", f"camera {self.target} delivered no frame")
            time.sleep(0.1)
            return []
        t = time.monotonic_ns()
        ok, frame = self._decode(self._cap.retrieve)
        if not ok:
            self.fail("read_failed", f"camera {self.target}: retrieve failed")
            return []
        return [video_sample(frame, self.opts, t, self._wall)]

    def _read_stream(self) -> list[tuple[VideoFrame, object]] | None:
        if self._cap is not None:
            ok = self._cap.grab()
            t = time.monotonic_ns()
            if ok:
                ok, frame = self._decode(self._cap.retrieve)
            if ok:
                if self._gap_started is not None:
                    gap = (t - self._gap_started) / 1e9
                    self.errors["stream_gap"] += 1
                    self.last_error = f"stream {self.target} was down for {gap:.2f} s"
                    log.warning("%s; reopened", self.last_error)
                    self._gap_started = None
                    self._backoff = 0.25
                return [video_sample(frame, self.opts, t, self._wall)]
            self._cap.release()
            self._cap = None
            self.fail("stream_lost", f"stream {self.target} stopped delivering frames")
        if self._gap_started is None:
            self._gap_started = time.monotonic_ns()
        if self.opts.stop.wait(self._backoff):
            return []
        self._backoff = min(self._backoff * 2, 5.0)
        if self._try_open_stream():
            return []
        self.fail("reopen_failed", f"cannot open {self.target}; retrying in {self._backoff:.2f} s")
        return []

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

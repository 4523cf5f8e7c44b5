"""Header building shared by the source plugins."""

from __future__ import annotations

import time

import numpy as np

from streamfuse.audio import Windower, to_wire
from streamfuse.capture import AudioOptions, VideoOptions
from streamfuse.messages import AudioWindow, PixelFormat, VideoFrame


class WallClock:
    """Maps CLOCK_MONOTONIC ns to CLOCK_REALTIME ns with one offset taken at start."""

    def __init__(self) -> None:
        self.offset = time.time_ns() - time.monotonic_ns()

    def __call__(self, t_mono: int) -> int:
        return t_mono + self.offset


def decode_buffer(opts: VideoOptions, last: tuple[int, ...] | None) -> np.ndarray | None:
    """Where to decode the next frame (the shape of the ``last`` one) when it will be sent
    as it is: the publisher's next slot, so it is never copied. ``None``: let OpenCV
    allocate (first frame, frames to resize or JPEG-encode, no buffer set)."""
    if last is None or _resize_to(opts, *last[:2]) is not None:
        return None  # a frame to resize goes into a buffer then, in video_sample
    return opts.buffer(last)


def _resize_to(opts: VideoOptions, h: int, w: int) -> tuple[int, int] | None:
    """The (width, height) a frame of ``h`` x ``w`` is resized to; ``None``: kept as is."""
    if (opts.width and opts.width != w) or (opts.height and opts.height != h):
        return opts.width or w, opts.height or h
    return None


def video_sample(
    frame: np.ndarray,
    opts: VideoOptions,
    t_capture: int,
    wall: WallClock,
    media_pos: int | None = None,
) -> tuple[VideoFrame, object]:
    """Resize (if asked), optionally JPEG-encode, and wrap a BGR frame in a header."""
    import cv2

    h, w = frame.shape[:2]
    if (size := _resize_to(opts, h, w)) is not None:
        w, h = size
        dst = opts.buffer((h, w, *frame.shape[2:]))
        frame = cv2.resize(frame, (w, h), dst=dst, interpolation=cv2.INTER_AREA)
    fmt: PixelFormat = "gray8" if frame.ndim == 2 else "bgr8"
    header = VideoFrame(
        stream=opts.stream,
        t_capture=t_capture,
        t_wall=wall(t_capture),
        media_pos=media_pos,
        width=w,
        height=h,
        pixel_format=fmt,
    )
    if opts.jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, opts.jpeg_quality])
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
            raise RuntimeError("JPEG encoding failed")
        header.encoding = "jpeg"
        return header, buf
    return header, np.ascontiguousarray(frame)


class AudioWindows:
    """A :class:`Windower` that emits ready-to-send ``(AudioWindow, payload)`` samples."""

    def __init__(self, opts: AudioOptions, *, media_epoch: int | None = None) -> None:
        self.opts = opts
        self.windower = Windower(opts.rate, opts.channels, opts.window_samples, opts.hop_samples)
        self.wall = WallClock()
        self.media_epoch = media_epoch

    def push(
        self, block: np.ndarray, t_first: int | None = None, t_delivered: int | None = None
    ) -> list[tuple[AudioWindow, object]]:
        out: list[tuple[AudioWindow, object]] = []
        for samples, t0 in self.windower.push(block, t_first, t_delivered):
            header = AudioWindow(
                stream=self.opts.stream,
                t_capture=t0,
                t_wall=self.wall(t0),
                media_pos=None if self.media_epoch is None else t0 - self.media_epoch,
                sample_rate=self.opts.rate,
                channels=self.opts.channels,
                sample_format=self.opts.sample_format,
                n_samples=len(samples),
            )
            out.append((header, to_wire(samples, self.opts.sample_format)))
        return out

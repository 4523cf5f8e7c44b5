"""Synthetic sensors: a moving test pattern with the frame number drawn in, and a tone."""

from __future__ import annotations

import time

import numpy as np

from streamfuse.capture import AudioOptions, SourceBase, VideoOptions
from streamfuse.messages import AudioWindow, VideoFrame

from ._common import AudioWindows, WallClock, video_sample

NS = 1_000_000_000


class SyntheticCamera(SourceBase):
    """Colour bars scrolling sideways, the frame number in the corner. ``synthetic``."""

    def __init__(self, arg: str, opts: VideoOptions) -> None:
        super().__init__()
        self.opts = opts
        self.width, self.height = opts.width or 640, opts.height or 480
        self.fps = opts.fps or 30.0
        self.description = f"synthetic {self.width}x{self.height}@{self.fps:g}"
        bars = np.array(
            [
                [255, 255, 255],
                [0, 255, 255],
                [255, 255, 0],
                [0, 255, 0],
                [255, 0, 255],
                [0, 0, 255],
                [255, 0, 0],
                [0, 0, 0],
            ],
            dtype=np.uint8,
        )  # BGR
        cols = bars[np.arange(self.width) * len(bars) // self.width]
        ramp = np.linspace(0.35, 1.0, self.height, dtype=np.float32)[:, None, None]
        self._base = (cols[None, :, :] * ramp).astype(np.uint8)  # (H, W, 3)
        self._n = 0
        self._t0 = time.monotonic_ns()
        self._wall = WallClock()

    def read(self) -> list[tuple[VideoFrame, object]] | None:
        import cv2

        if self._n == 0:  # its clock starts with the first read, as a device's frames do
            self._t0 = time.monotonic_ns()  # (not at open: no burst after a wait for readers)
        t = self._t0 + int(self._n * NS / self.fps)
        if not self.opts.wait_until(t):
            return []
        # the scrolled pattern, drawn straight into the publisher's slot where it has one
        shift = (self._n * 4) % self.width
        frame = self.opts.buffer(self._base.shape)
        if frame is None:
            frame = np.empty_like(self._base)
        frame[:, shift:] = self._base[:, : self.width - shift]
        frame[:, :shift] = self._base[:, self.width - shift :]
        cv2.putText(
            frame,
            str(self._n),
            (16, 48),
            cv2.FONT_HERSHEY_SIMPLEX,
            1.5,
            (255, 255, 255),
            3,
            cv2.LINE_AA,
        )
        self._n += 1
        return [video_sample(frame, self.opts, t, self._wall)]


class SyntheticMicrophone(SourceBase):
    """A 440 Hz tone (``synthetic``, or ``synthetic:FREQ``) plus a little white noise."""

    block_s = 0.02

    def __init__(self, arg: str, opts: AudioOptions) -> None:
        super().__init__()
        self.opts = opts
        self.freq = float(arg) if arg else 440.0
        self.description = f"synthetic {self.freq:g} Hz tone"
        self._block = max(1, round(opts.rate * self.block_s))
        self._n = 0
        self._t0 = time.monotonic_ns()
        self._rng = np.random.default_rng(0)
        self._windows = AudioWindows(opts)

    def read(self) -> list[tuple[AudioWindow, object]] | None:
        rate = self.opts.rate
        if self._n == 0:  # as the camera: the tone starts with the first read
            self._t0 = time.monotonic_ns()
        t_first = self._t0 + self._n * NS // rate
        # A block exists once its last sample has been "captured".
        if not self.opts.wait_until(t_first + self._block * NS // rate):
            return []
        idx = np.arange(self._n, self._n + self._block)
        tone = 0.5 * np.sin(2 * np.pi * self.freq * idx / rate)
        noise = 0.02 * self._rng.standard_normal(self._block)
        block = np.repeat((tone + noise)[:, None], self.opts.channels, axis=1).astype(np.float32)
        self._n += self._block
        return self._windows.push(block, t_first)

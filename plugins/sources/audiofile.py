"""Audio files (wav, flac, ogg, ... anything libsndfile reads) as a microphone."""

from __future__ import annotations

import os
import time

import numpy as np

from streamfuse.capture import AudioOptions, SourceBase
from streamfuse.errors import SourceError
from streamfuse.messages import AudioWindow

from ._common import AudioWindows

NS = 1_000_000_000


class AudioFile(SourceBase):
    """Streams a file in windows, resampled to ``--rate`` and mixed to ``--channels``.

    Window capture time = session epoch + media position of its first sample. In realtime
    mode a window is published when its last sample would have been heard.
    """

    block_s = 0.1

    def __init__(self, arg: str, opts: AudioOptions) -> None:
        super().__init__()
        import soundfile as sf
        import soxr

        self.opts = opts
        self.description = arg
        if not os.path.isfile(arg):
            raise SourceError(arg, "no such audio file")
        try:
            self._file = sf.SoundFile(arg)
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise SourceError(arg, f"not an audio file libsndfile can decode: {exc}") from None
        self.file_rate = self._file.samplerate
        self.file_channels = self._file.channels
        if opts.channels not in (1, self.file_channels) and self.file_channels != 1:
            raise SourceError(
                arg, f"has {self.file_channels} channels; cannot make {opts.channels}"
            )
        self._resampler = (
            soxr.ResampleStream(self.file_rate, opts.rate, opts.channels, dtype="float32")
            if self.file_rate != opts.rate
            else None
        )
        self._block = max(1, round(self.file_rate * self.block_s))
        epoch = opts.epoch_ns if opts.epoch_ns is not None else time.monotonic_ns()
        self._windows = AudioWindows(opts, media_epoch=epoch)
        self._epoch = epoch
        self._started = False
        self._done = False

    def _mix(self, block: np.ndarray) -> np.ndarray:
        if block.shape[1] == self.opts.channels:
            return block
        if self.opts.channels == 1:
            return block.mean(axis=1, keepdims=True)
        return np.repeat(block, self.opts.channels, axis=1)  # mono file -> N channels

    def read(self) -> list[tuple[AudioWindow, object]] | None:
        if self._done:
            return None
        try:
            block = self._file.read(self._block, dtype="float32", always_2d=True)
        except Exception as exc:  # libsndfile raises several types for a corrupt tail
            self.fail("read_failed", f"{self.description}: decoding failed: {exc}")
            block = np.zeros((0, self.file_channels), dtype=np.float32)
        last = len(block) < self._block
        block = self._mix(block)
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block, last=last)
        first = not self._started
        self._started = True
        out = self._windows.push(
            block.astype(np.float32, copy=False), self._epoch if first else None
        )
        if self.opts.realtime and out:
            hdr = out[-1][0]
            if not self.opts.wait_until(hdr.t_end):
                return []
        if last:
            self._done = True
        return out

    def close(self) -> None:
        self._file.close()

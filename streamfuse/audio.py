"""Cutting a stream of PCM blocks into timestamped, overlapping windows. Pure: no devices.

Each window's ``t_capture`` is the time of its first sample, on a timeline anchored at the
first block's time and advanced by exactly ``1/rate`` per sample. Block times reported by
the device (PortAudio's ADC time) keep the timeline honest: a small disagreement (clock
drift between the sound card and CLOCK_MONOTONIC) is slewed away gently, using the smallest
disagreement of the last few blocks so that blocks reported late (see below) do not drag the
timeline; a large one (samples lost to an input overflow, a clock step) starts a new
timeline and is counted.

Device ADC times can also be plain wrong: through PulseAudio's ALSA plugin, blocks arrive in
pairs every 20 ms with the same reported delay, so half of them would "end" 5 ms after they
were delivered. When the caller says when a block was delivered, the timeline is clamped so
that no block ends after its delivery: a sample is never captured after we held it.
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np

__all__ = ["Windower", "to_wire"]

NS = 1_000_000_000


class Windower:
    """Turn blocks of samples into windows of ``window`` samples every ``hop`` samples."""

    def __init__(
        self,
        rate: int,
        channels: int,
        window: int,
        hop: int,
        *,
        resync_tolerance_ns: int = 20_000_000,
        slew: int = 64,
    ) -> None:
        if window < 1 or hop < 1:
            raise ValueError("window and hop must be >= 1 sample")
        self.rate, self.channels, self.window, self.hop = rate, channels, window, hop
        self.resync_tolerance_ns = resync_tolerance_ns
        self._slew = slew
        self._buf = np.zeros((0, channels), dtype=np.float32)
        self._buf_start = 0  # absolute index of _buf[0]
        self._next = 0  # absolute index of the next window's first sample
        self._anchor_t: int | None = None  # time of sample _anchor_i
        self._anchor_i = 0
        self._errors: deque[int] = deque(maxlen=32)  # recent (reported - timeline) block times
        self._slack: deque[int] = deque(maxlen=32)  # recent (delivered - timeline) block ends
        self.counters: Counter[str] = Counter()

    def time_of(self, index: int) -> int:
        """Capture time (ns) of absolute sample ``index`` on the current timeline."""
        assert self._anchor_t is not None
        return self._anchor_t + (index - self._anchor_i) * NS // self.rate

    def push(
        self, block: np.ndarray, t_first: int | None = None, t_delivered: int | None = None
    ) -> list[tuple[np.ndarray, int]]:
        """Add a (n, channels) block whose first sample was captured at ``t_first`` ns
        (``None``: continue the timeline) and that reached us at ``t_delivered`` ns (optional).
        Return the completed ``(samples, t0)`` windows."""
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"block must be (n, {self.channels}), got {block.shape}")
        end = self._buf_start + len(self._buf)
        if t_first is not None:
            if self._anchor_t is None:
                self._anchor_t, self._anchor_i = t_first, end
            else:
                err = t_first - self.time_of(end)
                if abs(err) > self.resync_tolerance_ns:
                    self._resync(t_first, end)
                else:
                    self._errors.append(err)
        elif self._anchor_t is None:
            raise ValueError("the first block needs a capture time")
        if t_delivered is not None:
            self._slack.append(t_delivered - self.time_of(end + len(block)))
        if self._errors:
            delta = min(self._errors) // self._slew
            if delta > 0 and self._slack:  # never slew into claiming a block ended unheard
                delta = min(delta, min(self._slack))
            self._shift(delta)
        if self._slack and self._slack[-1] < 0:
            self._shift(self._slack[-1])
        self._buf = np.concatenate([self._buf, block.astype(np.float32, copy=False)])
        out: list[tuple[np.ndarray, int]] = []
        end = self._buf_start + len(self._buf)
        while self._next + self.window <= end:
            i = self._next - self._buf_start
            out.append((self._buf[i : i + self.window].copy(), self.time_of(self._next)))
            self._next += self.hop
        keep_from = min(self._next, end)
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        return out

    def _shift(self, delta: int) -> None:
        """Move the timeline by ``delta`` ns (the errors seen so far move the other way)."""
        if delta:
            assert self._anchor_t is not None
            self._anchor_t += delta
            for q in (self._errors, self._slack):
                for i in range(len(q)):
                    q[i] -= delta

    def _resync(self, t_first: int, end: int) -> None:
        self._errors.clear()
        self._slack.clear()
        self.counters["clock_resync"] += 1
        partial = end - max(self._next, self._buf_start)
        if partial > 0:
            self.counters["samples_discarded"] += partial
        self._buf = self._buf[:0]
        self._buf_start = self._next = end
        self._anchor_t, self._anchor_i = t_first, end


def to_wire(samples: np.ndarray, sample_format: str) -> np.ndarray:
    """Float samples in [-1, 1] to the little-endian wire format (a contiguous array)."""
    if sample_format == "f32le":
        return np.ascontiguousarray(samples, dtype="<f4")
    if sample_format == "s16le":
        return np.ascontiguousarray(np.clip(samples * 32767.0, -32768, 32767), dtype="<i2")
    raise ValueError(f"unknown sample format {sample_format!r}")

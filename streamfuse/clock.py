"""Clocks across boxes: this box's realtime-monotonic offset and how well its realtime clock
is synchronized.

``t_capture`` is the capturing box's CLOCK_MONOTONIC and means nothing elsewhere; ``t_wall``
is CLOCK_REALTIME at the same instant. The engine maps a message from another box onto its
own clock through ``t_wall`` (:func:`to_local`), which is as good as the two realtime clocks
agree: each box says how well (``adjtimex``: synchronized or not, and its maximum error),
sensors put that in their heartbeats, and the engine adds the two.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Literal

__all__ = ["ClockState", "clock_state", "local_offset_ns", "to_local"]

ClockSync = Literal["synced", "unsynced", "unknown"]
ClockState = tuple[ClockSync, int | None]
"""(sync state, maximum error in ns or None)."""

_TIME_ERROR = 5  # adjtimex(2): "the clock is not synchronized"
_MAXERROR_OFFSET = 24  # struct timex on LP64: modes (int, padded), offset, freq, maxerror


def local_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC on this box, now."""
    return time.time_ns() - time.monotonic_ns()


def to_local(t_wall: int, offset_ns: int) -> int:
    """A remote message's capture time on this box's CLOCK_MONOTONIC, through its t_wall."""
    return t_wall - offset_ns


def clock_state() -> ClockState:
    """This box's realtime clock: synchronized (NTP/PTP through the kernel) or not, and its
    maximum error, from adjtimex(2) in read-only mode; ``unknown`` where that is not there."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return ("unknown", None)
    if state < 0:
        return ("unknown", None)
    if state == _TIME_ERROR:
        return ("unsynced", None)
    maxerror_us = ctypes.c_long.from_buffer(buf, _MAXERROR_OFFSET).value
    return ("synced", max(0, maxerror_us) * 1000)

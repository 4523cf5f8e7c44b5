"""A standby engine's word from the supervisor (one line on a pipe), garbage included."""

from __future__ import annotations

import os
import threading

import pytest

from streamfuse.engine import Standby


def _standby(*writes: bytes) -> tuple[Standby, threading.Event]:
    r, w = os.pipe()
    stop = threading.Event()
    standby = Standby(r, stop)
    for chunk in writes:
        os.write(w, chunk)
    os.close(w)
    return standby, stop


def test_go_carries_where_the_engine_before_stopped() -> None:
    standby, stop = _standby(b'go {"after": 123, ', b'"seq": {"front": 7}}\n')
    assert standby.go.wait(5) and not stop.is_set()
    assert standby.after == 123 and standby.seq == {"front": 7}


@pytest.mark.parametrize(
    "line",
    [b"go\n", b"go {not json\n", b'go {"after": "x"}\n', b"go [1, 2]\n", b'go {"seq": 5}\n'],
)
def test_a_handover_not_understood_still_takes_over_from_scratch(line: bytes) -> None:
    standby, stop = _standby(line)
    assert standby.go.wait(5) and not stop.is_set()
    assert standby.after == -1 and standby.seq == {}


def test_other_words_are_ignored_and_the_end_of_the_pipe_stops_it() -> None:
    standby, stop = _standby(b"hello\n\xff\xfe garbage\n", b"\n")
    assert stop.wait(5) and not standby.go.is_set()

"""The demo's views: the live table holds exactly the windows the accuracy line grades."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfuse.messages import Classification, InputRef

pytest.importorskip("rich")
from streamfuse_plugins.demo.session import demo_line, demo_table, score

from ..conftest import examples

S = 1_000_000_000


def _result(t0: int, label: str) -> Classification:
    audio = InputRef(stream="audio/mic0", seq=0, t0=t0, t1=t0 + S, media_t0=t0, media_t1=t0 + S)
    return Classification(stream="front", t_capture=t0, label=label, score=0.9, inputs=[audio])


@settings(max_examples=examples(50), deadline=None)
@given(
    digits=st.lists(st.integers(0, 9), min_size=1, max_size=40),
    right=st.lists(st.booleans(), min_size=80, max_size=80),
)
def test_the_table_rows_are_the_graded_windows(digits: list[int], right: list[bool]) -> None:
    # a window every half second, like the demo: whole seconds are graded, the rest are not
    results = []
    for k in range(2 * len(digits) - 1):
        expected = digits[k // 2]
        label = str(expected if right[k] else (expected + 1) % 10)
        results.append(_result(k * S // 2, label))
    report = score(results, digits)
    table = demo_table(results, digits)
    assert report["graded"] == len(digits) == table.row_count
    lines = [demo_line(r, digits) for r in results]
    assert sum(line.endswith(" ok") for line in lines) == report["correct"]
    assert sum(line.endswith(" WRONG") for line in lines) == report["graded"] - report["correct"]

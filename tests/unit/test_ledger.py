"""The latency ledger of a classification: seven stages that add up to its total."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamfuse.engine import STAGES, _ledger, _Sample


def _sample(t_latest: int, arrived: int, pushed: int, decided: int) -> _Sample:
    return _Sample("video/front", None, None, t_latest, arrived, pushed, decided, [])


def test_each_stage_runs_from_the_end_of_the_one_before() -> None:
    s = _sample(1_000, 1_300, 1_310, 1_500)
    ledger = _ledger(s, (1_520, 1_600, 2_600, 2_650), virtual=False)
    assert ledger == {
        "transport": 300, "queue": 10, "sync_wait": 190, "dispatch": 20,
        "preprocess": 80, "inference": 1_000, "publish": 50, "total": 1_650,
    }  # fmt: skip
    assert list(ledger) == [*STAGES, "total"]


def test_a_capture_time_after_its_arrival_counts_as_no_transport() -> None:
    """Another box's clock mapped a little late: transport 0, and total their sum."""
    ledger = _ledger(_sample(1_400, 1_300, 1_310, 1_500), (1_500, 1_500, 1_600, 1_600), False)
    assert ledger["transport"] == 0 and ledger["total"] == 10 + 190 + 100


def test_on_the_recorded_clock_the_engine_takes_no_time() -> None:
    ledger = _ledger(_sample(1_000, 1_300, 1_310, 1_500), (0, 0, 0, 0), virtual=True)
    assert [ledger[k] for k in STAGES[3:]] == [0, 0, 0, 0] and ledger["total"] == 500


@given(st.lists(st.integers(0, 2**62), min_size=8, max_size=8))
def test_the_stages_always_sum_to_the_total_and_none_is_negative(times: list[int]) -> None:
    times.sort()
    ledger = _ledger(_sample(*times[:4]), (times[4], times[5], times[6], times[7]), False)
    assert ledger["total"] == times[7] - times[0] == sum(ledger[k] for k in STAGES)
    assert min(ledger.values()) >= 0

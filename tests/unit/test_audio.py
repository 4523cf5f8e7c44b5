"""Windowing PCM blocks into timestamped windows (pure logic, property-based)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfuse.audio import Windower, to_wire

NS = 1_000_000_000


@given(
    rate=st.sampled_from([8000, 16000, 44100, 48000]),
    window=st.integers(1, 400),
    hop=st.integers(1, 500),
    blocks=st.lists(st.integers(0, 300), min_size=1, max_size=40),
    t0=st.integers(0, 10**15),
)
def test_windows_are_exact_slices_timed_at_the_sample_rate(
    rate: int, window: int, hop: int, blocks: list[int], t0: int
) -> None:
    total = sum(blocks)
    signal = np.arange(total, dtype=np.float32)[:, None]
    w = Windower(rate, 1, window, hop)
    out, pos = [], 0
    for i, n in enumerate(blocks):
        out += w.push(signal[pos : pos + n], t0 if i == 0 else None)
        pos += n
    expected_starts = list(range(0, total - window + 1, hop))
    assert [int(s[0, 0]) if len(s) else None for s, _ in out] == expected_starts
    for (samples, t), start in zip(out, expected_starts, strict=True):
        assert samples.dtype == np.float32  # float32 windows, whatever comes in
        np.testing.assert_array_equal(samples[:, 0], signal[start : start + window, 0])
        assert t == t0 + start * NS // rate


def test_block_times_within_tolerance_slew_the_timeline_gently() -> None:
    w = Windower(16000, 1, 160, 160, slew=4)
    block = np.zeros((160, 1), np.float32)
    assert len(w.push(block, 0)) == 1
    # The device says the next block started 2 ms later than the sample count predicts.
    ((_, t_b),) = w.push(block, 10_000_000 + 2_000_000)
    assert t_b == 10_000_000 + 2_000_000 // 4 and isinstance(t_b, int)  # ns stay integers
    assert w.counters["clock_resync"] == 0


def test_a_jump_beyond_tolerance_starts_a_new_timeline_and_is_counted() -> None:
    w = Windower(16000, 1, 320, 160)
    block = np.ones((160, 1), np.float32)
    assert w.push(block, 0) == []
    # 500 ms of samples were lost (input overflow): the half-built window is discarded.
    assert w.push(block, 510_000_000) == []
    ((_, t),) = w.push(block, None)
    assert t == 510_000_000
    assert w.counters == {"clock_resync": 1, "samples_discarded": 160}


def test_blocks_of_the_wrong_shape_are_refused() -> None:
    w = Windower(16000, 2, 10, 10)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        w.push(np.zeros((10, 1), np.float32), 0)
    with pytest.raises(ValueError, match=r"^the first block needs a capture time$"):
        Windower(16000, 1, 10, 10).push(np.zeros((10, 1), np.float32))


def test_wire_formats() -> None:
    x = np.array([[-1.5], [-1.0], [0.0], [0.5], [1.0], [1.5]], dtype=np.float32)
    assert to_wire(x, "s16le").tolist() == [[-32768], [-32767], [0], [16383], [32767], [32767]]
    f32 = to_wire(x, "f32le")
    assert f32.dtype == np.dtype("<f4") and f32.tolist() == x.tolist()
    with pytest.raises(ValueError, match="u8"):
        to_wire(x, "u8")


def test_no_block_ends_after_it_was_delivered() -> None:
    """ADC times that claim a block ended after we received it are overruled."""
    w = Windower(16000, 1, 160, 160)
    block = np.zeros((160, 1), np.float32)
    # Reported capture start 0, so the block would end at 10 ms, but it arrived at 6 ms.
    ((_, t),) = w.push(block, 0, t_delivered=6_000_000)
    assert t == -4_000_000
    # The device insists on a later timeline, but the first block already ended exactly at
    # its delivery: the timeline may not move later.
    ((_, t2),) = w.push(block, 10_000_000, t_delivered=30_000_000)
    assert t2 - t == 10_000_000


def test_pulseaudio_pairs_give_a_steady_causal_timeline() -> None:
    """PulseAudio's ALSA plugin: two 10 ms blocks every 20 ms, both reporting the same ADC
    delay (15 ms). Windows stay exactly one hop apart and never end after delivery."""
    rate, block = 16000, np.zeros((160, 1), np.float32)
    w = Windower(rate, 1, 1600, 800)
    starts, ends_vs_delivery = [], []
    for i in range(2000):
        delivered = 1_000_000_000 + (i // 2) * 20_000_000 + (i % 2) * 50_000  # pairs
        for _, t0 in w.push(block, delivered - 15_000_000, t_delivered=delivered):
            starts.append(t0)
            ends_vs_delivery.append(delivered - (t0 + 100_000_000))
    steps = np.diff(starts[len(starts) // 2 :])  # after the first seconds of settling
    assert np.all(np.abs(steps - 50_000_000) <= 1_000), steps
    assert min(ends_vs_delivery) >= 0


@pytest.mark.parametrize(("window", "hop"), [(0, 1), (1, 0)])
def test_a_window_or_hop_under_one_sample_is_refused(window: int, hop: int) -> None:
    with pytest.raises(ValueError, match=r"^window and hop must be >= 1 sample$"):
        Windower(16000, 1, window, hop)


@pytest.mark.parametrize(("late_ns", "resyncs"), [(20_000_000, 0), (20_000_001, 1)])
def test_the_resync_tolerance_is_20_ms_inclusive(late_ns: int, resyncs: int) -> None:
    """A block reported exactly 20 ms off the sample count is slewed; 1 ns more resyncs."""
    w = Windower(16000, 1, 160, 160)
    block = np.zeros((160, 1), np.float32)
    w.push(block, 0)
    w.push(block, 10_000_000 + late_ns)
    assert w.counters["clock_resync"] == resyncs


def test_a_resync_discards_exactly_the_half_built_window() -> None:
    """After windows went out, only the samples of the one being built are discarded."""
    w = Windower(16000, 1, 320, 160)
    block = np.ones((160, 1), np.float32)
    out = [*w.push(block, 0), *w.push(block, None), *w.push(block, None)]
    assert [t for _, t in out] == [0, 10_000_000]  # windows at samples 0 and 160
    w.push(block, 800_000_000)  # samples were lost: a new timeline
    assert w.counters == {"clock_resync": 1, "samples_discarded": 160}
    fresh = np.arange(160, dtype=np.float32)[:, None] + 2
    ((samples, t),) = w.push(fresh, None)  # the new timeline's first window: nothing stale
    assert t == 800_000_000 and samples[:160].tolist() == block.tolist()
    assert samples[160:].tolist() == fresh.tolist()
    w.push(block, 2_000_000_000)  # a second loss: counted again, the half window again
    assert w.counters == {"clock_resync": 2, "samples_discarded": 320}


def test_the_default_slew_takes_a_64th_of_the_error_per_block() -> None:
    w = Windower(16000, 1, 160, 160)
    block = np.zeros((160, 1), np.float32)
    w.push(block, 0)
    ((_, t),) = w.push(block, 10_000_000 + 6_400_000)
    assert t == 10_000_000 + 6_400_000 // 64


def test_a_forward_slew_stops_at_the_delivery_slack() -> None:
    """A device clock running ahead pulls the timeline later by a 64th of its error per
    block, but never past what was delivered: the slew is cut to the smallest slack
    (here 30 us, where the error alone would move it 100 us)."""
    w = Windower(1000, 1, 10, 10)
    block = np.zeros((10, 1), np.float32)
    ((_, t0),) = w.push(block, 0, t_delivered=10_000_000 + 30_000)
    assert t0 == 0
    ((_, t1),) = w.push(block, 10_000_000 + 6_400_000, t_delivered=20_000_000 + 30_000)
    assert t1 == 10_000_000 + 30_000
    # and a slew of a single nanosecond is cut to nothing where an earlier block had no
    # slack to spare (this one has 5 us)
    w = Windower(1000, 1, 10, 10)
    w.push(block, 0, t_delivered=10_000_000)
    ((_, t1),) = w.push(block, 10_000_000 + 64, t_delivered=20_000_000 + 5_000)
    assert t1 == 10_000_000


def test_a_resync_counts_a_single_sample_half_built_and_none_when_nothing_was() -> None:
    w = Windower(1000, 1, 10, 10)
    assert len(w.push(np.ones((11, 1), np.float32), 0)) == 1  # one sample of the next one
    w.push(np.ones((5, 1), np.float32), 5_000_000_000)
    assert w.counters == {"clock_resync": 1, "samples_discarded": 1}
    w = Windower(1000, 1, 10, 10)
    w.push(np.ones((10, 1), np.float32), 0)  # a window exactly: nothing half built
    w.push(np.ones((5, 1), np.float32), 5_000_000_000)
    assert w.counters == {"clock_resync": 1}

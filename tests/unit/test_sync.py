"""The synchronizer, driven like message_filters' tests: simulated streams, no sockets."""

from __future__ import annotations

import copy
import itertools
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfuse.errors import ConfigError
from streamfuse.messages import AudioWindow, Envelope, VideoFrame
from streamfuse.sync import Bundle, SyncConfig, Synchronizer

from ..conftest import examples

MS = 1_000_000
S = 1_000_000_000


def frame(topic: str, t: int, seq: int = 0) -> Envelope:
    h = VideoFrame(stream=topic.split("/")[-1], seq=seq, t_capture=t, width=1, height=1)
    return Envelope(topic.encode(), h, None)


def window(topic: str, t0: int, ms: int = 1000, rate: int = 16000, seq: int = 0) -> Envelope:
    n = rate * ms // 1000
    h = AudioWindow(
        stream=topic.split("/")[-1],
        seq=seq,
        t_capture=t0,
        sample_rate=rate,
        channels=1,
        n_samples=n,
    )
    return Envelope(topic.encode(), h, None)


@dataclass
class Scenario:
    """Cameras and one microphone on a shared timeline, as they would arrive."""

    events: list[tuple[int, Envelope]]  # (arrival ns, message), in arrival order
    windows: list[Envelope]
    frames: dict[str, list[tuple[int, Envelope]]]  # per camera: (true time, message)
    offsets: dict[str, int]
    cfg: SyncConfig


@st.composite
def scenarios(
    draw: st.DrawFn,
    *,
    lossless: bool = False,
    small_jitter: bool = False,
    policy: str = "nearest-center",
) -> Scenario:
    n_cams = draw(st.integers(1, 3))
    cams = [f"video/cam{i}" for i in range(n_cams)]
    seconds = draw(st.integers(2, 4))
    win_ms = draw(st.sampled_from([200, 500, 1000]))
    hop_ms = draw(st.sampled_from([win_ms // 2, win_ms]))
    rng = random.Random(draw(st.integers(0, 2**32)))
    events: list[tuple[int, Envelope]] = []
    frames: dict[str, list[tuple[int, Envelope]]] = {}
    offsets: dict[str, int] = {}
    max_period = 0
    for cam in cams:
        fps = draw(st.sampled_from([10, 15, 24, 30, 60]))
        period = S // fps
        max_period = max(max_period, period)
        jitter = period // 4 if small_jitter else draw(st.integers(0, period))
        offset = draw(st.sampled_from([0, 40 * MS, -25 * MS]))
        offsets[cam] = offset
        drop = 0.0 if lossless else draw(st.sampled_from([0.0, 0.1, 0.5]))
        frames[cam] = []
        for i in range(seconds * fps):
            true_t = 10 * S + i * period + rng.randint(-jitter // 2, jitter // 2)
            env = frame(cam, true_t + offset, seq=i)
            frames[cam].append((true_t, env))
            if rng.random() >= drop:
                events.append((true_t + rng.randint(1 * MS, 6 * MS), env))
    windows = []
    for j in range(0, (seconds * 1000 - win_ms) // hop_ms + 1):
        t0 = 10 * S + j * hop_ms * MS
        env = window("audio/mic0", t0, win_ms, seq=j)
        windows.append(env)
        if lossless or rng.random() > 0.1:
            events.append((t0 + win_ms * MS + rng.randint(1 * MS, 20 * MS), env))
    # Arrivals in time order, then some shuffling among messages less than 5 ms apart.
    events.sort(key=lambda e: e[0])
    if not lossless:
        for i in range(len(events) - 1):
            if events[i + 1][0] - events[i][0] < 5 * MS and rng.random() < 0.3:
                events[i], events[i + 1] = events[i + 1], events[i]
        if draw(st.booleans()) and events:  # a duplicate delivery
            events.insert(len(events) // 2, events[len(events) // 3])
    # Poll ticks every 10 ms, as the engine does when nothing arrives.
    ticks = [(t, None) for t in range(10 * S, 10 * S + (seconds + 2) * S, 10 * MS)]
    merged = sorted(events + ticks, key=lambda e: e[0])  # stable: keeps the shuffles
    cfg = SyncConfig(
        cameras=tuple(cams),
        policy=policy,
        tolerance=max_period,  # type: ignore[arg-type]
        max_wait=150 * MS,
        offsets=offsets,
        k=3,
        reorder=0,
    )
    return Scenario(merged, windows, frames, offsets, cfg)  # type: ignore[arg-type]


def run(sc: Scenario, check_bounds: bool = False) -> tuple[Synchronizer, list[Bundle]]:
    sync = Synchronizer(sc.cfg)
    out: list[Bundle] = []
    for now, env in sc.events:
        out += sync.poll(now) if env is None else sync.push(env, now)
        if check_bounds:
            depths = sync.depths()
            assert all(v <= sc.cfg.max_frames for k, v in depths.items() if k != "windows")
            assert depths.get("windows", 0) <= sc.cfg.max_windows
    out += sync.poll(sc.events[-1][0] + sc.cfg.max_wait + 1)
    return sync, out


def signature(bundles: list[Bundle]) -> list[tuple[object, ...]]:
    return [
        (
            b.t0,
            b.missing,
            b.decided_by,
            b.emitted_at,
            tuple((k, tuple(e.header.seq for e in v)) for k, v in b.frames.items()),
        )
        for b in bundles
    ]


@settings(max_examples=examples(60), deadline=None)
@given(scenarios(policy="nearest-center") | scenarios(policy="k-frames"))
def test_properties_under_jitter_loss_reordering_and_offsets(sc: Scenario) -> None:
    _, out = run(sc, check_bounds=True)
    cfg = sc.cfg
    # Every pairing respects the tolerance, in corrected time.
    for b in out:
        k = cfg.k if cfg.policy == "k-frames" else 1
        targets = [b.t0 + (2 * j + 1) * (b.t1 - b.t0) // (2 * k) for j in range(k)]
        for cam, envs in b.frames.items():
            for e in envs:
                t = e.header.t_capture - sc.offsets[cam]
                assert min(abs(t - x) for x in targets) <= cfg.tolerance
    # Time order, and nothing held past its deadline (polls come every 10 ms).
    assert [b.t0 for b in out] == sorted(b.t0 for b in out)
    assert all(b.emitted_at <= b.t1 + cfg.max_wait + 10 * MS for b in out)
    # Each window at most once.
    assert len({b.t0 for b in out}) == len(out)
    # Same input, same output.
    assert signature(run(sc)[1]) == signature(out)


@settings(max_examples=examples(40), deadline=None)
@given(scenarios(lossless=True))
def test_without_loss_every_window_comes_out_exactly_once(sc: Scenario) -> None:
    sync, out = run(sc)
    assert sorted(b.audio.header.seq for b in out) == [w.header.seq for w in sc.windows]  # type: ignore[union-attr]
    assert sync.drops["late"] == sync.drops["duplicate"] == sync.drops["overflow"] == 0


@settings(max_examples=examples(40), deadline=None)
@given(
    scenarios(lossless=True, small_jitter=True)
    | scenarios(lossless=True, small_jitter=True, policy="k-frames")
)
def test_equals_the_offline_optimum_without_loss(sc: Scenario) -> None:
    """Brute force: for every window and target, the frame of least |dt| over all frames."""
    _, out = run(sc)
    k = sc.cfg.k if sc.cfg.policy == "k-frames" else 1
    for b in out:
        assert not b.partial  # (the last windows are decided by deadline: no later frame comes)
        for cam, envs in b.frames.items():
            targets = [b.t0 + (2 * j + 1) * (b.t1 - b.t0) // (2 * k) for j in range(k)]
            best = [min(sc.frames[cam], key=lambda f: (abs(f[0] - x), f[0]))[1] for x in targets]
            assert [e.header.seq for e in envs] == [e.header.seq for e in best]


def test_a_silent_camera_gives_a_partial_bundle_at_the_deadline() -> None:
    cfg = SyncConfig(cameras=("video/a", "video/b"), max_wait=100 * MS)
    sync = Synchronizer(cfg)
    for i in range(40):
        assert sync.push(frame("video/a", i * 33 * MS, seq=i), i * 33 * MS + MS) == []
    assert sync.push(window("audio/m", 0, ms=1000), 1000 * MS + 2 * MS) == []
    assert sync.poll(1099 * MS) == []
    (b,) = sync.poll(1100 * MS)
    assert b.partial and b.missing == ("video/b",) and b.decided_by == "deadline"
    assert b.frames["video/a"][0].header.t_capture == 495 * MS  # nearest to the 500 ms centre
    assert b.emitted_at - b.t1 == 100 * MS


def test_complete_bundles_leave_as_soon_as_decided() -> None:
    sync = Synchronizer(SyncConfig(cameras=("video/a",), max_wait=500 * MS))
    assert sync.push(window("audio/m", 0, ms=200), 201 * MS) == []
    assert sync.push(frame("video/a", 90 * MS), 202 * MS) == []
    (b,) = sync.push(frame("video/a", 120 * MS), 203 * MS)  # a frame past the centre decides it
    assert b.decided_by == "complete" and b.frames["video/a"][0].header.t_capture == 90 * MS


def test_far_frames_are_not_paired_and_offsets_apply() -> None:
    cfg = SyncConfig(cameras=("video/a",), tolerance=10 * MS, offsets={"video/a": 40 * MS})
    sync = Synchronizer(cfg)
    sync.push(window("audio/m", 0, ms=200), 201 * MS)
    # Corrected: 100 ms, exactly the centre, so it also decides the window at once.
    (b,) = sync.push(frame("video/a", 140 * MS), 202 * MS)
    assert b.frames["video/a"][0].header.t_capture == 140 * MS
    sync2 = Synchronizer(SyncConfig(cameras=("video/a",), tolerance=10 * MS))
    sync2.push(window("audio/m", 0, ms=200), 201 * MS)
    sync2.push(frame("video/a", 80 * MS), 202 * MS)
    (b2,) = sync2.push(frame("video/a", 125 * MS), 203 * MS)  # both 20+ ms from the centre
    assert b2.missing == ("video/a",) and b2.frames["video/a"] == ()


def test_drops_are_counted_by_reason() -> None:
    sync = Synchronizer(
        SyncConfig(cameras=("video/a",), max_frames=4, max_windows=2, retain=10 * S)
    )
    sync.push(frame("video/a", 10 * MS), 11 * MS)
    sync.push(frame("video/a", 10 * MS), 12 * MS)  # the same frame again
    sync.push(frame("video/x", 10 * MS), 12 * MS)  # a camera nobody configured
    for i in range(5):  # 6 frames in a queue of 4
        sync.push(frame("video/a", (20 + i) * MS), 30 * MS)
    assert sync.drops == {"duplicate": 1, "unknown_stream": 1, "overflow": 2}
    for t0 in (1 * S, 2 * S, 3 * S):  # 3 pending windows, room for 2
        sync.push(window("audio/m", t0), 31 * MS)
    assert sync.drops["overflow"] == 3 and sync.depths()["windows"] == 2
    assert len(sync.poll(10 * S)) == 2  # both go out at their deadlines
    sync.push(window("audio/m", 2 * S + 1), 10 * S)  # older than what already left
    sync.push(frame("video/a", 1 * S), 10 * S)  # far older than anything still wanted
    assert sync.drops["out_of_order"] == 1 and sync.drops["late"] == 1
    # The 4 queued frames were never paired with anything; past `retain` they are let go.
    sync.poll(100 * S)
    assert sync.drops["unpaired"] == 4 and sync.depths() == {"video/a": 0, "windows": 0}


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"sync\.cameras"):
        SyncConfig(cameras=())
    with pytest.raises(ConfigError, match=r"sync\.tolerance"):
        SyncConfig(cameras=("video/a",), tolerance=-1)
    with pytest.raises(ConfigError, match=r"sync\.policy"):
        SyncConfig(cameras=("video/a",), policy="psychic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="approximate-time needs"):
        SyncConfig(cameras=("video/a",), policy="approximate-time")


# -- approximate time ------------------------------------------------------------------------


@settings(max_examples=examples(40), deadline=None)
@given(
    n=st.integers(2, 4),
    count=st.integers(5, 30),
    seed=st.integers(0, 2**32),
    with_period=st.booleans(),
)
def test_approximate_time_finds_the_aligned_sets(
    n: int, count: int, seed: int, with_period: bool
) -> None:
    """Same-rate streams with jitter under a quarter period: the optimal sets (least total
    spread, brute force over index shifts) are the i-th message of every stream."""
    rng = random.Random(seed)
    period = 33 * MS
    names = tuple(f"s/{i}" for i in range(n))
    arrivals = []
    for name in names:
        for i in range(count):
            t = S + i * period + rng.randint(-period // 8, period // 8)
            arrivals.append((t + rng.randint(MS, 3 * MS), frame(name, t, seq=i)))
    arrivals.sort(key=lambda a: a[0])
    cfg = SyncConfig(
        cameras=names,
        policy="approximate-time",
        tolerance=period // 2,
        max_wait=10 * S,
        min_period={x: period * 3 // 4 for x in names} if with_period else {},
    )
    sync = Synchronizer(cfg)
    out: list[Bundle] = []
    for now, env in arrivals:
        out += sync.push(env, now)
    out += sync.poll(arrivals[-1][0] + 11 * S)
    assert all(not b.partial for b in out)
    assert [[b.frames[x][0].header.seq for x in names] for b in out] == [
        [i] * n for i in range(count)
    ]

    # Brute force: pairing the streams with their indices shifted gives sets of larger spread.
    def mean_spread(shift: tuple[int, ...]) -> float:
        spreads = []
        for i in range(count):
            idx = [i + s for s in shift]
            if all(0 <= j < count for j in idx):
                ts = [out[j].frames[x][0].header.t_capture for j, x in zip(idx, names, strict=True)]
                spreads.append(max(ts) - min(ts))
        return sum(spreads) / len(spreads) if spreads else float("inf")

    aligned = mean_spread((0,) * n)
    for s in itertools.product((-1, 0, 1), repeat=n - 1):
        if any(s):
            assert mean_spread((0, *s)) > aligned


def test_approximate_time_with_min_period_does_not_wait_a_period() -> None:
    cfg = SyncConfig(
        cameras=("s/a", "s/b"),
        policy="approximate-time",
        min_period={"s/a": 30 * MS, "s/b": 30 * MS},
    )
    sync = Synchronizer(cfg)
    assert sync.push(frame("s/a", 100 * MS), 101 * MS) == []
    (b,) = sync.push(frame("s/b", 102 * MS), 103 * MS)  # no later message can be closer
    assert (b.t0, b.t1) == (100 * MS, 102 * MS)
    cfg2 = SyncConfig(cameras=("s/a", "s/b"), policy="approximate-time")
    sync2 = Synchronizer(cfg2)
    sync2.push(frame("s/a", 100 * MS), 101 * MS)
    assert sync2.push(frame("s/b", 102 * MS), 103 * MS) == []  # s/a might still send 101 ms
    (b2,) = sync2.push(frame("s/a", 133 * MS), 134 * MS)
    assert (b2.t0, b2.t1) == (100 * MS, 102 * MS)


@settings(max_examples=examples(100), deadline=None)
@given(
    policy=st.sampled_from(["nearest-center", "k-frames"]),
    cams=st.lists(
        st.tuples(
            st.integers(10, 60),  # the camera's lower bound between frames, ms
            st.integers(-50, 50),  # its clock offset, ms
            st.lists(st.integers(0, 100), min_size=20, max_size=120),  # extra gap, % of bound
            st.integers(0, 800),  # how late its frames are delivered, ms
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_irregular_cameras_with_offsets_get_their_offline_optimum(
    policy: str, cams: list[tuple[int, int, list[int], int]]
) -> None:
    """Frames at irregular times, each gap at least its camera's lower bound (drawn by
    hypothesis, so it shrinks), each camera's clock off by its own offset and its frames
    delivered up to 0.8 s late (after the audio window that wants them): every window's
    frames are the offline optimum, the frame of least |dt| in corrected time (the earlier
    on a tie), among all frames of the stream."""
    names = [f"video/c{i}" for i in range(len(cams))]
    events: list[tuple[int, Envelope | None]] = []
    truth: dict[str, list[tuple[int, int]]] = {}
    for name, (bound, offset, extra, latency) in zip(names, cams, strict=True):
        t, truth[name] = 10 * S, []
        for seq, pct in enumerate(extra):
            t += bound * MS + bound * MS * pct // 100
            truth[name].append((t, seq))
            events.append((t + latency * MS, frame(name, t + offset * MS, seq=seq)))
    end = min(ts[-1][0] for ts in truth.values())
    windows = range(10 * S, end - S, S // 2)
    for j, t0 in enumerate(windows):
        events.append((t0 + S + 3 * MS, window("audio/mic0", t0, 1000, seq=j)))
    events += [(t, None) for t in range(10 * S, end + 2 * S, 10 * MS)]
    events.sort(key=lambda e: e[0])
    cfg = SyncConfig(
        cameras=tuple(names),
        policy=policy,  # type: ignore[arg-type]
        k=3,
        tolerance=10 * S,
        max_wait=2 * S,  # longer than any delivery latency: decided by frames, not deadline
        offsets={n: c[1] * MS for n, c in zip(names, cams, strict=True)},
    )
    sync, out = Synchronizer(cfg), []
    for now, env in events:
        out += sync.poll(now) if env is None else sync.push(env, now)
    assert [b.t0 for b in out] == list(windows)
    k = 3 if policy == "k-frames" else 1
    for b in out:
        targets = [b.t0 + (2 * j + 1) * (b.t1 - b.t0) // (2 * k) for j in range(k)]
        for name in names:
            best = [min(truth[name], key=lambda f: (abs(f[0] - x), f[0]))[1] for x in targets]
            assert [e.header.seq for e in b.frames[name]] == best


# -- edges a mutant would move (issue 21): each test fails if its rule is bent ----------------


def test_a_frame_exactly_tolerance_away_is_paired_and_one_ns_more_is_not() -> None:
    for dt, paired in ((50 * MS, True), (50 * MS + 1, False)):
        sync = Synchronizer(SyncConfig(cameras=("video/a",), tolerance=50 * MS, max_wait=S))
        sync.push(window("audio/m", 0, ms=200), 201 * MS)  # centre at 100 ms
        (b,) = sync.push(frame("video/a", 100 * MS + dt), 202 * MS)  # past the centre: decided
        assert bool(b.frames["video/a"]) is paired, dt


def test_reorder_holds_a_window_until_a_frame_that_far_past_its_target() -> None:
    cfg = SyncConfig(cameras=("video/a",), reorder=30 * MS, max_wait=10 * S)
    sync = Synchronizer(cfg)
    sync.push(window("audio/m", 0, ms=200), 201 * MS)
    assert sync.push(frame("video/a", 129 * MS), 202 * MS) == []  # 29 ms past: not yet
    # an earlier frame may still come (reordering): it does, and is the nearer one
    assert sync.push(frame("video/a", 101 * MS), 203 * MS) == []
    (b,) = sync.push(frame("video/a", 130 * MS), 204 * MS)  # 30 ms past the centre: decided
    assert b.decided_by == "complete" and b.frames["video/a"][0].header.t_capture == 101 * MS


def test_a_frame_older_than_the_last_window_minus_tolerance_is_late_and_not_before() -> None:
    sync = Synchronizer(SyncConfig(cameras=("video/a",), tolerance=50 * MS, max_wait=S))
    sync.push(window("audio/m", 1 * S, ms=200), 1201 * MS)
    sync.push(frame("video/a", 1100 * MS), 1202 * MS)  # decides it: the floor is now 1 s
    sync.push(frame("video/a", 950 * MS), 1203 * MS)  # floor - tolerance exactly: kept
    assert sync.drops["late"] == 0
    sync.push(frame("video/a", 950 * MS - 1), 1204 * MS)
    assert sync.drops["late"] == 1


def test_frames_past_retain_are_let_go_and_counted_and_not_a_ns_before() -> None:
    sync = Synchronizer(SyncConfig(cameras=("video/a",), retain=2 * S))
    for i in range(3):
        sync.push(frame("video/a", i * MS), i * MS)
    sync.poll(2 * S)  # the oldest is exactly retain old: kept
    assert sync.depths()["video/a"] == 3 and sync.drops["unpaired"] == 0
    sync.poll(2 * S + 1)
    assert sync.depths()["video/a"] == 2 and sync.drops["unpaired"] == 1


def test_a_tie_between_two_frames_goes_to_the_earlier() -> None:
    sync = Synchronizer(SyncConfig(cameras=("video/a",), max_wait=S))
    sync.push(window("audio/m", 0, ms=200), 201 * MS)
    sync.push(frame("video/a", 90 * MS), 202 * MS)
    (b,) = sync.push(frame("video/a", 110 * MS), 203 * MS)  # both 10 ms from the centre
    assert b.frames["video/a"][0].header.t_capture == 90 * MS


# -- scenarios drawn by hypothesis itself (it shrinks and aims), with a conservation law -------


@st.composite
def drawn(draw: st.DrawFn) -> tuple[SyncConfig, list[tuple[int, Envelope | None]]]:
    """A small world: 1-2 cameras, a microphone, every time drawn (ties, exact-tolerance
    frames, reordering, duplicates, old frames, windows out of order), small queues."""
    cams = [f"video/c{i}" for i in range(draw(st.integers(1, 2)))]
    tol = draw(st.sampled_from([0, 10 * MS, 33 * MS]))
    cfg = SyncConfig(
        cameras=tuple(cams),
        policy=draw(st.sampled_from(["nearest-center", "k-frames"])),
        k=draw(st.integers(1, 3)),
        tolerance=tol,
        max_wait=draw(st.sampled_from([0, 50 * MS, 300 * MS])),
        reorder=draw(st.sampled_from([0, 20 * MS])),
        max_frames=draw(st.integers(1, 6)),
        max_windows=draw(st.integers(1, 3)),
        retain=draw(st.sampled_from([300 * MS, 3 * S])),
    )
    events: list[tuple[int, Envelope | None]] = []
    seq: dict[str, int] = {}
    for _ in range(draw(st.integers(1, 40))):
        now = draw(st.integers(0, 3 * S))
        kind = draw(st.sampled_from(["frame", "frame", "frame", "window", "tick"]))
        if kind == "tick":
            events.append((now, None))
            continue
        if kind == "window":
            t0 = draw(st.integers(0, 2 * S).map(lambda t: t - t % (50 * MS)))
            events.append((now, window("audio/m", t0, ms=draw(st.sampled_from([100, 200])))))
            continue
        cam = draw(st.sampled_from([*cams, "video/stranger"]))
        # on a 10 ms grid (ties and exact-tolerance distances happen), or anywhere
        t = draw(st.integers(0, 300).map(lambda k: k * 10 * MS) | st.integers(0, 3 * S))
        seq[cam] = seq.get(cam, 0) + 1
        env = frame(cam, t, seq=seq[cam])
        events.append((now, env))
        if draw(st.integers(0, 9)) == 0:  # the same delivery again
            events.append((now, env))
    events.sort(key=lambda e: e[0])  # receive order is time order; capture times are not
    return cfg, events


@settings(max_examples=examples(300), deadline=None)
@given(drawn())
def test_every_message_is_paired_dropped_by_reason_or_still_held(
    world: tuple[SyncConfig, list[tuple[int, Envelope | None]]],
) -> None:
    """Conservation: what was pushed = what went out + what was dropped, by reason, + what
    the synchronizer still holds. Every pairing within tolerance of its target."""
    cfg, events = world
    sync = Synchronizer(cfg)
    out: list[Bundle] = []
    for now, env in events:
        out += sync.poll(now) if env is None else sync.push(env, now)
        d = sync.depths()
        assert all(d[c] <= cfg.max_frames for c in cfg.cameras) and d["windows"] <= cfg.max_windows
    pushed_frames = sum(1 for _, e in events if e is not None and e.topic.startswith(b"video/"))
    pushed_windows = sum(1 for _, e in events if e is not None and e.topic.startswith(b"audio/"))
    held = {id(e) for q in sync._queues.values() for e in q.envs}
    used = {id(e) for b in out for envs in b.frames.values() for e in envs}
    # each message ends in exactly one place (a duplicate delivery: kept once, dropped once)
    kept = len(held) + len(used - held) + len(out) + sync.depths()["windows"]
    assert pushed_frames + pushed_windows == kept + sum(sync.drops.values()), dict(sync.drops)
    for b in out:
        k = cfg.k if cfg.policy == "k-frames" else 1
        targets = [b.t0 + (2 * j + 1) * (b.t1 - b.t0) // (2 * k) for j in range(k)]
        for envs in b.frames.values():
            assert len(envs) <= k
            for e in envs:
                assert min(abs(e.header.t_capture - x) for x in targets) <= cfg.tolerance


@settings(max_examples=examples(150), deadline=None)
@given(drawn(), st.booleans())
def test_due_is_exactly_when_the_next_bundle_leaves_with_nothing_new(
    world: tuple[SyncConfig, list[tuple[int, Envelope | None]]], approx: bool
) -> None:
    """The engine waits for input until ``due()`` instead of polling: with nothing more
    arriving, no bundle leaves a nanosecond before it and one leaves at it; None: none ever."""
    cfg, events = world
    if approx:  # the same messages through approximate-time (its streams: cameras + mic)
        cfg = SyncConfig(cameras=(*cfg.cameras, "audio/m"), policy="approximate-time",
                         max_wait=cfg.max_wait or None, max_frames=cfg.max_frames)  # fmt: skip
    sync = Synchronizer(cfg)
    for now, env in events:
        sync.poll(now) if env is None else sync.push(env, now)
        due, probe = sync.due(), copy.deepcopy(sync)
        if due is None:
            assert probe.poll(now + 100 * S) == []
            continue
        assert due > now  # what was due by now has left
        assert probe.poll(due - 1) == []
        assert len(probe.poll(due)) >= 1


#: Every SyncConfig refusal: (the settings, the field named, the whole message).
REFUSALS = [
    ({"cameras": ()}, "sync.cameras", "name at least one stream"),
    ({"cameras": ("video/a", "video/a")}, "sync.cameras",
     "lists a stream twice: ['video/a', 'video/a']"),
    ({"policy": "psychic"}, "sync.policy", "unknown policy 'psychic'"),
    ({"policy": "approximate-time"}, "sync.cameras", "approximate-time needs at least two streams"),
    ({"max_wait": None}, "sync.max_wait", "only approximate-time can wait for ever (None)"),
    ({"cameras": ("s/a", "s/b"), "policy": "approximate-time", "age_penalty": -0.5},
     "sync.age_penalty", "must be >= 0, got -0.5"),
    ({"k": 0}, "sync.k", "must be >= 1, got 0"),
    ({"tolerance": -1}, "sync.tolerance", "must be >= 0, got -1"),
    ({"max_wait": -1}, "sync.max_wait", "must be >= 0, got -1"),
    ({"cameras": ("s/a", "s/b"), "policy": "approximate-time", "max_interval": -2},
     "sync.max_interval", "must be >= 0, got -2"),
    ({"reorder": -3}, "sync.reorder", "must be >= 0, got -3"),
    ({"max_frames": 0}, "sync.max_frames", "must be >= 1, got 0"),
    ({"max_windows": 0}, "sync.max_windows", "must be >= 1, got 0"),
    ({"retain": -1}, "sync.retain", "must be >= 0, got -1"),
    ({"cameras": ("s/a", "s/b"), "policy": "approximate-time", "offsets": {"s/x": 1}},
     "sync.offsets", "names streams not in sync.cameras: ['s/x']"),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "field", "message"), REFUSALS)
def test_each_refusal_names_its_field_in_one_exact_line(
    settings: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        SyncConfig(**{"cameras": ("video/a",), **settings})  # type: ignore[arg-type]
    assert (info.value.field, info.value.problem) == (field, message)
    assert str(info.value) == f"{field}: {message}"


@pytest.mark.parametrize(
    "settings",
    [
        {"k": 1, "tolerance": 0, "max_wait": 0, "reorder": 0, "retain": 0},
        {"max_frames": 1, "max_windows": 1},
        {"offsets": {"video/other": 5}},  # window policies allow offsets of any topic
        {"cameras": ("s/a", "s/b"), "policy": "approximate-time", "max_wait": None,
         "age_penalty": 0.0, "max_interval": 0},
    ],
)  # fmt: skip
def test_the_boundaries_themselves_are_accepted(settings: dict[str, object]) -> None:
    SyncConfig(**{"cameras": ("video/a",), **settings})  # type: ignore[arg-type]


def test_an_offset_on_the_microphone_moves_its_windows() -> None:
    cfg = SyncConfig(cameras=("video/a",), offsets={"audio/m": 40 * MS}, max_wait=S)
    sync = Synchronizer(cfg)
    sync.push(window("audio/m", 240 * MS, ms=200), 441 * MS)  # corrected: [200, 400) ms
    (b,) = sync.push(frame("video/a", 300 * MS), 442 * MS)  # its centre exactly: decided
    assert (b.t0, b.t1) == (200 * MS, 400 * MS) and b.frames["video/a"]


def test_a_window_delivered_twice_is_counted_once_as_a_duplicate() -> None:
    sync = Synchronizer(SyncConfig(cameras=("video/a",), max_wait=S))
    w = window("audio/m", 0, ms=200)
    sync.push(w, 201 * MS)
    sync.push(w, 202 * MS)  # pending: the same again
    (b,) = sync.poll(2 * S)
    sync.push(w, 2 * S + 1)  # already out: the same again
    assert sync.drops == {"duplicate": 2} and b.t1 == 200 * MS


def test_window_ends_stay_integer_nanoseconds() -> None:
    sync = Synchronizer(SyncConfig(cameras=("video/a",), max_wait=0))
    h = AudioWindow(stream="m", t_capture=0, sample_rate=48000, channels=1, n_samples=1)
    (b,) = sync.push(Envelope(b"audio/m", h, None), S)
    assert b.t1 == 20833 and type(b.t1) is int  # 1 / 48000 s, floored, not a float


def test_approximate_time_sets_are_complete_and_max_interval_binds() -> None:
    cfg = SyncConfig(cameras=("s/a", "s/b"), policy="approximate-time",
                     min_period={"s/a": 30 * MS, "s/b": 30 * MS})  # fmt: skip
    sync = Synchronizer(cfg)
    sync.push(frame("s/a", 100 * MS), 101 * MS)
    (b,) = sync.push(frame("s/b", 105 * MS), 106 * MS)
    assert (b.missing, b.decided_by, b.audio) == ((), "complete", None)
    assert {k: [e.header.t_capture for e in v] for k, v in b.frames.items()} == {
        "s/a": [100 * MS], "s/b": [105 * MS]}  # fmt: skip
    narrow = Synchronizer(SyncConfig(**{**cfg.__dict__, "max_interval": 4 * MS}))
    narrow.push(frame("s/a", 100 * MS), 101 * MS)
    assert narrow.push(frame("s/b", 105 * MS), 106 * MS) == []  # 5 ms apart: too wide


# -- the synchronizer around ROS's algorithm, and a few exact counts --------------------------


def _approx(**kw: object) -> Synchronizer:
    cfg = {"cameras": ("s/a", "s/b"), "policy": "approximate-time", "max_wait": 50 * MS, **kw}
    return Synchronizer(SyncConfig(**cfg))  # type: ignore[arg-type]


def test_approximate_time_lets_an_incomplete_set_out_at_its_deadline_exactly() -> None:
    sync = _approx()
    a = frame("s/a", 100 * MS)
    assert sync.push(a, 101 * MS) == [] and sync.depths() == {"s/a": 1, "s/b": 0}
    assert sync.poll(150 * MS - 1) == []
    (b,) = sync.poll(150 * MS)  # oldest + max_wait: due now, not a nanosecond later
    assert b == Bundle(100 * MS, 100 * MS, None, {"s/a": (a,), "s/b": ()}, ("s/b",),
                       "deadline", 150 * MS)  # fmt: skip
    assert b.partial and sync.depths() == {"s/a": 0, "s/b": 0}


def test_approximate_time_checks_deadlines_on_every_push_unless_it_waits_for_ever() -> None:
    sync = _approx()
    a = frame("s/a", 100 * MS)
    sync.push(a, 101 * MS)
    out = sync.push(frame("s/a", 500 * MS, seq=1), 501 * MS)  # a's deadline has passed
    assert [(b.decided_by, b.missing, b.emitted_at) for b in out] == [
        ("deadline", ("s/b",), 501 * MS)
    ]
    forever = _approx(max_wait=None)
    forever.push(a, 101 * MS)
    assert forever.push(frame("s/a", 500 * MS, seq=1), 10 * S) == []
    assert forever.poll(100 * S) == []


def test_a_complete_approximate_set_says_so_with_its_span_and_time() -> None:
    sync = _approx(min_period={"s/a": 30 * MS, "s/b": 30 * MS})
    a, b = frame("s/a", 100 * MS), frame("s/b", 104 * MS)
    sync.push(a, 101 * MS)
    (got,) = sync.push(b, 105 * MS)
    assert got == Bundle(100 * MS, 104 * MS, None, {"s/a": (a,), "s/b": (b,)}, (),
                         "complete", 105 * MS)  # fmt: skip


def test_approximate_time_corrects_each_streams_offset_and_times_windows_by_centre() -> None:
    """s/b's clock runs 10 ms late (offset +10 ms: subtracted); an audio window counts at
    its centre (t_capture + half its length)."""
    sync = _approx(cameras=("s/a", "s/b", "audio/m"), offsets={"s/b": 10 * MS},
                   min_period={"s/a": 30 * MS, "s/b": 30 * MS, "audio/m": 30 * MS})  # fmt: skip
    sync.push(frame("s/a", 600 * MS), 601 * MS)
    sync.push(frame("s/b", 610 * MS), 611 * MS)
    (got,) = sync.push(window("audio/m", 100 * MS, ms=1000), 1101 * MS)
    assert (got.t0, got.t1) == (600 * MS, 600 * MS)


def test_every_stream_the_synchronizer_does_not_know_is_counted_once() -> None:
    for sync in (_approx(), Synchronizer(SyncConfig(cameras=("video/a",)))):
        for t in (1, 2):
            assert sync.push(frame("video/stranger", t * MS), t * MS) == []
        assert sync.drops == {"unknown_stream": 2}


def test_approximate_time_counts_each_message_it_lets_go_by_reason() -> None:
    sync = _approx(max_frames=2, max_wait=None)
    for i in range(5):  # s/b never sends: s/a's queue of 2 overflows three times
        sync.push(frame("s/a", (100 + 33 * i) * MS, seq=i), (101 + 33 * i) * MS)
    assert sync.drops == {"overflow": 3} and sync.depths() == {"s/a": 2, "s/b": 0}


def test_a_full_queue_loses_its_oldest_unpaired_frame_only() -> None:
    cfg = SyncConfig(cameras=("video/a",), max_frames=2, max_wait=10 * S, tolerance=5 * MS)
    sync = Synchronizer(cfg)
    for i in range(3):  # no window wants them
        sync.push(frame("video/a", (10 + i) * S, seq=i), (10 + i) * S)
    assert sync.drops["overflow"] == 1 and sync.depths()["video/a"] == 2


def test_the_age_penalty_setting_reaches_the_algorithm() -> None:
    assert _approx(age_penalty=0.0)._ros.age_penalty == 0.0
    assert _approx(age_penalty=0.5)._ros.age_penalty == 0.5


def test_a_message_of_no_stream_kind_is_counted_and_deadlines_still_pass() -> None:
    from streamfuse.messages import Heartbeat

    sync = Synchronizer(SyncConfig(cameras=("video/a",)))
    beat = Envelope(b"heartbeat/x", Heartbeat(stream="x", t_capture=1), None)
    assert sync.push(beat, MS) == [] and sync.push(beat, 2 * MS) == []
    assert sync.drops == {"unknown_stream": 2}
    for n in range(3):  # the same frame three times: two duplicates
        sync.push(frame("video/a", 10 * MS), (11 + n) * MS)
    assert sync.drops == {"unknown_stream": 2, "duplicate": 2}
    approx = _approx()
    approx.push(frame("s/a", 100 * MS), 101 * MS)
    (due,) = approx.push(frame("s/stranger", 1), 200 * MS)  # s/a's deadline was 150 ms
    assert (due.decided_by, due.emitted_at) == ("deadline", 200 * MS)


def test_a_window_with_no_wait_goes_out_at_its_end_exactly() -> None:
    sync = Synchronizer(SyncConfig(cameras=("video/a",), max_wait=0))
    assert sync.push(window("audio/m", 0), 500 * MS) == []
    assert sync.poll(1000 * MS - 1) == []
    (b,) = sync.poll(1000 * MS)
    assert (b.t0, b.t1, b.decided_by, b.missing) == (0, 1000 * MS, "deadline", ("video/a",))


def test_a_paired_frame_leaving_a_full_queue_is_not_counted_lost() -> None:
    sync = Synchronizer(SyncConfig(cameras=("video/a",), max_frames=2))
    sync.push(frame("video/a", 500 * MS), 501 * MS)
    (b,) = sync.push(window("audio/m", 0), 1001 * MS)  # pairs the 500 ms frame
    assert b.frames["video/a"][0].header.t_capture == 500 * MS
    for i, t in enumerate((1100, 1200)):  # the paired one leaves: not lost
        sync.push(frame("video/a", t * MS, seq=i + 1), (t + 1) * MS)
    assert sync.drops["overflow"] == 0
    sync.push(frame("video/a", 1300 * MS, seq=3), 1301 * MS)  # 1100, never paired, leaves
    assert sync.drops == {"overflow": 1}


def test_too_many_waiting_windows_lose_the_oldest() -> None:
    sync = Synchronizer(SyncConfig(cameras=("video/a",), max_windows=2, max_wait=10 * S))
    for t in (0, 1000, 2000):
        sync.push(window("audio/m", t * MS), (t + 1001) * MS)
    assert sync.drops == {"overflow": 1} and sync.depths()["windows"] == 2
    assert [b.t0 for b in sync.poll(20 * S)] == [1000 * MS, 2000 * MS]


def test_frames_behind_the_last_window_are_let_go_at_once_counted_unpaired() -> None:
    """Not after `retain` (3 s): once a window has gone out, no later one can want a frame
    older than its start minus the tolerance."""
    sync = Synchronizer(SyncConfig(cameras=("video/a",)))
    for t in range(100, 1000, 100):
        sync.push(frame("video/a", t * MS, seq=t), (t + 1) * MS)
    sync.push(window("audio/m", 0), 1001 * MS)  # pairs 500 ms
    for t in range(1000, 2000, 100):
        sync.push(frame("video/a", t * MS, seq=t), (t + 1) * MS)
    assert "unpaired" not in sync.drops
    sync.push(window("audio/m", 1000 * MS), 2001 * MS)  # floor 1 s: 100..900 go, 500 paired
    assert sync.drops == {"unpaired": 8}
    for t in (100, 200):  # windows that start before the last one out: each counted
        assert sync.push(window("audio/m", t * MS), 2100 * MS) == []
    assert sync.drops == {"unpaired": 8, "out_of_order": 2}

"""The synchronizer: which camera frames go with which audio window. Pure logic.

No sockets, no threads, no clock reads: messages and the current time go in
(:meth:`Synchronizer.push`, :meth:`Synchronizer.poll`), bundles come out, and the same
input sequence always gives the same output, live or replayed.

Policies (:class:`SyncConfig.policy`):

``nearest-center``
    each audio window ``[t0, t1)`` gets, per camera, the frame nearest its centre.
``k-frames``
    K frames per camera, nearest to the centres of K equal slices of the window.
``approximate-time``
    any N streams, one message each: ROS 2 message_filters' ApproximateTime, ported step
    for step (:mod:`streamfuse.approximate`; ROS's own tests pass): ``max_frames`` is its
    queue size, ``min_period`` its inter-message lower bounds, ``age_penalty`` and
    ``max_interval`` its own. On top, optionally: ``max_wait`` (None: as ROS, never) gives
    up on a full set once the oldest held message is that old and emits the front of every
    stream that has one, partial.

Rules shared by the window policies: a frame farther than ``tolerance`` from its target is
not paired; a bundle goes out as soon as it is decided, or ``max_wait`` after its window
ended, marked partial with the missing streams named. For all: a per-stream clock offset is
subtracted from its times (a camera known to lag 40 ms has offset +40 ms); every queue is
bounded and every dropped message is counted by reason. Bundles come out in time order.
``docs/synchronizer.md`` states what each policy guarantees.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .approximate import ApproximateTime
from .errors import ConfigError
from .messages import AudioWindow, Envelope, VideoFrame

__all__ = ["Bundle", "DropReason", "SyncConfig", "Synchronizer"]

Policy = Literal["nearest-center", "k-frames", "approximate-time"]
DropReason = Literal["late", "duplicate", "overflow", "unpaired", "out_of_order", "unknown_stream"]
MS = 1_000_000


@dataclass(frozen=True)
class SyncConfig:
    """How to pair. Times in integer ns; streams named by topic (``video/front``)."""

    cameras: tuple[str, ...]
    """Camera topics a bundle should contain (window policies) — or, for
    ``approximate-time``, every stream to be matched (any kind)."""
    policy: Policy = "nearest-center"
    k: int = 4
    tolerance: int = 50 * MS
    """Window policies: a frame farther than this from its target is not paired."""
    max_wait: int | None = 200 * MS
    """How long after its end a window (or, approximate-time, the oldest held message) waits
    for what is missing before it goes out partial. approximate-time: None waits for ever,
    as ROS does."""
    offsets: Mapping[str, int] = field(default_factory=dict)
    reorder: int = 0
    """How far behind its newest frame a camera's frames may still arrive: a camera counts
    as decided for a target only once it has a frame this far past it."""
    min_period: Mapping[str, int] = field(default_factory=dict)
    """approximate-time: the least gap between two messages of a stream, if known (ROS's
    inter-message lower bound: lets a set out before the next message proves it)."""
    age_penalty: float = 0.1
    """approximate-time: ROS 2's age penalty (0: the ROS 1 wiki's definition)."""
    max_interval: int | None = None
    """approximate-time: a set wider than this is never emitted (ROS's max_interval_duration)."""
    max_frames: int = 256
    """Per camera (or stream) queue limit; approximate-time: ROS's queue size."""
    max_windows: int = 64
    """Pending audio windows limit."""
    retain: int = 3000 * MS
    """Frames older than ``now - retain`` are let go (counted ``unpaired`` if never used)."""

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ConfigError("sync.cameras", "name at least one stream")
        if len(set(self.cameras)) != len(self.cameras):
            raise ConfigError("sync.cameras", f"lists a stream twice: {list(self.cameras)}")
        if self.policy not in ("nearest-center", "k-frames", "approximate-time"):
            raise ConfigError("sync.policy", f"unknown policy {self.policy!r}")
        if self.policy == "approximate-time" and len(self.cameras) < 2:
            raise ConfigError("sync.cameras", "approximate-time needs at least two streams")
        if self.max_wait is None and self.policy != "approximate-time":
            raise ConfigError("sync.max_wait", "only approximate-time can wait for ever (None)")
        if self.age_penalty < 0:
            raise ConfigError("sync.age_penalty", f"must be >= 0, got {self.age_penalty}")
        for name, value, low in (
            ("k", self.k, 1),
            ("tolerance", self.tolerance, 0),
            ("max_wait", self.max_wait or 0, 0),
            ("max_interval", self.max_interval or 0, 0),
            ("reorder", self.reorder, 0),
            ("max_frames", self.max_frames, 1),
            ("max_windows", self.max_windows, 1),
            ("retain", self.retain, 0),
        ):
            if value < low:
                raise ConfigError(f"sync.{name}", f"must be >= {low}, got {value}")
        unknown = set(self.offsets) - set(self.cameras)
        if unknown and self.policy == "approximate-time":
            raise ConfigError(
                "sync.offsets", f"names streams not in sync.cameras: {sorted(unknown)}"
            )


@dataclass(frozen=True)
class Bundle:
    """One synchronized set. For window policies ``audio`` is the window and ``t0, t1`` its
    interval; for approximate-time ``audio`` is None and ``t0, t1`` span the set. Times are
    offset-corrected."""

    t0: int
    t1: int
    audio: Envelope | None
    frames: Mapping[str, tuple[Envelope, ...]]
    """Per stream: the paired messages (1, K, or none when missing)."""
    missing: tuple[str, ...]
    decided_by: Literal["complete", "deadline"]
    emitted_at: int
    """The ``now`` at which it came out; ``emitted_at - t1`` is the time spent waiting."""

    @property
    def partial(self) -> bool:
        return bool(self.missing)


class _Queue:
    """One stream's messages sorted by corrected time; parallel lists for bisect."""

    __slots__ = ("envs", "newest", "times", "used")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.envs: list[Envelope] = []
        self.used: list[bool] = []
        self.newest: int | None = None

    def insert(self, t: int, env: Envelope) -> int | None:
        """Insert; return the index, or None if a message with this time is already there."""
        i = bisect.bisect_left(self.times, t)
        if i < len(self.times) and self.times[i] == t:
            return None
        self.times.insert(i, t)
        self.envs.insert(i, env)
        self.used.insert(i, False)
        if self.newest is None or t > self.newest:
            self.newest = t
        return i

    def nearest(self, target: int) -> int | None:
        """Index of the message nearest ``target`` (the earlier one on a tie)."""
        i = bisect.bisect_left(self.times, target)
        if i == len(self.times):
            return i - 1 if i else None
        if i == 0 or self.times[i] - target < target - self.times[i - 1]:
            return i
        return i - 1

    def pop_front(self, n: int) -> int:
        """Remove the ``n`` oldest; return how many of them were never used."""
        unused = n - sum(self.used[:n])
        del self.times[:n], self.envs[:n], self.used[:n]
        return unused


@dataclass
class _Window:
    t0: int
    t1: int
    env: Envelope
    targets: tuple[int, ...]


class Synchronizer:
    """Feed with :meth:`push` and :meth:`poll`; both return the bundles now due."""

    def __init__(self, config: SyncConfig) -> None:
        self.config = config
        self.drops: Counter[str] = Counter()
        """Dropped messages by reason: late, duplicate, overflow, unpaired, out_of_order,
        unknown_stream."""
        self._queues = {name: _Queue() for name in config.cameras}
        self._windows: list[_Window] = []
        self._window_keys: set[tuple[str, int]] = set()
        self._emitted_keys: deque[tuple[str, int]] = deque(maxlen=256)
        self._floor: int | None = None  # nothing older than this can be emitted any more
        self._approx = config.policy == "approximate-time"
        self._names = list(config.cameras)
        self._index = {n.encode(): i for i, n in enumerate(self._names)}
        self._offset = [config.offsets.get(n, 0) for n in self._names]
        self._ros: ApproximateTime[Envelope] = ApproximateTime(
            max(2, len(self._names)),
            config.max_frames,
            age_penalty=config.age_penalty,
            max_interval=config.max_interval,
            lower_bounds=[config.min_period.get(n, 0) for n in self._names],
        )

    # -- input ---------------------------------------------------------------------------

    def push(self, env: Envelope, now: int) -> list[Bundle]:
        """Add one received message; return the bundles that are due at ``now``."""
        if self._approx:
            return self._push_approx(env, now)
        topic = env.topic.decode("utf-8", "replace")
        header = env.header
        offset = self.config.offsets.get(topic, 0)
        if isinstance(header, VideoFrame):
            if topic not in self._queues:
                self.drops["unknown_stream"] += 1
            else:
                self._add_to_queue(topic, header.t_capture - offset, env)
        elif isinstance(header, AudioWindow):
            self._add_window(topic, header, offset, env)
        else:
            self.drops["unknown_stream"] += 1
        return self.poll(now)

    def poll(self, now: int) -> list[Bundle]:
        """Return the bundles due at ``now`` (call it when nothing arrived by :meth:`due`)."""
        out = self._poll_approx(now) if self._approx else self._poll_windows(now)
        self._forget(now)
        return out

    def due(self) -> int | None:
        """When :meth:`poll` will next release a bundle if nothing more arrives (the head
        window's deadline, or approximate-time's ``max_wait`` past its oldest message); None
        while only new input can. A loop can wait for input until then instead of polling."""
        if self._approx:
            oldest = self._ros.oldest()
            wait = self.config.max_wait
            return None if wait is None or oldest is None else oldest + wait
        return self._windows[0].t1 + (self.config.max_wait or 0) if self._windows else None

    def _add_to_queue(self, topic: str, t: int, env: Envelope) -> None:
        q = self._queues[topic]
        if self._floor is not None and t < self._floor - self.config.tolerance:
            self.drops["late"] += 1
            return
        if q.insert(t, env) is None:
            self.drops["duplicate"] += 1
            return
        if len(q.times) > self.config.max_frames:
            # a frame already paired that leaves a full queue is not lost: not counted
            self.drops["overflow"] += q.pop_front(1)

    def _add_window(self, topic: str, h: AudioWindow, offset: int, env: Envelope) -> None:
        t0 = h.t_capture - offset
        key = (topic, t0)
        if key in self._window_keys or key in self._emitted_keys:
            self.drops["duplicate"] += 1
            return
        if self._floor is not None and t0 < self._floor:
            self.drops["out_of_order"] += 1
            return
        t1 = t0 + h.n_samples * 1_000_000_000 // h.sample_rate
        k = self.config.k if self.config.policy == "k-frames" else 1
        targets = tuple(t0 + (2 * j + 1) * (t1 - t0) // (2 * k) for j in range(k))
        w = _Window(t0, t1, env, targets)
        i = bisect.bisect_right([x.t0 for x in self._windows], t0)
        self._windows.insert(i, w)
        self._window_keys.add(key)
        if len(self._windows) > self.config.max_windows:
            old = self._windows.pop(0)
            self._window_keys.discard((old.env.topic.decode("utf-8", "replace"), old.t0))
            self.drops["overflow"] += 1

    # -- window policies -----------------------------------------------------------------

    def _poll_windows(self, now: int) -> list[Bundle]:
        out: list[Bundle] = []
        cfg = self.config
        wait = cfg.max_wait or 0  # never None for window policies (SyncConfig checks)
        while self._windows:
            w = self._windows[0]
            decided = all(
                q.newest is not None and q.newest >= w.targets[-1] + cfg.reorder
                for q in self._queues.values()
            )
            if not decided and now < w.t1 + wait:
                break  # the head blocks later windows: bundles leave in time order
            out.append(self._emit_window(w, now, "complete" if decided else "deadline"))
        return out

    def _emit_window(self, w: _Window, now: int, how: Literal["complete", "deadline"]) -> Bundle:
        self._windows.pop(0)
        topic = w.env.topic.decode("utf-8", "replace")
        self._window_keys.discard((topic, w.t0))
        self._emitted_keys.append((topic, w.t0))
        frames: dict[str, tuple[Envelope, ...]] = {}
        missing = []
        for name, q in self._queues.items():
            picked = []
            for target in w.targets:
                i = q.nearest(target)
                if i is not None and abs(q.times[i] - target) <= self.config.tolerance:
                    q.used[i] = True
                    picked.append(q.envs[i])
            if len(picked) < len(w.targets):
                missing.append(name)
            frames[name] = tuple(picked)
        self._floor = w.t0 if self._floor is None else max(self._floor, w.t0)
        return Bundle(w.t0, w.t1, w.env, frames, tuple(missing), how, now)

    # -- approximate time (streamfuse.approximate: ROS's algorithm) ---------------------

    def _push_approx(self, env: Envelope, now: int) -> list[Bundle]:
        i = self._index.get(env.topic)
        if i is None:
            self.drops["unknown_stream"] += 1
            return self._poll_approx(now)
        sets = self._ros.add(i, _stamp(env.header) - self._offset[i], env)
        if self._ros.dropped:
            self._count_ros_drops()
        out = [self._complete(s, now) for s in sets]
        return out + self._poll_approx(now) if self.config.max_wait is not None else out

    def _complete(self, chosen: tuple[tuple[int, Envelope], ...], now: int) -> Bundle:
        """A full set (one message per stream, in stream order): the direct way."""
        frames = {n: (env,) for n, (_, env) in zip(self._names, chosen, strict=True)}
        times = [t for t, _ in chosen]
        return Bundle(min(times), max(times), None, frames, (), "complete", now)

    def _poll_approx(self, now: int) -> list[Bundle]:
        out: list[Bundle] = []
        wait = self.config.max_wait
        while wait is not None and (oldest := self._ros.oldest()) is not None:
            if now < oldest + wait:
                break
            out.append(self._ros_bundle(self._ros.take_partial(), now, "deadline"))
        return out

    def _count_ros_drops(self) -> None:
        for reason, _ in self._ros.dropped:
            self.drops[reason] += 1
        self._ros.dropped.clear()

    def _ros_bundle(
        self,
        chosen: Mapping[int, tuple[int, Envelope]],
        now: int,
        how: Literal["complete", "deadline"],
    ) -> Bundle:
        frames = {n: (chosen[i][1],) if i in chosen else () for i, n in enumerate(self._names)}
        times = [t for t, _ in chosen.values()]
        missing = tuple(n for i, n in enumerate(self._names) if i not in chosen)
        return Bundle(min(times), max(times), None, frames, missing, how, now)

    # -- memory --------------------------------------------------------------------------

    def _forget(self, now: int) -> None:
        """Let go of frames nothing can use any more; count the never-used ones."""
        if self._approx:
            return  # bounded by ROS's own queue accounting
        cfg = self.config
        horizon = now - cfg.retain
        if self._floor is not None:
            first_target = self._windows[0].targets[0] if self._windows else self._floor
            horizon = max(horizon, min(self._floor, first_target) - cfg.tolerance)
        for q in self._queues.values():
            cut = bisect.bisect_left(q.times, horizon)
            if cut:
                self.drops["unpaired"] += q.pop_front(cut)

    # -- introspection ---------------------------------------------------------------------

    def depths(self) -> dict[str, int]:
        """Queue depths, for heartbeats and metrics."""
        if self._approx:
            return {name: self._ros.held(i) for i, name in enumerate(self._names)}
        d = {name: len(q.times) for name, q in self._queues.items()}
        d["windows"] = len(self._windows)
        return d


def _stamp(header: object) -> int:
    """A message's time for approximate-time: capture time, or an audio window's centre."""
    if isinstance(header, AudioWindow):
        return header.t_capture + header.n_samples * 500_000_000 // header.sample_rate
    return header.t_capture  # type: ignore[attr-defined]

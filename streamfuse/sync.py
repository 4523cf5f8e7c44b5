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
    any N streams; one message per stream, the set of least time spread around the newest
    head (ROS ApproximateTime semantics), emitted as soon as no future message can improve
    it (with ``min_period`` per stream, without waiting for the next message).

Rules shared by all: a frame farther than ``tolerance`` from its target is not paired; a
per-stream clock offset is subtracted from its times (a camera known to lag 40 ms has
offset +40 ms); a bundle goes out as soon as it is decided, or ``max_wait`` after its window
ended, marked partial with the missing streams named; every queue is bounded and every
dropped message is counted by reason. Bundles come out in time order.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

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
    max_wait: int = 200 * MS
    offsets: Mapping[str, int] = field(default_factory=dict)
    reorder: int = 0
    """How far behind its newest frame a camera's frames may still arrive: a camera counts
    as decided for a target only once it has a frame this far past it."""
    min_period: Mapping[str, int] = field(default_factory=dict)
    """approximate-time: the least gap between two messages of a stream, if known."""
    max_frames: int = 256
    """Per camera (or stream) queue limit."""
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
        for name, value, low in (
            ("k", self.k, 1),
            ("tolerance", self.tolerance, 0),
            ("max_wait", self.max_wait, 0),
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

    # -- input ---------------------------------------------------------------------------

    def push(self, env: Envelope, now: int) -> list[Bundle]:
        """Add one received message; return the bundles that are due at ``now``."""
        topic = env.topic.decode("utf-8", "replace")
        header = env.header
        offset = self.config.offsets.get(topic, 0)
        if self._approx:
            if topic not in self._queues:
                self.drops["unknown_stream"] += 1
            else:
                self._add_to_queue(topic, _stamp(header) - offset, env)
        elif isinstance(header, VideoFrame):
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
        """Return the bundles due at ``now`` (call it when nothing arrives, e.g. every 10 ms)."""
        out = self._poll_approx(now) if self._approx else self._poll_windows(now)
        self._forget(now)
        return out

    def _add_to_queue(self, topic: str, t: int, env: Envelope) -> None:
        q = self._queues[topic]
        if self._floor is not None and t < self._floor - self.config.tolerance:
            self.drops["late"] += 1
            return
        if q.insert(t, env) is None:
            self.drops["duplicate"] += 1
            return
        if len(q.times) > self.config.max_frames:
            q.pop_front(1)
            self.drops["overflow"] += 1

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
        while self._windows:
            w = self._windows[0]
            decided = all(
                q.newest is not None and q.newest >= w.targets[-1] + cfg.reorder
                for q in self._queues.values()
            )
            if not decided and now < w.t1 + cfg.max_wait:
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

    # -- approximate time ------------------------------------------------------------------

    def _poll_approx(self, now: int) -> list[Bundle]:
        out: list[Bundle] = []
        cfg = self.config
        while True:
            heads = {n: q.times[0] for n, q in self._queues.items() if q.times}
            if not heads:
                break
            pivot = max(heads, key=lambda n: (heads[n], n))
            tp = heads[pivot]
            # Not final yet (a stream is empty or may still send something closer): wait,
            # until the pivot's deadline, then go with what there is.
            choice = self._choose(pivot, tp, partial=False)
            if choice is not None:
                out.append(self._emit_approx(choice, now, "complete"))
            elif now >= tp + cfg.max_wait:
                out.append(
                    self._emit_approx(self._choose(pivot, tp, partial=True), now, "deadline")
                )
            else:
                break
        return out

    def _choose(self, pivot: str, tp: int, *, partial: bool) -> dict[str, int | None] | None:
        """Per stream, the index to use with the pivot's head (None: missing), choosing the
        combination of least spread. Without ``partial``, None unless every choice is final."""
        names: list[str] = []
        options: list[list[int | None]] = []
        for name, q in self._queues.items():
            names.append(name)
            if name == pivot:
                options.append([0])
                continue
            i = bisect.bisect_right(q.times, tp)  # q.times[i-1] <= tp < q.times[i]
            before: list[int | None] = [i - 1] if i > 0 else []
            after: list[int | None] = [i] if i < len(q.times) else []
            if not after and not partial:
                # Final without the next message only if none can come closer than q.times[i-1].
                nxt = (q.newest or 0) + self.config.min_period.get(name, 0)
                if not before or nxt <= tp or nxt - tp < tp - q.times[i - 1]:
                    return None
            options.append(before + after or [None])
        best: tuple[int, int] | None = None
        best_combo: tuple[int | None, ...] = ()
        for combo in itertools.product(*options):
            times = [
                self._queues[n].times[i] for n, i in zip(names, combo, strict=True) if i is not None
            ]
            key = (max(times) - min(times), sum(times))
            if best is None or key < best:
                best, best_combo = key, combo
        tol = self.config.tolerance
        return {
            n: i if i is not None and abs(self._queues[n].times[i] - tp) <= tol else None
            for n, i in zip(names, best_combo, strict=True)
        }

    def _emit_approx(
        self, chosen: dict[str, int | None] | None, now: int, how: Literal["complete", "deadline"]
    ) -> Bundle:
        assert chosen is not None
        frames: dict[str, tuple[Envelope, ...]] = {}
        times = []
        for n, i in chosen.items():
            q = self._queues[n]
            if i is None:
                frames[n] = ()
                continue
            q.used[i] = True
            frames[n] = (q.envs[i],)
            times.append(q.times[i])
        # Consume everything up to and including what was used (older ones were not paired).
        for n, i in chosen.items():
            q = self._queues[n]
            if i is not None:
                self.drops["unpaired"] += q.pop_front(i + 1)
        pivot_floor = max(times)
        for n, i in chosen.items():  # streams without a member: drop what is older than the set
            if i is None:
                q = self._queues[n]
                cut = bisect.bisect_right(q.times, pivot_floor)
                self.drops["unpaired"] += q.pop_front(cut)
        self._floor = pivot_floor + 1 if self._floor is None else max(self._floor, pivot_floor + 1)
        missing = tuple(n for n, i in chosen.items() if i is None)
        return Bundle(min(times), max(times), None, frames, missing, how, now)

    # -- memory --------------------------------------------------------------------------

    def _forget(self, now: int) -> None:
        """Let go of frames nothing can use any more; count the never-used ones."""
        cfg = self.config
        horizon = now - cfg.retain
        if not self._approx and self._floor is not None:
            first_target = self._windows[0].targets[0] if self._windows else self._floor
            horizon = max(horizon, min(self._floor, first_target) - cfg.tolerance)
        for q in self._queues.values():
            cut = bisect.bisect_left(q.times, horizon)
            if cut:
                self.drops["unpaired"] += q.pop_front(cut)

    # -- introspection ---------------------------------------------------------------------

    def depths(self) -> dict[str, int]:
        """Queue depths, for heartbeats and metrics."""
        d = {name: len(q.times) for name, q in self._queues.items()}
        if not self._approx:
            d["windows"] = len(self._windows)
        return d


def _stamp(header: object) -> int:
    """A message's time for approximate-time: capture time, or an audio window's centre."""
    if isinstance(header, AudioWindow):
        return header.t_capture + header.n_samples * 500_000_000 // header.sample_rate
    return header.t_capture  # type: ignore[attr-defined]

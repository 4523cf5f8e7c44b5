"""ROS 2 message_filters' ApproximateTime policy, ported step for step. Pure logic.

From ``include/message_filters/sync_policies/approximate_time.h`` of ros2/message_filters
(commit 474f5762f6c9; the ``.hpp`` there includes it), BSD licence, Willow Garage: the same
candidate search, the same proof of optimality with inter-message lower bounds, the same
queue accounting (a topic's deque plus its "past" count against ``queue_size``), the rule
that a topic which has dropped messages cannot be the pivot, ``max_interval_duration``, the
age penalty (ROS 2's default 0.1; 0 is the ROS 1 wiki's definition), and the same ties
(the start of an interval is the earliest head, lowest topic index first; its end the
latest head, highest index first). ``tests/unit/test_approximate.py`` runs ROS's own test
cases against it.

Durations are integer nanoseconds; ``Duration * double`` truncates toward zero as
rclcpp's does. Items are opaque: ``add(i, stamp, item)`` returns the sets it publishes,
each a tuple of ``(stamp, item)`` per topic.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["ApproximateTime"]

T = TypeVar("T")
Entry = tuple[int, T]


class ApproximateTime(Generic[T]):
    """One ApproximateTime synchronizer over ``n`` topics (2..9 in ROS; any here)."""

    def __init__(
        self,
        n: int,
        queue_size: int,
        *,
        age_penalty: float = 0.1,
        max_interval: int | None = None,
        lower_bounds: list[int] | None = None,
    ) -> None:
        if n < 2 or queue_size < 1 or age_penalty < 0:
            raise ValueError("ApproximateTime needs n >= 2, queue_size >= 1, age_penalty >= 0")
        self.n = n
        self.queue_size = queue_size
        self.age_penalty = age_penalty
        self.max_interval = max_interval
        self.lower_bounds = list(lower_bounds) if lower_bounds else [0] * n
        self.deques: list[deque[Entry[T]]] = [deque() for _ in range(n)]
        self.past: list[list[Entry[T]]] = [[] for _ in range(n)]
        self.has_dropped = [False] * n
        self.num_non_empty = 0
        self.pivot: int | None = None
        self.pivot_time = 0
        self.candidate: tuple[Entry[T], ...] | None = None
        self.candidate_start = 0
        self.candidate_end = 0
        self.dropped: list[tuple[str, Entry[T]]] = []
        """Messages let go without being published, with why: ``overflow`` (the queue) or
        ``unpaired`` (no set wanted them); the caller takes and clears it."""
        self.bound_violations = [False] * n
        """Per topic: a message arrived out of order or closer than its lower bound (ROS
        warns once); the proof of optimality then assumed something untrue."""
        self._out: list[tuple[Entry[T], ...]] = []

    # -- input (ApproximateTime::add) --------------------------------------------------

    def add(self, i: int, stamp: int, item: T) -> list[tuple[Entry[T], ...]]:
        """Add a message to topic ``i``; return the sets published as a result, in order."""
        self._out = []
        dq = self.deques[i]
        dq.append((stamp, item))
        if len(dq) == 1:
            self.num_non_empty += 1
            if self.num_non_empty == self.n:
                self._process()
        else:
            self._check_bound(i)
        if len(dq) + len(self.past[i]) > self.queue_size:
            self.num_non_empty = 0  # cancel the candidate search; recomputed by recover
            for j in range(self.n):
                self._recover(j)
            self.dropped.append(("overflow", dq.popleft()))  # the offending topic's oldest
            self.has_dropped[i] = True
            if self.pivot is not None:
                self.candidate = None
                self.pivot = None
                self._process()  # there may still be enough messages for a new candidate
        return self._out

    def _check_bound(self, i: int) -> None:
        if self.bound_violations[i]:
            return
        dq = self.deques[i]
        if len(dq) == 1:
            if not self.past[i]:
                return
            previous = self.past[i][-1][0]
        else:
            previous = dq[-2][0]
        t = dq[-1][0]
        if t < previous or t - previous < self.lower_bounds[i]:
            self.bound_violations[i] = True

    # -- deques and past -----------------------------------------------------------------

    def _delete_front(self, i: int) -> None:
        self.dropped.append(("unpaired", self.deques[i].popleft()))
        if not self.deques[i]:
            self.num_non_empty -= 1

    def _move_front_to_past(self, i: int) -> None:
        self.past[i].append(self.deques[i].popleft())
        if not self.deques[i]:
            self.num_non_empty -= 1

    def _make_candidate(self) -> None:
        self.candidate = tuple(dq[0] for dq in self.deques)
        for past in self.past:  # a better candidate: what was passed over is no longer needed
            self.dropped.extend(("unpaired", e) for e in past)
            past.clear()

    def _recover(self, i: int, count: int | None = None) -> None:
        """Put ``count`` (default: all) past messages back at the front of the deque."""
        past, dq = self.past[i], self.deques[i]
        for _ in range(len(past) if count is None else count):
            dq.appendleft(past.pop())
        if dq:
            self.num_non_empty += 1

    def _recover_and_delete(self, i: int) -> None:
        past, dq = self.past[i], self.deques[i]
        while past:
            dq.appendleft(past.pop())
        dq.popleft()  # the candidate's message: published
        if dq:
            self.num_non_empty += 1

    def _publish(self) -> None:
        assert self.candidate is not None
        self._out.append(self.candidate)
        self.candidate = None
        self.pivot = None
        self.num_non_empty = 0
        for i in range(self.n):
            self._recover_and_delete(i)

    # -- boundaries --------------------------------------------------------------------

    @staticmethod
    def _boundary(times: list[int], end: bool) -> tuple[int, int]:
        """(index, time) of the earliest (``end=False``) or latest time, ties as ROS."""
        index, time = 0, times[0]
        for k in range(1, len(times)):
            if (times[k] < time) != end:
                index, time = k, times[k]
        return index, time

    def _heads(self) -> list[int]:
        return [dq[0][0] for dq in self.deques]

    def _virtual_times(self) -> list[int]:
        out = []
        for i in range(self.n):
            if self.deques[i]:
                out.append(self.deques[i][0][0])
            else:
                bound = self.past[i][-1][0] + self.lower_bounds[i]
                out.append(max(bound, self.pivot_time))
        return out

    def _worse(self, end_time: int, other: int) -> bool:
        """ROS: ``(end_time - candidate_end) * (1 + age_penalty) >= other - candidate_start``."""
        return int((end_time - self.candidate_end) * (1 + self.age_penalty)) >= (
            other - self.candidate_start
        )

    # -- the search (ApproximateTime::process) -------------------------------------------

    def _process(self) -> None:
        while self.num_non_empty == self.n:
            heads = self._heads()
            end_index, end_time = self._boundary(heads, end=True)
            start_index, start_time = self._boundary(heads, end=False)
            for i in range(self.n):
                if i != end_index:
                    self.has_dropped[i] = False
            if self.pivot is None:
                if self.max_interval is not None and end_time - start_time > self.max_interval:
                    self._delete_front(start_index)  # too wide to be a candidate
                    continue
                if self.has_dropped[end_index]:
                    self._delete_front(start_index)  # that pivot may have lost a better one
                    continue
                self._make_candidate()
                self.candidate_start, self.candidate_end = start_time, end_time
                self.pivot, self.pivot_time = end_index, end_time
                self._move_front_to_past(start_index)
            else:
                if self._worse(end_time, start_time):
                    self._move_front_to_past(start_index)
                else:
                    self._make_candidate()
                    self.candidate_start, self.candidate_end = start_time, end_time
                    self._move_front_to_past(start_index)
            if start_index == self.pivot:
                self._publish()  # every candidate for this pivot has been looked at
            elif self._worse(end_time, self.pivot_time):
                self._publish()  # any later one contains [pivot_time, end_time]: no better
            elif self.num_non_empty < self.n:
                self._virtual_search()

    def _virtual_search(self) -> None:
        """Use the lower bounds to prove the candidate optimal before more messages come."""
        moves = [0] * self.n
        while True:
            times = self._virtual_times()
            _, end_time = self._boundary(times, end=True)
            start_index, start_time = self._boundary(times, end=False)
            if self._worse(end_time, self.pivot_time):
                self._publish()  # proved optimal (this also undoes the virtual moves)
                return
            if not self._worse(end_time, start_time):
                # an optimistic virtual candidate beats it: cannot prove it yet; undo
                self.num_non_empty = 0
                for i in range(self.n):
                    self._recover(i, moves[i])
                return
            assert start_index != self.pivot and start_time < self.pivot_time
            self._move_front_to_past(start_index)
            moves[start_index] += 1

    # -- streamfuse's additions (not in ROS) ---------------------------------------------

    def oldest(self) -> int | None:
        """The stamp of the oldest message held (in a deque or passed over for the search)."""
        stamps = [dq[0][0] for dq in self.deques if dq] + [p[0][0] for p in self.past if p]
        return min(stamps) if stamps else None

    def take_partial(self) -> dict[int, Entry[T]]:
        """Give up the search for a full set: the front message of every topic that has one
        (a deadline passed; ROS has no such thing and would wait for ever)."""
        self.num_non_empty = 0
        for i in range(self.n):
            self._recover(i)
        self.candidate, self.pivot = None, None
        out: dict[int, Entry[T]] = {}
        for i, dq in enumerate(self.deques):
            if dq:
                out[i] = dq.popleft()
                if not dq:
                    self.num_non_empty -= 1
        return out

    def held(self, i: int) -> int:
        """Messages of topic ``i`` held, counted as ROS counts them against queue_size."""
        return len(self.deques[i]) + len(self.past[i])

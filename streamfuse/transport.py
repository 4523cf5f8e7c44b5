"""Publisher and subscriber: thin typed layers over ZeroMQ PUB/SUB.

The publisher binds (sensors own their endpoint, consumers connect to as many as they like)
and sends payloads zero-copy. The subscriber validates every message at the socket, counts
what it rejects and the sequence gaps it sees, and never raises on bad input.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq
from zmq.utils.monitor import recv_monitor_message

from . import messages
from .errors import DecodeError, EndpointError
from .messages import Envelope, Message
from .security import CurveClient, CurveServer, Gate, serve_curve
from .shm import MIN_BYTES as SHM_MIN_BYTES
from .shm import TAG as SHM_TAG
from .shm import Ring, ShmReader
from .shm import wanted as shm_wanted

__all__ = ["Publisher", "Relay", "Sources", "StreamStats", "Subscriber", "heartbeat_topic"]

log = logging.getLogger(__name__)

_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

#: Per-topic statistics a subscriber keeps at most (topics past it are delivered, not counted).
MAX_TOPICS = 1024


def heartbeat_topic(topic: str) -> str:
    """The topic a process publishes its heartbeats on, for data topic ``topic``."""
    return f"heartbeat/{topic}"


def _b(topic: str | bytes) -> bytes:
    return topic.encode() if isinstance(topic, str) else topic


def _socket_file(endpoint: str) -> tuple[str, int] | None:
    """The path and inode of the socket file a bound ``ipc://`` endpoint made."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    path = endpoint.removeprefix("ipc://")
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (path, st.st_ino) if stat.S_ISSOCK(st.st_mode) else None


def _unlink_socket(path: str, inode: int) -> None:
    """Remove the socket file we bound, unless another publisher has since bound there."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


def _bind(sock: zmq.Socket, endpoint: str) -> None:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise EndpointError(endpoint, "bind", exc.strerror) from None


def _connect(sock: zmq.Socket, endpoint: str) -> None:
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise EndpointError(endpoint, "connect to", exc.strerror) from None


class Publisher:
    """Publishes messages on one bound endpoint.

    Uses an XPUB socket so it can see subscriptions arrive (:meth:`wait_for_subscriber`)
    without anyone sleeping. A subscriber slower than ``sndhwm`` messages loses messages (its
    own, not other subscribers'), which it sees as sequence gaps; with ``lossless=True``
    :meth:`send` waits for it instead.

    On ``ipc://`` endpoints (``shm=None``, see :func:`streamfuse.shm.wanted`) payloads of
    64 KiB and more go through a ring of ``shm_slots`` (default: ``sndhwm``, the backlog the
    socket would hold) shared-memory slots per topic and only the header crosses the socket
    (:mod:`streamfuse.shm`). Slots are touched only when a backlog needs them.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        sndhwm: int = 64,
        linger_ms: int = 200,
        lossless: bool = False,
        shm: bool | None = None,
        shm_slots: int | None = None,
        curve: CurveServer | None = None,
        connect: bool = False,
        context: zmq.Context | None = None,
    ) -> None:
        """``connect``: connect to ``endpoint`` instead of binding it (a :class:`Relay`'s
        inner side, which stays bound while the processes publishing into it come and go)."""
        self.endpoint = endpoint
        self._lossless = lossless
        self._shm = shm_wanted(endpoint, shm)
        self._shm_slots = shm_slots or sndhwm
        self._rings: dict[bytes, Ring] = {}
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        # CURVE: the ZAP handler lives on this publisher's own context (one per context).
        self._gate = Gate(self._ctx, curve) if curve is not None else None
        self._sock = self._ctx.socket(zmq.XPUB)
        if curve is not None:
            serve_curve(self._sock, curve)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        # Every (un)subscription comes up, not only a topic's first and last: readers can be
        # counted (wait_for_subscriber(count=N)).
        self._sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        if lossless:
            # Block instead of dropping when a subscriber's queue is full: for file replay and
            # benchmarks, where every message must arrive and the slowest reader sets the pace.
            self._sock.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            _connect(self._sock, endpoint) if connect else _bind(self._sock, endpoint)
        except EndpointError:
            if self._gate is not None:
                self._gate.stop()
            if self._own_ctx:
                self._ctx.term()
            raise
        # tcp://127.0.0.1:0 picks a free port; report the one it got.
        if not connect:
            self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint
        self._ipc_file = None if connect else _socket_file(self.endpoint)
        self._subscriptions: Counter[bytes] = Counter()

    def send(self, topic: str | bytes, header: Message, payload: object | None = None) -> None:
        """Send one message. ``payload`` (bytes, memoryview, numpy array) is sent without a
        copy: do not modify it afterwards."""
        t = topic.encode() if isinstance(topic, str) else topic
        parts: list[Any] = [t, messages.encode(header)]
        if payload is not None:
            ring = self._ring(t, payload) if self._shm else None
            if ring is not None:
                try:
                    if ring.owns(payload):  # filled in place after loan(): nothing to copy
                        ref = ring.commit()
                    else:
                        ref = ring.write(payload, wait=self._lossless)
                except OSError as exc:  # /dev/shm is full: this and what follows go inline
                    self._shm_failed(t, exc)
                else:
                    parts += [SHM_TAG, ref]
                    self._sock.send_multipart(parts)  # a few hundred bytes: copying is cheaper
                    return
            parts.append(payload)
        self._sock.send_multipart(parts, copy=False)

    def loan(
        self, topic: str | bytes, shape: tuple[int, ...], dtype: npt.DTypeLike = np.uint8
    ) -> np.ndarray:
        """An array to fill in place and then pass to :meth:`send` as the payload.

        Where the payload goes through shared memory this is the next ring slot itself, so
        the frame is never copied (a camera decodes straight into it); elsewhere it is an
        ordinary array. Fill it and send it before the next ``loan`` on the same topic.
        """
        t = topic.encode() if isinstance(topic, str) else topic
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dt.itemsize
        ring = self._ring(t, nbytes) if self._shm else None
        if ring is not None:
            try:
                return ring.loan(nbytes, wait=self._lossless).view(dt).reshape(shape)
            except OSError as exc:
                self._shm_failed(t, exc)
        return np.empty(shape, dt)

    def _shm_failed(self, topic: bytes, exc: OSError) -> None:
        log.warning(
            "%s: shared memory failed (%s); sending inline from now on",
            topic.decode("utf-8", "replace"),
            exc.strerror or exc,
        )
        self._shm = False

    def _ring(self, topic: bytes, payload: object) -> Ring | None:
        """The shared-memory ring for ``topic``'s payloads, or ``None`` to send inline."""
        size = payload if isinstance(payload, int) else memoryview(payload).nbytes  # type: ignore[arg-type]
        if size < SHM_MIN_BYTES:
            return None
        ring = self._rings.get(topic)
        if ring is None or ring.capacity < size:
            if ring is not None:  # the frames grew: a new ring; readers attach on first use
                ring.close()
            try:
                ring = self._rings[topic] = Ring(size, self._shm_slots)
            except OSError as exc:
                log.warning("%s: shared memory unavailable (%s); sending inline", topic, exc)
                self._shm = False
                return None
        return ring

    def poll_subscriptions(self) -> int:
        """Read pending (un)subscriptions; return how many topic prefixes are subscribed."""
        while self._sock.poll(0):
            msg = self._sock.recv()
            if msg[:1] == b"\x01":
                self._subscriptions[msg[1:]] += 1
            elif msg[:1] == b"\x00":
                self._subscriptions[msg[1:]] -= 1
                if self._subscriptions[msg[1:]] <= 0:
                    del self._subscriptions[msg[1:]]
        return len(self._subscriptions)

    def wait_for_subscriber(
        self,
        timeout: float = 5.0,
        topic: bytes | None = None,
        *,
        count: int = 1,
        prefix: bytes | None = None,
        stop: threading.Event | None = None,
    ) -> bool:
        """Block until ``count`` subscriptions (each reader's, counted apart) that match
        ``topic`` if given have arrived; with ``prefix``, until one of exactly that prefix
        has (``b""``: a reader of everything, such as a recorder). False after ``timeout``
        or once ``stop`` is set (a SIGTERM while waiting)."""
        deadline = time.monotonic() + timeout
        while stop is None or not stop.is_set():
            self.poll_subscriptions()
            if prefix is not None:
                if self._subscriptions[prefix] > 0:
                    return True
            elif (
                sum(
                    n
                    for p, n in self._subscriptions.items()
                    if topic is None or topic.startswith(p)
                )
                >= count
            ):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._sock.poll(int(min(remaining, 0.05) * 1000))
        return False

    @property
    def auth_refused(self) -> int:
        """Subscribers refused by CURVE authentication (their key is not authorized)."""
        return self._gate.refused if self._gate is not None else 0

    def close(self) -> None:
        self._sock.close()
        if self._gate is not None:
            self._gate.stop()
        if self._own_ctx:
            self._ctx.term()
        if self._ipc_file is not None:  # libzmq leaves the socket file behind
            _unlink_socket(*self._ipc_file)
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Relay:
    """A steady endpoint in front of publishers that may be replaced.

    Binds ``outer`` (an XPUB where subscribers connect; CURVE-served and HWM-bounded per
    subscriber like a :class:`Publisher`'s) and ``inner`` (an XSUB where publishers connect
    with ``Publisher(inner, connect=True)``), and forwards between them in libzmq's own proxy
    (``zmq_proxy_steerable``, a thread that never holds the GIL): messages one way,
    subscriptions the other. The supervisor binds ``engine.output`` this way, so an engine
    that restarts or hands over to its standby never drops a subscriber's connection.
    """

    def __init__(
        self, inner: str, outer: str, *, sndhwm: int = 100, curve: CurveServer | None = None
    ) -> None:
        import threading

        self._ctx = ctx = zmq.Context()
        self._gate = Gate(ctx, curve) if curve is not None else None
        sockets: list[zmq.Socket] = []
        try:
            back = ctx.socket(zmq.XPUB)
            sockets.append(back)
            if curve is not None:
                serve_curve(back, curve)
            back.setsockopt(zmq.SNDHWM, sndhwm)
            back.setsockopt(zmq.LINGER, 200)
            _bind(back, outer)
            front = ctx.socket(zmq.XSUB)
            sockets.append(front)
            front.setsockopt(zmq.RCVHWM, 100_000)
            front.setsockopt(zmq.LINGER, 0)
            _bind(front, inner)
        except EndpointError:
            for sock in sockets:
                sock.close(linger=0)
            self._stop_ctx()
            raise
        self.outer = back.getsockopt_string(zmq.LAST_ENDPOINT) or outer
        self.inner = inner
        self._files = [f for f in (_socket_file(self.outer), _socket_file(inner)) if f]
        control = ctx.socket(zmq.PAIR)
        self._control = ctx.socket(zmq.PAIR)
        control.bind(f"inproc://relay-{id(self)}")
        self._control.connect(f"inproc://relay-{id(self)}")
        self._sockets = [front, back, control]
        self._thread = threading.Thread(
            target=zmq.proxy_steerable, args=(front, back, None, control), name="relay", daemon=True
        )
        self._thread.start()

    def _stop_ctx(self) -> None:
        if self._gate is not None:
            self._gate.stop()
        self._ctx.term()

    def close(self) -> None:
        self._control.send(b"TERMINATE")
        self._thread.join(5)
        self._control.close(linger=0)
        for sock in self._sockets:
            sock.close()
        self._stop_ctx()
        for f in self._files:
            _unlink_socket(*f)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class StreamStats:
    """What a subscriber saw of one topic."""

    received: int = 0
    gaps: int = 0
    """Messages missing between consecutive sequence numbers (lost upstream or at a HWM)."""
    reordered: int = 0
    first_capture_ns: int = 0
    last_capture_ns: int = 0
    last_seq: int | None = None

    def add(self, seq: int, t_capture: int) -> None:
        """Count one message: sequence gaps, reordering, capture-time span."""
        if self.received == 0:
            self.first_capture_ns = t_capture
        if self.last_seq is not None:
            if seq > self.last_seq + 1:
                self.gaps += seq - self.last_seq - 1
            elif seq <= self.last_seq:
                # A restarted publisher starts again at 0; anything else is reordering.
                self.reordered += 1 if seq != 0 else 0
        self.last_seq = seq
        self.received += 1
        self.last_capture_ns = t_capture

    def rate_hz(self) -> float:
        """Messages per second by their capture times (arrival jitter does not count)."""
        span = self.last_capture_ns - self.first_capture_ns
        return (self.received - 1) * 1e9 / span if span > 0 and self.received > 1 else 0.0


@dataclass
class _Stats:
    streams: dict[bytes, StreamStats] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    shm: int = 0


class Subscriber:
    """Receives validated messages from one or more publisher endpoints.

    Rejected messages (see :class:`~streamfuse.errors.DecodeError`) are counted in
    :attr:`rejected` by reason, logged at most once a second, and skipped.

    A payload that came through shared memory is copied out of its slot; with
    ``shm_copy=False`` it is a read-only view on the slot instead (no copy at all), valid
    until this subscriber's next receive (the publisher does not reuse a slot a live reader
    holds while it has a free one; a lossless publisher never does): check :meth:`intact`
    after use.
    """

    def __init__(
        self,
        endpoints: str | Iterable[str],
        topics: Iterable[str | bytes] = ("",),
        *,
        rcvhwm: int = 64,
        max_payload: int = messages.MAX_PAYLOAD_BYTES,
        shm_copy: bool = True,
        shm_hold: int = 1,
        owns: Iterable[str | bytes] | None = None,
        curve: CurveClient | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self._owns = None if owns is None else {_b(t) for t in owns}
        """Exact topics these endpoints speak for; any other is rejected ``foreign_topic``."""
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._max_payload = max_payload
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        for t in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, t.encode() if isinstance(t, str) else t)
        self._monitor: zmq.Socket | None = None
        if curve is not None:
            curve.apply(self._sock)
            # A publisher with another key fails the handshake (again at each reconnect):
            # watch for it, to count it.
            self._monitor = self._sock.get_monitor_socket(_HANDSHAKE_FAILED)
        for ep in self.endpoints:
            try:
                self._sock.connect(ep)
            except zmq.ZMQError as exc:
                self._sock.close(linger=0)
                raise EndpointError(ep, "connect to", exc.strerror) from None
        self._stats = _Stats()
        self._shm = ShmReader(copy=shm_copy, hold=shm_hold)
        # A reference names a segment of the publisher's box: only ipc:// is surely this one.
        self._shm_local = any(ep.startswith("ipc://") for ep in self.endpoints)
        self._last_complaint = 0.0
        self._internal_logged: set[bytes] = set()
        self._rcvtimeo = -1

    @property
    def streams(self) -> dict[bytes, StreamStats]:
        """Per-topic receive statistics."""
        return self._stats.streams

    @property
    def shm_received(self) -> int:
        """Messages whose payload came through shared memory."""
        return self._stats.shm

    @property
    def rejected(self) -> Counter[str]:
        """Rejected messages by reason."""
        return self._stats.rejected

    @property
    def socket(self) -> zmq.Socket:
        """The underlying SUB socket, for use with a ``zmq.Poller``."""
        return self._sock

    def recv(self, timeout: float | None = None) -> Envelope | None:
        """Return the next valid message, or ``None`` if ``timeout`` seconds pass first."""
        got = self.recv_raw(timeout)
        return None if got is None else got[0]

    def recv_raw(
        self, timeout: float | None = None
    ) -> tuple[Envelope, list[bytes | memoryview]] | None:
        """:meth:`recv`, plus the frames exactly as they arrived (for a recorder).

        No message can make this raise: what decoding rejects is counted by reason, and
        anything else one message provokes (a bug) is counted as ``internal_error``,
        logged once per topic with the exception, and skipped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # A receive timeout on the socket, not a poll() before each recv: one wake-up
            # per message instead of two, which is measurable at 30 Hz.
            ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if ms != self._rcvtimeo:
                self._sock.setsockopt(zmq.RCVTIMEO, ms)
                self._rcvtimeo = ms
            if self._monitor is not None:
                self.count_handshakes()
            try:
                frames = self._sock.recv_multipart(copy=False)
            except zmq.Again:
                return None
            try:
                got = self._take(frames)
            except Exception as exc:  # the last resort: one message never ends a reader
                self._internal_error(frames, exc)
                got = None
            if got is not None:
                return got
            if deadline is not None and time.monotonic() >= deadline:
                return None  # a flood of rejects must not hold the caller past its timeout

    def _take(self, frames: list[zmq.Frame]) -> tuple[Envelope, list[bytes | memoryview]] | None:
        # Topic and header are small: copy them. The payload stays a view on ZeroMQ's buffer.
        parts: list[bytes | memoryview] = [f.bytes for f in frames[:2]]
        if self._owns is not None and parts[0] not in self._owns:
            topic = bytes(parts[0])[:64]
            self._reject(DecodeError("foreign_topic", "not a topic of its endpoint", topic=topic))
            return None
        if len(frames) == 4 and frames[2].bytes == SHM_TAG:
            if not self._shm_local:
                detail = "a shared-memory reference over tcp:// names another box's memory"
                self._reject(DecodeError("shm_not_local", detail, topic=bytes(parts[0])[:64]))
                return None
            try:
                parts.append(self._shm.read(frames[3].buffer, parts[0]))  # type: ignore[arg-type]
            except DecodeError as err:
                self._reject(err)
                return None
            self._stats.shm += 1
        else:
            parts.extend(f.buffer for f in frames[2:])
        env = self._accept(parts)
        return None if env is None else (env, parts)

    def _internal_error(self, frames: list[zmq.Frame], exc: Exception) -> None:
        topic = frames[0].bytes[:64] if frames else b""
        self._stats.rejected["internal_error"] += 1
        if topic not in self._internal_logged and len(self._internal_logged) < 64:
            self._internal_logged.add(topic)
            log.error(
                "internal error on a message of topic %r (counted, skipped): %s: %s",
                topic.decode("utf-8", "replace"),
                type(exc).__name__,
                exc,
            )

    def _accept(self, parts: list[bytes | memoryview]) -> Envelope | None:
        try:
            env = messages.decode(parts, max_payload=self._max_payload)
        except DecodeError as err:
            self._reject(err)
            return None
        self._count(env)
        return env

    def _reject(self, err: DecodeError) -> None:
        self._stats.rejected[err.reason] += 1
        now = time.monotonic()
        if now - self._last_complaint > 1.0:
            self._last_complaint = now
            log.warning("%s (%d rejected so far)", err, sum(self._stats.rejected.values()))

    def _count(self, env: Envelope) -> None:
        st = self._stats.streams.get(env.topic)
        if st is None:
            if len(self._stats.streams) >= MAX_TOPICS:  # a flood of new topics: no new state
                return
            st = self._stats.streams[env.topic] = StreamStats()
        st.add(env.header.seq, env.header.t_capture)

    def intact(self, env: Envelope) -> bool:
        """Whether ``env``'s payload still holds what was sent (see ``shm_copy``)."""
        return env.payload is None or self._shm.intact(env.payload)

    @property
    def monitor(self) -> zmq.Socket | None:
        """The socket monitor of a CURVE subscriber (its failed handshakes), for a poller."""
        return self._monitor

    def count_handshakes(self) -> None:
        """Count the failed CURVE handshakes reported so far (``auth_failed``)."""
        assert self._monitor is not None
        while self._monitor.poll(0):
            recv_monitor_message(self._monitor)
            self._reject(DecodeError("auth_failed", "CURVE handshake with the publisher failed"))

    def close(self) -> None:
        if self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
        self._sock.close(linger=0)
        self._shm.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sources:
    """Receive from several publishers, each trusted only for the topics it owns.

    One :class:`Subscriber` per endpoint, subscribed to exactly its topics: a camera's
    endpoint can never speak for the microphone, a heartbeat of the engine or a result.
    What an endpoint sends on another topic is rejected ``foreign_topic`` and creates no
    state. The interface is :class:`Subscriber`'s (``recv``, ``recv_raw``, ``streams``,
    ``rejected``), so one reader code serves both.
    """

    def __init__(
        self,
        owners: dict[str, list[str]],
        *,
        rcvhwm: int = 64,
        shm_copy: bool = True,
        shm_hold: int = 1,
        curve: dict[str, CurveClient] | None = None,
        exact: bool = True,
    ) -> None:
        """``exact``: an endpoint speaks only for exactly its topics (else: for whatever
        starts with them, as a recorder of everything wants)."""
        self._subs: list[Subscriber] = []
        curve = curve or {}
        try:
            for endpoint, topics in owners.items():
                self._subs.append(
                    Subscriber(
                        endpoint,
                        topics,
                        rcvhwm=rcvhwm,
                        shm_copy=shm_copy,
                        shm_hold=shm_hold,
                        owns=topics if exact else None,
                        curve=curve.get(endpoint),
                    )
                )
        except EndpointError:
            self.close()
            raise
        self._poller = zmq.Poller()
        self._monitors: dict[zmq.Socket, Subscriber] = {}
        for sub in self._subs:
            self._poller.register(sub.socket, zmq.POLLIN)
            if sub.monitor is not None:  # failed CURVE handshakes come here, not as data
                self._poller.register(sub.monitor, zmq.POLLIN)
                self._monitors[sub.monitor] = sub
        self._next = 0

    @property
    def streams(self) -> dict[bytes, StreamStats]:
        return {t: st for sub in self._subs for t, st in sub.streams.items()}

    @property
    def rejected(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for sub in self._subs:
            total.update(sub.rejected)
        return total

    def recv(self, timeout: float | None = None) -> Envelope | None:
        got = self.recv_raw(timeout)
        return None if got is None else got[0]

    def recv_raw(
        self, timeout: float | None = None
    ) -> tuple[Envelope, list[bytes | memoryview]] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        n = len(self._subs)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            ms = None if left is None else max(0, math.ceil(left * 1000))  # (not early)
            ready = {sock for sock, _ in self._poller.poll(ms)}
            for sock in ready & self._monitors.keys():
                self._monitors[sock].count_handshakes()
            if not ready and left is not None and left <= 0.001:
                return None
            # Round-robin over the ready ones, so a flooding publisher cannot starve the rest;
            # only those (an empty socket's recv raises, which costs more than the poll).
            for k in range(n):
                sub = self._subs[(self._next + k) % n]
                if sub.socket in ready and (got := sub.recv_raw(timeout=0)) is not None:
                    self._next = (self._next + k + 1) % n
                    return got
            if deadline is not None and time.monotonic() >= deadline:
                return None  # only rejects came: the caller's timeout holds all the same

    def intact(self, env: Envelope) -> bool:
        """Whether a payload received as a view still holds what was sent (the check reads
        the slot's own generation, so any of the subscribers can make it)."""
        return not self._subs or self._subs[0].intact(env)

    def close(self) -> None:
        for sub in self._subs:
            sub.close()

    def __enter__(self) -> Sources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The subscriber SDK robotics apps import: typed classifications, blocking or asyncio.

    from streamfuse import Client

    with Client("tcp://127.0.0.1:5560") as client:
        for result in client:                    # blocks; Ctrl-C ends it
            if result.label == "7" and result.score > 0.9:
                robot.stop()

    async with Client(topics=["result/front"]) as client:
        async for result in client:
            ...

ZeroMQ reconnects on its own (a restarted daemon is picked up within ``reconnect_max_ms``)
and TCP keepalives notice a peer that vanished without closing its connection. (Not ZMTP
heartbeats: with a full receive queue they crash libzmq 4.3 — zeromq/libzmq#3937.) Messages
the app missed (its own queue overflowed, or the daemon restarted) show in :attr:`missed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import zmq
import zmq.asyncio

from . import messages
from .errors import DecodeError, EndpointError
from .messages import Classification
from .security import CurveClient
from .transport import MAX_TOPICS, StreamStats

log = logging.getLogger(__name__)

__all__ = ["Client"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5560"


class Client:
    def __init__(
        self,
        endpoint: str | Iterable[str] = DEFAULT_ENDPOINT,
        topics: Iterable[str] = ("result/",),
        *,
        rcvhwm: int = 1000,
        reconnect_ms: int = 100,
        reconnect_max_ms: int = 2000,
        keepalive_s: int = 10,
        server_key: str | None = None,
        key: str | None = None,
    ) -> None:
        """``server_key``: the daemon's public key file (``engine.output`` beyond loopback is
        a CURVE server); ``key``: this app's secret key file, where the daemon lets in only
        ``security.authorized_keys`` (else a fresh key pair is used)."""
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self._curve = CurveClient.to(server_key, key, "server_key") if server_key else None
        self.topics = list(topics)
        self.rejected = 0
        """Messages that were not valid classifications (skipped)."""
        self.streams: dict[bytes, StreamStats] = {}
        """Per result topic: received, sequence gaps, reordering."""
        self._opts = {
            zmq.RCVHWM: rcvhwm,
            zmq.LINGER: 0,
            zmq.RECONNECT_IVL: reconnect_ms,
            zmq.RECONNECT_IVL_MAX: reconnect_max_ms,
            zmq.TCP_KEEPALIVE: 1,
            zmq.TCP_KEEPALIVE_IDLE: keepalive_s,
            zmq.TCP_KEEPALIVE_INTVL: max(1, keepalive_s // 2),
        }
        # Sockets open on first use: a blocking one for recv(), an asyncio one for arecv().
        self._ctx: zmq.Context | None = None
        self._sock: Any = None
        self._actx: zmq.asyncio.Context | None = None
        self._asock: Any = None
        # Connect now, so a bad endpoint fails here and messages queue from this moment.
        self._ctx = zmq.Context()
        try:
            self._sock = self._open(self._ctx)
        except EndpointError:
            self._ctx.term()
            raise

    def _open(self, ctx: zmq.Context) -> Any:
        sock = ctx.socket(zmq.SUB)
        for opt, value in self._opts.items():
            sock.setsockopt(opt, value)
        for t in self.topics:
            sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        if self._curve is not None:
            self._curve.apply(sock)
        for ep in self.endpoints:
            try:
                sock.connect(ep)
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                raise EndpointError(ep, "connect to", exc.strerror) from None
        return sock

    def _accept(self, frames: list[bytes]) -> Classification | None:
        try:
            env = messages.decode(frames)
        except DecodeError:
            self.rejected += 1
            return None
        except Exception:  # the last resort: one message never ends an app's loop
            self.rejected += 1
            log.exception("internal error on a received message (counted, skipped)")
            return None
        header = env.header
        if not isinstance(header, Classification):
            return None
        st = self.streams.get(env.topic)
        if st is None and len(self.streams) < MAX_TOPICS:  # bounded: no state past it
            st = self.streams[env.topic] = StreamStats()
        if st is not None:
            st.add(header.seq, header.t_capture)
        return header

    @property
    def received(self) -> int:
        return sum(st.received for st in self.streams.values())

    @property
    def missed(self) -> int:
        """Classifications lost between the daemon and this app (sequence gaps)."""
        return sum(st.gaps for st in self.streams.values())

    # --- blocking --------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Classification | None:
        """The next classification, or ``None`` after ``timeout`` seconds."""
        ms = None if timeout is None else int(timeout * 1000)
        if self._sock is None:
            self._ctx = zmq.Context()
            self._sock = self._open(self._ctx)
        while True:
            if not self._sock.poll(ms):
                return None
            result = self._accept(self._sock.recv_multipart())
            if result is not None:
                return result

    def __iter__(self) -> Iterator[Classification]:
        while True:
            result = self.recv()
            if result is not None:
                yield result

    # --- asyncio ---------------------------------------------------------------------

    async def arecv(self, timeout: float | None = None) -> Classification | None:
        if self._asock is None:
            if self._sock is not None and self.received == 0:  # an asyncio-only client
                self._sock.close(linger=0)
                assert self._ctx is not None
                self._ctx.term()
                self._sock = self._ctx = None
            self._actx = zmq.asyncio.Context()
            self._asock = self._open(self._actx)
        while True:
            try:
                frames = await asyncio.wait_for(self._asock.recv_multipart(), timeout)
            except asyncio.TimeoutError:
                return None
            result = self._accept(frames)
            if result is not None:
                return result

    async def __aiter__(self) -> AsyncIterator[Classification]:
        while True:
            result = await self.arecv()
            if result is not None:
                yield result

    # --- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            assert self._ctx is not None
            self._ctx.term()
            self._sock = self._ctx = None
        if self._asock is not None:
            self._asock.close(linger=0)
            assert self._actx is not None
            self._actx.term()
            self._asock = self._actx = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

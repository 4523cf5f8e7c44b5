"""Same-host payloads through shared memory; only the header crosses ZeroMQ.

On an ``ipc://`` endpoint every subscriber is on the publisher's box, so a large payload
(a camera frame) need not be copied through a socket: the publisher writes it into a ring of
slots in a POSIX shared-memory segment (one ring per topic) and sends
``[topic, header, b"sf-shm/1", ref]``, where ``ref`` is the MessagePack array
``[segment, slot, gen, size]``. The subscriber copies the bytes out of the slot and hands on
``[topic, header, payload]``, exactly what an inline publisher would have sent; nothing above
the transport (the engine, the recorder, applications) can tell the difference.

Each slot carries the generation (message number in the ring) it holds, written after the
bytes, so a reader that copies a slot the publisher has meanwhile reused sees a different
generation and rejects the message as ``overwritten`` (counted like any other loss).
Readers register in the segment's reader table and publish the last generation they
consumed; the publisher reuses only slots every live reader is done with, and when there is
none, a *lossless* publisher waits while a live one overwrites the oldest.

Segment layout (little-endian)::

    0     magic b"SFSHM\\x00\\x01\\x00"
    8     u32 slots, u32 slot capacity in bytes
    16    reader table: 16 x [u64 token, u64 pid, u64 consumed gen]   (0 token = free)
    512   slot k at 512 + k * (16 + capacity): [u64 gen, u64 size] + bytes

A generation of 0 marks a slot being written. Loads and stores of aligned u64 are single
instructions on x86-64 and arm64; ordering relies on x86's total store order (on arm64 a
reader racing an overwrite could, rarely, miss it; the ZeroMQ message that announces a slot
is itself a full barrier, so data never races its announcement).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import secrets
import shutil
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.shared_memory import SharedMemory

import msgspec
import numpy as np

from .errors import ConfigError, DecodeError

__all__ = ["MIN_BYTES", "TAG", "Ring", "ShmReader", "ShmRef", "wanted"]

log = logging.getLogger(__name__)

TAG = b"sf-shm/1"
"""Third frame of a message whose payload lives in shared memory."""
MIN_BYTES = 64 * 1024
"""Payloads smaller than this travel inline: a socket copy costs less than a ring slot."""
MAGIC = b"SFSHM\x00\x01\x00"
HEADER = 512
MAX_READERS = 16
MAX_SEGMENTS = 64
"""Segments one reader keeps mapped at most (the oldest is unmapped past it)."""
SLOT_HEADER = 16
LONELY_S = 1.0
"""A lossless publisher whose ring no reader ever registered in stops waiting after this."""
_NAME = re.compile(r"sf-[0-9]+-[0-9a-f]{8}")  # fullmatch: "$" would let a "\n" end it


class ShmRef(msgspec.Struct, array_like=True, frozen=True):
    """Where a payload is: ``[segment, slot, gen, size]`` on the wire."""

    segment: str
    slot: int
    gen: int
    size: int


_ref_encoder = msgspec.msgpack.Encoder()
_ref_decoder = msgspec.msgpack.Decoder(ShmRef)


def wanted(endpoint: str, shm: bool | None) -> bool:
    """Whether a publisher on ``endpoint`` sends large payloads through shared memory.

    ``shm=None`` (auto): on ``ipc://`` endpoints, unless ``STREAMFUSE_SHM=0`` (for a
    subscriber in another IPC namespace, e.g. a container without ``--ipc=host``).
    """
    if shm is not None:
        return shm
    env = os.environ.get("STREAMFUSE_SHM", "").strip().lower()
    if env in ("0", "off", "false", "no"):
        return False
    if env not in ("", "1", "on", "auto", "true", "yes"):
        raise ConfigError("STREAMFUSE_SHM", f"{env!r}: use 0/off, or 1/auto (the default)")
    return endpoint.startswith("ipc://")


class _Segment:
    """Views on one mapped segment (shared by the writing and the reading side)."""

    def __init__(self, buf: memoryview, close: Callable[[], None]) -> None:
        self._close = close
        if len(buf) < HEADER or bytes(buf[:8]) != MAGIC:
            raise ValueError("not a streamfuse ring (bad magic)")
        self.slots, self.capacity = (int(x) for x in np.ndarray((2,), "<u4", buf, 8))
        self.readers = np.ndarray((MAX_READERS, 3), "<u8", buf, 16)
        stride = SLOT_HEADER + self.capacity
        if HEADER + self.slots * stride > len(buf):
            raise ValueError(f"{self.slots} slots of {self.capacity} bytes do not fit")
        self.meta = [np.ndarray((2,), "<u8", buf, HEADER + k * stride) for k in range(self.slots)]
        self.data = [
            np.ndarray((self.capacity,), np.uint8, buf, HEADER + k * stride + SLOT_HEADER)
            for k in range(self.slots)
        ]

    def close(self, *, unmap: bool = True) -> None:
        """Drop the views; with ``unmap`` also the mapping, at once. Without it the mapping
        goes when the last array on it does: NumPy keeps no buffer export of what it views,
        so unmapping under a live ``copy=False`` payload would leave it pointing at freed
        (or another segment's, once remapped) memory."""
        del self.readers, self.meta, self.data  # views must go before the mapping can
        if unmap:
            self._close()


def _map(name: str) -> tuple[memoryview, Callable[[], None]]:
    """Map an existing segment read-write *without* the resource tracker that
    ``SharedMemory(name)`` registers it with (Python < 3.13), which would unlink the
    publisher's segment when this reader exits (or, in a multiprocessing child that shares
    its parent's tracker, drop the publisher's own registration)."""
    import _posixshmem  # type: ignore[import-not-found]  # what SharedMemory uses; POSIX only

    fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ValueError("empty segment")
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    view = memoryview(mm)

    def close() -> None:
        view.release()
        mm.close()

    return view, close


class Ring:
    """One topic's ring of payload slots, owned (created, written, unlinked) by a publisher.

    A slot is free once every live registered reader has consumed what it holds; the writer
    takes the free slot of lowest index, so while readers keep up only one or two slots are
    ever touched (tmpfs allocates pages on first touch) and the rest is headroom for a
    backlog. With no free slot a lossless writer waits; a live one overwrites the oldest.
    """

    def __init__(self, capacity: int, slots: int = 64) -> None:
        stride = SLOT_HEADER + capacity
        free = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
        # tmpfs allocates on first touch: writing past its limit is a SIGBUS, not an error.
        # So the ring never reserves more than half of what /dev/shm has free.
        fit = (free // 2 - HEADER) // stride
        if fit < 2:
            raise OSError(f"/dev/shm has {free} bytes free; two {capacity}-byte slots do not fit")
        if fit < slots:
            log.warning("/dev/shm is small: a ring of %d slots instead of %d", fit, slots)
            slots = fit
        name = f"sf-{os.getpid()}-{secrets.token_hex(4)}"
        self._shm = shm = SharedMemory(name=name, create=True, size=HEADER + slots * stride)
        # Pages are reserved with posix_fallocate before they are first touched, the header
        # now and each slot when it is first used: a /dev/shm that fills up is then an
        # OSError (ENOSPC) here or in loan(), and the publisher sends inline; never a SIGBUS.
        self._fd: int = shm._fd  # type: ignore[attr-defined]
        try:
            os.posix_fallocate(self._fd, 0, HEADER + SLOT_HEADER)
        except OSError:
            shm.close()
            shm.unlink()
            raise
        self._stride = stride
        self._reserved = [False] * slots
        buf = _buf(shm)
        buf[:8] = MAGIC
        np.ndarray((2,), "<u4", buf, 8)[:] = (slots, capacity)
        self._seg = _Segment(buf, shm.close)
        self.name = name
        self.capacity = capacity
        self.gen = 0
        self.held = [0] * slots
        """The generation each slot holds (0: never written)."""
        self.loaned: np.ndarray | None = None
        self._slot = -1
        self._lonely_since = time.monotonic()
        self._pids_checked = 0.0

    def write(self, payload: object, *, wait: bool = False) -> bytes:
        """Copy ``payload`` into a free slot; return the encoded reference to send."""
        src = np.frombuffer(payload, dtype=np.uint8)  # type: ignore[call-overload]
        self.loan(src.size, wait=wait)[:] = src
        return self.commit()

    def loan(self, size: int, *, wait: bool = False) -> np.ndarray:
        """A slot's first ``size`` bytes, to fill in place before :meth:`commit`.

        With ``wait`` (lossless), block until a slot is free rather than overwrite one.
        """
        seg = self._seg
        k = self._pick(wait)
        if not self._reserved[k]:  # ENOSPC here, not a SIGBUS at the first write
            os.posix_fallocate(self._fd, HEADER + k * self._stride, self._stride)
            self._reserved[k] = True
        self._slot = k
        seg.meta[k][0] = 0  # readers of the old contents now see it as overwritten
        self.held[k] = 0
        self.loaned = seg.data[k][:size]
        return self.loaned

    def owns(self, array: object) -> bool:
        """Whether ``array`` is (a view of) the slot on loan."""
        return (
            self.loaned is not None
            and isinstance(array, np.ndarray)
            and array.nbytes == self.loaned.nbytes
            and array.__array_interface__["data"][0] == self.loaned.__array_interface__["data"][0]
        )

    def commit(self) -> bytes:
        """Publish the slot on loan; return the encoded reference to send."""
        assert self.loaned is not None, "commit() without loan()"
        k, size = self._slot, self.loaned.nbytes
        self.gen += 1
        self.loaned = None
        meta = self._seg.meta[k]
        meta[1] = size
        meta[0] = self.held[k] = self.gen
        return _ref_encoder.encode(ShmRef(self.name, k, self.gen, size))

    def _pick(self, wait: bool) -> int:
        readers = self._seg.readers
        while True:
            live = readers[:, 0] != 0
            if live.any():
                self._lonely_since = time.monotonic()
                floor = int(readers[live, 2].min())
                for k, held in enumerate(self.held):  # lowest index first
                    if held <= floor:
                        return k
                if not wait:  # a reader a whole ring behind loses the oldest (it is told)
                    return self.held.index(min(self.held))
                self._reap(readers)
            else:
                # Nobody registered (yet): round robin, so that messages already in flight
                # survive until their reader attaches, which it does on its first message.
                k = self.held.index(min(self.held))
                if not wait or self.held[k] == 0:
                    return k
                if time.monotonic() - self._lonely_since > LONELY_S:
                    return k  # nobody reads through shared memory: do not wait for no one
            time.sleep(20e-6)

    def _reap(self, readers: np.ndarray) -> None:
        """Free the entries of readers whose process has died (a few times a second)."""
        now = time.monotonic()
        if now - self._pids_checked < 0.2:
            return
        self._pids_checked = now
        for row in readers:
            if row[0] != 0 and not pid_alive(int(row[1])):
                log.warning("shared-memory reader pid %d is gone; no longer waiting for it", row[1])
                row[0] = 0

    def close(self) -> None:
        self._seg.close()
        self._shm.unlink()


def _buf(shm: SharedMemory) -> memoryview:
    buf = shm.buf
    assert buf is not None, "segment is closed"
    return buf


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's counts; a pid no kernel has, not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:
        return False
    except PermissionError:
        return True
    return True


class _SlotView(np.ndarray):
    """A read-only payload on a ring slot; ``where`` is (the slot's [gen, size], its gen)."""

    where: tuple[np.ndarray, int]


class ShmReader:
    """The subscriber's side: resolves references into payload bytes it owns."""

    def __init__(self, *, copy: bool = True, hold: int = 1) -> None:
        """``copy=False``: payloads are views on their slots; ``hold``: how many of the
        latest views per segment stay valid (the slots are held through this reader's
        registration, so a publisher does not reuse them while it has other free slots;
        keep it below the ring's slot count, and check :meth:`intact` before use)."""
        self.hold = max(1, hold)
        self._held: dict[str, deque[int]] = {}
        self._segs: dict[str, tuple[_Segment, int]] = {}
        self._by_topic: dict[bytes, str] = {}
        """The segment each topic's payloads came from last."""
        self._token = secrets.randbits(63) | 1
        self.copy = copy

    def read(self, ref_frame: bytes | memoryview, topic: bytes) -> memoryview:
        """The referenced payload: copied out of its slot, or with ``copy=False`` a read-only
        view on the slot itself (see :meth:`intact`). Raises :class:`DecodeError`."""
        try:
            ref = _ref_decoder.decode(ref_frame)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise DecodeError(
                "malformed", f"bad shared-memory reference: {exc}", topic=topic
            ) from None
        old = self._by_topic.get(topic)
        if old is not None and old != ref.segment:
            self._detach(old)  # the publisher restarted: its old ring is gone, unmap it
        seg, row = self._segs.get(ref.segment) or self._attach(ref.segment, topic)
        if old != ref.segment and len(self._by_topic) < MAX_SEGMENTS:
            self._by_topic[topic] = ref.segment
        if not (0 <= ref.slot < seg.slots and 0 <= ref.size <= seg.capacity):
            raise DecodeError(
                "malformed",
                f"slot {ref.slot} / size {ref.size} outside segment {ref.segment} "
                f"({seg.slots} slots of {seg.capacity} bytes)",
                topic=topic,
            )
        meta = seg.meta[ref.slot]
        view = seg.data[ref.slot][: ref.size]
        out = np.empty(ref.size, np.uint8) if self.copy else view
        if meta[0] == ref.gen and self.copy:
            out[:] = view
        if meta[0] != ref.gen:
            raise DecodeError(
                "overwritten",
                f"slot {ref.slot} of {ref.segment} was reused before it was read "
                "(subscriber more than a ring behind)",
                topic=topic,
            )
        # A copy is done with the slot; a view holds it (and the ``hold - 1`` before it).
        seg.readers[row, 2] = ref.gen if self.copy else self._hold(ref.segment, ref.gen)
        if not self.copy:
            out = out.view(_SlotView)
            out.flags.writeable = False
            out.where = (meta, ref.gen)
        return out.data

    def _hold(self, segment: str, gen: int) -> int:
        """Record ``gen`` as held; the generation this reader has finished with."""
        held = self._held.setdefault(segment, deque())
        held.append(gen)
        while len(held) > self.hold:
            held.popleft()
        return held[0] - 1

    def intact(self, payload: memoryview) -> bool:
        """Whether a ``copy=False`` payload still holds what was sent (its slot not reused).

        Check after using a view from a publisher that is not lossless; a copied or inline
        payload is always intact.
        """
        obj = payload.obj
        if not isinstance(obj, _SlotView):
            return True
        meta, gen = obj.where
        return int(meta[0]) == gen

    def _detach(self, name: str) -> None:
        for topic in [t for t, n in self._by_topic.items() if n == name]:
            del self._by_topic[topic]
        self._held.pop(name, None)
        got = self._segs.pop(name, None)
        if got is None:
            return
        seg, row = got
        if seg.readers[row, 0] == self._token:
            seg.readers[row, 0] = 0
        seg.close(unmap=self.copy)  # copy=False: payloads the app holds keep it mapped

    def _attach(self, name: str, topic: bytes) -> tuple[_Segment, int]:
        if not _NAME.fullmatch(name):
            raise DecodeError("malformed", f"{name!r} is not a streamfuse segment", topic=topic)
        try:
            seg = _Segment(*_map(name))
        except OSError as exc:
            raise DecodeError(
                "shm_unavailable",
                f"cannot open shared-memory segment {name}: {exc.strerror or exc}; the "
                "publisher is gone, or runs in another IPC namespace (a container without "
                "--ipc=host: start it with STREAMFUSE_SHM=0)",
                topic=topic,
            ) from None
        except ValueError as exc:
            raise DecodeError("malformed", f"segment {name}: {exc}", topic=topic) from None
        if len(self._segs) >= MAX_SEGMENTS:  # bounded: the oldest mapping goes
            self._detach(next(iter(self._segs)))
        row = self._register(seg)
        self._segs[name] = (seg, row)
        return seg, row

    def _register(self, seg: _Segment) -> int:
        for row in range(MAX_READERS):
            if seg.readers[row, 0] == 0:
                seg.readers[row] = (self._token, os.getpid(), 0)
                if seg.readers[row, 0] == self._token:
                    return row
        log.warning("segment has %d readers already; this one reads unregistered", MAX_READERS)
        return MAX_READERS - 1  # shares the last entry: a lossless writer may outrun it

    def close(self) -> None:
        for seg, row in self._segs.values():
            if seg.readers[row, 0] == self._token:
                seg.readers[row, 0] = 0
            seg.close(unmap=self.copy)  # copy=False: payloads the app holds keep it mapped
        self._segs.clear()

"""Recording sessions to MCAP, and reading them back (also from a file cut off by kill -9).

Layout of a recording (``docs/recording.md``):

- one channel per topic, message encoding ``streamfuse-zmq-v1``: the ZeroMQ frames after the
  topic exactly as they crossed the wire (header MessagePack, then the payload, if any),
  each prefixed by its length as a little-endian u32; its schema
  (``streamfuse.v1.VideoFrame`` ..., encoding ``streamfuse-header-jsonschema``) is the JSON
  Schema of the header;
  ``log_time`` = receive time (CLOCK_REALTIME ns), ``publish_time`` = capture time
  (``t_capture``, CLOCK_MONOTONIC ns of the capturing box), ``sequence`` = ``seq`` mod 2**32;
- for Foxglove, beside them (:mod:`streamfuse.fox`): ``<video topic>/image``
  (``foxglove.CompressedImage``, JPEG, at most ``foxglove_fps``, stamped with the capture
  time), ``<audio topic>/audio`` (``foxglove.RawAudio``, pcm-s16, every window's new
  samples: the Audio panel plays it), ``<result topic>/annotations``
  (``foxglove.ImageAnnotations``: the label over its frame), all protobuf with the schemas
  of the official ``foxglove-sdk``; ``<audio topic>/level`` (RMS and peak per window) and
  ``<result topic>/json`` (the classification), JSON with complete JSON Schemas;
- metadata ``streamfuse.clock``: CLOCK_REALTIME - CLOCK_MONOTONIC at the start, so replay
  can put receive times on the capture clock.

Chunks (256 KB, LZ4 by default) are written whole as they fill, so a recorder killed with -9
leaves a file readable up to its last complete chunk; :func:`read_recording` reads such a
file and :func:`recover` rewrites it with a proper summary.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import queue
import shutil
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, cast

import msgspec
import numpy as np
from mcap.exceptions import EndOfFile, InvalidMagic, McapError
from mcap.records import Channel, Message, Metadata
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer

from . import fox, messages
from .errors import RecordingStopped, SourceError
from .messages import AudioWindow, Classification, Envelope, VideoFrame
from .security import CurveClient
from .transport import MAX_TOPICS, Sources, Subscriber

__all__ = [
    "ENCODING",
    "RecordSummary",
    "Recorded",
    "Recorder",
    "read_recording",
    "record",
    "recover",
]

log = logging.getLogger(__name__)

DEFAULT_MIN_FREE = 64 * 10**6
"""A recording stops, complete, while the disk still has this much (``--min-free`` MB)."""
DEFAULT_BACKLOG = 256 << 20
"""Bytes a recorder holds for a disk that is behind, at most (``record --max-backlog-mib``)."""

ENCODING = "streamfuse-zmq-v1"
#: the schema of a wire channel: the JSON Schema of its MessagePack header
SCHEMA_ENCODING = "streamfuse-header-jsonschema"
_U32 = struct.Struct("<I")

_LEVEL_SCHEMA = {
    "title": "streamfuse.AudioLevel",
    "type": "object",
    "properties": {
        "rms": {"type": "number", "description": "root mean square of the window, full scale 1"},
        "peak": {"type": "number", "description": "largest absolute sample, full scale 1"},
        "t_capture": {"type": "integer", "description": "the window's start (capture clock, ns)"},
    },
    "required": ["rms", "peak", "t_capture"],
}


def pack_frames(frames: Iterable[bytes | memoryview]) -> bytes:
    return b"".join(_U32.pack(len(f)) + bytes(f) for f in frames)


def unpack_frames(data: bytes | memoryview) -> list[memoryview]:
    view, out, at = memoryview(data), [], 0
    while at < len(view):
        if at + 4 > len(view):
            raise ValueError(f"frame length cut off at byte {at}")
        (n,) = _U32.unpack_from(view, at)
        if at + 4 + n > len(view):
            raise ValueError(f"frame of {n} bytes at byte {at} runs past the message end")
        out.append(view[at + 4 : at + 4 + n])
        at += 4 + n
    return out


class Recorder:
    """Writes messages to an MCAP file; see the module docstring for the layout."""

    def __init__(
        self,
        path: str | Path,
        *,
        compression: Literal["lz4", "zstd", "none"] = "lz4",
        foxglove: bool = True,
        foxglove_fps: float = 10.0,
        chunk_size: int = 256 * 1024,
        clock_offset: int | None = None,
    ) -> None:
        kind = {"lz4": CompressionType.LZ4, "zstd": CompressionType.ZSTD}
        self._compression = kind.get(compression, CompressionType.NONE)
        self._chunk_size = chunk_size
        self.clock_offset = clock_offset or time.time_ns() - time.monotonic_ns()
        """CLOCK_REALTIME - CLOCK_MONOTONIC here (Foxglove's stamps are wall-clock time)."""
        self.foxglove = foxglove
        self._fox_period = int(1e9 / foxglove_fps) if foxglove_fps > 0 else 0
        self._fox_last: dict[str, int] = {}
        self._audio = fox.AudioBlocks()
        self.written: Counter[str] = Counter()
        self.parts: list[Path] = []
        self._open(Path(path))

    def _open(self, path: Path) -> None:
        self.path = path
        self.started = time.monotonic()
        self._file = _FlushingFile(open(path, "wb"))  # noqa: SIM115
        self._w = Writer(
            cast(IO[Any], self._file),  # write/flush/tell/close is all it uses
            chunk_size=self._chunk_size,
            compression=self._compression,
        )
        self._w.start(profile="", library="streamfuse")
        self._w.add_metadata(
            "streamfuse.clock", {"realtime_minus_monotonic_ns": str(self.clock_offset)}
        )
        self._channels: dict[str, int] = {}
        self._schemas: dict[str, int] = {}
        self.parts.append(path)

    @property
    def size(self) -> int:
        """Bytes of the current part written so far (whole chunks; the summary comes last)."""
        return self._file.tell()

    def split(self, path: Path) -> None:
        """Finish this part (a complete MCAP, summary and all) and go on in ``path``; the
        Foxglove thinning and the audio blocks carry on across the cut."""
        self._w.finish()
        self._file.close()
        self._open(path)

    def _channel(self, topic: str, encoding: str, schema: dict[str, Any] | None) -> int:
        cid = self._channels.get(topic)
        if cid is None:
            sid = 0
            if schema is not None:
                title = schema["title"]
                if title not in self._schemas:
                    data = json.dumps(schema).encode()
                    self._schemas[title] = self._w.register_schema(title, "jsonschema", data)
                sid = self._schemas[title]
            cid = self._channels[topic] = self._w.register_channel(topic, encoding, sid)
        return cid

    def write(self, topic: str, frames: list[Any], header: messages.Message, log_time: int) -> None:
        """Write one validated message (``frames`` after the topic) received at ``log_time``."""
        cid = self._channels.get(topic)
        if cid is None:
            cid = self._raw_channel(topic, type(header))
        # MCAP's sequence is a uint32: it wraps; the header in the record keeps the full seq.
        seq32 = header.seq & 0xFFFF_FFFF
        self._w.add_message(cid, log_time, pack_frames(frames), header.t_capture, seq32)
        self.written[topic] += 1
        if self.foxglove:
            self._foxglove(topic, frames, header, log_time)

    def _raw_channel(self, topic: str, kind: type[messages.Message]) -> int:
        """A wire channel, its schema the header's JSON Schema (the payload follows it)."""
        name = f"streamfuse.v{messages.PROTOCOL_VERSION}.{kind.__name__}"
        if name not in self._schemas:
            data = msgspec.json.encode(msgspec.json.schema(kind))
            self._schemas[name] = self._w.register_schema(name, SCHEMA_ENCODING, data)
        cid = self._w.register_channel(topic, ENCODING, self._schemas[name])
        self._channels[topic] = cid
        return cid

    def _foxglove(self, topic: str, frames: list[Any], header: Any, log_time: int) -> None:
        payload = frames[1] if len(frames) > 1 else None
        wall = self.clock_offset
        if isinstance(header, VideoFrame) and payload is not None:
            last = self._fox_last.get(topic)
            if last is not None and header.t_capture - last < self._fox_period:
                return
            self._fox_last[topic] = header.t_capture
            if (image := fox.compressed_image(header, payload, wall)) is not None:
                self._proto(f"{topic}/image", image, log_time, header.t_capture)
        elif isinstance(header, AudioWindow) and payload is not None:
            env = messages.Envelope(b"", header, memoryview(payload))
            x = messages.audio_array(env).astype(np.float32)
            if header.sample_format == "s16le":
                x = x / 32768.0
            level: dict[str, Any] = {
                "rms": float(np.sqrt(np.mean(x * x))),
                "peak": float(np.abs(x).max()),
                "t_capture": header.t_capture,
            }
            self._json(f"{topic}/level", _LEVEL_SCHEMA, level, log_time, header.t_capture)
            if (block := self._audio.block(topic, header, payload, wall)) is not None:
                self._proto(f"{topic}/audio", block, log_time, header.t_capture)
        elif isinstance(header, Classification):
            doc = fox.classification_doc(header)
            self._json(f"{topic}/json", fox.CLASSIFICATION_SCHEMA, doc, log_time, header.t_capture)
            if (notes := fox.label_overlay(header, wall)) is not None:
                self._proto(f"{topic}/annotations", notes, log_time, header.t_capture)

    def _json(
        self, topic: str, schema: dict[str, Any], doc: dict[str, Any], log_time: int, t: int
    ) -> None:
        cid = self._channel(topic, "json", schema)
        self._w.add_message(cid, log_time, json.dumps(doc).encode(), t)

    def _proto(self, topic: str, message: Any, log_time: int, t: int) -> None:
        """A Foxglove well-known message, protobuf-encoded with the SDK's own schema."""
        cid = self._channels.get(topic)
        if cid is None:
            schema = fox.schema_of(type(message))
            if schema.name not in self._schemas:
                sid = self._w.register_schema(schema.name, schema.encoding, bytes(schema.data))
                self._schemas[schema.name] = sid
            cid = self._w.register_channel(topic, "protobuf", self._schemas[schema.name])
            self._channels[topic] = cid
        self._w.add_message(cid, log_time, message.encode(), t)

    def close(self) -> None:
        self._w.finish()
        self._file.close()


class _FlushingFile:
    """Hands every write to the kernel at once, so a chunk is on its way to disk the moment
    it is complete (kill -9 safe), and whole: a buffered file retries the partial writes a
    signal can cause, which a raw one (and the MCAP writer, which ignores the count) would
    not."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def write(self, data: bytes | memoryview) -> int:
        n = self._f.write(data)
        self._f.flush()
        return n

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


@dataclass
class RecordSummary:
    path: str
    seconds: float
    written: dict[str, int]
    lost: dict[str, int]
    """Per topic: messages missing from the sequence (lost before reaching the recorder)."""
    rejected: dict[str, int]
    bytes: int
    overflow: dict[str, int] = field(default_factory=dict)
    """Per topic: messages dropped because the backlog waiting for the disk was full."""
    backlog_peak_bytes: int = 0
    """The most that ever waited for the disk."""
    parts: list[str] = field(default_factory=list)
    """The files written, in order (one unless split)."""
    stopped: str | None = None
    """Why the recording stopped early (the disk), as one line; None if it did not."""


def record(
    endpoints: list[str],
    topics: list[str],
    out: str | Path,
    stop: threading.Event,
    *,
    duration: float | None = None,
    compression: Literal["lz4", "zstd", "none"] = "lz4",
    foxglove: bool = True,
    curve: dict[str, CurveClient] | None = None,
    max_backlog: int = DEFAULT_BACKLOG,
    split_size: int | None = None,
    split_duration: float | None = None,
    min_free: int = DEFAULT_MIN_FREE,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_s: float = 1.0,
) -> RecordSummary:
    """Record everything on ``topics`` from ``endpoints`` until ``stop`` or ``duration``
    (``curve``: the CurveClient for each endpoint that needs one).

    One thread receives (and so takes frames out of their shared-memory slots, which a live
    publisher reuses) as they arrive and queues them; this one writes. A disk slower than
    what arrives makes the queue grow up to ``max_backlog`` bytes (rosbag2's cache size);
    past it, arriving messages are dropped, counted per topic in ``overflow`` and warned
    about once a second, so that a flood never takes the box's memory. Anything lost
    upstream shows as sequence gaps in ``lost``. Invalid messages are counted by reason and
    not recorded.

    ``split_size`` (bytes) / ``split_duration`` (seconds): the recording goes into parts
    ``<stem>.000.mcap``, ``<stem>.001.mcap``, ... (rosbag2's --max-bag-size/-duration), each
    a complete MCAP; a cut falls between two messages, so none is lost or doubled.
    ``min_free``: once the disk has less than this many bytes free (or is full), the
    recording stops, its file complete, and ``stopped`` says why (a disk that is already
    too full at the start raises :class:`RecordingStopped`).

    ``progress``: called with ``{"written", "rejected", "bytes", "seconds"}`` about every
    ``progress_s`` seconds while something changed (messages written, or rejected)."""
    start = time.monotonic()
    sub: Subscriber | Sources
    if curve:  # one CURVE server key per socket: a subscriber per endpoint
        owners = {ep: topics or [""] for ep in endpoints}
        sub = Sources(owners, rcvhwm=0, curve=curve, exact=False)
    else:
        sub = Subscriber(endpoints, topics or [""], rcvhwm=0)
    received: queue.SimpleQueue[tuple[Envelope, list[Any], int, int] | None] = queue.SimpleQueue()
    writer_done = threading.Event()
    backlog = _Backlog(max_backlog)

    def take(env: Envelope, parts: list[Any]) -> None:
        size = sum(memoryview(p).nbytes for p in parts)
        if backlog.admit(env.topic, size):
            received.put((env, parts, time.time_ns(), size))

    def receive() -> None:  # owns the socket until it ends
        try:
            while not (stop.is_set() or writer_done.is_set()) and (
                duration is None or time.monotonic() - start < duration
            ):
                if (got := sub.recv_raw(timeout=0.1)) is not None:
                    take(*got)
            while (got := sub.recv_raw(timeout=0)) is not None:  # what is queued goes in too
                take(*got)
        finally:
            received.put(None)

    out = Path(out)
    splitting = split_size is not None or split_duration is not None
    guard = _DiskGuard(out.parent, min_free)
    guard.check(out)  # before the first byte: a disk already too full is one line now
    rec = Recorder(
        split_part(out, 0) if splitting else out, compression=compression, foxglove=foxglove
    )
    internal_errors = 0
    stopped: str | None = None
    receiver = threading.Thread(target=receive, name="record-receive", daemon=True)
    receiver.start()
    said: tuple[int, int] = (0, 0)
    next_progress = time.monotonic() + progress_s

    def report(progress: Callable[[dict[str, Any]], None]) -> None:
        nonlocal said, next_progress
        next_progress = time.monotonic() + progress_s
        now = (sum(rec.written.values()), sum(sub.rejected.values()))
        if now != said:
            said = now
            progress({"written": now[0], "rejected": now[1], "bytes": rec.size,
                      "seconds": round(time.monotonic() - start, 3)})  # fmt: skip

    try:
        while stopped is None:
            if progress is not None and time.monotonic() >= next_progress:
                report(progress)
            try:
                item = received.get(timeout=progress_s if progress is not None else None)
            except queue.Empty:
                continue
            if item is None:
                break
            env, parts, log_time, size = item
            try:
                guard.check(rec.path)
                if splitting and (
                    (split_size is not None and rec.size >= split_size)
                    or (
                        split_duration is not None
                        and time.monotonic() - rec.started >= split_duration
                    )
                ):
                    rec.split(split_part(out, len(rec.parts)))
                rec.write(env.topic.decode(), parts[1:], env.header, log_time)
            except OSError as exc:  # the disk, not the message: the recording cannot go on
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                stopped = str(RecordingStopped(str(rec.path), "the disk is full"))
            except RecordingStopped as exc:
                stopped = str(exc)
            except Exception:  # the last resort: one message never ends a recording
                internal_errors += 1
                if internal_errors == 1:
                    log.exception("internal error writing %s (counted, skipped)", env.topic)
            finally:
                backlog.written(size)
    finally:
        writer_done.set()  # after a failed write, the receiver stops too
        receiver.join()
        sub.close()
        with contextlib.suppress(OSError):  # a full disk may refuse the summary too
            rec.close()
    lost = {t.decode(): st.gaps for t, st in sub.streams.items() if st.gaps}
    rejected = dict(sub.rejected)
    if internal_errors:
        rejected["internal_error"] = rejected.get("internal_error", 0) + internal_errors
    return RecordSummary(
        path=str(rec.parts[0]),
        seconds=round(time.monotonic() - start, 3),
        written=dict(rec.written),
        lost=lost,
        rejected=rejected,
        bytes=sum(p.stat().st_size for p in rec.parts),
        overflow={t.decode(errors="replace"): n for t, n in backlog.dropped.items()},
        backlog_peak_bytes=backlog.peak,
        parts=[str(p) for p in rec.parts],
        stopped=stopped,
    )


def split_part(path: Path, k: int) -> Path:
    """``session.mcap`` -> ``session.003.mcap``: part ``k`` of a split recording."""
    return path.with_name(f"{path.stem}.{k:03d}{path.suffix}")


class _DiskGuard:
    """Stops a recording while the disk still has ``min_free`` bytes (looked at, with
    statvfs, at most every 0.1 s)."""

    def __init__(self, folder: Path, min_free: int) -> None:
        self.folder = folder
        self.min_free = min_free
        self._next = 0.0

    def check(self, path: Path) -> None:
        now = time.monotonic()
        if now < self._next or not self.min_free:
            return
        self._next = now + 0.1
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError as exc:
            raise RecordingStopped(str(path), f"cannot read the disk's free space: {exc}") from None
        if free < self.min_free:
            raise RecordingStopped(
                str(path),
                f"{free / 1e6:.1f} MB free on {self.folder}, less than --min-free "
                f"{self.min_free / 1e6:.0f} MB; the file is complete",
            )


class _Backlog:
    """Bytes received and not yet written, bounded; what does not fit is counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued = self.peak = 0
        self.dropped: Counter[bytes] = Counter()
        self._lock = threading.Lock()
        self._warned = 0.0

    def admit(self, topic: bytes, size: int) -> bool:
        with self._lock:
            if self.queued + size > self.limit and self.queued > 0:
                if len(self.dropped) < MAX_TOPICS or topic in self.dropped:
                    self.dropped[topic] += 1
                else:
                    self.dropped[b"(other topics)"] += 1
                now = time.monotonic()
                if now - self._warned >= 1.0:
                    self._warned = now
                    log.warning(
                        "record: the disk is behind by %d MiB (the limit): dropping %s, %d so far",
                        self.queued >> 20,
                        topic.decode(errors="replace"),
                        sum(self.dropped.values()),
                    )
                return False
            self.queued += size
            self.peak = max(self.peak, self.queued)
            return True

    def written(self, size: int) -> None:
        with self._lock:
            self.queued -= size


# --- reading --------------------------------------------------------------------------


@dataclass
class Recorded:
    """One recorded streamfuse message."""

    topic: str
    log_time: int
    publish_time: int
    frames: list[memoryview]

    def envelope(self) -> messages.Envelope:
        return messages.decode([self.topic.encode(), *self.frames])


@dataclass
class Recording:
    messages: list[Recorded]
    clock_offset: int
    """CLOCK_REALTIME - CLOCK_MONOTONIC of the recording box (0 if unknown)."""
    truncated_at: int | None = None
    """Byte offset where an incomplete file stops being readable, if it does."""
    problem: str | None = None


def read_recording(path: str | Path, topics: Iterable[str] | None = None) -> Recording:
    """Read every streamfuse message of ``path`` in recorded order.

    A file cut off mid-write (kill -9) is read up to its last complete chunk
    (``truncated_at`` says where it stops). A file that is not MCAP, or is corrupt before any
    complete data, raises :class:`~streamfuse.errors.SourceError` naming the byte offset."""
    p = Path(path)
    prefixes = tuple(topics) if topics else None
    try:
        f = open(p, "rb")  # noqa: SIM115
    except OSError as exc:
        raise SourceError(str(p), f"cannot open: {exc.strerror}") from None
    if p.stat().st_size == 0:
        f.close()
        raise SourceError(str(p), "is empty (0 bytes): not an MCAP recording")
    out: list[Recorded] = []
    channels: dict[int, Channel] = {}
    offset = 0
    truncated_at: int | None = None
    problem: str | None = None
    clock = 0
    reader = StreamReader(f, validate_crcs=True)
    try:
        for rec in reader.records:
            if isinstance(rec, Channel):
                channels[rec.id] = rec
            elif isinstance(rec, Message):
                ch = channels.get(rec.channel_id)
                if ch is None or ch.message_encoding != ENCODING:
                    continue
                if prefixes and not ch.topic.startswith(prefixes):
                    continue
                try:
                    frames = unpack_frames(rec.data)
                except ValueError as exc:
                    raise SourceError(
                        str(p), f"message on {ch.topic} near byte {offset}: {exc}"
                    ) from None
                out.append(Recorded(ch.topic, rec.log_time, rec.publish_time, frames))
            elif isinstance(rec, Metadata) and rec.name == "streamfuse.clock":
                clock = int(rec.metadata.get("realtime_minus_monotonic_ns", "0"))
            offset = getattr(getattr(reader, "_stream", None), "count", offset)
    except InvalidMagic:
        f.close()
        raise SourceError(str(p), "not an MCAP file (bad magic bytes at offset 0)") from None
    except EndOfFile:
        truncated_at = offset
        problem = f"file ends inside a record after byte {offset} (cut off while recording?)"
    except (McapError, struct.error, ValueError) as exc:
        truncated_at = offset
        problem = f"corrupt data after byte {offset}: {exc}"
    finally:
        f.close()
    if problem is not None and not out:
        raise SourceError(str(p), problem)
    if problem is not None:
        log.warning("%s: %s; read %d messages before it", p, problem, len(out))
    return Recording(out, clock, truncated_at, problem)


def recording_topics(path: str | Path) -> list[str]:
    """The streamfuse topics of a recording, from its summary when it has one."""
    from mcap.reader import make_reader

    try:
        with open(path, "rb") as f:
            summary = make_reader(f).get_summary()
    except Exception:  # no summary (cut off) or unreadable: read_recording explains which
        summary = None
    if summary is not None:
        chans = summary.channels.values()
        return sorted({c.topic for c in chans if c.message_encoding == ENCODING})
    return sorted({m.topic for m in read_recording(path).messages})


def recover(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Rewrite what is readable of ``src`` (e.g. cut off by kill -9) as a complete ``dst``."""
    rec = read_recording(src)
    w = Recorder(dst, foxglove=True, clock_offset=rec.clock_offset or None)
    for m in rec.messages:
        env = m.envelope()
        w.write(m.topic, list(m.frames), env.header, m.log_time)
    w.close()
    return {
        "source": str(src),
        "recovered": len(rec.messages),
        "truncated_at": rec.truncated_at,
        "problem": rec.problem,
        "out": str(dst),
    }

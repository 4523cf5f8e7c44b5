"""The wire: typed message headers, and their encoding to and from ZeroMQ frames.

One message is one ZeroMQ multipart ``[topic, header, payload?]``. The header is a plain
MessagePack map (any language's msgpack library reads it) whose ``kind`` names one of the
structs below and whose ``v`` is the schema version. Times are integer nanoseconds:
``t_capture`` on CLOCK_MONOTONIC of the capturing box, ``t_wall`` on CLOCK_REALTIME.
``docs/protocol.md`` is the language-neutral description of the same thing.

Schema evolution (msgspec's rules): a new field always gets a default, so an old reader
ignores it and a new reader fills it in; a field is never removed or retyped within a
version; anything else bumps ``v``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple, TypeAlias

import msgspec
import numpy as np

from .errors import DecodeError, RejectReason

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_PAYLOAD_BYTES",
    "PIXEL_FORMATS",
    "PROTOCOL_VERSION",
    "SAMPLE_FORMATS",
    "AudioWindow",
    "Classification",
    "Envelope",
    "Heartbeat",
    "InputRef",
    "Message",
    "VideoFrame",
    "audio_array",
    "decode",
    "encode",
    "expected_payload_size",
    "image_array",
]

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
#: A 8K RGBA frame is 128 MiB; anything larger is a mistake or an attack.
MAX_PAYLOAD_BYTES = 128 * 1024 * 1024

#: bytes per pixel of each raw pixel format
PIXEL_FORMATS: dict[str, int] = {"bgr8": 3, "rgb8": 3, "gray8": 1, "bgra8": 4, "rgba8": 4}
#: bytes per sample of each PCM sample format (interleaved channels, little-endian)
SAMPLE_FORMATS: dict[str, int] = {"f32le": 4, "s16le": 2}

PixelFormat = Literal["bgr8", "rgb8", "gray8", "bgra8", "rgba8"]
SampleFormat = Literal["f32le", "s16le"]
#: Times and counters stay below 2**62 (146 years of nanoseconds), so a difference or sum
#: of two of them is still a MessagePack int and an int64 everywhere.
MAX_INT = 2**62
#: An audio window is at most this long: one message may not hold the synchronizer longer.
MAX_WINDOW_NS = 10_000_000_000
#: A topic is at most this many bytes of UTF-8.
MAX_TOPIC_BYTES = 256
Nanos = Annotated[int, msgspec.Meta(ge=0, lt=MAX_INT)]
Count = Annotated[int, msgspec.Meta(ge=0, lt=MAX_INT)]
Dimension = Annotated[int, msgspec.Meta(ge=1, le=16384)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Label = Annotated[str, msgspec.Meta(max_length=256)]
#: A probability; float32 rounding may put a softmax output a hair above 1; NaN never passes.
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.001)]
Counts = Annotated[dict[Label, Count], msgspec.Meta(max_length=256)]


class _Header(msgspec.Struct, kw_only=True, tag_field="kind"):
    """Fields every message carries."""

    v: int = PROTOCOL_VERSION
    stream: Name
    """Stream id, e.g. ``front`` for topic ``video/front``."""
    seq: Count = 0
    """Per-stream sequence number, +1 per message; a gap means messages were lost."""
    t_capture: Nanos
    """When the sensor saw it, CLOCK_MONOTONIC ns of the capturing box."""
    t_wall: Nanos = 0
    """The same instant on CLOCK_REALTIME ns, for humans and cross-host use."""
    media_pos: Nanos | None = None
    """File and replay sources: ns from the start of the source; ``None`` for live sensors."""


class VideoFrame(_Header, kw_only=True, tag="video"):
    """One camera frame. Payload: raw pixels, row-major, no padding, or one JPEG image."""

    width: Dimension
    height: Dimension
    pixel_format: PixelFormat = "bgr8"
    encoding: Literal["raw", "jpeg"] = "raw"


class AudioWindow(_Header, kw_only=True, tag="audio"):
    """A window of PCM samples covering ``[t_capture, t_capture + n_samples / sample_rate)``.

    Payload: interleaved little-endian samples. ``t_capture`` is the time of the first sample.
    """

    sample_rate: Annotated[int, msgspec.Meta(ge=1000, le=384_000)]
    channels: Annotated[int, msgspec.Meta(ge=1, le=64)]
    sample_format: SampleFormat = "f32le"
    n_samples: Annotated[int, msgspec.Meta(ge=1, le=3_840_000)]
    """At most ``MAX_WINDOW_NS`` (10 s) of samples at ``sample_rate``."""

    @property
    def t_end(self) -> int:
        """Capture time just after the last sample (exclusive end of the window)."""
        return self.t_capture + self.n_samples * 1_000_000_000 // self.sample_rate


class InputRef(msgspec.Struct, kw_only=True):
    """One input of a classification: which stream, which message, what time it covers."""

    stream: Label
    """Topic of the input, e.g. ``video/front`` or ``audio/mic0``."""
    seq: Count = 0
    t0: Nanos
    """Capture interval start (a frame: its capture time; a window: its first sample)."""
    t1: Nanos
    """Capture interval end (a frame: its capture time; a window: just after its last sample)."""
    media_t0: Nanos | None = None
    """File and replay sources: the same interval in media time."""
    media_t1: Nanos | None = None


class Classification(_Header, kw_only=True, tag="classification"):
    """One fused classification, published by the engine on ``result/<camera>``.

    ``t_capture`` is the capture time of the latest input that went into it (the later of
    the frame's capture time and the audio window's end); ``stream`` is the camera's name.
    """

    label: Label = ""
    score: Probability = 0.0
    topk: Annotated[list[tuple[Label, Probability]], msgspec.Meta(max_length=1024)] = msgspec.field(
        default_factory=list
    )
    image_label: Label | None = None
    """What the image head alone says, with its confidence (null: the model has none)."""
    image_score: Probability | None = None
    audio_label: Label | None = None
    """What the audio head alone says (null: the model has none)."""
    audio_score: Probability | None = None
    degraded: bool = False
    """True when an input was missing (blanked); ``missing`` names it."""
    missing: Annotated[list[Label], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    inputs: Annotated[list[InputRef], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    latency: Annotated[dict[Label, int], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=dict
    )
    """Nanoseconds per stage, each from the end of the one before: ``transport`` (latest
    input's capture to its arrival), ``queue`` (arrival to the synchronizer), ``sync_wait``
    (until its bundle was decided), ``dispatch`` (until its batch's preprocessing began),
    ``preprocess`` (the batch's), ``inference``, ``publish`` (until it was built); ``total``,
    their sum: latest input's capture to the result ready to send (docs/protocol.md)."""
    model: Label = ""
    """First 12 hex digits of the model file's sha256."""
    backend: Label = ""
    """``name/device/precision`` of the backend that ran it."""
    reasons: Annotated[dict[Label, Label], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=dict
    )
    """Why a missing input is missing, where known (``clock_unsynced``: its clock could not
    be mapped onto the engine's within the sync tolerance)."""

    def heads(self) -> str:
        """``image 7 0.98  audio 7 0.91``, for the heads the model has."""
        parts = [
            f"{name} {label} {score:.2f}"
            for name, label, score in (
                ("image", self.image_label, self.image_score),
                ("audio", self.audio_label, self.audio_score),
            )
            if label is not None and score is not None
        ]
        return "  ".join(parts)


class Heartbeat(_Header, kw_only=True, tag="heartbeat"):
    """Published about once a second by every process, on topic ``heartbeat/<topic>``."""

    source: Text = ""
    """What the process reads, e.g. ``synthetic`` or ``/data/cam.mp4``."""
    pid: Annotated[int, msgspec.Meta(ge=0, lt=2**31)] = 0
    uptime_ns: Nanos = 0
    sent: Count = 0
    """Messages published since start."""
    rate_hz: Annotated[float, msgspec.Meta(ge=0.0, le=1e9)] = 0.0
    """Messages per second over the last heartbeat interval."""
    drops: Counts = msgspec.field(default_factory=dict)
    """Messages lost, by reason (``input_overflow``, ``stream_gap``, ...)."""
    errors: Counts = msgspec.field(default_factory=dict)
    """Errors, by kind (``reopen``, ``read_failed``, ``clock_resync``, ...)."""
    last_error: Text | None = None
    state: Literal["running", "eof", "stopped", "limit"] = "running"
    """``eof`` in the last heartbeat of a file source that reached its end."""
    depths: Counts = msgspec.field(default_factory=dict)
    """Queue depths (the engine's synchronizer queues, by stream)."""
    received: Counts = msgspec.field(default_factory=dict)
    """Messages received, by input topic (the engine's; empty for a sensor)."""
    clock_sync: Literal["synced", "unsynced", "unknown"] = "unknown"
    """Whether the sender's CLOCK_REALTIME is synchronized (adjtimex), so ``t_wall`` of its
    messages can place them on another box's clock."""
    clock_error_ns: Nanos | None = None
    """The sender's realtime clock's maximum error, when synchronized."""
    model_swaps: Count = 0
    """The engine's: models swapped in while running (hot swap)."""
    clock_offsets_ns: Annotated[dict[Label, int], msgspec.Meta(max_length=256)] = msgspec.field(
        default_factory=dict
    )
    """The engine's: per source on another box, its t_capture minus the engine's clock for
    the same instant (through t_wall)."""


Message: TypeAlias = VideoFrame | AudioWindow | Classification | Heartbeat
KINDS: dict[str, type[Message]] = {
    "video": VideoFrame,
    "audio": AudioWindow,
    "classification": Classification,
    "heartbeat": Heartbeat,
}


class _Peek(msgspec.Struct):
    """Just enough of a header to say why a full decode failed (typed narrowly: an
    ``object`` field would decode a hostile value of any depth)."""

    v: int | str | None = None
    kind: str | int | None = None


#: What a topic's first part says its messages are (other topics are free).
_KIND_OF_PREFIX: dict[bytes, type[Message]] = {
    b"video": VideoFrame,
    b"audio": AudioWindow,
    b"result": Classification,
    b"heartbeat": Heartbeat,
}

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)
_peek_decoder = msgspec.msgpack.Decoder(_Peek)


class Envelope(NamedTuple):
    """A received message: its topic, validated header and payload (zero-copy view)."""

    topic: bytes
    header: Message
    payload: memoryview | None


def encode(header: Message) -> bytes:
    """Encode a header to MessagePack bytes."""
    return _encoder.encode(header)


def expected_payload_size(header: Message) -> int | None:
    """Payload bytes the header implies; ``None`` where the size is not fixed (JPEG)."""
    if isinstance(header, VideoFrame):
        if header.encoding != "raw":
            return None
        return header.width * header.height * PIXEL_FORMATS[header.pixel_format]
    if isinstance(header, AudioWindow):
        return header.n_samples * header.channels * SAMPLE_FORMATS[header.sample_format]
    return 0


def decode(
    parts: Sequence[bytes | memoryview],
    *,
    max_payload: int = MAX_PAYLOAD_BYTES,
) -> Envelope:
    """Validate and decode the frames of one multipart message.

    Raises :class:`~streamfuse.errors.DecodeError` naming the reason: malformed, truncated,
    oversized, invalid, size_mismatch, unknown_version or unknown_kind.
    """
    topic = bytes(parts[0]) if parts else None
    if len(parts) not in (2, 3):
        raise DecodeError(
            "malformed",
            f"expected 2 or 3 frames [topic, header, payload], got {len(parts)}",
            topic=topic,
        )
    assert topic is not None
    if not 0 < len(topic) <= MAX_TOPIC_BYTES:
        raise DecodeError(
            "malformed", f"topic of {len(topic)} bytes (1..{MAX_TOPIC_BYTES})", topic=topic[:64]
        )
    try:
        topic.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("malformed", "topic is not UTF-8", topic=topic[:64]) from None
    raw = parts[1]
    if len(raw) > MAX_HEADER_BYTES:
        raise DecodeError(
            "oversized", f"header is {len(raw)} bytes, limit {MAX_HEADER_BYTES}", topic=topic
        )
    try:
        header = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _explain(raw, exc, topic) from None
    except msgspec.DecodeError as exc:
        text = str(exc)
        reason: RejectReason = "truncated" if "truncated" in text else "malformed"
        raise DecodeError(reason, text, topic=topic) from None
    except RecursionError:
        raise DecodeError("malformed", "header nested too deeply", topic=topic) from None
    if header.v != PROTOCOL_VERSION:
        raise DecodeError(
            "unknown_version",
            f"schema version {header.v!r}, this build reads {PROTOCOL_VERSION}",
            topic=topic,
        )

    payload = memoryview(parts[2]) if len(parts) == 3 else None
    size = 0 if payload is None else payload.nbytes
    if size > max_payload:
        raise DecodeError("oversized", f"payload is {size} bytes, limit {max_payload}", topic=topic)
    expected = expected_payload_size(header)
    if expected is None:  # JPEG: must at least start like one
        if size < 4 or bytes(payload[:2]) != b"\xff\xd8":  # type: ignore[index]
            raise DecodeError(
                "size_mismatch", "jpeg payload does not start with a JPEG SOI marker", topic=topic
            )
    elif size != expected:
        raise DecodeError(
            "size_mismatch",
            f"{header.__class__.__name__} header implies {expected} payload bytes, got {size}",
            topic=topic,
        )
    want = _KIND_OF_PREFIX.get(topic.split(b"/", 1)[0])
    if want is not None and not isinstance(header, want):
        raise DecodeError(
            "invalid", f"a {header.__class__.__name__} on a topic of {want.__name__}s", topic=topic
        )
    if isinstance(header, AudioWindow):
        _check_window(header, payload, topic)
    return Envelope(topic, header, payload)


def _check_window(header: AudioWindow, payload: memoryview | None, topic: bytes) -> None:
    """A window's meaning, not just its types: bounded duration, finite float samples."""
    duration = header.t_end - header.t_capture
    if duration > MAX_WINDOW_NS:
        raise DecodeError(
            "invalid", f"audio window of {duration / 1e9:.1f} s (at most 10 s)", topic=topic
        )
    if header.t_capture + duration >= MAX_INT:
        raise DecodeError("invalid", "audio window ends past the time range", topic=topic)
    if header.sample_format == "f32le" and payload is not None:
        samples = np.frombuffer(payload, dtype="<f4")
        if not np.isfinite(samples).all():
            raise DecodeError("invalid", "audio window holds NaN or Inf samples", topic=topic)


def _explain(raw: bytes | memoryview, exc: msgspec.ValidationError, topic: bytes) -> DecodeError:
    """Turn a failed typed decode into the most useful reason."""
    try:
        peek = _peek_decoder.decode(raw)
    except msgspec.ValidationError as peek_exc:
        if "- at `$." in str(peek_exc):  # a map, with a hostile ``v`` or ``kind``
            return DecodeError("invalid", str(peek_exc), topic=topic)
        return DecodeError("malformed", f"header is not a MessagePack map: {exc}", topic=topic)
    except (msgspec.DecodeError, RecursionError):
        return DecodeError("malformed", f"header is not a MessagePack map: {exc}", topic=topic)
    if peek.v != PROTOCOL_VERSION:
        return DecodeError(
            "unknown_version",
            f"schema version {peek.v!r}, this build reads {PROTOCOL_VERSION}",
            topic=topic,
        )
    if isinstance(peek.kind, str) and peek.kind not in KINDS:
        return DecodeError(
            "unknown_kind", f"kind {peek.kind!r}, known: {sorted(KINDS)}", topic=topic
        )
    return DecodeError("invalid", str(exc), topic=topic)


def image_array(env: Envelope) -> np.ndarray:
    """The payload of a raw :class:`VideoFrame` as a (H, W, C) uint8 array (no copy)."""
    hdr = env.header
    if not isinstance(hdr, VideoFrame) or hdr.encoding != "raw" or env.payload is None:
        raise TypeError("image_array() needs a raw VideoFrame envelope")
    channels = PIXEL_FORMATS[hdr.pixel_format]
    return np.frombuffer(env.payload, dtype=np.uint8).reshape(hdr.height, hdr.width, channels)


def audio_array(env: Envelope) -> np.ndarray:
    """The payload of an :class:`AudioWindow` as a (n_samples, channels) array (no copy)."""
    hdr = env.header
    if not isinstance(hdr, AudioWindow) or env.payload is None:
        raise TypeError("audio_array() needs an AudioWindow envelope")
    dtype = np.dtype("<f4") if hdr.sample_format == "f32le" else np.dtype("<i2")
    return np.frombuffer(env.payload, dtype=dtype).reshape(hdr.n_samples, hdr.channels)

"""The capture loop shared by every sensor process: source -> publisher, plus heartbeats.

A *source* is a plugin (entry-point groups ``streamfuse.video_sources`` and
``streamfuse.audio_sources``) constructed as ``Source(arg, options)``. It hands back
ready-made headers and payloads; this loop numbers them, publishes them and reports health.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol

import numpy as np

from .clock import clock_state
from .errors import ConfigError
from .messages import Heartbeat, Message
from .transport import Publisher, heartbeat_topic

__all__ = [
    "AudioOptions",
    "CaptureSummary",
    "Source",
    "SourceBase",
    "VideoOptions",
    "open_source",
    "resolve_source",
    "run_capture",
]

log = logging.getLogger(__name__)

Kind = Literal["video", "audio"]
Sample = tuple[Message, Any]


class Source(Protocol):
    """What the capture loop needs from a source plugin."""

    description: str
    drops: Counter[str]
    errors: Counter[str]
    last_error: str | None

    def read(self) -> list[Sample] | None:
        """Block briefly (<= ~0.1 s, or one frame period) and return the samples ready,
        possibly none; ``None`` when the source has ended (end of file)."""

    def close(self) -> None: ...


class SourceBase:
    """Convenience base for source plugins: the counters the capture loop reports."""

    description = "source"

    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.last_error: str | None = None

    def fail(self, kind: str, message: str) -> None:
        """Count an error of ``kind`` and remember its message for the next heartbeat."""
        self.errors[kind] += 1
        self.last_error = message
        log.warning("%s: %s", self.description, message)

    def close(self) -> None:
        pass


@dataclass
class _Options:
    stream: str
    realtime: bool = True
    """Files: play at their native rate (True) or as fast as possible (False)."""
    epoch_ns: int | None = None
    """Capture time of media position 0 for file sources; sources of one session share it."""
    stop: threading.Event = field(default_factory=threading.Event)

    def wait_until(self, t_ns: int) -> bool:
        """Sleep until CLOCK_MONOTONIC reaches ``t_ns``; False if asked to stop first."""
        delay = (t_ns - time.monotonic_ns()) / 1e9
        return not self.stop.wait(delay) if delay > 0 else not self.stop.is_set()


@dataclass
class VideoOptions(_Options):
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    jpeg_quality: int | None = None
    frame_buffer: Callable[[tuple[int, ...]], np.ndarray] | None = None
    """Where a source puts its next raw frame of a given shape; ``None``: its own array. The
    capture command points it at the publisher's next shared-memory slot
    (:meth:`~streamfuse.transport.Publisher.loan`), so frames are decoded, resized or drawn
    straight into the memory their subscribers read."""

    def buffer(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """An array of ``shape`` for the next raw frame, or ``None`` (no buffer set, or
        frames leave as JPEG)."""
        if self.frame_buffer is None or self.jpeg_quality is not None:
            return None
        return self.frame_buffer(shape)


@dataclass
class AudioOptions(_Options):
    rate: int = 16_000
    channels: int = 1
    window_ms: float = 1000.0
    hop_ms: float = 500.0
    sample_format: Literal["f32le", "s16le"] = "f32le"

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ConfigError("rate", f"must be a positive sample rate in Hz, got {self.rate}")
        if self.channels <= 0:
            raise ConfigError("channels", f"must be >= 1, got {self.channels}")
        if self.window_ms <= 0 or self.hop_ms <= 0:
            raise ConfigError("window-ms/hop-ms", "must both be > 0")
        if self.window_samples < 1:
            raise ConfigError("window-ms", f"{self.window_ms} ms is less than one sample")

    @property
    def window_samples(self) -> int:
        return round(self.rate * self.window_ms / 1000)

    @property
    def hop_samples(self) -> int:
        return max(1, round(self.rate * self.hop_ms / 1000))


_AUDIO_FILE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")


def _plugins(kind: Kind) -> dict[str, Callable[[], type]]:
    """name -> loader of every installed source plugin of this kind (entry points; the
    built-in ones are declared in pyproject.toml like anybody else's)."""
    return {ep.name: ep.load for ep in entry_points(group=f"streamfuse.{kind}_sources")}


def resolve_source(kind: Kind, spec: str) -> tuple[str, str]:
    """Map a ``--source`` value to ``(plugin name, argument for the plugin)``.

    ``NAME:ARG`` picks plugin NAME explicitly (``synthetic:``, ``opencv:0``, a third party's
    ``realsense:SERIAL``). Otherwise: ``synthetic``; for video anything else goes to OpenCV
    (device index, file, http/rtsp/udp URL); for audio an existing or audio-suffixed path is a
    file and anything else a sounddevice device name or index.
    """
    spec = spec.strip()
    if not spec:
        raise ConfigError("--source", "is empty")
    plugins = _plugins(kind)
    name, sep, rest = spec.partition(":")
    if sep and not rest.startswith("//") and name in plugins:
        return name, rest
    if spec == "synthetic":
        return "synthetic", ""
    if kind == "video":
        return "opencv", spec
    if os.path.exists(spec) or spec.lower().endswith(_AUDIO_FILE_SUFFIXES):
        return "file", spec
    return "sounddevice", spec


def open_source(kind: Kind, spec: str, options: VideoOptions | AudioOptions) -> Source:
    """Construct the source plugin for ``spec``."""
    name, arg = resolve_source(kind, spec)
    cls = _plugins(kind)[name]()
    source: Source = cls(arg, options)
    return source


@dataclass
class CaptureSummary:
    topic: str
    source: str
    sent: int
    seconds: float
    ended: Literal["eof", "stopped", "limit"]
    drops: dict[str, int]
    errors: dict[str, int]

    @property
    def rate_hz(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def run_capture(
    source: Source,
    publisher: Publisher,
    topic: str,
    stream: str,
    *,
    stop: threading.Event,
    heartbeat_interval: float = 1.0,
    max_messages: int | None = None,
) -> CaptureSummary:
    """Publish everything ``source`` produces until it ends, ``stop`` is set, or
    ``max_messages`` have gone out. Heartbeats go to ``heartbeat/<topic>``."""
    hb_topic = heartbeat_topic(topic)
    sync, clock_error = clock_state()  # once: adjtimex's view changes slowly
    start = time.monotonic_ns()
    seq = 0
    hb_seq = 0
    last_hb = start
    sent_at_last_hb = 0
    ended: Literal["eof", "stopped", "limit"] = "stopped"

    def heartbeat(
        now: int, state: Literal["running", "eof", "stopped", "limit"] = "running"
    ) -> None:
        nonlocal hb_seq, last_hb, sent_at_last_hb
        dt = (now - last_hb) / 1e9
        publisher.send(
            hb_topic,
            Heartbeat(
                stream=stream,
                seq=hb_seq,
                t_capture=now,
                t_wall=time.time_ns(),
                source=source.description,
                pid=os.getpid(),
                uptime_ns=now - start,
                sent=seq,
                rate_hz=(seq - sent_at_last_hb) / dt if dt > 0 else 0.0,
                drops=dict(source.drops),
                errors={**source.errors, **_refused(publisher)},
                last_error=source.last_error,
                state=state,
                clock_sync=sync,
                clock_error_ns=clock_error,
            ),
        )
        hb_seq += 1
        last_hb = now
        sent_at_last_hb = seq

    heartbeat(start)
    while not stop.is_set():
        samples = source.read()
        if samples is None:
            ended = "eof"
            break
        for header, payload in samples:
            header.stream = stream
            header.seq = seq
            publisher.send(topic, header, payload)
            seq += 1
            if max_messages is not None and seq >= max_messages:
                ended = "limit"
                break
        if ended == "limit":
            break
        now = time.monotonic_ns()
        if now - last_hb >= heartbeat_interval * 1e9:
            heartbeat(now)
    heartbeat(time.monotonic_ns(), ended)  # the last one says why it ended
    return CaptureSummary(
        topic=topic,
        source=source.description,
        sent=seq,
        seconds=(time.monotonic_ns() - start) / 1e9,
        ended=ended,
        drops=dict(source.drops),
        errors=dict(source.errors),
    )


def _refused(publisher: Publisher) -> dict[str, int]:
    """Subscribers CURVE refused (their key not authorized), as a heartbeat error kind."""
    n = publisher.auth_refused
    return {"auth_refused": n} if n else {}

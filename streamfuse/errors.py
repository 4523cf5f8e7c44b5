"""Every error streamfuse raises derives from :class:`StreamfuseError`.

Each subclass builds its own message from the facts it was given, so the text always names
the thing that was wrong (the field, the endpoint, the file, the device) and, where there is
one, what to do about it. The CLI prints ``str(err)`` without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

__all__ = [
    "BackendError",
    "ConfigError",
    "DecodeError",
    "DeviceNotFound",
    "EndpointError",
    "RecordingStopped",
    "RejectReason",
    "SourceError",
    "StreamfuseError",
]


class StreamfuseError(Exception):
    """Base class of every error raised by streamfuse."""


class ConfigError(StreamfuseError):
    """A setting is missing, unknown or out of range."""

    def __init__(self, field: str, problem: str, *, file: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.file = file
        where = f" in {file}" if file else ""
        super().__init__(f"{field}{where}: {problem}")


class RecordingStopped(StreamfuseError):
    """A recording stopped on purpose, before the disk was full (or when it was)."""

    EXIT_STATUS = 3
    """`record` exits with it; the supervisor then does not restart the recorder."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(f"record: {path}: stopped: {problem}")


class EndpointError(StreamfuseError):
    """A ZeroMQ endpoint could not be bound or connected."""

    def __init__(self, endpoint: str, action: str, reason: str) -> None:
        self.endpoint = endpoint
        super().__init__(
            f"cannot {action} {endpoint!r}: {reason} "
            "(endpoints look like tcp://127.0.0.1:5555 or ipc:///tmp/streamfuse/video)"
        )


class DeviceNotFound(StreamfuseError):
    """A capture device named on the command line or in a config does not exist. The
    message is one line; ``available`` holds what there is (``streamfuse devices``)."""

    def __init__(self, kind: str, wanted: str, available: Iterable[str]) -> None:
        self.kind = kind
        self.wanted = wanted
        self.available = list(available)
        found = f"{len(self.available)} found" if self.available else "none found"
        super().__init__(
            f"no {kind} {wanted!r} on this machine ({found}; `streamfuse devices` lists them)"
        )


class SourceError(StreamfuseError):
    """A source exists but cannot be read: a corrupt file, an unsupported format."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class BackendError(StreamfuseError):
    """An inference backend cannot run here, or failed to load or build a model."""

    def __init__(self, backend: str, problem: str) -> None:
        self.backend = backend
        self.problem = problem
        super().__init__(f"backend {backend}: {problem}")


RejectReason = Literal[
    "malformed",  # not MessagePack, or not a map, or wrong number of frames
    "truncated",  # MessagePack that ends early
    "oversized",  # header or payload over its limit
    "invalid",  # fields of the wrong type or out of range
    "size_mismatch",  # payload length disagrees with the shape in the header
    "unknown_version",  # a schema version this build cannot read
    "unknown_kind",  # a kind this build does not know
    "overwritten",  # shared-memory slot reused before this subscriber read it
    "shm_unavailable",  # shared-memory segment cannot be opened (publisher gone, container)
    "auth_failed",  # the CURVE handshake with a publisher failed (not the key we expect)
    "shm_not_local",  # a shared-memory reference that came over tcp:// (another box's memory)
    "foreign_topic",  # a topic the sending endpoint does not own (a forged heartbeat, result)
    "internal_error",  # a bug this message met; counted and logged once, never fatal
]


class DecodeError(StreamfuseError):
    """A message from the wire was rejected. ``reason`` is one of :data:`RejectReason`."""

    def __init__(self, reason: RejectReason, detail: str, *, topic: bytes | None = None) -> None:
        self.reason: RejectReason = reason
        self.detail = detail
        self.topic = topic
        on = f" on topic {topic.decode('utf-8', 'replace')!r}" if topic is not None else ""
        super().__init__(f"rejected message{on} ({reason}): {detail}")

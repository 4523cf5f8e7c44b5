"""A cache of compiled engines (TensorRT plans), safe across processes.

An engine is valid only for the exact model, runtime version, GPU, precision, shape profile
and builder flags it was built with. The cache files each engine under a *slot* (model +
what the user asked for) and keeps the full key beside it, so a changed runtime or GPU
shows up as one log line naming what changed, followed by a rebuild. Writes are atomic
(temporary file, fsync, rename) and a file lock makes sure two processes starting at once
build once: the second waits and then loads what the first wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = ["CacheHit", "EngineCache", "atomic_write", "default_cache_dir"]

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    env = os.environ.get("STREAMFUSE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "streamfuse"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` so a reader sees the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class CacheHit:
    path: Path
    data: bytes
    built: bool
    """True when this call built the engine, False when it came from the cache."""
    seconds: float = 0.0


class EngineCache:
    """Engines under ``root``: ``<slot>.engine`` + ``<slot>.json`` (its full key)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_cache_dir()

    def slot(self, slot_key: Mapping[str, Any]) -> str:
        return _digest(slot_key)[:24]

    def lookup(
        self, slot_key: Mapping[str, Any], key: Mapping[str, Any], *, quiet: bool = False
    ) -> Path | None:
        """The engine file for ``key`` if a valid one is cached, else None (logs why)."""
        warn = (lambda *a: None) if quiet else log.warning
        name = self.slot(slot_key)
        engine, meta = self.root / f"{name}.engine", self.root / f"{name}.json"
        if not engine.is_file() or not meta.is_file():
            return None
        try:
            stored = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            warn("engine cache: %s has an unreadable key file; rebuilding", meta)
            return None
        want = json.loads(json.dumps(dict(key), default=str))
        if stored.get("key") != want:
            changed = sorted(
                k
                for k in set(want) | set(stored.get("key", {}))
                if want.get(k) != stored.get("key", {}).get(k)
            )
            detail = ", ".join(
                f"{k}: {stored.get('key', {}).get(k)!r} -> {want.get(k)!r}" for k in changed
            )
            warn("engine cache: rebuilding %s because %s", engine.name, detail)
            return None
        if stored.get("sha256") != hashlib.sha256(engine.read_bytes()).hexdigest():
            warn("engine cache: %s does not match its recorded hash; rebuilding", engine)
            return None
        return engine

    def get_or_build(
        self,
        slot_key: Mapping[str, Any],
        key: Mapping[str, Any],
        build: Callable[[], bytes],
    ) -> CacheHit:
        """Return the cached engine for ``key``, building (once across processes) if needed."""
        import time

        self.root.mkdir(parents=True, exist_ok=True)
        name = self.slot(slot_key)
        found = self.lookup(slot_key, key, quiet=True)  # the locked look below says why not
        if found is not None:
            return CacheHit(found, found.read_bytes(), built=False)
        with FileLock(str(self.root / f"{name}.lock")):
            found = self.lookup(slot_key, key)  # another process may have built it meanwhile
            if found is not None:
                return CacheHit(found, found.read_bytes(), built=False)
            t0 = time.monotonic()
            data = build()
            engine = self.root / f"{name}.engine"
            atomic_write(engine, data)
            record = {
                "key": json.loads(json.dumps(dict(key), default=str)),
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
            }
            atomic_write(self.root / f"{name}.json", json.dumps(record, indent=2).encode())
            return CacheHit(engine, data, built=True, seconds=time.monotonic() - t0)

    def invalidate(self, slot_key: Mapping[str, Any]) -> None:
        """Forget an engine that failed to load (the next :meth:`get_or_build` rebuilds)."""
        name = self.slot(slot_key)
        for suffix in (".engine", ".json"):
            (self.root / f"{name}{suffix}").unlink(missing_ok=True)

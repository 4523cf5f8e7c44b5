"""The run folder: where one daemon's sensors bind their ``ipc://`` endpoints and its
resolved config lives.

- One daemon at a time holds a folder: an ``flock`` on ``streamfuse.lock``, which also holds
  its pid. A second ``run`` given the same folder is a one-line error naming that pid.
- The folder is removed on every exit that runs Python's clean-up (SIGINT, SIGTERM, an
  error); a folder the user named is kept, emptied of what streamfuse put there.
- After a kill -9, the next ``run`` removes the folders (and the shared-memory segments,
  ``/dev/shm/sf-<pid>-*``) whose owner is gone. The kernel drops an ``flock`` when its
  process dies, so a free lock on a folder that names a pid means the owner is dead.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import ConfigError
from .shm import pid_alive

__all__ = ["RunDir", "sweep_stale"]

log = logging.getLogger(__name__)

PREFIX = "streamfuse-"
LOCK = "streamfuse.lock"
_SEGMENT = re.compile(r"^sf-([0-9]+)-[0-9a-f]{8}$")


class RunDir:
    """Hold a run folder: ``path`` as configured, or a fresh ``/tmp/streamfuse-XXXXXXXX``."""

    def __init__(self, path: str = "") -> None:
        sweep_stale()
        if path:
            folder = Path(path)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError("run_dir", f"{path}: cannot create it ({exc.strerror})") from None
            if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError("run_dir", f"{path}: not a writable folder")
            self.owned = False
        else:
            folder = Path(tempfile.mkdtemp(prefix=PREFIX))
            self.owned = True
        self.path = folder
        self._fd: int | None = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            self._fd = None
            raise ConfigError(
                "run_dir", f"{folder} is in use by another streamfuse run (pid {other})"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def close(self) -> None:
        """Remove what this run put in the folder (the whole folder if it made it)."""
        if self._fd is None:
            return
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            for entry in self.path.iterdir():
                if entry.name in (LOCK, "config.json") or _is_socket(entry):
                    entry.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sweep_stale(tmp: str | None = None, shm: str = "/dev/shm") -> list[str]:
    """Remove run folders and shared-memory segments whose owning process is gone; returns
    what it removed. Folders without a lock, or whose lock names no pid yet, are left."""
    removed: list[str] = []
    for folder in Path(tmp or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        lock = folder / LOCK
        if not folder.is_dir() or folder.is_symlink() or not lock.is_file():
            continue
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            owner = os.pread(fd, 32, 0).strip()
        except OSError:
            owner = b""  # held: its owner is alive
        finally:
            os.close(fd)
        if owner:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    with contextlib.suppress(OSError):
        for name in os.listdir(shm):
            m = _SEGMENT.match(name)
            if m and not pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(shm, name))
                    removed.append(os.path.join(shm, name))
    if removed:
        log.info("removed %d stale run folder(s)/segment(s) of dead processes", len(removed))
    return removed


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False

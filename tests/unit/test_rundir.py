"""The run folder's lock and the sweep of what dead daemons left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamfuse.errors import ConfigError
from streamfuse.rundir import LOCK, RunDir, sweep_stale


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


def test_a_held_folder_is_refused_and_released_on_close(tmp_path: Path) -> None:
    with RunDir(str(tmp_path / "run")) as held:
        assert (held.path / LOCK).read_text() == f"{os.getpid()}\n"
        with pytest.raises(
            ConfigError, match=rf"in use by another streamfuse run \(pid {os.getpid()}\)"
        ):
            RunDir(str(tmp_path / "run"))
    assert list((tmp_path / "run").iterdir()) == []  # a named folder is kept, emptied
    RunDir(str(tmp_path / "run")).close()  # and free again


def test_an_unusable_run_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="run_dir") as info:
        RunDir(str(tmp_path / "file" / "run"))
    assert "\n" not in str(info.value)


def test_sweep_removes_only_what_dead_owners_left(tmp_path: Path) -> None:
    tmp, shm = tmp_path / "tmp", tmp_path / "shm"
    tmp.mkdir()
    shm.mkdir()
    dead = _dead_pid()
    stale = tmp / "streamfuse-stale"
    stale.mkdir()
    (stale / LOCK).write_text(f"{dead}\n")
    (stale / "config.json").write_text("{}")
    young = tmp / "streamfuse-young"  # made, lock not yet written: keep
    young.mkdir()
    (young / LOCK).write_text("")
    foreign = tmp / "streamfuse-demo-x"  # not a run folder: keep
    foreign.mkdir()
    (shm / f"sf-{dead}-0123abcd").write_bytes(b"x")
    (shm / f"sf-{os.getpid()}-0123abcd").write_bytes(b"x")
    (shm / "sf-notours").write_bytes(b"x")
    held = RunDir(str(tmp / "streamfuse-live"))  # a live daemon's folder: keep
    try:
        removed = sweep_stale(str(tmp), str(shm))
        assert sorted(removed) == sorted([str(stale), str(shm / f"sf-{dead}-0123abcd")])
        assert {p.name for p in tmp.iterdir()} == {
            "streamfuse-young", "streamfuse-demo-x", "streamfuse-live"
        }  # fmt: skip
        assert {p.name for p in shm.iterdir()} == {f"sf-{os.getpid()}-0123abcd", "sf-notours"}
    finally:
        held.close()

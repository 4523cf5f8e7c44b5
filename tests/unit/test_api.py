"""The public API and the promise that the core imports no heavy library."""

from __future__ import annotations

import subprocess
import sys

import pytest

import streamfuse
from streamfuse.capture import AudioOptions, resolve_source
from streamfuse.errors import ConfigError


def test_all_names_exist_and_are_sorted() -> None:
    names = streamfuse.__all__
    assert len(set(names)) == len(names)
    # isort's order (ruff RUF022): CONSTANTS, then Classes, then functions and the rest
    assert names == sorted(
        names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n)
    )
    for name in streamfuse.__all__:
        assert hasattr(streamfuse, name), name


def test_core_import_pulls_no_camera_audio_or_torch() -> None:
    code = (
        "import sys, streamfuse, streamfuse.cli, streamfuse.transport, streamfuse.view; "
        "heavy = ('cv2', 'sounddevice', 'soundfile', 'torch', 'soxr'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("kind", "spec", "expected"),
    [
        ("video", "synthetic", ("synthetic", "")),
        ("video", "0", ("opencv", "0")),
        ("video", "/dev/video2", ("opencv", "/dev/video2")),
        ("video", "clip.mp4", ("opencv", "clip.mp4")),
        ("video", "rtsp://cam.local/stream", ("opencv", "rtsp://cam.local/stream")),
        ("video", "opencv:1", ("opencv", "1")),
        ("audio", "synthetic:1000", ("synthetic", "1000")),
        ("audio", "speech.wav", ("file", "speech.wav")),
        ("audio", "pulse", ("sounddevice", "pulse")),
        ("audio", "3", ("sounddevice", "3")),
        ("audio", "sounddevice:USB Audio", ("sounddevice", "USB Audio")),
    ],
)
def test_source_resolution(kind: str, spec: str, expected: tuple[str, str]) -> None:
    assert resolve_source(kind, spec) == expected  # type: ignore[arg-type]


def test_empty_source_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--source"):
        resolve_source("video", "  ")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate": 0}, "rate"),
        ({"channels": 0}, "channels"),
        ({"hop_ms": -1}, "hop-ms"),
        ({"window_ms": 0.001}, "window-ms"),
    ],
)
def test_bad_audio_options_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        AudioOptions(stream="mic", **kwargs)  # type: ignore[arg-type]

"""Frames and windows of any shape, format and rate become exactly the model's inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("cv2", reason="opencv-python-headless is a core dependency")

from streamfuse.backend import ModelInfo
from streamfuse.messages import (
    PIXEL_FORMATS,
    AudioWindow,
    Envelope,
    VideoFrame,
)
from streamfuse.preprocess import Preprocessor

PRE = Preprocessor(ModelInfo.load())


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 700),
    height=st.integers(1, 500),
    fmt=st.sampled_from(sorted(PIXEL_FORMATS)),
    value=st.integers(0, 255),
)
def test_any_frame_becomes_the_contract_image(
    width: int, height: int, fmt: str, value: int
) -> None:
    pixels = np.full((height, width, PIXEL_FORMATS[fmt]), value, np.uint8)
    hdr = VideoFrame(stream="f", t_capture=1, width=width, height=height, pixel_format=fmt)  # type: ignore[arg-type]
    img = PRE.image(Envelope(b"video/f", hdr, memoryview(pixels.tobytes())))
    assert img.shape == (1, 32, 32) and img.dtype == np.float32
    assert np.allclose(img, value / 255.0, atol=1 / 255)  # a flat frame stays flat, in [0, 1]


def test_the_centre_square_is_what_the_model_sees() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :80] = 255  # outside the central 480x480 square: cropped away
    frame[200:280, 280:360] = 255  # a block in the middle
    hdr = VideoFrame(stream="f", t_capture=1, width=640, height=480)
    img = PRE.image(Envelope(b"video/f", hdr, memoryview(frame.tobytes())))[0]
    assert img[:, :4].max() == 0.0 and img[14:18, 14:18].min() > 0.99


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40_000),
    rate=st.sampled_from([8000, 16000, 22050, 44100, 48000]),
    channels=st.integers(1, 4),
    fmt=st.sampled_from(["f32le", "s16le"]),
)
def test_any_window_becomes_the_contract_audio(n: int, rate: int, channels: int, fmt: str) -> None:
    dtype = np.float32 if fmt == "f32le" else np.int16
    scale = 0.5 if fmt == "f32le" else 16384
    pcm = (np.ones((n, channels)) * scale).astype(dtype)
    hdr = AudioWindow(
        stream="m", t_capture=1, sample_rate=rate, channels=channels, n_samples=n,
        sample_format=fmt,  # type: ignore[arg-type]
    )  # fmt: skip
    x = PRE.audio(Envelope(b"audio/m", hdr, memoryview(pcm.tobytes())))
    assert x.shape == (16000,) and x.dtype == np.float32 and np.isfinite(x).all()
    # s16 scaled to [-1, 1); a resampled step rings (Gibbs) but stays bounded
    assert np.abs(x).max() <= 0.5 * (1.0 if rate == 16000 else 1.35)


def test_a_corrupt_jpeg_is_an_error_naming_the_topic() -> None:
    hdr = VideoFrame(stream="f", t_capture=1, width=640, height=480, encoding="jpeg")
    with pytest.raises(ValueError, match="video/f: JPEG payload does not decode"):
        PRE.image(Envelope(b"video/f", hdr, memoryview(b"\xff\xd8\xff garbage")))

"""Frames and windows of any shape, format and rate become exactly what the contract says.

The oracle is a reference written here in plain numpy from the contract's documented
meaning (docs/models.md), not from the implementation: its own channel mapping per pixel
format, its own crop / letterbox geometry, OpenCV's documented nearest-neighbour rule
(``src = floor(dst * src_size / dst_size)``), and the normalisation formula. Frames are
random pixels, so a swapped channel, a shifted crop or a wrong mean cannot pass.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

pytest.importorskip("cv2", reason="opencv-python-headless is a core dependency")

from streamfuse.backend import ModelInfo, audio_shape
from streamfuse.contract import AudioSpec, ImageSpec
from streamfuse.messages import PIXEL_FORMATS, AudioWindow, Envelope, VideoFrame
from streamfuse.preprocess import AudioPrep, ImagePrep, Preprocessor

from ..conftest import examples

#: pixel format -> how to get R, G, B (None: gray) from its channels
_RGB = {"rgb8": (0, 1, 2), "bgr8": (2, 1, 0), "rgba8": (0, 1, 2), "bgra8": (2, 1, 0), "gray8": None}


def _frame(pixels: np.ndarray, fmt: str) -> Envelope:
    h, w = pixels.shape[:2]
    hdr = VideoFrame(stream="f", t_capture=1, width=w, height=h, pixel_format=fmt)  # type: ignore[arg-type]
    return Envelope(b"video/f", hdr, memoryview(pixels.tobytes()))


def _to_rgb(pixels: np.ndarray, fmt: str) -> np.ndarray:
    order = _RGB[fmt]
    if order is None:
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return pixels[:, :, list(order)]


def _nearest(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV's INTER_NEAREST in its own double arithmetic: ``floor(dst * (1 / (dst_size /
    src_size)))`` (its scale is stored inverted, so 5 * (1 / (15 / 39)) is 12.99..., not 13)."""
    ys = np.floor(np.arange(h) * (1.0 / (h / img.shape[0]))).astype(int)
    xs = np.floor(np.arange(w) * (1.0 / (w / img.shape[1]))).astype(int)
    return img[np.minimum(ys, img.shape[0] - 1)][:, np.minimum(xs, img.shape[1] - 1)]


def _reference(pixels: np.ndarray, fmt: str, spec: ImageSpec) -> np.ndarray:
    """One frame -> (H, W, C) float64 in the model's colour order, normalised."""
    assert spec.size is not None
    H, W = spec.size
    rgb = _to_rgb(pixels, fmt).astype(np.float64)
    h, w = rgb.shape[:2]
    if spec.resize == "center-crop":
        if w / h > W / H:
            cw = max(1, round(h * W / H))
            x0 = (w - cw) // 2
            rgb = rgb[:, x0 : x0 + cw]
        else:
            ch = max(1, round(w * H / W))
            y0 = (h - ch) // 2
            rgb = rgb[y0 : y0 + ch]
    if spec.resize == "letterbox":
        s = min(W / w, H / h)
        nw, nh = min(W, max(1, round(w * s))), min(H, max(1, round(h * s)))
        out = np.full((H, W, 3), spec.pad)
        top, left = (H - nh) // 2, (W - nw) // 2
        out[top : top + nh, left : left + nw] = _nearest(rgb, nh, nw)
        rgb = out
    else:
        rgb = _nearest(rgb, H, W)
    if spec.color == "gray":
        x = (0.299 * rgb[:, :, 0] + 0.587 * rgb[:, :, 1] + 0.114 * rgb[:, :, 2])[:, :, None]
    elif spec.color == "bgr":
        x = rgb[:, :, ::-1]
    else:
        x = rgb
    if spec.dtype == "uint8":
        return x
    mean, std = np.asarray(spec.mean), np.asarray(spec.std)
    return (x * spec.effective_scale - mean) / std


specs = st.builds(
    lambda color, layout, dtype, size, resize, pad, norm: ImageSpec(
        input="image",
        color=color,
        layout=layout,
        dtype=dtype,
        size=size,
        resize=resize,
        pad=pad,
        interpolation="nearest",
        **({} if dtype == "uint8" else norm(1 if color == "gray" else 3)),
    ),
    color=st.sampled_from(["gray", "rgb", "bgr"]),
    layout=st.sampled_from(["NCHW", "NHWC"]),
    dtype=st.sampled_from(["uint8", "float32", "float16"]),
    size=st.tuples(st.integers(1, 48), st.integers(1, 48)),
    resize=st.sampled_from(["stretch", "center-crop", "letterbox"]),
    pad=st.integers(0, 255).map(float),
    norm=st.sampled_from(
        [
            lambda c: {},
            lambda c: {"mean": [0.485, 0.456, 0.406][:c], "std": [0.229, 0.224, 0.225][:c]},
            lambda c: {"scale": 1.0, "mean": [127.5], "std": [127.5]},
        ]
    ),
)


def _edge(resize: str, size: tuple[int, int], w: int, h: int) -> Any:
    spec = ImageSpec(
        input="image", color="rgb", layout="NHWC", dtype="float32", size=size,
        resize=resize, pad=17.0, interpolation="nearest",  # type: ignore[arg-type]
    )  # fmt: skip
    return example(spec=spec, width=w, height=h, fmt="rgb8", seed=7)


# The geometries every run reaches, whatever Hypothesis draws (mutation runs draw few):
# taller and wider than the model, exactly its aspect, a side of one pixel.
EDGES = [
    _edge(r, sz, w, h)
    for r in ("center-crop", "letterbox")
    for sz, w, h in (((16, 12), 30, 100), ((16, 12), 100, 30), ((12, 16), 64, 48),
                     ((12, 16), 64, 47), ((9, 7), 1, 120), ((9, 7), 160, 1))
]  # fmt: skip


def _with_edges(test: Any) -> Any:
    for e in EDGES:
        test = e(test)
    return test


@settings(max_examples=examples(150), deadline=None)
@_with_edges
@given(
    spec=specs,
    width=st.integers(1, 160),
    height=st.integers(1, 120),
    fmt=st.sampled_from(sorted(PIXEL_FORMATS)),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_frame_becomes_the_contract_image(
    spec: ImageSpec, width: int, height: int, fmt: str, seed: int
) -> None:
    pixels = np.random.default_rng(seed).integers(
        0, 256, (height, width, PIXEL_FORMATS[fmt]), dtype=np.uint8
    )
    prep = ImagePrep(spec, spec.shape())
    got = prep.batch(prep.pixels(_frame(pixels, fmt))[None])[0]
    assert got.shape == spec.shape() and got.dtype == np.dtype(spec.dtype)
    want = _reference(pixels, fmt, spec)
    if spec.layout == "NCHW":
        want = np.moveaxis(want, -1, 0)
    # gray: OpenCV's fixed-point weights round to the nearest of 255 levels (1 level off)
    level = 1.0 if spec.color == "gray" else 0.0
    tol = level * spec.effective_scale / min(spec.std) + 1e-5
    if spec.dtype == "float16":  # 11 bits of mantissa
        tol += 1e-3 * np.abs(want).max()
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=0, atol=tol)


@pytest.mark.parametrize("fmt", sorted(set(PIXEL_FORMATS) - {"gray8"}))
@pytest.mark.parametrize("color", ["rgb", "bgr"])
def test_a_red_frame_lights_the_red_channel_of_the_model(fmt: str, color: str) -> None:
    """Flat colours, no interpolation subtlety: the one mistake this can catch is order."""
    red = np.zeros((24, 32, PIXEL_FORMATS[fmt]), np.uint8)
    red[:, :, _RGB[fmt][0]] = 255  # type: ignore[index]
    spec = ImageSpec(input="i", color=color, layout="NCHW", size=(8, 8))  # type: ignore[arg-type]
    prep = ImagePrep(spec, spec.shape())
    x = prep.batch(prep.pixels(_frame(red, fmt))[None])[0]
    want = [1.0, 0.0, 0.0] if color == "rgb" else [0.0, 0.0, 1.0]
    assert x.mean(axis=(1, 2)).tolist() == want


@pytest.mark.parametrize("color", ["rgb", "bgr", "gray"])
def test_a_jpeg_frame_decodes_in_the_models_colour_order(color: str) -> None:
    import cv2

    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[:, :, 2] = 250  # red, in OpenCV's BGR
    ok, jpeg = cv2.imencode(".jpg", bgr)
    assert ok
    hdr = VideoFrame(stream="f", t_capture=1, width=64, height=48, encoding="jpeg")
    spec = ImageSpec(input="i", color=color, layout="NHWC", dtype="uint8", size=(12, 16))  # type: ignore[arg-type]
    prep = ImagePrep(spec, spec.shape())
    px = prep.pixels(Envelope(b"video/f", hdr, memoryview(jpeg.tobytes()))).astype(int)
    mean = px.mean(axis=(0, 1))
    if color == "gray":
        assert abs(mean[0] - 0.299 * 250) < 4
    else:
        red = 0 if color == "rgb" else 2
        assert mean[red] > 240 and np.delete(mean, red).max() < 10


def test_k_frames_and_blanks_stack_in_the_models_layout() -> None:
    spec = ImageSpec(input="i", color="rgb", layout="NCHW", size=(4, 6), frames=3)
    prep = ImagePrep(spec, spec.shape())
    px = np.stack([np.full((3, 4, 6, 3), v, np.uint8) for v in (51, 102)])  # (B, K, H, W, C)
    px[0, 1, :, :, 2] = 255
    x = prep.batch([px[0], None])
    assert x.shape == (2, 3, 3, 4, 6)
    assert (
        np.allclose(x[0, 0], 0.2) and np.allclose(x[0, 1, 2], 1.0) and np.allclose(x[0, 1, :2], 0.2)
    )
    assert not x[1].any()  # a blank sample is the model's zeros


def test_the_shipped_models_preprocessing_is_what_it_was_trained_on() -> None:
    """Gray, the centre square, area-resized to 32x32, [0, 1] — as plugins/models/data.py
    renders MNIST digits: an independent path through OpenCV kept in the training code."""
    import cv2

    pre = Preprocessor(ModelInfo.load())
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert pre.image is not None
    x = pre.inputs([pre.image.pixels(_frame(frame, "bgr8"))], [pre.blank_pcm()])["image"]
    square = cv2.cvtColor(frame[:, 80:560], cv2.COLOR_BGR2GRAY)
    want = cv2.resize(square, (32, 32), interpolation=cv2.INTER_AREA) / 255.0  # as data.py
    assert x.shape == (1, 1, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], want, rtol=1e-6, atol=0)  # (x * 1/255: 1 ulp)


def test_a_corrupt_jpeg_is_an_error_naming_the_topic() -> None:
    spec = ImageSpec(input="i", size=(8, 8))
    hdr = VideoFrame(stream="f", t_capture=1, width=640, height=480, encoding="jpeg")
    with pytest.raises(ValueError, match="video/f: JPEG payload does not decode"):
        ImagePrep(spec, spec.shape()).pixels(Envelope(b"video/f", hdr, memoryview(b"\xff\xd8 x")))


# --- audio --------------------------------------------------------------------------------


def _window(pcm: np.ndarray, rate: int, fmt: str) -> Envelope:
    hdr = AudioWindow(
        stream="m",
        t_capture=1,
        sample_rate=rate,
        channels=pcm.shape[1],
        n_samples=len(pcm),
        sample_format=fmt,  # type: ignore[arg-type]
    )
    return Envelope(b"audio/m", hdr, memoryview(pcm.tobytes()))


@settings(max_examples=examples(60), deadline=None)
@given(
    seconds=st.integers(10, 75).map(lambda k: k / 50),  # whole samples at every rate
    rate=st.sampled_from([8000, 16000, 22050, 44100, 48000]),
    model_rate=st.sampled_from([8000, 16000]),
    channels=st.integers(1, 4),
    fmt=st.sampled_from(["f32le", "s16le"]),
    freq=st.floats(100.0, 1500.0),
)
def test_a_tone_arrives_at_the_models_rate_centred_and_mixed(
    seconds: float, rate: int, model_rate: int, channels: int, fmt: str, freq: float
) -> None:
    """Analytic oracle: a 0.5-amplitude sine, the same on every channel but the last
    (its negative on the last channel of 3 or more, so a mono mix of C channels is
    (C-2)/C of it), resampled, is the same sine at the model's rate, centred."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    tone = 0.5 * np.sin(2 * np.pi * freq * t)
    sign = np.ones(channels)
    if channels >= 3:
        sign[-1] = -1
    pcm = tone[:, None] * sign[None, :]
    raw = (pcm * 32767).round().astype(np.int16) if fmt == "s16le" else pcm.astype(np.float32)
    samples = 8000
    prep = AudioPrep(AudioSpec(input="a", sample_rate=model_rate, samples=samples), (samples,))
    x = prep.pcm(_window(raw, rate, fmt))[0]
    m = round(seconds * model_rate)  # the resampled window's length
    # where the window's first sample sits in the model's samples: centred, the odd one
    # cut (or padded) at the end
    start = (samples - m) // 2 if m < samples else -((m - samples) // 2)
    k = np.arange(samples)
    tm = (k - start) / model_rate
    inside = (tm >= 0.02) & (tm <= m / model_rate - 0.02)  # away from the resampler's edges
    want = 0.5 * sign.sum() / channels * np.sin(2 * np.pi * freq * tm)
    assert x.shape == (samples,) and x.dtype == np.float32
    assert np.abs(x[inside] - want[inside]).max() < 0.02
    if m < samples:  # shorter than the model's window: zeros around it
        assert not x[: max(0, start - 2)].any() and not x[start + m + 2 :].any()


def test_a_multichannel_model_takes_the_first_channels() -> None:
    pcm = np.stack([np.full(4000, v, np.float32) for v in (0.1, 0.2, 0.3)], axis=1)
    spec = AudioSpec(input="a", sample_rate=8000, samples=4000, channels=2)
    prep = AudioPrep(spec, audio_shape(spec, 3))
    x = prep.batch(prep.pcm(_window(pcm, 8000, "f32le"))[None])
    assert x.shape == (1, 2, 4000) and np.allclose(x[0, :, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="audio/m: 1 channels, the model takes 2"):
        prep.pcm(_window(pcm[:, :1].copy(), 8000, "f32le"))


def test_log_mel_features_are_fed_in_the_graphs_shape() -> None:
    from streamfuse.contract import LogMel

    spec = AudioSpec(
        input="a",
        sample_rate=8000,
        samples=4000,
        features="log-mel",
        log_mel=LogMel(n_fft=256, hop=128, n_mels=40),
    )
    for rank, shape in ((3, (40, 32)), (4, (1, 40, 32))):
        prep = AudioPrep(spec, audio_shape(spec, rank))
        x = prep.batch(np.zeros((2, 1, 4000), np.float32))
        assert x.shape == (2, *shape) and np.allclose(x, math.log(1e-6))  # silence: log(offset)


@pytest.mark.parametrize(
    ("parts", "keys", "frames"),
    [({"audio": False}, ["pixels"], 1), ({"image": False}, ["mel"], 1),
     ({"frames": 3}, ["pixels", "mel"], 3)],
)  # fmt: skip
def test_a_model_gets_only_the_inputs_it_has(
    parts: dict[str, Any], keys: list[str], frames: int, tmp_path: Path
) -> None:
    """An image-only, an audio-only and a 3-frame model (tests/colour_model.py): the
    preprocessor builds what each takes, and a missing frame or window is fed blank."""
    import yaml
    from click.testing import CliRunner

    from streamfuse.cli import main

    from .. import colour_model as C

    bare, out, contract = tmp_path / "bare.onnx", tmp_path / "m.onnx", tmp_path / "c.yaml"
    contract.write_text(yaml.safe_dump(C.build(bare, **parts)))
    res = CliRunner().invoke(
        main, ["model", "annotate", str(bare), "--contract", str(contract), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    pre = Preprocessor(ModelInfo.load(out))
    assert (pre.image is None, pre.audio is None) == ("pixels" not in keys, "mel" not in keys)
    assert pre.frames == frames and pre.model.path == out
    feeds = pre.inputs(
        [None, None] if pre.image is not None else [],
        [pre.blank_pcm()] * 2 if pre.audio is not None else [],
    )
    assert sorted(feeds) == sorted(keys)
    if pre.audio is not None:
        blank = pre.blank_pcm()
        assert blank.dtype == np.float32 and blank.shape == (1, pre.audio.samples)
        assert feeds["mel"].shape[0] == 2
    if pre.image is not None:
        assert feeds["pixels"].shape[0] == 2 and not feeds["pixels"].any()  # blank frames


def test_16_bit_samples_scale_to_exactly_minus_one_to_one() -> None:
    pcm = np.array([[-32768], [-16384], [0], [16384], [32767]], dtype="<i2")
    spec = AudioSpec(input="a", sample_rate=8000, samples=5)
    prep = AudioPrep(spec, (5,))
    x = prep.pcm(_window(pcm, 8000, "s16le"))
    assert x.dtype == np.float32 and x[0].tolist() == [-1.0, -0.5, 0.0, 0.5, 32767 / 32768]
    f = prep.pcm(_window(pcm.astype("<f4") / 32768, 8000, "f32le"))
    assert f.dtype == np.float32  # a float window stays float32 ([-1, 1) already)


def test_a_window_with_as_many_channels_as_the_model_is_taken_whole() -> None:
    pcm = np.stack([np.full(400, v, np.float32) for v in (0.1, 0.2)], axis=1)
    spec = AudioSpec(input="a", sample_rate=8000, samples=400, channels=2)
    prep = AudioPrep(spec, audio_shape(spec, 3))
    assert np.allclose(prep.pcm(_window(pcm, 8000, "f32le"))[:, 0], [0.1, 0.2])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_audio_is_fed_in_the_dtype_the_contract_names(dtype: str) -> None:
    spec = AudioSpec(input="a", sample_rate=8000, samples=400, dtype=dtype)  # type: ignore[arg-type]
    prep = AudioPrep(spec, (400,))
    x = prep.batch(np.full((2, 1, 400), 0.25, np.float32))
    assert x.dtype == np.dtype(dtype) and x.shape == (2, 400) and x.flags.c_contiguous
    assert np.all(x == 0.25)

"""Camera frames and audio windows -> model inputs, as the model's contract says.

Nothing here is a constant of one model: size, layout, colour, dtype, resize mode,
normalisation, rate, length, channels and features all come from the contract
(:mod:`streamfuse.contract`). Work is split where it is cheapest:

- per frame (OpenCV): decode, crop or letterbox, colour conversion, resize, to uint8
  pixels of the model's size in its colour order. Conversion to gray happens before the
  resize (as every grayscale model was trained), a channel reorder after it (it commutes).
- per batch (numpy, vectorised): ``pixels * scale / std - mean / std`` per channel in one
  fused multiply-add, layout and dtype; PCM to log-mel in one strided rfft.

A missing input (a camera without a frame, a silent microphone) is fed as zeros of the
model's input (images) or silence (audio, then its features).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .backend import Inputs, ModelInfo
from .contract import AudioSpec, ImageSpec
from .features import log_mel
from .messages import AudioWindow, Envelope, VideoFrame, audio_array, image_array

__all__ = ["Preprocessor"]

#: (source pixel format, target colour) -> cv2 conversion (None: already right)
_CONVERT = {
    ("bgr8", "gray"): "COLOR_BGR2GRAY", ("rgb8", "gray"): "COLOR_RGB2GRAY",
    ("bgra8", "gray"): "COLOR_BGRA2GRAY", ("rgba8", "gray"): "COLOR_RGBA2GRAY",
    ("gray8", "gray"): None,
    ("bgr8", "rgb"): "COLOR_BGR2RGB", ("rgb8", "rgb"): None, ("bgra8", "rgb"): "COLOR_BGRA2RGB",
    ("rgba8", "rgb"): "COLOR_RGBA2RGB", ("gray8", "rgb"): "COLOR_GRAY2RGB",
    ("bgr8", "bgr"): None, ("rgb8", "bgr"): "COLOR_RGB2BGR", ("bgra8", "bgr"): "COLOR_BGRA2BGR",
    ("rgba8", "bgr"): "COLOR_RGBA2BGR", ("gray8", "bgr"): "COLOR_GRAY2BGR",
}  # fmt: skip
_INTERPOLATION = {"linear": "INTER_LINEAR", "area": "INTER_AREA", "nearest": "INTER_NEAREST",
                  "cubic": "INTER_CUBIC"}  # fmt: skip


class ImagePrep:
    """One image input's preprocessing."""

    def __init__(self, spec: ImageSpec, shape: tuple[int, ...]) -> None:
        import cv2

        self._cv2: Any = cv2
        assert spec.size is not None
        self.spec = spec
        self.shape = shape
        self.h, self.w = spec.size
        self._interp = getattr(cv2, _INTERPOLATION[spec.interpolation])
        c = spec.channels
        std = np.broadcast_to(np.asarray(spec.std, np.float64), (c,))
        mean = np.broadcast_to(np.asarray(spec.mean, np.float64), (c,))
        # One multiply-add per channel; float32 like the old x * scale + offset.
        self._gain = (spec.effective_scale / std).astype(np.float32)
        self._bias = (-mean / std).astype(np.float32)
        self._identity = spec.dtype == "uint8"
        self._out: np.ndarray | None = None
        self._f32: np.ndarray | None = None

    def pixels(self, env: Envelope) -> np.ndarray:
        """A frame -> (H, W, C) uint8 of the model's size, in its colour order."""
        cv2 = self._cv2
        hdr = env.header
        assert isinstance(hdr, VideoFrame)
        gray = self.spec.color == "gray"
        if hdr.encoding == "jpeg":
            assert env.payload is not None
            flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
            img = cv2.imdecode(np.frombuffer(env.payload, np.uint8), flag)
            if img is None:
                raise ValueError(f"{env.topic.decode()}: JPEG payload does not decode")
            fmt = "gray8" if gray else "bgr8"
        else:
            img, fmt = image_array(env), hdr.pixel_format
        code = _CONVERT[(fmt, self.spec.color)]
        img = self._crop(img)
        if gray and code is not None:  # before the resize: the gray rounding does not commute
            img, code = cv2.cvtColor(img, getattr(cv2, code)), None
        img = self._resize(img)
        if code is not None:
            img = cv2.cvtColor(img, getattr(cv2, code))
        return img.reshape(self.h, self.w, self.spec.channels)

    def _crop(self, img: np.ndarray) -> np.ndarray:
        if self.spec.resize != "center-crop":
            return img
        h, w = img.shape[:2]
        if w * self.h > h * self.w:  # wider than the model: cut the sides
            cw, ch = max(1, round(h * self.w / self.h)), h
        else:
            cw, ch = w, max(1, round(w * self.h / self.w))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return img[y0 : y0 + ch, x0 : x0 + cw]

    def _resize(self, img: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        h, w = img.shape[:2]
        if self.spec.resize != "letterbox":
            if (h, w) == (self.h, self.w):
                return img
            return cv2.resize(img, (self.w, self.h), interpolation=self._interp)
        s = min(self.w / w, self.h / h)
        nw, nh = min(self.w, max(1, round(w * s))), min(self.h, max(1, round(h * s)))
        if (nh, nw) != (h, w):
            img = cv2.resize(img, (nw, nh), interpolation=self._interp)
        top, left = (self.h - nh) // 2, (self.w - nw) // 2
        pad = self.spec.pad
        return cv2.copyMakeBorder(
            img,
            top,
            self.h - nh - top,
            left,
            self.w - nw - left,
            cv2.BORDER_CONSTANT,
            value=(pad, pad, pad, pad),
        )

    def batch(self, pixels: Sequence[np.ndarray | None]) -> np.ndarray:
        """Per sample ((K,) H, W, C) uint8 -> the model's input, (B, ...); a sample that is
        None (no frame) is zeros. Written sample by sample into a buffer kept between calls
        (a fresh batch-sized array costs more in page faults than the arithmetic), so the
        result is valid until the next call."""
        n = len(pixels)
        if self._out is None or len(self._out) < n:
            self._out = np.empty((max(n, 8), *self.shape), np.dtype(self.spec.dtype))
        out = self._out[:n]
        for i, px in enumerate(pixels):
            if px is None:
                out[i] = 0
            else:
                self._write(out[i], px)
        return out

    def _write(self, dst: np.ndarray, px: np.ndarray) -> np.ndarray:
        """One sample into ``dst``: per channel, a copy (the layout change) then one fused
        multiply-add on contiguous planes (NCHW) or the pixel's channels (NHWC)."""
        spec = self.spec
        work = dst if dst.dtype == np.float32 or self._identity else self._scratch()
        nchw = spec.layout == "NCHW"
        for c in range(spec.channels):
            plane = work[..., c, :, :] if nchw else work[..., c]
            np.copyto(plane, px[..., c], casting="unsafe")
            if not self._identity:
                plane *= self._gain[c]
                plane += self._bias[c]
        if work is not dst:
            np.copyto(dst, work, casting="same_kind")
        return dst

    def _scratch(self) -> np.ndarray:
        if self._f32 is None:
            self._f32 = np.empty(self.shape, np.float32)
        return self._f32


class AudioPrep:
    """One audio input's preprocessing."""

    def __init__(self, spec: AudioSpec, shape: tuple[int, ...]) -> None:
        self.spec = spec
        self.shape = shape
        self.rate, self.samples, self.channels = spec.sample_rate, spec.samples, spec.channels

    def pcm(self, env: Envelope) -> np.ndarray:
        """A window -> (channels, samples) float32 in [-1, 1) at the model's rate, centred."""
        hdr = env.header
        assert isinstance(hdr, AudioWindow)
        pcm = audio_array(env)
        if self.channels == 1:
            x = pcm.mean(axis=1, keepdims=True) if pcm.shape[1] > 1 else pcm
        else:
            if pcm.shape[1] < self.channels:
                raise ValueError(
                    f"{env.topic.decode()}: {pcm.shape[1]} channels, the model "
                    f"takes {self.channels}"
                )
            x = pcm[:, : self.channels]
        x = x.astype(np.float32) / 32768.0 if hdr.sample_format == "s16le" else x.astype(np.float32)
        if hdr.sample_rate != self.rate:
            import soxr

            x = soxr.resample(x, hdr.sample_rate, self.rate).astype(np.float32)
            x = x.reshape(-1, self.channels)
        x = x.T
        n = self.samples
        if x.shape[1] >= n:
            start = (x.shape[1] - n) // 2
            return np.ascontiguousarray(x[:, start : start + n])
        out = np.zeros((self.channels, n), np.float32)
        start = (n - x.shape[1]) // 2
        out[:, start : start + x.shape[1]] = x
        return out

    def batch(self, pcm: np.ndarray) -> np.ndarray:
        """(B, channels, samples) float32 -> the model's input."""
        x = pcm if self.spec.features == "pcm" else log_mel(pcm, self.rate, self.spec.mel())
        x = x.reshape(len(pcm), *self.shape)
        return np.ascontiguousarray(x, dtype=np.dtype(self.spec.dtype))


class Preprocessor:
    """The model's inputs from frames and windows; ``image``/``audio`` are None where the
    model does not take that input."""

    def __init__(self, model: ModelInfo) -> None:
        self.model = model
        im, au = model.image, model.audio
        self.image = ImagePrep(im, model.input_shapes[im.input]) if im is not None else None
        self.audio = AudioPrep(au, model.input_shapes[au.input]) if au is not None else None
        self.frames = im.frames if im is not None else 1

    def blank_pcm(self) -> np.ndarray:
        assert self.audio is not None
        return np.zeros((self.audio.channels, self.audio.samples), np.float32)

    def inputs(
        self, pixels: Sequence[np.ndarray | None] = (), pcm: Sequence[np.ndarray] = ()
    ) -> Inputs:
        """One batch: per sample its pixels ((K,) H, W, C uint8; None: no frame) and/or
        PCM (C, N)."""
        out: Inputs = {}
        if self.image is not None:
            out[self.image.spec.input] = self.image.batch(pixels)
        if self.audio is not None:
            out[self.audio.spec.input] = self.audio.batch(np.stack(pcm))
        return out

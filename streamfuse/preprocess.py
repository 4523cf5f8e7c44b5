"""Camera frames and audio windows -> model inputs, as the model's metadata says.

The contract (``ModelInfo.image`` / ``ModelInfo.audio``) is read from the model file; no
size, rate or colour here is a constant. OpenCV and soxr load on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import ModelInfo
from .messages import AudioWindow, Envelope, VideoFrame, audio_array, image_array

__all__ = ["Preprocessor"]

_TO_GRAY = {"bgr8": "COLOR_BGR2GRAY", "rgb8": "COLOR_RGB2GRAY", "bgra8": "COLOR_BGRA2GRAY",
            "rgba8": "COLOR_RGBA2GRAY"}  # fmt: skip


class Preprocessor:
    def __init__(self, model: ModelInfo) -> None:
        import cv2

        self._cv2: Any = cv2
        c, h, w = model.image_shape
        if c != 1 or model.image.get("color") != "gray":
            raise NotImplementedError("this preprocessor feeds grayscale image models")
        self.size = (w, h)
        lo, hi = model.image.get("range", [0.0, 1.0])
        self._scale, self._offset = (hi - lo) / 255.0, lo
        self.rate = int(model.audio["sample_rate"])
        self.samples = model.audio_samples
        self.image_shape = model.image_shape

    def image(self, env: Envelope) -> np.ndarray:
        """A frame -> (C, H, W) float32: centre square crop, grayscale, area resize."""
        cv2 = self._cv2
        hdr = env.header
        assert isinstance(hdr, VideoFrame)
        if hdr.encoding == "jpeg":
            assert env.payload is not None
            img = cv2.imdecode(np.frombuffer(env.payload, np.uint8), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise ValueError(f"{env.topic.decode()}: JPEG payload does not decode")
        else:
            img = image_array(env)
        h, w = img.shape[:2]
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        img = img[y0 : y0 + side, x0 : x0 + side]
        if img.ndim == 3 and img.shape[2] > 1:
            fmt = hdr.pixel_format if hdr.encoding == "raw" else "bgr8"
            img = cv2.cvtColor(img, getattr(cv2, _TO_GRAY[fmt]))
        elif img.ndim == 3:
            img = img[:, :, 0]
        small = cv2.resize(img, self.size, interpolation=cv2.INTER_AREA)
        return (small.astype(np.float32) * self._scale + self._offset)[None]

    def audio(self, env: Envelope) -> np.ndarray:
        """A window -> (N,) float32 mono at the model's rate, centred in N samples."""
        hdr = env.header
        assert isinstance(hdr, AudioWindow)
        pcm = audio_array(env)
        x = pcm.mean(axis=1) if pcm.shape[1] > 1 else pcm[:, 0]
        x = x.astype(np.float32) / 32768.0 if hdr.sample_format == "s16le" else x.astype(np.float32)
        if hdr.sample_rate != self.rate:
            import soxr

            x = soxr.resample(x, hdr.sample_rate, self.rate).astype(np.float32)
        n = self.samples
        if len(x) >= n:
            start = (len(x) - n) // 2
            return np.ascontiguousarray(x[start : start + n])
        out = np.zeros(n, np.float32)
        start = (n - len(x)) // 2
        out[start : start + len(x)] = x
        return out

    def blank_image(self) -> np.ndarray:
        return np.zeros(self.image_shape, np.float32)

    def blank_audio(self) -> np.ndarray:
        return np.zeros(self.samples, np.float32)

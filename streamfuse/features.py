"""Log-mel features in numpy, with torchaudio's ``MelSpectrogram`` conventions. Pure.

A batch of windows (..., samples) -> (..., n_mels, frames), vectorised over the batch:
the STFT is a strided view of the (centred, padded) signal times the window, one rfft call.
Conventions (torchaudio.transforms.MelSpectrogram defaults, which librosa reproduces with
``htk=True, norm=None, pad_mode="reflect"``): periodic Hann/Hamming window of ``win``
samples zero-padded to ``n_fft`` at its centre; ``center`` pads ``n_fft // 2`` on both sides;
frame t starts at ``t * hop``; ``|X| ** power``; triangular filters on the HTK (or Slaney)
mel scale between ``f_min`` and ``f_max`` over the bins ``linspace(0, sr / 2, n_fft // 2 + 1)``,
without area normalisation. Checked against librosa in ``tests/unit/test_features.py``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .contract import LogMel

__all__ = ["log_mel", "mel_filters"]


def _hz_to_mel(f: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    lin = f / f_sp
    return np.where(
        f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, lin
    )


def _mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=16)
def mel_filters(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float, scale: str
) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular filters, float64."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    m = np.linspace(
        _hz_to_mel(np.array(f_min), scale), _hz_to_mel(np.array(f_max), scale), n_mels + 2
    )
    f_pts = _mel_to_hz(m, scale)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb.flags.writeable = False
    return fb


@lru_cache(maxsize=16)
def _window(kind: str, win: int, n_fft: int) -> np.ndarray:
    n = np.arange(win)
    a = 0.5 if kind == "hann" else 0.54
    w = a - (1 - a) * np.cos(2 * np.pi * n / win)  # periodic
    out = np.zeros(n_fft)
    left = (n_fft - win) // 2
    out[left : left + win] = w
    out.flags.writeable = False
    return out


def log_mel(x: np.ndarray, sample_rate: int, p: LogMel) -> np.ndarray:
    """(..., samples) float -> (..., n_mels, frames) float32."""
    x = np.asarray(x, np.float64)
    if p.center:
        pad = [(0, 0)] * (x.ndim - 1) + [(p.n_fft // 2, p.n_fft // 2)]
        x = np.pad(x, pad, mode=p.pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(x, p.n_fft, axis=-1)[..., :: p.hop, :]
    spec = np.abs(np.fft.rfft(frames * _window(p.window, p.win or p.n_fft, p.n_fft), axis=-1))
    if p.power != 1.0:
        spec = spec**p.power
    f_max = p.f_max if p.f_max is not None else sample_rate / 2
    mel = spec @ mel_filters(sample_rate, p.n_fft, p.n_mels, p.f_min, f_max, p.mel_scale)
    mel = np.swapaxes(mel, -1, -2)  # (..., n_mels, frames)
    if p.log == "ln":
        mel = np.log(mel + p.offset)
    elif p.log == "db":
        mel = (10.0 if p.power == 2.0 else 20.0) * np.log10(np.maximum(mel, p.offset))
    return mel.astype(np.float32)

"""AV-digits: a spoken digit (FSDD speakers, plus the shipped espeak-ng voices) paired with a
handwritten image of the same digit (MNIST), augmented the way the stream will look.

Data is read in place from ``STREAMFUSE_DATA`` (or ``../shared/data``), never copied.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch.nn import functional as F

from streamfuse.errors import ConfigError

FSDD_SPEAKERS = ("george", "jackson", "nicolas", "theo", "yweweler")
VOICES_DIR = Path(__file__).parent / "voices"


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The shared data folder: the argument, ``$STREAMFUSE_DATA``, or ``../shared/data``."""
    if explicit:
        candidates = [Path(explicit)]
    elif os.environ.get("STREAMFUSE_DATA"):
        candidates = [Path(os.environ["STREAMFUSE_DATA"])]
    else:
        candidates = [
            Path(__file__).resolve().parents[2] / ".." / "shared" / "data",
            Path.cwd() / ".." / "shared" / "data",
        ]
    for c in candidates:
        if (c / "fsdd").is_dir() and (c / "mnist").is_dir():
            return c.resolve()
    raise ConfigError(
        "data",
        "no AV-digits data (fsdd/, mnist/) found; set STREAMFUSE_DATA "
        f"or pass a path (looked in: {', '.join(str(c) for c in candidates)})",
    )


@dataclass
class Clip:
    digit: int
    speaker: str
    take: int
    pcm: np.ndarray  # float32 at the model's sample rate


def load_clips(root: Path | None, rate: int, *, voices: bool = True) -> list[Clip]:
    """FSDD recordings (if ``root``) and the shipped espeak voices, resampled to ``rate``."""
    files: list[Path] = []
    if root is not None:
        files += sorted((root / "fsdd" / "recordings").glob("*.wav"))
    if voices:
        files += sorted(VOICES_DIR.glob("*.wav"))
    clips = []
    for f in files:
        digit, speaker, take = f.stem.split("_")
        x, sr = sf.read(f, dtype="float32", always_2d=True)
        x = x.mean(axis=1)
        if sr != rate:
            x = soxr.resample(x, sr, rate)
        clips.append(Clip(int(digit), speaker, int(take), x.astype(np.float32)))
    if not clips:
        raise ConfigError("data", "no spoken digits found")
    return clips


def load_mnist(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and (N,) labels from ``mnist/mnist_5k.csv.gz``."""
    path = root / "mnist" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as fh:
        rows = np.array([[int(v) for v in r] for r in csv.reader(fh)], dtype=np.int64)
    return rows[:, :784].reshape(-1, 28, 28).astype(np.uint8), rows[:, 784]


def split_images(
    images: np.ndarray, labels: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, test): per digit the first 80 % of its images and the last 20 % (the file is
    sorted by label)."""
    is_train = np.zeros(len(labels), dtype=bool)
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        is_train[idx[: int(len(idx) * 0.8)]] = True
    return (images[is_train], labels[is_train]), (images[~is_train], labels[~is_train])


def to_model_image(img28: np.ndarray, size: int) -> np.ndarray:
    """A 28x28 MNIST digit on the model's (size x size) canvas, float in [0, 1]."""
    pad = (size - 28) // 2
    out = np.zeros((size, size), dtype=np.float32)
    out[pad : pad + 28, pad : pad + 28] = img28 / 255.0
    return out


def fit_audio(x: np.ndarray, n: int, offset: int | None = None) -> np.ndarray:
    """Place a clip in an n-sample window: centred (or at ``offset``), cropped if longer."""
    if len(x) >= n:
        start = (len(x) - n) // 2
        return x[start : start + n]
    out = np.zeros(n, dtype=np.float32)
    off = (n - len(x)) // 2 if offset is None else min(max(0, offset), n - len(x))
    out[off : off + len(x)] = x
    return out


# -- augmentation: what a camera and a microphone do to a digit ------------------------------


def augment_images(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(B, 1, S, S): shift, scale (a digit filling the frame to a small one), rotation, blur,
    brightness, noise."""
    b = x.shape[0]
    scale = torch.empty(b).uniform_(0.75, 1.35, generator=g)  # >1 zooms in
    angle = torch.empty(b).uniform_(-0.2, 0.2, generator=g)
    shift = torch.empty(b, 2).uniform_(-0.15, 0.15, generator=g)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    if torch.rand(1, generator=g).item() < 0.5:
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16)[None, None]
        x = F.conv2d(x, k, padding=1)
    x = x * torch.empty(b, 1, 1, 1).uniform_(0.6, 1.2, generator=g)
    # A bad camera now and then (so the fusion learns to turn it down): a random rectangle
    # covered and heavy sensor noise.
    bad = torch.rand(b, generator=g) < 0.25
    s = x.shape[-1]
    for i in torch.nonzero(bad).flatten().tolist():
        h, w = (torch.randint(s // 4, s * 2 // 3, (2,), generator=g)).tolist()
        top, left = (
            torch.randint(0, s - h + 1, (1,), generator=g).item(),
            torch.randint(0, s - w + 1, (1,), generator=g).item(),
        )
        x[i, :, top : top + h, left : left + w] = 0
    sigma = torch.where(
        bad,
        torch.empty(b).uniform_(0.2, 0.6, generator=g),
        torch.empty(b).uniform_(0, 0.15, generator=g),
    )
    x = x + torch.randn(x.shape, generator=g) * sigma[:, None, None, None]
    return x.clamp(0, 1)


def perturb_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play a clip ``factor`` times faster (tempo and pitch together, like sox's ``speed``):
    the cheapest change of voice, also a rough vocal-tract-length change."""
    n = max(2, round(len(x) / factor))
    return np.interp(np.arange(n) * factor, np.arange(len(x)), x).astype(np.float32)


def augment_spectrogram(mel: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(B, 1, M, T) log-mel: a vocal-tract-length warp of the mel axis (0.88..1.12), then
    SpecAugment (Park et al. 2019): two frequency masks of up to 6 bands and two time masks
    of up to 12 frames, filled with each spectrogram's mean."""
    b, _, m, t = mel.shape
    alpha = torch.empty(b).uniform_(0.88, 1.12, generator=g)
    rows = torch.arange(m, dtype=torch.float32)[None] / alpha[:, None]  # (B, M) source rows
    lo = rows.floor().clamp(0, m - 1).long()
    hi = (lo + 1).clamp(max=m - 1)
    frac = (rows - lo.float()).clamp(0, 1)[:, None, :, None]
    gather = lambda idx: mel.gather(2, idx[:, None, :, None].expand(b, 1, m, t))  # noqa: E731
    warped = gather(lo) * (1 - frac) + gather(hi) * frac
    fill = warped.mean(dim=(2, 3), keepdim=True)
    keep = torch.ones_like(warped, dtype=torch.bool)
    for size, axis in ((6, 2), (6, 2), (12, 3), (12, 3)):
        width = torch.randint(0, size + 1, (b,), generator=g)
        start = (torch.rand(b, generator=g) * (warped.shape[axis] - width)).long()
        pos = torch.arange(warped.shape[axis])[None]
        hit = (pos >= start[:, None]) & (pos < (start + width)[:, None])  # (B, L)
        shape = (b, 1, -1, 1) if axis == 2 else (b, 1, 1, -1)
        keep &= ~hit.view(shape)
    return torch.where(keep, warped, fill)


def add_noise(x: torch.Tensor, snr_db: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """White noise at a given SNR (dB) per row of (B, N)."""
    power = x.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-8)
    noise = torch.randn(x.shape, generator=g)
    return x + noise * torch.sqrt(power / (10 ** (snr_db[:, None] / 10)))


def augment_audio(x: torch.Tensor, rate: int, g: torch.Generator) -> torch.Tensor:
    """(B, N): gain, a room-like impulse response now and then, background noise (5..40 dB
    SNR, a quarter of the time a bad microphone at -5..20 dB)."""
    b, n = x.shape
    if torch.rand(1, generator=g).item() < 0.4:  # a small room: decaying noise, 20-150 ms
        length = int(rate * 0.15)
        t = torch.arange(length) / rate
        decay = torch.empty(b, 1).uniform_(0.02, 0.15, generator=g)
        ir = torch.randn(b, length, generator=g) * torch.exp(-t[None] * 6.9 / decay)
        ir[:, 0] = 1.0
        ir = ir / ir.norm(dim=1, keepdim=True)
        size = 1 << math.ceil(math.log2(n + length))
        x = torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(ir, size), size)[:, :n]
    x = x * torch.empty(b, 1).uniform_(0.3, 1.5, generator=g)
    bad = torch.rand(b, generator=g) < 0.25
    snr = torch.where(
        bad,
        torch.empty(b).uniform_(-5, 20, generator=g),
        torch.empty(b).uniform_(5, 40, generator=g),
    )
    return add_noise(x, snr, g)


def degrade_images(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The evaluation's bad camera: heavy noise and half the frame occluded."""
    x = x + torch.randn(x.shape, generator=g) * 0.5
    s = x.shape[-1]
    x[..., :, : s // 2] = 0  # left half covered
    return x.clamp(0, 1)


def degrade_audio(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The evaluation's bad microphone: white noise at 0 dB SNR."""
    return add_noise(x, torch.zeros(x.shape[0]), g)

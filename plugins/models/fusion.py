"""The image+audio fusion network, in one file.

Two encoders, one per modality, and three ways to fuse them, after the cross-modal learning
literature (e.g. Baltrusaitis et al., "Multimodal Machine Learning: A Survey and Taxonomy";
Neverova et al., "ModDrop"; Arevalo et al., "Gated Multimodal Units"):

- ``early``: concatenate the two feature vectors, classify the concatenation;
- ``late``: classify each modality on its own, average the log-probabilities;
- ``gated``: a gate looks at both features and weighs them (a gated multimodal unit), so a
  blank or noisy sensor can be turned down per sample.

Every variant also returns the per-modality predictions (its auxiliary heads), so a consumer
sees how confident each sensor was on its own. Trained with modality dropout (ModDrop): a
whole input is blanked at random, so the fused output degrades gracefully when a sensor fails.

The audio front end computes a log-mel spectrogram inside the network from raw PCM with a
strided convolution whose kernels are the windowed DFT basis (a "conv-DFT"), then a matmul
with the mel filterbank: plain Conv/Pow/MatMul/Log ops that ONNX Runtime runs fast and
TensorRT's ONNX parser accepts (no STFT op).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Fusion = Literal["early", "late", "gated", "gated-late", "stacked"]


@dataclass
class FusionConfig:
    n_classes: int = 10
    image_size: int = 32  # grayscale, square, values in [0, 1]
    sample_rate: int = 16000
    window_samples: int = 16000  # 1 s of audio per classification
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 40
    width: int = 24  # channels of the first conv layer of each encoder
    embed: int = 64
    fusion: Fusion = "gated"
    modality_dropout: float = 0.3  # probability that one of the two inputs is blanked

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, fmin: float = 20.0) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular filters on the HTK mel scale."""

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = hz(np.linspace(mel(fmin), mel(sample_rate / 2), n_mels + 2))
    fb = np.zeros((len(freqs), n_mels), dtype=np.float32)
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[:, m] = np.maximum(0.0, np.minimum(up, down))
    return fb


class LogMel(nn.Module):
    """Raw PCM (B, N) -> log-mel spectrogram (B, 1, n_mels, T) with Conv2d + MatMul."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        n_bins = cfg.n_fft // 2 + 1
        window = np.zeros(cfg.n_fft, dtype=np.float64)
        start = (cfg.n_fft - cfg.win_length) // 2
        window[start : start + cfg.win_length] = np.hanning(cfg.win_length + 1)[:-1]
        t = np.arange(cfg.n_fft)
        k = np.arange(n_bins)[:, None]
        real = np.cos(2 * math.pi * k * t / cfg.n_fft) * window
        imag = -np.sin(2 * math.pi * k * t / cfg.n_fft) * window
        basis = np.concatenate([real, imag]).astype(np.float32)  # (2F, n_fft)
        # Not persistent: both are computed from the config, so checkpoints stay small.
        basis_t = torch.from_numpy(basis)[:, None, None, :]  # (2F, 1, 1, n_fft)
        self.register_buffer("basis", basis_t, persistent=False)
        mel = torch.from_numpy(mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate))
        self.register_buffer("mel", mel, persistent=False)
        self.n_bins, self.hop, self.pad = n_bins, cfg.hop_length, cfg.n_fft // 2
        self.basis: torch.Tensor
        self.mel: torch.Tensor

        self.n_fft, self.win_length = cfg.n_fft, cfg.win_length
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        self.window: torch.Tensor

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # the graph: plain Conv ops, no STFT
            x = F.pad(pcm, (self.pad, self.pad))[:, None, None, :]  # (B, 1, 1, N + n_fft)
            spec = F.conv2d(x, self.basis, stride=(1, self.hop))  # (B, 2F, 1, T)
            re, im = spec[:, : self.n_bins, 0], spec[:, self.n_bins :, 0]  # (B, F, T) each
            power = re * re + im * im
        else:  # training and torch inference: the same numbers through an FFT, ~10x cheaper
            spec = torch.stft(
                pcm,
                self.n_fft,
                self.hop,
                self.win_length,
                self.window,
                center=True,
                pad_mode="constant",
                return_complex=True,
            )
            power = spec.real.square() + spec.imag.square()  # (B, F, T)
        mel = torch.matmul(power.transpose(1, 2), self.mel)  # (B, T, n_mels)
        return torch.log(mel + 1e-6).transpose(1, 2)[:, None]  # (B, 1, n_mels, T)


def conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """A compact CNN: (B, 1, H, W) -> (B, embed)."""

    def __init__(self, width: int, embed: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)  # learns the input's scale (log-mel or pixels)
        self.body = nn.Sequential(
            conv_block(1, width, pool=True),
            conv_block(width, 2 * width, pool=True),
            conv_block(2 * width, 4 * width, pool=True),
            conv_block(4 * width, 4 * width, pool=False),
        )
        self.proj = nn.Linear(4 * width, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.norm(x))  # (B, 4w, H/8, W/8)
        return F.relu(self.proj(h.mean(dim=(2, 3))))  # (B, embed)


class FusionNet(nn.Module):
    """image (B, 1, S, S) in [0, 1] and audio (B, N) PCM in [-1, 1] ->
    (fused, image-only, audio-only) logits, each (B, n_classes)."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.logmel = LogMel(cfg)
        self.image_encoder = Encoder(cfg.width, cfg.embed)
        self.audio_encoder = Encoder(cfg.width, cfg.embed)
        self.image_head = nn.Linear(cfg.embed, cfg.n_classes)
        self.audio_head = nn.Linear(cfg.embed, cfg.n_classes)
        self.fused_head: nn.Module
        if cfg.fusion == "early":
            self.fused_head = nn.Sequential(
                nn.Linear(2 * cfg.embed, cfg.embed), nn.ReLU(), nn.Linear(cfg.embed, cfg.n_classes)
            )
        elif cfg.fusion == "gated":
            self.gate = nn.Linear(2 * cfg.embed, 2)
            self.fused_head = nn.Linear(cfg.embed, cfg.n_classes)
        elif cfg.fusion == "gated-late":
            self.gate = nn.Linear(2 * cfg.embed, 2)
        elif cfg.fusion == "stacked":
            # Fitted after the experts, on out-of-fold outputs (crossfit.py): one temperature
            # per expert, then per-sample weights of their calibrated log-probabilities.
            self.register_buffer("log_temperature", torch.zeros(2))
            self.log_temperature: torch.Tensor
            self.stacker = nn.Sequential(
                nn.Linear(len(STACK_FEATURES), 16), nn.Tanh(), nn.Linear(16, 2)
            )
        elif cfg.fusion != "late":
            raise ValueError(
                f"unknown fusion {cfg.fusion!r}; choose early, late, gated, gated-late or stacked"
            )

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fi = self.image_encoder(image)  # (B, E)
        fa = self.audio_encoder(self.logmel(audio))  # (B, E)
        li, la = self.image_head(fi), self.audio_head(fa)  # (B, C) each
        if self.cfg.fusion == "stacked":
            return self.stack(li, la, self.image_level(image), self.audio_level(audio))
        if self.cfg.fusion == "early":
            fused = self.fused_head(torch.cat([fi, fa], dim=1))
        elif self.cfg.fusion == "late":
            fused = (F.log_softmax(li, dim=1) + F.log_softmax(la, dim=1)) / 2
        elif self.cfg.fusion == "gated":
            w = torch.softmax(self.gate(torch.cat([fi, fa], dim=1)), dim=1)  # (B, 2)
            fused = self.fused_head(w[:, :1] * fi + w[:, 1:] * fa)
        else:  # gated-late: per-sample weights on each modality's log-probabilities
            w = torch.softmax(self.gate(torch.cat([fi, fa], dim=1)), dim=1)  # (B, 2)
            fused = w[:, :1] * F.log_softmax(li, dim=1) + w[:, 1:] * F.log_softmax(la, dim=1)
        return fused, li, la

    @staticmethod
    def image_level(image: torch.Tensor) -> torch.Tensor:
        """(B, 2) what the frame looks like, whatever it shows: the pixels' standard deviation
        (0 for a black or flat frame) and a noise estimate (mean absolute difference of
        neighbouring pixels, high for sensor noise)."""
        x = image.flatten(1)
        mean = x.mean(dim=1)
        std = ((x * x).mean(dim=1) - mean * mean).clamp_min(0).sqrt()
        dx = (image[..., :, 1:] - image[..., :, :-1]).abs().flatten(1).mean(dim=1)
        dy = (image[..., 1:, :] - image[..., :-1, :]).abs().flatten(1).mean(dim=1)
        return torch.stack([std, dx + dy], dim=1)

    @staticmethod
    def audio_level(audio: torch.Tensor) -> torch.Tensor:
        """(B, 2) what the window sounds like: log10 of its RMS level, and of the ratio of its
        loudest to its quietest 10 ms frame (a crude SNR: speech in quiet is high, steady
        noise low), both scaled to about [-1, 1]."""
        rms = (audio * audio).mean(dim=1).sqrt()
        n = audio.shape[1] // 160 * 160
        energy = (audio[:, :n] * audio[:, :n]).reshape(audio.shape[0], -1, 160).mean(dim=2)
        span = (energy.amax(dim=1) + 1e-10) / (energy.amin(dim=1) + 1e-10)
        return torch.stack([torch.log10(rms + 1e-5) / 5, torch.log10(span) / 10], dim=1)

    def stack(
        self,
        li: torch.Tensor,
        la: torch.Tensor,
        image_level: torch.Tensor,
        audio_level: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Calibrated expert logits and their per-sample weighted sum: (fused, image, audio)."""
        t = self.log_temperature.exp()
        li, la = li / t[0], la / t[1]
        lpi, lpa = F.log_softmax(li, dim=1), F.log_softmax(la, dim=1)
        pi, pa = lpi.exp(), lpa.exp()
        norm = math.log(self.cfg.n_classes)
        feats = torch.stack(
            [
                -(pi * lpi).sum(dim=1) / norm,  # entropies, 0..1
                -(pa * lpa).sum(dim=1) / norm,
                pi.max(dim=1).values,  # top probabilities
                pa.max(dim=1).values,
                (pi * pa).sum(dim=1),  # agreement: the chance both name the same digit
            ],
            dim=1,
        )
        feats = torch.cat([feats, image_level, audio_level], dim=1)
        w = F.softplus(self.stacker(feats))  # (B, 2), >= 0
        return w[:, :1] * lpi + w[:, 1:] * lpa, li, la


# What the stacker sees, in order (FusionNet.stack).
STACK_FEATURES = (
    "image entropy",
    "audio entropy",
    "image top probability",
    "audio top probability",
    "agreement",
    "image contrast",
    "image noise",
    "audio level",
    "audio dynamic range",
)


class Exportable(nn.Module):
    """What ships: probabilities instead of logits, for ONNX export."""

    def __init__(self, net: FusionNet) -> None:
        super().__init__()
        self.net: FusionNet = net

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fused, li, la = self.net(image, audio)
        return tuple(torch.softmax(x, dim=1) for x in (fused, li, la))

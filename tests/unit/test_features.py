"""Log-mel features against librosa, an independent implementation of the same conventions
(torchaudio's MelSpectrogram: HTK or Slaney mel scale, no filter normalisation, periodic
window centred in n_fft, reflect or zero padding). Tolerance: 1e-4 relative on the mel
energies, 1e-3 absolute after the log (float32 output)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfuse.contract import LogMel
from streamfuse.features import log_mel

from ..conftest import examples

librosa = pytest.importorskip("librosa", reason="librosa (dev extra) is the reference")


@st.composite
def params(draw: st.DrawFn) -> tuple[int, LogMel]:
    rate = draw(st.sampled_from([8000, 16000, 22050]))
    n_fft = draw(st.sampled_from([64, 200, 256, 400, 512]))
    win = draw(st.one_of(st.none(), st.integers(n_fft // 2, n_fft)))
    f_max = draw(st.one_of(st.none(), st.floats(rate / 8, rate / 2)))
    f_min = draw(st.floats(0.0, (f_max or rate / 2) / 2))
    return rate, LogMel(
        n_fft=n_fft,
        hop=draw(st.integers(16, n_fft)),
        win=win,
        window=draw(st.sampled_from(["hann", "hamming"])),
        n_mels=draw(st.integers(4, 80)),
        f_min=f_min,
        f_max=f_max,
        power=draw(st.sampled_from([1.0, 2.0])),
        center=draw(st.booleans()),
        pad_mode=draw(st.sampled_from(["reflect", "constant"])),
        mel_scale=draw(st.sampled_from(["htk", "slaney"])),
        log=draw(st.sampled_from(["ln", "db", "none"])),
    )


@pytest.mark.filterwarnings("ignore:Empty filters detected")  # n_mels > bins: both give 0
@settings(max_examples=examples(60), deadline=None)
@given(p=params(), samples=st.integers(600, 6000), seed=st.integers(0, 2**32 - 1))
def test_log_mel_matches_librosa(p: tuple[int, LogMel], samples: int, seed: int) -> None:
    rate, mel = p
    x = np.random.default_rng(seed).standard_normal((2, samples)) * 0.1
    got = log_mel(x, rate, mel)
    ref = librosa.feature.melspectrogram(
        y=x,
        sr=rate,
        n_fft=mel.n_fft,
        hop_length=mel.hop,
        win_length=mel.win or mel.n_fft,
        window=mel.window,
        center=mel.center,
        pad_mode=mel.pad_mode,
        power=mel.power,
        n_mels=mel.n_mels,
        fmin=mel.f_min,
        fmax=mel.f_max if mel.f_max else rate / 2,
        htk=mel.mel_scale == "htk",
        norm=None,
    )
    assert got.shape == ref.shape == (2, mel.n_mels, mel.frames(samples))
    if mel.log == "ln":
        ref = np.log(ref + mel.offset)
    elif mel.log == "db":
        ref = (10 if mel.power == 2 else 20) * np.log10(np.maximum(ref, mel.offset))
    if mel.log == "none":
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-7)
    else:
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3 * (10 if mel.log == "db" else 1))


def test_a_tone_lands_in_the_mel_band_of_its_frequency() -> None:
    """A second oracle, from first principles: a 1 kHz tone's energy peaks in the filter
    whose centre is nearest 1 kHz on the HTK scale."""
    rate, mel = 16000, LogMel(n_fft=512, hop=160, n_mels=40, log="none")
    t = np.arange(rate) / rate
    x = np.sin(2 * np.pi * 1000.0 * t)[None]
    energy = log_mel(x, rate, mel)[0].mean(axis=1)
    edges = np.linspace(0, 2595 * np.log10(1 + 8000 / 700), mel.n_mels + 2)
    centres = 700 * (10 ** (edges[1:-1] / 2595) - 1)
    assert int(energy.argmax()) == int(np.abs(centres - 1000).argmin())

"""The cross-fitted fusion recipe's pure parts: who trains on whom (no held-out speaker leaks),
calibration, the stacker, ECE, the cache key."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is installed by `make test`; pip install -e .[model]"
)

from streamfuse_plugins.models import crossfit as C  # noqa: E402
from streamfuse_plugins.models import data as D  # noqa: E402
from streamfuse_plugins.models.fusion import FusionConfig, FusionNet  # noqa: E402
from streamfuse_plugins.models.train import HELD_OUT_VOICES, TrainConfig  # noqa: E402


def corpus() -> C.Corpus:
    speakers = [*D.FSDD_SPEAKERS, "espeak-f2", "espeak-m1", *HELD_OUT_VOICES]
    clips = [D.Clip(d, s, 0, np.zeros(100, np.float32)) for s in speakers for d in range(10)]
    img = (np.zeros((40, 28, 28), np.uint8), np.repeat(np.arange(10), 4))
    return C.Corpus(clips, img, img)


def test_no_expert_of_a_fold_ever_heard_its_held_out_speaker() -> None:
    cp = corpus()
    for held in D.FSDD_SPEAKERS:
        fold = C.plan(cp, held)
        assert held not in fold.audio.speakers
        assert set(fold.oof_audio) == set(D.FSDD_SPEAKERS) - {held}
        for target, spec in fold.oof_audio.items():
            # out of fold: neither the fold's held-out speaker nor the speaker it scores
            assert held not in spec.speakers and target not in spec.speakers
            assert set(spec.speakers) == set(fold.audio.speakers) - {target}
        for spec in (fold.audio, *fold.oof_audio.values()):
            assert not set(HELD_OUT_VOICES) & set(spec.speakers)
    shipped = C.plan(cp, None)
    assert set(shipped.audio.speakers) >= set(D.FSDD_SPEAKERS)
    # the shipped model's out-of-fold experts are the folds' own experts (one cache entry)
    assert {s.speakers for s in shipped.oof_audio.values()} == {
        C.plan(cp, h).audio.speakers for h in D.FSDD_SPEAKERS
    }
    # 5 folds: 2 image halves + 1 image expert + 5 fold experts + 10 pair experts
    specs = C.experts_for(cp, [C.plan(cp, h) for h in D.FSDD_SPEAKERS])
    assert len(specs) == 18
    assert sum(s.modality == "audio" for s in specs) == 15


def test_cache_key_follows_what_an_expert_learns_from() -> None:
    cfg = TrainConfig()
    a = C.ExpertSpec("audio", ("george", "theo"))
    assert C.cache_key(cfg, a) == C.cache_key(replace(cfg, data="/elsewhere", jobs=7), a)
    assert C.cache_key(cfg, a) != C.cache_key(cfg, C.ExpertSpec("audio", ("george",)))
    assert C.cache_key(cfg, a) != C.cache_key(replace(cfg, epochs=cfg.epochs + 1), a)
    assert C.cache_key(cfg, a) != C.cache_key(replace(cfg, seed=1), a)
    assert C.cache_key(cfg, C.ExpertSpec("image", images="even")) != C.cache_key(
        cfg, C.ExpertSpec("image", images="odd")
    )


def test_ece_of_known_cases() -> None:
    # always 0.9 sure, right half the time: ECE = |0.5 - 0.9| = 0.4
    probs = torch.full((100, 10), 0.1 / 9)
    probs[:, 0] = 0.9
    y = torch.tensor([0, 1] * 50)
    assert C.ece(probs, y) == pytest.approx(0.4, abs=1e-6)
    # sure and right: 0; two bins each off by 0.2 and 0.1 with equal mass: 0.15
    assert C.ece(torch.eye(10)[y], y) == pytest.approx(0.0, abs=1e-6)
    p = torch.zeros(20, 2)
    p[:10] = torch.tensor([0.6, 0.4])  # 80 % right at 0.6 confidence
    p[10:] = torch.tensor([0.95, 0.05])  # 85 % right at 0.95
    y = torch.tensor([0] * 8 + [1] * 2 + [0] * 8 + [1] * 2)  # 80 % right in both bins
    assert C.ece(p, y) == pytest.approx(0.5 * 0.2 + 0.5 * 0.15, abs=1e-6)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=g) * 3
    for true_t in (0.5, 2.0, 4.0):
        y = torch.multinomial((logits / true_t).softmax(1), 1, generator=g)[:, 0]
        assert C.fit_temperature(logits, y) == pytest.approx(true_t, rel=0.08)


def synthetic(n: int, g: torch.Generator, *, blank_image: bool, noisy_audio: bool) -> tuple:
    """Expert outputs with known quality: image right with margin unless blank (then a
    confident random digit), audio right 80 % of the time, confidently either way."""
    y = torch.randint(0, 10, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    junk = torch.nn.functional.one_hot(torch.randint(0, 10, (n,), generator=g), 10).float()
    li = (junk if blank_image else onehot) * 6 + torch.randn(n, 10, generator=g)
    wrong = torch.rand(n, generator=g) < (0.5 if noisy_audio else 0.2)
    other = torch.nn.functional.one_hot((y + 1 + torch.randint(0, 9, (n,), generator=g)) % 10, 10)
    la = torch.where(wrong[:, None], other.float(), onehot) * 8 + torch.randn(n, 10, generator=g)
    level_i = torch.full((n, 2), 0.0 if blank_image else 0.3)
    level_a = torch.full((n, 2), -0.2)
    return C.Outputs(li, level_i, y), C.Outputs(la, level_a, y)


def test_the_stacker_turns_down_a_blank_camera_and_follows_a_better_sensor() -> None:
    g = torch.Generator().manual_seed(1)
    parts = [synthetic(600, g, blank_image=b, noisy_audio=a) for b in (0, 1) for a in (0, 1)]
    img = C.Outputs.cat([p[0] for p in parts])
    aud = C.Outputs.cat([p[1] for p in parts])
    net = FusionNet(FusionConfig(fusion="stacked", width=4, embed=8))
    C.fit_stacker(net, img, aud, seed=0, epochs=40)
    with torch.no_grad():
        for blank in (False, True):
            i, a = synthetic(2000, g, blank_image=blank, noisy_audio=False)
            fused, _, _ = net.stack(i.logits, a.logits, i.level, a.level)
            acc = float((fused.argmax(1) == i.y).float().mean())
            audio_acc = float((a.logits.argmax(1) == a.y).float().mean())
            if blank:  # the camera says nothing: fused is the audio expert, not its junk
                assert acc >= audio_acc - 0.01
            else:  # the camera is right: fused follows it over a confidently wrong mic
                assert acc >= 0.99


def test_random_conditions_draw_every_kind() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.full((2000, 1, 8, 8), 0.5)
    x[:, :, 2:6, 2:6] = 1.0
    out = C.random_image_condition(x, g)
    std = out.flatten(1).std(dim=1)
    black = (out.flatten(1).abs().sum(1) == 0).float().mean()
    flat = ((std == 0) & (out.flatten(1)[:, 0] > 0)).float().mean()
    clean = (out == x).flatten(1).all(1).float().mean()
    assert 0.08 < black < 0.16 and 0.04 < flat < 0.12 and 0.33 < clean < 0.47
    pcm = torch.randn(2000, 1000) * 0.1
    a = C.random_audio_condition(pcm, g)
    silent = (a.abs().sum(1) == 0).float().mean()
    floor = ((a.abs().max(1).values < 1e-2) & (a.abs().sum(1) > 0)).float().mean()
    same = (a == pcm).all(1).float().mean()
    assert 0.08 < silent < 0.16 and 0.04 < floor < 0.12 and 0.3 < same < 0.4
    assert torch.isfinite(a).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"PK\x03\x04not a zip"])
def test_an_unreadable_cache_entry_is_named_and_not_loaded(tmp_path, content: bytes) -> None:
    cfg = TrainConfig.from_dict(
        {"strategy": "crossfit", "model": {"fusion": "stacked", "width": 4, "embed": 8}}
    )
    bad = tmp_path / "audio-x.pt"
    bad.write_bytes(content)
    net, problem = C.load_expert(cfg, bad)
    assert net is None and problem and "\n" not in problem
    good = tmp_path / "audio-y.pt"
    torch.save(FusionNet(cfg.model).state_dict(), good)  # a stacked net's file loads too
    net, problem = C.load_expert(cfg, good)
    assert net is not None and problem == ""
    mismatched = tmp_path / "audio-z.pt"  # another width: the shapes disagree
    torch.save(FusionNet(FusionConfig(width=6)).state_dict(), mismatched)
    assert C.load_expert(cfg, mismatched)[0] is None

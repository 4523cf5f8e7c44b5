"""Fusion judged on speakers it has never heard: experts, cross-fitting, calibration, a stacker.

The recipe, for the shipped model and for every leave-one-speaker-out (LOSO) fold alike:

1. **Experts.** An image-only model (trained on the training images; no speaker is involved)
   and an audio-only model (trained on the fold's speakers, with voice-changing augmentation).
2. **Out-of-fold outputs.** Each training speaker's clips go through an audio expert that never
   heard that speaker (trained on the other training speakers); each training image through an
   image expert trained on the other half of the images. These are what a new speaker and a
   new handwriting look like to the experts — unlike their outputs on their own training data,
   which are confidently right.
3. **Calibration.** One temperature per expert, fitted on the clean out-of-fold outputs.
4. **A stacker.** ``fused = w_image * log p_image + w_audio * log p_audio`` with per-sample
   weights from a small network on the experts' entropies, top probabilities, agreement and
   the inputs' level (:class:`fusion.FusionNet`, fusion ``stacked``), trained on the
   out-of-fold outputs under randomly drawn sensor conditions (clean, noisy, occluded, black,
   silent, ...). The held-out speaker of a fold never reaches any of this.

Every expert is cached by what it was trained on (``runs/cache`` or ``cache:`` in the
training config), so evaluation, ablations and the shipped model reuse each other's work. An
expert trained on the speakers ``S - {s, t}`` serves two folds: it gives the out-of-fold
outputs on ``t`` for fold ``s`` and on ``s`` for fold ``t``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from streamfuse.errors import ConfigError

from . import data as D
from .fusion import FusionNet
from .train import HELD_OUT_VOICES, Split, TrainConfig, take_experts, train_model

EXPERT_PARTS = ("image_encoder.", "image_head.", "audio_encoder.", "audio_head.")
RECIPE = 1  # bump when a change of code changes what an expert learns (invalidates the cache)
Modality = Literal["image", "audio"]
Progress = Callable[[str], None]

# -- sensor conditions ----------------------------------------------------------------------

# What each evaluation condition does to (image, audio); "strong" audio is -5 dB SNR.
EVAL_CONDITIONS: dict[str, tuple[str, str]] = {
    "clean": ("clean", "clean"),
    "degraded": ("degraded", "degraded"),
    "image degraded": ("degraded", "clean"),
    "audio degraded": ("clean", "strong"),
    "image blank": ("blank", "clean"),
    "audio blank": ("clean", "blank"),
}


def image_condition(x: torch.Tensor, name: str, g: torch.Generator) -> torch.Tensor:
    if name == "clean":
        return x
    if name == "degraded":  # heavy noise, left half covered
        return D.degrade_images(x, g)
    if name == "blank":  # black: also what the engine feeds for a missing frame
        return torch.zeros_like(x)
    raise ValueError(name)


def audio_condition(x: torch.Tensor, name: str, g: torch.Generator) -> torch.Tensor:
    if name == "clean":
        return x
    if name == "degraded":  # 0 dB white noise
        return D.degrade_audio(x, g)
    if name == "strong":  # -5 dB
        return D.add_noise(x, torch.full((x.shape[0],), -5.0), g)
    if name == "blank":  # silent
        return torch.zeros_like(x)
    raise ValueError(name)


def random_image_condition(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The stacker's training conditions, per sample: clean, noisy (sigma 0.1..0.7; half of
    the time smooth noise, as a video codec and the resize leave it) with a random part of the
    left covered, black, or flat grey."""
    b, s = x.shape[0], x.shape[-1]
    kind = torch.multinomial(torch.tensor([0.4, 0.4, 0.12, 0.08]), b, True, generator=g)
    sigma = torch.empty(b, 1, 1, 1).uniform_(0.1, 0.7, generator=g)
    cover = torch.randint(0, s * 2 // 3 + 1, (b, 1, 1, 1), generator=g)
    fine = torch.randn(x.shape, generator=g)
    coarse = F.interpolate(
        torch.randn(b, 1, s // 2, s // 2, generator=g) * 1.6, size=(s, s), mode="bilinear"
    )
    smooth = torch.rand(b, 1, 1, 1, generator=g) < 0.5
    noisy = (x + torch.where(smooth, coarse, fine) * sigma).clamp(0, 1)
    noisy = torch.where(torch.arange(s)[None, None, None] < cover, 0.0, noisy)
    flat = torch.rand(b, 1, 1, 1, generator=g).expand_as(x)
    k = kind[:, None, None, None]
    out = torch.where(k == 1, noisy, x)
    out = torch.where(k == 2, torch.zeros_like(x), out)
    return torch.where(k == 3, flat, out)


def random_audio_condition(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per sample: clean, white noise at -10..20 dB SNR, silent, or a quiet noise floor."""
    b = x.shape[0]
    kind = torch.multinomial(torch.tensor([0.35, 0.45, 0.12, 0.08]), b, True, generator=g)
    snr = torch.empty(b).uniform_(-10, 20, generator=g)
    noisy = D.add_noise(x, snr, g)
    floor = torch.randn(x.shape, generator=g) * 10 ** -torch.empty(b, 1).uniform_(3, 5, generator=g)
    out = torch.where((kind == 1)[:, None], noisy, x)
    out = torch.where((kind == 2)[:, None], torch.zeros_like(x), out)
    return torch.where((kind == 3)[:, None], floor, out)


# -- experts and their cache ----------------------------------------------------------------


@dataclass(frozen=True)
class ExpertSpec:
    """What one expert is trained on: a modality, the speakers (audio) or the half of the
    training images (image: ``all``, ``even`` or ``odd``)."""

    modality: Modality
    speakers: tuple[str, ...] = ()
    images: Literal["all", "even", "odd"] = "all"

    def label(self) -> str:
        if self.modality == "image":
            return f"image expert ({self.images} training images)"
        fsdd = [s for s in self.speakers if s in D.FSDD_SPEAKERS]
        return f"audio expert ({'+'.join(fsdd) or 'no FSDD'})"


def _recipe(cfg: TrainConfig) -> dict[str, Any]:
    """The training settings an expert depends on (not the split, not the cache folder)."""
    raw = asdict(cfg)
    for key in ("data", "test_speakers", "threads", "fusion_epochs", "strategy", "cache", "jobs"):
        raw.pop(key, None)
    raw["model"].pop("fusion", None)
    raw["model"].pop("modality_dropout", None)
    return {"recipe": RECIPE, **raw}


def cache_key(cfg: TrainConfig, spec: ExpertSpec) -> str:
    blob = json.dumps({"cfg": _recipe(cfg), "spec": asdict(spec)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir(cfg: TrainConfig) -> Path:
    if cfg.cache:
        return Path(cfg.cache)
    if os.environ.get("STREAMFUSE_CACHE"):
        return Path(os.environ["STREAMFUSE_CACHE"]) / "experts"
    return Path("runs/cache")


@dataclass
class Corpus:
    """Everything read from the data folder, once."""

    clips: list[D.Clip]
    train_images: tuple[np.ndarray, np.ndarray]  # per digit the first 80 %
    test_images: tuple[np.ndarray, np.ndarray]

    @classmethod
    def load(cls, cfg: TrainConfig) -> Corpus:
        root = D.data_root(cfg.data)
        clips = D.load_clips(root, cfg.model.sample_rate)
        return cls(clips, *D.split_images(*D.load_mnist(root)))

    def speakers_except(self, *held: str) -> tuple[str, ...]:
        out = {c.speaker for c in self.clips} - set(held) - set(HELD_OUT_VOICES)
        return tuple(sorted(out))

    def of(self, speakers: Iterable[str], limit: int | None = None) -> list[D.Clip]:
        """The clips of ``speakers``; with ``limit`` (smoke runs) a fixed subset of that many."""
        keep = set(speakers)
        clips = [c for c in self.clips if c.speaker in keep]
        if limit and len(clips) > limit:
            pick = np.random.default_rng(0).permutation(len(clips))[:limit]
            clips = [clips[i] for i in sorted(pick)]
        return clips

    def image_half(self, half: str) -> tuple[np.ndarray, np.ndarray]:
        imgs, labels = self.train_images
        if half == "all":
            return imgs, labels
        pick = np.arange(len(labels)) % 2 == (0 if half == "even" else 1)
        return imgs[pick], labels[pick]


def _train_one(cfg: TrainConfig, spec: ExpertSpec, path: str, threads: int) -> str:
    """Train one expert and save its weights (runs in a worker process)."""
    torch.set_num_threads(threads)
    corpus = Corpus.load(cfg)
    if spec.modality == "audio":
        clips = corpus.of(spec.speakers)
    else:  # the clips only set the digits' order and the steps per epoch
        clips = corpus.of(corpus.speakers_except())
    if cfg.limit:
        rng = np.random.default_rng(cfg.seed)
        clips = [clips[i] for i in rng.permutation(len(clips))[: cfg.limit]]
    split = Split(clips, {}, corpus.image_half(spec.images), corpus.test_images)
    net = train_model(cfg, split, only=spec.modality)
    tmp = Path(path + ".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)
    return path


def ensure_experts(
    cfg: TrainConfig, specs: Sequence[ExpertSpec], progress: Progress | None = None
) -> dict[ExpertSpec, FusionNet]:
    """Load each expert from the cache, training (in ``cfg.jobs`` processes) those missing."""
    folder = cache_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {s: folder / f"{s.modality}-{cache_key(cfg, s)}.pt" for s in dict.fromkeys(specs)}
    nets: dict[ExpertSpec, FusionNet] = {}
    for spec, path in paths.items():
        if path.is_file():
            net, problem = load_expert(cfg, path)
            if net is not None:
                nets[spec] = net
            elif progress:
                progress(f"cache: {path} is unreadable ({problem}); training it again")
    missing = [s for s in paths if s not in nets]
    if missing:
        jobs = max(1, min(cfg.jobs or os.cpu_count() or 1, len(missing)))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        t0 = time.monotonic()
        if progress:
            cached = len(paths) - len(missing)
            progress(
                f"training {len(missing)} experts ({jobs} at a time; {cached} cached in {folder})"
            )
        with ProcessPoolExecutor(jobs) as pool:
            futures = {pool.submit(_train_one, cfg, s, str(paths[s]), threads): s for s in missing}
            for done, fut in enumerate(as_completed(futures), 1):
                fut.result()
                if progress:
                    progress(
                        f"  [{done}/{len(missing)}] {futures[fut].label()} "
                        f"({time.monotonic() - t0:.0f} s)"
                    )
    for spec in missing:
        net, problem = load_expert(cfg, paths[spec])
        if net is None:
            raise ConfigError(
                "cache", f"{paths[spec]} was just trained but is unreadable: {problem}"
            )
        nets[spec] = net
    return nets


def load_expert(cfg: TrainConfig, path: Path) -> tuple[FusionNet | None, str]:
    """An expert's encoders and heads from the cache, or None and why not."""
    net = FusionNet(replace(cfg.model, fusion="late"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v for k, v in state.items() if k.startswith(EXPERT_PARTS)})
    except Exception as exc:  # a torn or foreign file: any error of torch.load's is that
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return net.eval(), ""


# -- expert outputs -------------------------------------------------------------------------


@dataclass
class Outputs:
    """Per sample: an expert's logits and the level of its input (what the stacker sees)."""

    logits: torch.Tensor  # (N, C)
    level: torch.Tensor  # (N, 2)
    y: torch.Tensor  # (N,)

    @staticmethod
    def cat(parts: Sequence[Outputs]) -> Outputs:
        return Outputs(
            *(torch.cat([getattr(p, k) for p in parts]) for k in ("logits", "level", "y"))
        )


@torch.no_grad()
def image_outputs(net: FusionNet, x: torch.Tensor, y: torch.Tensor) -> Outputs:
    logits = torch.cat([net.image_head(net.image_encoder(b)) for b in x.split(512)])
    return Outputs(logits, FusionNet.image_level(x), y)


@torch.no_grad()
def audio_outputs(net: FusionNet, x: torch.Tensor, y: torch.Tensor) -> Outputs:
    logits = torch.cat([net.audio_head(net.audio_encoder(net.logmel(b))) for b in x.split(256)])
    return Outputs(logits, FusionNet.audio_level(x), y)


def audio_tensor(clips: Sequence[D.Clip], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    pcm = np.stack([D.fit_audio(c.pcm, n) for c in clips])
    return torch.from_numpy(pcm), torch.tensor([c.digit for c in clips])


def image_tensor(
    images: tuple[np.ndarray, np.ndarray], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.stack([D.to_model_image(i, size) for i in images[0]])[:, None]
    return torch.from_numpy(x), torch.from_numpy(images[1])


def pair_by_digit(
    audio: Outputs, image: Outputs, rng: np.random.Generator
) -> tuple[Outputs, Outputs]:
    """Each audio sample with a random image sample of the same digit."""
    ya, yi = audio.y.numpy(), image.y.numpy()
    pick = np.empty(len(ya), dtype=np.int64)
    for d in np.unique(ya):
        here = np.flatnonzero(ya == d)
        pick[here] = rng.choice(np.flatnonzero(yi == d), size=len(here))
    t = torch.from_numpy(pick)
    return audio, Outputs(image.logits[t], image.level[t], image.y[t])


# -- calibration and the stacker ------------------------------------------------------------


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature that minimises the negative log-likelihood (Guo et al. 2017)."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20))


def fit_stacker(
    net: FusionNet,
    image: Outputs,
    audio: Outputs,
    *,
    seed: int,
    epochs: int = 60,
) -> FusionNet:
    """Fit the stacker (the temperatures already set) on the out-of-fold outputs; each epoch
    pairs every audio sample with a fresh random image sample of the same digit."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net.stacker.apply(lambda m: m.reset_parameters() if isinstance(m, nn.Linear) else None)
    rng = np.random.default_rng(seed)
    params = list(net.stacker.parameters())
    opt = torch.optim.Adam(params, lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        a, i = pair_by_digit(audio, image, rng)
        order = torch.randperm(len(a.y), generator=g)
        for idx in order.split(512):
            fused, _, _ = net.stack(i.logits[idx], a.logits[idx], i.level[idx], a.level[idx])
            loss = F.cross_entropy(fused, a.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def ece(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error over ``bins`` equal-width confidence bins."""
    conf, pred = probs.max(dim=1)
    hit = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += float(inside.float().mean() * (hit[inside].mean() - conf[inside].mean()).abs())
    return total


# -- one fold -------------------------------------------------------------------------------


@dataclass
class Fold:
    """A held-out speaker (``None``: the shipped model, nobody held out) and its experts."""

    held_out: str | None
    image: ExpertSpec
    audio: ExpertSpec
    oof_audio: dict[str, ExpertSpec]  # training FSDD speaker -> an expert that never heard it


def plan(corpus: Corpus, held_out: str | None) -> Fold:
    held = (held_out,) if held_out else ()
    train = corpus.speakers_except(*held)
    oof = {
        t: ExpertSpec("audio", corpus.speakers_except(*held, t))
        for t in D.FSDD_SPEAKERS
        if t in train
    }
    return Fold(held_out, ExpertSpec("image"), ExpertSpec("audio", train), oof)


IMAGE_HALVES = (ExpertSpec("image", images="even"), ExpertSpec("image", images="odd"))


def oof_samples(
    cfg: TrainConfig,
    corpus: Corpus,
    fold: Fold,
    nets: dict[ExpertSpec, FusionNet],
    *,
    in_sample: bool = False,
    conditions: bool = True,
    repeats: int = 2,
) -> tuple[Outputs, Outputs]:
    """(image, audio) expert outputs for the stacker: each training speaker through the
    expert that never heard it, each training image through the half-expert that never saw
    it; under random sensor conditions (``repeats`` draws each), or clean once. With
    ``in_sample`` (the ablation) the fold's own experts, which trained on all of them."""
    g = torch.Generator().manual_seed(cfg.seed + 7)
    size, n = cfg.model.image_size, cfg.model.window_samples
    draws = repeats if conditions else 1
    audio_parts = []
    for spk, spec in fold.oof_audio.items():
        x, y = audio_tensor(corpus.of([spk], cfg.limit), n)
        net = nets[fold.audio if in_sample else spec]
        for _ in range(draws):
            pcm = random_audio_condition(x, g) if conditions else x
            audio_parts.append(audio_outputs(net, pcm, y))
    image_parts = []
    for half, spec in zip(("odd", "even"), IMAGE_HALVES, strict=True):
        imgs, labels = corpus.image_half(half)
        if cfg.limit:  # smoke runs: every digit still (the images are sorted by digit)
            step = max(1, len(labels) // cfg.limit)
            imgs, labels = imgs[::step], labels[::step]
        x, y = image_tensor((imgs, labels), size)
        net = nets[fold.image if in_sample else spec]
        for _ in range(draws):
            img = random_image_condition(x, g) if conditions else x
            image_parts.append(image_outputs(net, img, y))
    return Outputs.cat(image_parts), Outputs.cat(audio_parts)


def assemble(cfg: TrainConfig, fold: Fold, nets: dict[ExpertSpec, FusionNet]) -> FusionNet:
    """A ``stacked`` network with the fold's experts' weights (its stacker still untrained)."""
    net = FusionNet(replace(cfg.model, fusion="stacked"))
    return take_experts(net, nets[fold.image], nets[fold.audio]).eval()


def calibrate_and_stack(
    cfg: TrainConfig, net: FusionNet, image: Outputs, audio: Outputs, clean: tuple[Outputs, Outputs]
) -> FusionNet:
    t_img = fit_temperature(clean[0].logits, clean[0].y)
    t_aud = fit_temperature(clean[1].logits, clean[1].y)
    with torch.no_grad():
        net.log_temperature.copy_(torch.tensor([math.log(t_img), math.log(t_aud)]))
    return fit_stacker(net, image, audio, seed=cfg.seed)


def build(
    cfg: TrainConfig,
    corpus: Corpus,
    fold: Fold,
    nets: dict[ExpertSpec, FusionNet],
    *,
    in_sample: bool = False,
) -> FusionNet:
    """The fold's fused network: experts + OOF temperatures + OOF stacker."""
    net = assemble(cfg, fold, nets)
    image, audio = oof_samples(cfg, corpus, fold, nets, in_sample=in_sample)
    clean = oof_samples(cfg, corpus, fold, nets, in_sample=in_sample, conditions=False)
    return calibrate_and_stack(cfg, net, image, audio, clean)


@torch.no_grad()
def score(
    net: FusionNet,
    clips: Sequence[D.Clip],
    corpus: Corpus,
    seed: int = 1,
    others: dict[str, FusionNet] | None = None,
) -> dict[str, dict[str, float]]:
    """Per evaluation condition: accuracy and ECE of the fused output and each head, and the
    fused accuracy of the ablations: an uncalibrated mean of log-probabilities, the product of
    the calibrated experts, and ``others`` (networks with the same experts, other stackers),
    all from the same expert outputs."""
    cfg = net.cfg
    rng = np.random.default_rng(seed)
    x_aud, y = audio_tensor(clips, cfg.window_samples)
    by_digit = {d: np.flatnonzero(corpus.test_images[1] == d) for d in range(10)}
    pick = np.array([rng.choice(by_digit[int(d)]) for d in y])
    x_img, _ = image_tensor(
        (corpus.test_images[0][pick], corpus.test_images[1][pick]), cfg.image_size
    )
    out: dict[str, dict[str, float]] = {}

    def accuracy(logits: torch.Tensor) -> float:
        return float((logits.argmax(1) == y).float().mean())

    for cond, (ic, ac) in EVAL_CONDITIONS.items():
        g = torch.Generator().manual_seed(seed)
        img = image_outputs(net, image_condition(x_img, ic, g), y)
        aud = audio_outputs(net, audio_condition(x_aud, ac, g), y)
        fused, li, la = net.stack(img.logits, aud.logits, img.level, aud.level)
        row: dict[str, float] = {}
        for name, logits in (("fused", fused), ("image", li), ("audio", la)):
            row[name] = accuracy(logits)
            row[f"{name} ece"] = ece(logits.softmax(1), y)
        raw = img.logits.log_softmax(1) + aud.logits.log_softmax(1)
        row["late (uncalibrated mean)"] = accuracy(raw)
        row["product (calibrated)"] = accuracy(li.log_softmax(1) + la.log_softmax(1))
        for name, other in (others or {}).items():
            row[name] = accuracy(other.stack(img.logits, aud.logits, img.level, aud.level)[0])
        out[cond] = row
    return out


# -- leave one speaker out, and the shipped model --------------------------------------------


def experts_for(corpus: Corpus, folds: Sequence[Fold]) -> list[ExpertSpec]:
    specs: list[ExpertSpec] = [*IMAGE_HALVES]
    for f in folds:
        specs += [f.image, f.audio, *f.oof_audio.values()]
    return list(dict.fromkeys(specs))


def leave_one_speaker_out(
    cfg: TrainConfig,
    speakers: Sequence[str],
    progress: Progress | None = None,
    *,
    ablations: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per held-out FSDD speaker: :func:`score` of the fold's fused network; with
    ``ablations`` also the same stacker fitted on in-sample outputs."""
    corpus = Corpus.load(cfg)
    folds = [plan(corpus, s) for s in speakers]
    nets = ensure_experts(cfg, experts_for(corpus, folds), progress)
    results = {}
    for f in folds:
        assert f.held_out is not None
        t0 = time.monotonic()
        test = corpus.of([f.held_out], cfg.limit)
        net = build(cfg, corpus, f, nets)
        others = (
            {"stacker fitted in sample": build(cfg, corpus, f, nets, in_sample=True)}
            if ablations
            else None
        )
        r = score(net, test, corpus, others=others)
        results[f.held_out] = r
        if progress:
            c = r["clean"]
            progress(
                f"  held out {f.held_out}: clean fused {c['fused']:.3f} image {c['image']:.3f} "
                f"audio {c['audio']:.3f} ({time.monotonic() - t0:.0f} s)"
            )
    return results


def train_shipped(cfg: TrainConfig, progress: Progress | None = None) -> tuple[FusionNet, Corpus]:
    """The model that ships: experts on every training speaker; its out-of-fold outputs come
    from the leave-one-speaker-out experts (the same cache entries ``eval`` trains)."""
    corpus = Corpus.load(cfg)
    fold = plan(corpus, None)
    nets = ensure_experts(cfg, experts_for(corpus, [fold]), progress)
    return build(cfg, corpus, fold, nets), corpus


# -- targets ----------------------------------------------------------------------------------


def targets(results: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """The fusion issue's targets, on every fold (and the two that are about means)."""
    out: list[dict[str, Any]] = []

    def check(name: str, fold: str, value: float, needs: float) -> None:
        out.append(
            {
                "target": name,
                "fold": fold,
                "value": value,
                "needs": needs,
                "pass": value >= needs - 1e-9,
            }
        )

    for spk, r in results.items():

        def acc(cond: str, head: str, r: dict[str, dict[str, float]] = r) -> float:
            return r[cond][head]

        best_clean = max(acc("clean", "image"), acc("clean", "audio"))
        check(
            "clean: fused - best single-sensor model", spk, acc("clean", "fused") - best_clean, 0.0
        )
        best_deg = max(acc("degraded", "image"), acc("degraded", "audio"))
        check(
            "degraded: fused - best single-sensor model",
            spk,
            acc("degraded", "fused") - best_deg,
            0.05,
        )
        check(
            "image degraded: fused - audio model",
            spk,
            acc("image degraded", "fused") - acc("image degraded", "audio"),
            -0.01,
        )
        check(
            "audio degraded: fused - image model",
            spk,
            acc("audio degraded", "fused") - acc("audio degraded", "image"),
            -0.01,
        )
        check(
            "image blank: fused - audio model",
            spk,
            acc("image blank", "fused") - acc("image blank", "audio"),
            -0.01,
        )
        check(
            "audio blank: fused - image model",
            spk,
            acc("audio blank", "fused") - acc("audio blank", "image"),
            -0.01,
        )
        check("clean: fused ECE (<= 0.05)", spk, -r["clean"]["fused ece"], -0.05)
        check("audio-only model, clean", spk, acc("clean", "audio"), 0.85)
    n = len(results)
    check(
        "clean: fused, mean over folds",
        "mean",
        sum(r["clean"]["fused"] for r in results.values()) / n,
        0.985,
    )
    check(
        "audio-only model, clean, mean over folds",
        "mean",
        sum(r["clean"]["audio"] for r in results.values()) / n,
        0.92,
    )
    return out

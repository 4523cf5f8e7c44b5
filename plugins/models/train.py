"""Training and evaluation of the fusion network on AV-digits.

Splits are by speaker: a fold holds one FSDD speaker out entirely. Two of the shipped espeak
voices are always held out too, to report accuracy on unseen synthetic voices.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F

from streamfuse.errors import ConfigError

from . import data as D
from .fusion import FusionConfig, FusionNet

HELD_OUT_VOICES = ("espeak-m7", "espeak-f5")
LABELS = [str(d) for d in range(10)]


@dataclass
class TrainConfig:
    model: FusionConfig = field(default_factory=FusionConfig)
    data: str | None = None  # default: $STREAMFUSE_DATA or ../shared/data
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    aux_weight: float = 0.5  # weight of each modality head's own loss beside the fused one
    strategy: Literal["joint", "experts", "crossfit"] = "joint"
    """joint: everything trained together. experts: an image-only and an audio-only model
    first (each gets all the training), then only the fusion on their frozen encoders.
    crossfit: experts, then temperatures and a stacker fitted on their out-of-fold outputs
    (crossfit.py; fusion must be ``stacked``)."""
    fusion_epochs: int = 8  # experts: epochs of the fusion stage
    speed_perturb: float = 0.0  # audio: clips sped up / slowed down by up to this fraction
    spec_augment: bool = False  # audio: mel-axis warp + SpecAugment masks on the log-mel
    seed: int = 0
    test_speakers: tuple[str, ...] = ()  # FSDD speakers held out of training
    limit: int | None = None  # use only this many training clips (smoke tests)
    threads: int | None = None
    cache: str | None = None  # crossfit: experts (default $STREAMFUSE_CACHE/experts, runs/cache)
    jobs: int | None = None  # crossfit: experts trained at once (default: one per core)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> TrainConfig:
        raw = dict(raw)
        model_raw = raw.pop("model", {}) or {}
        _reject_unknown("train", raw, set(cls.__dataclass_fields__) - {"model"}, source)
        _reject_unknown("model", model_raw, set(FusionConfig.__dataclass_fields__), source)
        if "test_speakers" in raw:
            bad = set(raw["test_speakers"]) - set(D.FSDD_SPEAKERS)
            if bad:
                raise ConfigError(
                    "train.test_speakers", f"unknown speakers {sorted(bad)}", file=source
                )
            raw["test_speakers"] = tuple(raw["test_speakers"])
        try:
            cfg = cls(model=FusionConfig(**model_raw), **raw)
        except TypeError as exc:
            raise ConfigError("train", str(exc), file=source) from None
        if not 0 <= cfg.speed_perturb < 0.5:
            raise ConfigError(
                "train.speed_perturb", f"must be in [0, 0.5), got {cfg.speed_perturb}", file=source
            )
        if cfg.jobs is not None and cfg.jobs < 1:
            raise ConfigError("train.jobs", f"must be >= 1, got {cfg.jobs}", file=source)
        if (cfg.strategy == "crossfit") != (cfg.model.fusion == "stacked"):
            raise ConfigError(
                "model.fusion",
                f"strategy {cfg.strategy!r} with fusion {cfg.model.fusion!r}: the stacked "
                "fusion is built by strategy crossfit, and crossfit builds only that",
                file=source,
            )
        return cfg


def _reject_unknown(section: str, raw: dict[str, Any], known: set[str], source: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{section}.{unknown[0]}", f"unknown setting (known: {sorted(known)})", file=source
        )


@dataclass
class Split:
    train_audio: list[D.Clip]
    test_audio: dict[str, list[D.Clip]]  # name of the test set -> clips
    train_images: tuple[np.ndarray, np.ndarray]
    test_images: tuple[np.ndarray, np.ndarray]


def make_split(
    cfg: TrainConfig, clips: list[D.Clip], images: np.ndarray, labels: np.ndarray
) -> Split:
    held = set(cfg.test_speakers) | set(HELD_OUT_VOICES)
    train = [c for c in clips if c.speaker not in held]
    if cfg.limit:
        rng = np.random.default_rng(cfg.seed)
        train = [train[i] for i in rng.permutation(len(train))[: cfg.limit]]
    tests = {s: [c for c in clips if c.speaker == s] for s in cfg.test_speakers}
    tests["espeak (trained voices)"] = [
        c for c in clips if c.speaker.startswith("espeak") and c.speaker not in held
    ]
    tests["espeak (held-out voices)"] = [c for c in clips if c.speaker in HELD_OUT_VOICES]
    return Split(train, {k: v for k, v in tests.items() if v}, *D.split_images(images, labels))


def batches(
    clips: Sequence[D.Clip],
    images: tuple[np.ndarray, np.ndarray],
    mcfg: FusionConfig,
    batch_size: int,
    rng: np.random.Generator,
    *,
    train: bool,
    speed: float = 0.0,
) -> Any:
    """Yield (image (B,1,S,S), audio (B,N), label (B,)) with a random image of the same digit;
    in training each clip is placed at a random offset and sped up or slowed down by up to
    ``speed`` (0.15: 0.85x..1.15x)."""
    by_digit = {d: np.flatnonzero(images[1] == d) for d in range(10)}
    order = rng.permutation(len(clips)) if train else np.arange(len(clips))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        imgs, pcm, ys = [], [], []
        for i in idx:
            c = clips[i]
            j = rng.choice(by_digit[c.digit])
            imgs.append(D.to_model_image(images[0][j], mcfg.image_size))
            x = c.pcm
            if train and speed:
                x = D.perturb_speed(x, float(rng.uniform(1 - speed, 1 + speed)))
            room = mcfg.window_samples - len(x)
            offset = int(rng.integers(0, room + 1)) if train and room > 0 else None
            pcm.append(D.fit_audio(x, mcfg.window_samples, offset))
            ys.append(c.digit)
        yield (
            torch.from_numpy(np.stack(imgs))[:, None],
            torch.from_numpy(np.stack(pcm)),
            torch.tensor(ys),
        )


def train_model(
    cfg: TrainConfig,
    split: Split,
    progress: Callable[[int, int, float], None] | None = None,
    only: Literal["image", "audio"] | None = None,
) -> FusionNet:
    """Train the fusion network; with ``only``, a single-modality baseline (that modality's
    encoder and head alone, the other never computed)."""
    if only is None and cfg.strategy == "experts":
        image_net, audio_net = train_experts(cfg, split, progress)
        return fuse_experts(cfg, split, image_net, audio_net, progress)
    if only is None and cfg.strategy == "crossfit":
        raise ConfigError("train.strategy", "crossfit models are built by crossfit.py")
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    g = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = FusionNet(cfg.model)

    def loss_fn(img: torch.Tensor, pcm: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if only:
            return _single_loss(net, only, img, pcm, y, g if cfg.spec_augment else None)
        return _fusion_loss(net, cfg, img, pcm, y, g)

    return _fit(net, list(net.parameters()), cfg, split, cfg.epochs, g, rng, loss_fn, progress)


def _fit(
    net: FusionNet,
    params: list[torch.nn.Parameter],
    cfg: TrainConfig,
    split: Split,
    epochs: int,
    g: torch.Generator,
    rng: np.random.Generator,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    progress: Callable[[int, int, float], None] | None,
    *,
    pct_start: float = 0.15,
    frozen: Sequence[torch.nn.Module] = (),
) -> FusionNet:
    """AdamW + one-cycle over ``epochs`` of augmented batches; ``frozen`` modules stay in
    eval mode (their batch-norm statistics do not move)."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = epochs * -(-len(split.train_audio) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps, pct_start=pct_start
    )
    step = 0
    net.train()
    for module in frozen:
        module.eval()
    for _epoch in range(epochs):
        for img, pcm, y in batches(
            split.train_audio,
            split.train_images,
            cfg.model,
            cfg.batch_size,
            rng,
            train=True,
            speed=cfg.speed_perturb,
        ):
            img = D.augment_images(img, g)
            pcm = D.augment_audio(pcm, cfg.model.sample_rate, g)
            loss = loss_fn(img, pcm, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress:
                progress(step, steps, float(loss.detach()))
    net.eval()
    return net


def train_experts(
    cfg: TrainConfig, split: Split, progress: Callable[[int, int, float], None] | None = None
) -> tuple[FusionNet, FusionNet]:
    """An image-only and an audio-only model (also the baselines of leave-one-speaker-out)."""
    image_net = train_model(cfg, split, progress, only="image")
    audio_net = train_model(cfg, split, progress, only="audio")
    return image_net, audio_net


def take_experts(net: FusionNet, image_net: FusionNet, audio_net: FusionNet) -> FusionNet:
    """``net`` with the image expert's encoder and head and the audio expert's."""
    for name in ("image_encoder", "image_head"):
        getattr(net, name).load_state_dict(getattr(image_net, name).state_dict())
    for name in ("audio_encoder", "audio_head"):
        getattr(net, name).load_state_dict(getattr(audio_net, name).state_dict())
    return net


def fuse_experts(
    cfg: TrainConfig,
    split: Split,
    image_net: FusionNet,
    audio_net: FusionNet,
    progress: Callable[[int, int, float], None] | None = None,
) -> FusionNet:
    """A fusion network whose encoders and heads are the experts', frozen; only the fusion
    (gate, fused head) trains, with modality dropout, for ``fusion_epochs``."""
    torch.manual_seed(cfg.seed + 1)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 1)
    net = take_experts(FusionNet(cfg.model), image_net, audio_net)
    frozen = [net.image_encoder, net.image_head, net.audio_encoder, net.audio_head]
    for module in frozen:
        module.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:  # "late": an average of the experts, nothing to learn
        net.eval()
        return net
    no_aux = replace(cfg, aux_weight=0.0)  # the heads are frozen: only the fused loss counts

    def loss_fn(img: torch.Tensor, pcm: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _fusion_loss(net, no_aux, img, pcm, y, g)

    epochs = max(1, cfg.fusion_epochs)
    return _fit(
        net, params, cfg, split, epochs, g, rng, loss_fn, progress, pct_start=0.3, frozen=frozen
    )


def _fusion_loss(
    net: FusionNet,
    cfg: TrainConfig,
    img: torch.Tensor,
    pcm: torch.Tensor,
    y: torch.Tensor,
    g: torch.Generator,
) -> torch.Tensor:
    """Fused loss plus each modality head's, with ModDrop: for some samples one whole input
    (never both) is blanked, and that modality's head is not asked to guess."""
    drop = torch.rand(len(y), generator=g) < cfg.model.modality_dropout
    which = torch.rand(len(y), generator=g) < 0.5
    no_img, no_aud = drop & which, drop & ~which
    img = img * (~no_img).float()[:, None, None, None]
    pcm = pcm * (~no_aud).float()[:, None]
    fused, li, la = net(img, pcm)
    loss = F.cross_entropy(fused, y)
    aux = cfg.aux_weight
    return loss + aux * _masked_ce(li, y, ~no_img) + aux * _masked_ce(la, y, ~no_aud)


def _single_loss(
    net: FusionNet,
    only: str,
    img: torch.Tensor,
    pcm: torch.Tensor,
    y: torch.Tensor,
    g: torch.Generator | None = None,
) -> torch.Tensor:
    """A single-modality expert: one encoder and its head; the other is never computed. With
    ``g``, the audio's log-mel is warped and masked (:func:`data.augment_spectrogram`)."""
    if only == "image":
        return F.cross_entropy(net.image_head(net.image_encoder(img)), y)
    mel = net.logmel(pcm)
    if g is not None:
        mel = D.augment_spectrogram(mel, g)
    return F.cross_entropy(net.audio_head(net.audio_encoder(mel)), y)


def _masked_ce(logits: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    if not keep.any():
        return logits.sum() * 0
    return F.cross_entropy(logits[keep], y[keep])


CONDITIONS = ("clean", "degraded", "image blank", "audio blank")


@torch.no_grad()
def evaluate(
    net: FusionNet, clips: Sequence[D.Clip], images: tuple[np.ndarray, np.ndarray], seed: int = 1
) -> dict[str, dict[str, float]]:
    """Accuracy of the fused output and of each modality's head, per condition."""
    out: dict[str, dict[str, float]] = {}
    for cond in CONDITIONS:
        rng = np.random.default_rng(seed)
        g = torch.Generator().manual_seed(seed)
        hits = {"fused": 0, "image": 0, "audio": 0}
        n = 0
        for img, pcm, y in batches(clips, images, net.cfg, 256, rng, train=False):
            if cond == "degraded":
                img, pcm = D.degrade_images(img, g), D.degrade_audio(pcm, g)
            elif cond == "image blank":
                img = torch.zeros_like(img)
            elif cond == "audio blank":
                pcm = torch.zeros_like(pcm)
            fused, li, la = net(img, pcm)
            for name, logits in (("fused", fused), ("image", li), ("audio", la)):
                hits[name] += int((logits.argmax(1) == y).sum())
            n += len(y)
        out[cond] = {k: v / n for k, v in hits.items()}
    return out


def save_checkpoint(path: Path, net: FusionNet, cfg: TrainConfig, metrics: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "config": asdict(cfg), "metrics": metrics}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_checkpoint(path: Path) -> tuple[FusionNet, TrainConfig, dict[str, Any]]:
    if not path.is_file():
        raise ConfigError("checkpoint", f"{path} does not exist; train one with `streamfuse train`")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        cfg_raw = dict(raw["config"])
        cfg = TrainConfig.from_dict({k: v for k, v in cfg_raw.items()}, source=str(path))
        net = FusionNet(cfg.model)
        # Checkpoints from before the front end's buffers became non-persistent carry them.
        state = {k: v for k, v in raw["model"].items() if not k.endswith((".basis", ".mel"))}
        net.load_state_dict(state)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError("checkpoint", f"{path} is not a streamfuse checkpoint: {exc}") from None
    net.eval()
    return net, cfg, raw.get("metrics", {})


def run_training(
    cfg: TrainConfig,
    out: Path,
    progress: Callable[[int, int, float], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train, evaluate on the held-out sets, write ``model.pt`` and ``model_card.json``."""
    t0 = time.monotonic()
    root = D.data_root(cfg.data)
    clips = D.load_clips(root, cfg.model.sample_rate)
    images, labels = D.load_mnist(root)
    split = make_split(cfg, clips, images, labels)
    if cfg.strategy == "crossfit":
        from .crossfit import train_shipped

        if cfg.test_speakers:
            raise ConfigError(
                "train.test_speakers",
                "crossfit trains on every speaker; hold speakers out with `streamfuse eval`",
            )
        net, _ = train_shipped(cfg, say)
    else:
        net = train_model(cfg, split, progress)
    metrics = {name: evaluate(net, cl, split.test_images) for name, cl in split.test_audio.items()}
    ckpt = out / "model.pt"
    digest = save_checkpoint(ckpt, net, cfg, metrics)
    card = {
        "model": "streamfuse AV-digits fusion network",
        "fusion": cfg.model.fusion,
        "parameters": sum(p.numel() for p in net.parameters()),
        "data": {
            "audio": "FSDD (CC BY-SA 4.0) spoken digits + shipped espeak-ng voices, resampled to "
            f"{cfg.model.sample_rate} Hz",
            "images": "MNIST 5k subset (per digit: first 80% for training, last 20% for testing)",
            "train_speakers": sorted({c.speaker for c in split.train_audio}),
            "test_sets": {k: len(v) for k, v in split.test_audio.items()},
        },
        "metrics": metrics,
        "train_seconds": round(time.monotonic() - t0, 1),
        "checkpoint_sha256": digest,
        "config": asdict(cfg),
        "reproduce": "streamfuse train --config configs/train/av-digits.yaml",
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return card


def leave_one_speaker_out(
    cfg: TrainConfig,
    speakers: Sequence[str],
    progress: Callable[[str, int, int, float], None] | None = None,
    *,
    baselines: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """Train once per held-out FSDD speaker; return its metrics per speaker. With
    ``baselines``, also an image-only and an audio-only model per fold, reported under the
    conditions ``image-only model`` and ``audio-only model`` (clean and degraded)."""
    root = D.data_root(cfg.data)
    clips = D.load_clips(root, cfg.model.sample_rate)
    images, labels = D.load_mnist(root)
    results = {}
    for spk in speakers:
        fold = replace(cfg, test_speakers=(spk,))
        split = make_split(fold, clips, images, labels)
        test = split.test_audio[spk]

        def cb(label: str) -> Callable[[int, int, float], None] | None:
            if progress is None:
                return None
            return lambda s, n, loss: progress(label, s, n, loss)

        experts = None
        if fold.strategy == "experts":  # the baselines are the experts themselves
            experts = dict(
                zip(("image", "audio"), train_experts(fold, split, cb(spk)), strict=True)
            )
            net = fuse_experts(fold, split, experts["image"], experts["audio"], cb(spk))
        else:
            net = train_model(fold, split, cb(spk))
        results[spk] = evaluate(net, test, split.test_images)
        if baselines:
            for only in ("image", "audio"):
                base = (
                    experts[only]
                    if experts is not None
                    else train_model(fold, split, cb(f"{spk} {only}-only"), only=only)
                )
                m = evaluate(base, test, split.test_images)
                results[spk][f"{only}-only model"] = {
                    "clean": m["clean"][only],
                    "degraded": m["degraded"][only],
                }
    return results

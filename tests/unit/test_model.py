"""The fusion network, its ONNX export, the shipped default model, and the model commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is installed by `make test`; pip install -e .[model]"
)
ort = pytest.importorskip("onnxruntime", reason="pip install -e .[model]")

from streamfuse_plugins.models import data as D  # noqa: E402
from streamfuse_plugins.models.export import (  # noqa: E402
    TENSORRT_OPS,
    export_onnx,
    graph_ops,
    read_contract,
)
from streamfuse_plugins.models.fusion import FusionConfig, FusionNet, LogMel, mel_filterbank  # noqa: E402
from streamfuse_plugins.models.train import TrainConfig, load_checkpoint  # noqa: E402

from streamfuse.errors import ConfigError  # noqa: E402

DEFAULT = Path(D.__file__).parent / "default" / "av_digits.onnx"


def test_conv_dft_logmel_matches_a_numpy_stft() -> None:
    cfg = FusionConfig()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(cfg.window_samples) * 0.3).astype(np.float32)
    got = LogMel(cfg)(torch.from_numpy(x)[None])[0, 0].numpy()  # (n_mels, T)
    pad = np.pad(x, cfg.n_fft // 2).astype(np.float64)
    window = np.zeros(cfg.n_fft)
    start = (cfg.n_fft - cfg.win_length) // 2
    window[start : start + cfg.win_length] = np.hanning(cfg.win_length + 1)[:-1]
    frames = np.stack(
        [
            pad[i : i + cfg.n_fft] * window
            for i in range(0, len(pad) - cfg.n_fft + 1, cfg.hop_length)
        ]
    )
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, F)
    ref = np.log(power @ mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate) + 1e-6).T
    assert got.shape == ref.shape == (40, 101)
    assert np.abs(got - ref).max() < 1e-2


@pytest.mark.parametrize("fusion", ["early", "late", "gated", "gated-late", "stacked"])
def test_every_fusion_gives_fused_and_per_modality_outputs(fusion: str) -> None:
    net = FusionNet(FusionConfig(fusion=fusion, width=8)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        outs = net(torch.rand(3, 1, 32, 32), torch.zeros(3, 16000))  # a blank microphone
    assert [tuple(o.shape) for o in outs] == [(3, 10)] * 3
    assert all(torch.isfinite(o).all() for o in outs)
    with pytest.raises(ValueError, match="unknown fusion"):
        FusionNet(FusionConfig(fusion="telepathic"))  # type: ignore[arg-type]


@pytest.mark.parametrize("fusion", ["early", "late", "gated", "gated-late", "stacked"])
def test_onnx_export_matches_torch_runs_any_batch_and_uses_only_tensorrt_ops(
    tmp_path: Path, fusion: str
) -> None:
    net = FusionNet(FusionConfig(fusion=fusion, width=8)).eval()  # type: ignore[arg-type]
    report = export_onnx(net, tmp_path / "m.onnx")
    assert report["max_abs_diff"] <= 1e-4 and report["opset"] >= 17
    ops = graph_ops(tmp_path / "m.onnx")
    assert ops <= TENSORRT_OPS, (
        f"not in TensorRT's ONNX operator list: {sorted(ops - TENSORRT_OPS)}"
    )
    assert "STFT" not in ops and "DFT" not in ops
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    probs, _, _ = sess.run(
        None,
        {"image": np.zeros((5, 1, 32, 32), np.float32), "audio": np.zeros((5, 16000), np.float32)},
    )
    assert probs.shape == (5, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    contract = read_contract(tmp_path / "m.onnx")
    assert contract["labels"] == [str(d) for d in range(10)]
    assert contract["audio"]["sample_rate"] == 16000 and contract["image"]["size"] == [32, 32]
    assert contract["image"]["color"] == "gray" and contract["image"]["resize"] == "center-crop"


def test_the_shipped_default_model_classifies_the_shipped_voices() -> None:
    """A fresh install classifies without training: the default model, the input contract
    in its metadata, and the espeak-ng voices that ship beside it (no ../shared needed)."""
    assert DEFAULT.is_file(), "the package must ship plugins/models/default/av_digits.onnx"
    assert DEFAULT.stat().st_size <= 5 * 1024 * 1024
    assert graph_ops(DEFAULT) <= TENSORRT_OPS
    contract = read_contract(DEFAULT)
    rate, n = contract["audio"]["sample_rate"], contract["audio"]["samples"]
    clips = D.load_clips(None, rate)
    assert len(clips) == 60
    audio = np.stack([D.fit_audio(c.pcm, n) for c in clips]).astype(np.float32)
    image = np.zeros((len(clips), 1, *contract["image"]["size"]), np.float32)  # camera blank
    sess = ort.InferenceSession(str(DEFAULT), providers=["CPUExecutionProvider"])
    probs, _, audio_probs = sess.run(None, {"image": image, "audio": audio})
    truth = np.array([c.digit for c in clips])
    assert (probs.argmax(1) == truth).mean() >= 0.9
    assert (audio_probs.argmax(1) == truth).mean() >= 0.9
    card = json.loads((DEFAULT.parent / "model_card.json").read_text())
    assert "espeak (held-out voices)" in card["metrics"]
    # the card describes exactly the file that ships, and its targets are recorded
    import hashlib

    assert card["onnx"]["sha256"] == hashlib.sha256(DEFAULT.read_bytes()).hexdigest()
    loso = card["leave_one_speaker_out"]
    assert set(loso["per_speaker"]) == set(D.FSDD_SPEAKERS)
    assert card["fusion"] == "stacked" and card["config"]["strategy"] == "crossfit"
    for t in loso["targets"]:  # each verdict follows from its own numbers
        assert t["pass"] == (t["value"] >= t["needs"] - 1e-9)
    clean = [loso["per_speaker"][s]["clean"] for s in D.FSDD_SPEAKERS]
    assert loso["worst"]["clean"]["fused"] == min(c["fused"] for c in clean)


def test_training_config_errors_name_the_field_and_file(tmp_path: Path) -> None:
    from streamfuse.modelcli import load_train_config

    bad = tmp_path / "t.yaml"
    bad.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rate in .*t\.yaml: unknown setting"):
        load_train_config(str(bad), {})
    bad.write_text("model:\n  fusion: gated\n  layers: 9\n")
    with pytest.raises(ConfigError, match=r"model\.layers"):
        load_train_config(str(bad), {})
    bad.write_text("test_speakers: [bob]\n")
    with pytest.raises(ConfigError, match="unknown speakers"):
        load_train_config(str(bad), {})
    for text, key in (("speed_perturb: 1.5\n", "speed_perturb"), ("jobs: 0\n", "jobs")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=rf"train\.{key} in .*t\.yaml: must be"):
            load_train_config(str(bad), {})
    for text in ("strategy: crossfit\n", "model:\n  fusion: stacked\n"):
        bad.write_text(text)  # the stacked fusion and the crossfit recipe go together
        with pytest.raises(ConfigError, match=r"model\.fusion in .*t\.yaml: strategy"):
            load_train_config(str(bad), {})
    bad.write_text("epochs: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(str(bad), {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(str(tmp_path / "nope.yaml"), {})
    assert isinstance(load_train_config("configs/train/av-digits.yaml", {"epochs": 1}), TrainConfig)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"PK\x03\x04not a zip"])
def test_corrupt_checkpoints_and_models_are_clear_errors(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "model.pt"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match="is not a streamfuse checkpoint"):
        load_checkpoint(p)
    o = tmp_path / "model.onnx"
    o.write_bytes(content)
    with pytest.raises(ConfigError, match=r"not a readable ONNX model|has no streamfuse contract"):
        read_contract(o)


def test_expert_strategy_freezes_the_experts_and_trains_only_the_gate() -> None:
    from streamfuse_plugins.models.train import Split, fuse_experts, train_experts

    rng = np.random.default_rng(0)
    clips = [
        D.Clip(d, "spk", t, (rng.standard_normal(8000) * 0.1).astype(np.float32))
        for d in range(10)
        for t in range(2)
    ]
    images = (rng.integers(0, 255, (40, 28, 28)).astype(np.uint8), np.repeat(np.arange(10), 4))
    split = Split(clips, {}, images, images)
    cfg = TrainConfig.from_dict(
        {"epochs": 1, "fusion_epochs": 1, "batch_size": 8, "strategy": "experts",
         "model": {"fusion": "gated-late", "width": 8}}
    )  # fmt: skip
    image_net, audio_net = train_experts(cfg, split)
    fused = fuse_experts(cfg, split, image_net, audio_net)
    same = [
        (fused.image_encoder, image_net.image_encoder),
        (fused.image_head, image_net.image_head),
        (fused.audio_encoder, audio_net.audio_encoder),
        (fused.audio_head, audio_net.audio_head),
    ]
    for mine, theirs in same:  # bit-identical, batch-norm statistics included
        for (k, a), b in zip(mine.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b), k
    torch.manual_seed(cfg.seed + 1)  # fuse_experts's own seed: the gate it started from
    untrained = FusionNet(cfg.model).gate.weight
    assert not torch.equal(fused.gate.weight, untrained)  # ... and trained

"""A third-party model unlike the shipped one, built from plain ONNX ops (no training):
three labels (red, green, blue) seen in the image as the dominant colour and heard in the
audio as a tone of that label's frequency.

- image: ``pixels`` uint8 [N, 96, 128, 3], NHWC, RGB. Logits: the mean of each channel / 20.
- audio: ``mel`` float32 [N, 40, 32], log-mel at 8 kHz (n_fft 256, hop 128, 4000 samples),
  computed by the engine. Logits: the mean log energy of the mel band at each tone.
- outputs: ``probs`` (softmax of the summed logits), ``image_probs``, ``audio_probs``;
  or, for the single-modality variants, one head alone (``audio_logits``: logits, the engine
  applies the softmax).

A model that reads BGR as RGB calls red frames blue; one that gets the mel bands wrong
(scale, rate, n_fft) hears the wrong tone: neither passes an end-to-end check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LABELS = ["red", "green", "blue"]
TONES_HZ = [500.0, 1200.0, 2500.0]
RGB = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
SIZE = (96, 128)
RATE, SAMPLES, N_FFT, HOP, N_MELS = 8000, 4000, 256, 128, 40
FRAMES = 1 + SAMPLES // HOP


def tone_bands() -> list[int]:
    """The HTK mel band (0..N_MELS-1) whose centre is nearest each label's tone."""
    mel = np.linspace(0.0, 2595 * np.log10(1 + (RATE / 2) / 700), N_MELS + 2)
    centres = 700 * (10 ** (mel[1:-1] / 2595) - 1)
    return [int(np.abs(centres - f).argmin()) for f in TONES_HZ]


def build(path: Path, *, image: bool = True, audio: bool = True, frames: int = 1) -> dict[str, Any]:
    """Write the ONNX model (no streamfuse metadata) to ``path``; return its contract.
    ``frames`` K > 1: a temporal image input [N, K, 96, 128, 3] (the mean over K too)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inputs, outputs, inits = [], [], [], []
    if image:
        k = ["N", frames] if frames > 1 else ["N"]
        inputs.append(helper.make_tensor_value_info("pixels", TensorProto.UINT8, [*k, *SIZE, 3]))
        inits.append(numpy_helper.from_array(np.array(1 / 20, np.float32), "img_gain"))
        axes = [1, 2, 3] if frames > 1 else [1, 2]
        nodes += [
            helper.make_node("Cast", ["pixels"], ["pix_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["pix_f"], ["chan"], axes=axes, keepdims=0),
            helper.make_node("Mul", ["chan", "img_gain"], ["image_logits"]),
            helper.make_node("Softmax", ["image_logits"], ["image_probs"], axis=1),
        ]
    if audio:
        inputs.append(
            helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["N", N_MELS, FRAMES])
        )
        pick = np.zeros((N_MELS, len(LABELS)), np.float32)
        for j, band in enumerate(tone_bands()):
            pick[band, j] = 1.0
        inits.append(numpy_helper.from_array(pick, "bands"))
        nodes += [
            helper.make_node("ReduceMean", ["mel"], ["energy"], axes=[2], keepdims=0),
            helper.make_node("MatMul", ["energy", "bands"], ["audio_logits"]),
            helper.make_node("Softmax", ["audio_logits"], ["audio_probs"], axis=1),
        ]
    if image and audio:
        nodes += [
            helper.make_node("Add", ["image_logits", "audio_logits"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ]
        heads = {"fused": "probs", "image": "image_probs", "audio": "audio_probs"}
        kind = "probabilities"
    elif image:
        heads, kind = {"fused": "image_probs"}, "probabilities"
    else:
        heads, kind = {"fused": "audio_logits"}, "logits"
    for name in heads.values():
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3]))
    graph = helper.make_graph(nodes, "colours", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    contract: dict[str, Any] = {"labels": LABELS, "outputs": heads, "output_kind": kind}
    if image:
        contract["image"] = {
            "input": "pixels",
            "layout": "NHWC",
            "color": "rgb",
            "dtype": "uint8",
            "size": list(SIZE),
            "resize": "stretch",
            "scale": 1.0,
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
            "frames": frames,
        }
    if audio:
        contract["audio"] = {
            "input": "mel",
            "sample_rate": RATE,
            "samples": SAMPLES,
            "features": "log-mel",
            "log_mel": {"n_fft": N_FFT, "hop": HOP, "n_mels": N_MELS},
        }
    return contract


def write_session(
    out: Path, labels: list[str], *, fps: int = 10, rate: int = 16000
) -> tuple[Path, Path]:
    """One second per label: a 320x240 frame of its colour (with pixel noise) and, centred
    in the second, 0.6 s of its tone over faint noise; MJPG video + 16-bit WAV."""
    import cv2
    import soundfile as sf

    out.mkdir(parents=True, exist_ok=True)
    video, wav = out / "colours.avi", out / "colours.wav"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), fps, (320, 240))
    assert writer.isOpened(), f"OpenCV cannot write {video}"
    rng = np.random.default_rng(3)
    pcm = (rng.standard_normal(len(labels) * rate) * 0.003).astype(np.float32)
    t = np.arange(int(0.6 * rate)) / rate
    for k, label in enumerate(labels):
        r, g, b = RGB[label]
        for _ in range(fps):
            noise = rng.integers(-15, 16, (240, 320, 3))
            frame = np.clip(np.array([b, g, r]) + noise, 0, 255).astype(np.uint8)  # BGR
            writer.write(frame)
        start = k * rate + int(0.2 * rate)
        pcm[start : start + len(t)] += 0.4 * np.sin(2 * np.pi * TONES_HZ[LABELS.index(label)] * t)
    writer.release()
    sf.write(wav, pcm, rate, subtype="PCM_16")
    return video, wav

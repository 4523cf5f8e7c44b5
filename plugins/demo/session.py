"""Generate an AV-digits session: a 640x480 30 fps video and a 16 kHz wav, one digit a second.

Second k of the video shows digit d_k white on black, scaled to fill the central square of
the frame (as MNIST draws them); second k of the wav holds the same digit spoken, centred in
its second. :func:`score` then grades classifications against the known sequence.

Two kinds of material feed it: what the package ships or generates (digits rendered with
OpenCV's Hershey fonts in handwriting-like variations, the shipped espeak-ng voices) for the
demo, and real data (MNIST digits, FSDD speakers) for the real-session test.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16_000
FPS = 30
SIZE = (640, 480)
VOICES = Path(__file__).resolve().parent.parent / "models" / "voices"


def render_digit(digit: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 uint8 image of ``digit`` in the MNIST layout (20x20 box, centred by mass),
    drawn with a random Hershey font, stroke width and slant."""
    import cv2

    fonts = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX]
    canvas: Any = np.zeros((160, 160), np.uint8)
    thickness = int(rng.integers(8, 14))
    if digit == 1:  # a handwritten 1 is one stroke, not the fonts' flagged and footed glyph
        cv2.line(canvas, (85, 30), (75, 130), 255, thickness, cv2.LINE_AA)
    else:
        font = fonts[int(rng.integers(len(fonts)))]
        cv2.putText(canvas, str(digit), (35, 125), font, 4.0, 255, thickness, cv2.LINE_AA)
    slant = float(rng.uniform(-0.25, 0.1))
    shear = np.array([[1, slant, -slant * 80], [0, 1, 0]], np.float32)
    canvas = cv2.warpAffine(canvas, shear, (160, 160))
    ys, xs = np.nonzero(canvas > 30)
    glyph: Any = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = glyph.shape
    s = 20 / max(h, w)
    glyph = cv2.resize(
        glyph, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
    )
    out: Any = np.zeros((28, 28), np.float32)
    h, w = glyph.shape
    out[(28 - h) // 2 : (28 - h) // 2 + h, (28 - w) // 2 : (28 - w) // 2 + w] = glyph
    m = cv2.moments(out)
    cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
    shift = np.array([[1, 0, 14 - cx], [0, 1, 14 - cy]], np.float32)
    out = cv2.warpAffine(out, shift, (28, 28))
    return np.clip(out, 0, 255).astype(np.uint8)


def shipped_voice(digit: int, voice: str) -> np.ndarray:
    """A shipped espeak-ng recording of ``digit`` as float32 at 16 kHz."""
    import soundfile as sf
    import soxr

    x, sr = sf.read(VOICES / f"{digit}_{voice}_0.wav", dtype="float32", always_2d=True)
    return soxr.resample(x[:, 0], sr, RATE).astype(np.float32)


def shipped_voices() -> list[str]:
    return sorted({p.stem.split("_")[1] for p in VOICES.glob("*_espeak-*_0.wav")})


@dataclass(frozen=True)
class Session:
    video: Path
    audio: Path
    digits: list[int]
    """Digit shown and spoken in second k."""


def write_session(
    out: Path, digits: Sequence[int], images: Sequence[np.ndarray], clips: Sequence[np.ndarray]
) -> Session:
    """Write ``out/session.mp4`` and ``out/session.wav`` (+ ``truth.json``) for ``digits``,
    with ``images[k]`` (28x28 uint8) shown and ``clips[k]`` (16 kHz float32) spoken in second k."""
    import cv2
    import soundfile as sf

    out.mkdir(parents=True, exist_ok=True)
    w, h = SIZE
    video = out / "session.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {video} (mp4v)")
    pcm = np.zeros(len(digits) * RATE, np.float32)
    x0 = (w - h) // 2
    for k, (img, clip) in enumerate(zip(images, clips, strict=True)):
        frame = np.zeros((h, w, 3), np.uint8)
        big = cv2.resize(img, (h, h), interpolation=cv2.INTER_LINEAR)
        frame[:, x0 : x0 + h] = big[:, :, None]
        for _ in range(FPS):
            writer.write(frame)
        clip = clip[:RATE]
        start = k * RATE + (RATE - len(clip)) // 2
        pcm[start : start + len(clip)] = clip
    writer.release()
    peak = float(np.abs(pcm).max()) or 1.0
    audio = out / "session.wav"
    sf.write(audio, pcm * (0.8 / peak), RATE, subtype="PCM_16")
    (out / "truth.json").write_text(json.dumps({"digits": list(digits), "seconds_per_digit": 1}))
    return Session(video, audio, list(digits))


def real_material(
    images: np.ndarray,
    labels: np.ndarray,
    clips: Sequence[Any],
    digits: Sequence[int],
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each digit an MNIST image from the last 20 % of that digit's (the part no model
    trains on) and a random one of ``clips`` (``models.data.Clip``) speaking it."""
    pics, pcm = [], []
    for d in digits:
        unseen = np.flatnonzero(labels == d)
        unseen = unseen[int(len(unseen) * 0.8) :]
        pics.append(images[rng.choice(unseen)])
        spoken = [c for c in clips if c.digit == d]
        pcm.append(spoken[rng.integers(len(spoken))].pcm)
    return pics, pcm


def demo_session(out: Path, n: int = 12, seed: int = 0) -> Session:
    """The demo: ``n`` random digits, rendered, spoken by the shipped voices in turn."""
    rng = np.random.default_rng(seed)
    digits = [int(d) for d in rng.integers(0, 10, n)]
    voices = shipped_voices()
    images = [render_digit(d, rng) for d in digits]
    clips = [shipped_voice(d, voices[k % len(voices)]) for k, d in enumerate(digits)]
    return write_session(out, digits, images, clips)


def expected_digit(
    result: Any, digits: Sequence[int], tolerance_ns: int = 50_000_000
) -> int | None:
    """The digit a classification (struct or JSON dict) should say, or None when its audio
    window does not lie within one digit's second (a window between two digits)."""
    inputs = _field(result, "inputs") or []
    audio = next((i for i in inputs if _field(i, "stream").startswith("audio/")), None)
    if audio is None or _field(audio, "media_t0") is None:
        return None
    t0, t1 = _field(audio, "media_t0"), _field(audio, "media_t1")
    k = round(t0 / 1e9)
    if abs(t0 - k * 1_000_000_000) > tolerance_ns or t1 > (k + 1) * 1_000_000_000 + tolerance_ns:
        return None
    return digits[k] if 0 <= k < len(digits) else None


def score(
    results: Iterable[Any], digits: Sequence[int], tolerance_ns: int = 50_000_000
) -> dict[str, Any]:
    """Grade classifications (``Classification`` structs or their JSON dicts) against the
    sequence: only windows lying within one digit's second count."""
    graded = correct = 0
    for r in results:
        expected = expected_digit(r, digits, tolerance_ns)
        if expected is None:
            continue
        graded += 1
        correct += _field(r, "label") == str(expected)
    return {"graded": graded, "correct": correct, "accuracy": correct / graded if graded else 0.0}


def demo_line(r: Any, digits: Sequence[int]) -> str:
    """One plain line per classification (the demo off a terminal)."""
    expected = expected_digit(r, digits)
    verdict = "" if expected is None else ("ok" if r.label == str(expected) else "WRONG")
    want = "-" if expected is None else str(expected)
    t0 = next((i.media_t0 for i in r.inputs if i.stream.startswith("audio/")), None)
    media = f"{t0 / 1e9:4.1f}-{t0 / 1e9 + 1:.1f} s" if t0 is not None else "   (no audio)"
    return (
        f"{media}  expected {want}  fused {r.label} {r.score:.2f}  {r.heads()}  "
        f"total {r.latency.get('total', 0) / 1e6:.1f} ms  {verdict}"
        + ("  degraded" if r.degraded else "")
    ).rstrip()


def demo_table(results: Sequence[Any], digits: Sequence[int]) -> Any:
    """The demo's live view: every graded window (one per digit) against the sequence, so
    the table holds exactly the windows the accuracy line counts."""
    from rich.table import Table

    table = Table(title="streamfuse demo: camera (digit video) + microphone (spoken digits)")
    for col in ("media s", "expected", "fused", "image", "audio", "total ms", "infer ms", ""):
        table.add_column(col, justify="right")
    between = 0
    for r in results:
        expected = expected_digit(r, digits)
        if expected is None:
            between += 1
            continue
        t0 = next(i.media_t0 for i in r.inputs if i.stream.startswith("audio/"))
        ok = r.label == str(expected)
        table.add_row(
            f"{t0 / 1e9:.1f}-{t0 / 1e9 + 1:.1f}",
            str(expected),
            f"{r.label} {r.score:.2f}",
            f"{r.image_label} {r.image_score or 0:.2f}",
            f"{r.audio_label} {r.audio_score or 0:.2f}",
            f"{r.latency.get('total', 0) / 1e6:.1f}",
            f"{r.latency.get('inference', 0) / 1e6:.2f}",
            ("[green]ok[/]" if ok else "[red]wrong[/]") + (" degraded" if r.degraded else ""),
        )
    if between:
        table.caption = f"+ {between} windows between two digits (classified, not graded)"
    return table


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)

"""Make the synthetic spoken digits the package ships (run once; the wavs are committed).

    python plugins/models/voices/generate.py

espeak-ng speaks each digit in several voices and speeds; sox-free: espeak-ng writes wav,
soundfile + soxr trim the silence and store 8 kHz mono 16-bit (like FSDD). File names follow
FSDD: ``{digit}_{voice}_{take}.wav``.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOICES = {  # name in the file -> espeak-ng voice and speed (words per minute)
    "espeak-m1": ("en+m1", 150),
    "espeak-m3": ("en+m3", 175),
    "espeak-m7": ("en-us+m7", 130),
    "espeak-f2": ("en+f2", 160),
    "espeak-f4": ("en-us+f4", 140),
    "espeak-f5": ("en+f5", 185),
}
HERE = Path(__file__).parent


def speak(word: str, voice: str, speed: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", tmp.name, word], check=True
        )
        x, rate = sf.read(tmp.name, dtype="float32")
    x = soxr.resample(x, rate, 8000)
    loud = np.flatnonzero(np.abs(x) > 0.02)
    return x[max(0, loud[0] - 400) : loud[-1] + 400]


def main() -> None:
    for name, (voice, speed) in VOICES.items():
        for digit, word in enumerate(WORDS):
            x = speak(word, voice, speed)
            sf.write(HERE / f"{digit}_{name}_0.wav", x, 8000, subtype="PCM_16")
    print(f"wrote {len(VOICES) * len(WORDS)} files to {HERE}")


if __name__ == "__main__":
    main()

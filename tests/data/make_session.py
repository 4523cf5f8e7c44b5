"""Regenerate the recorded session the replay tests use (and its golden classifications).

    python tests/data/make_session.py

Everything comes from the package: a 4-digit demo session (rendered digits on video, the
shipped espeak-ng voices on audio) played through `streamfuse run --record` with the camera
at 320x240 JPEG (to keep the file small), then the golden file from a lockstep replay.
Run it again only when the model or the protocol changes on purpose, and review the diff.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def main() -> None:
    from streamfuse_plugins.demo.session import demo_session

    from streamfuse.testing import run_recording, write_golden

    with tempfile.TemporaryDirectory() as tmp:
        session = demo_session(Path(tmp), n=4, seed=1)
        cfg = {
            "cameras": [
                {
                    "name": "front",
                    "source": str(session.video),
                    "width": 320,
                    "height": 240,
                    "jpeg": 80,
                }
            ],
            "mic": {"source": str(session.audio)},
            "engine": {"output": f"ipc://{tmp}/result"},
            "http": {"port": 0},
        }
        (Path(tmp) / "c.yaml").write_text(yaml.safe_dump(cfg))
        out = HERE / "session.mcap"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "streamfuse",
                "run",
                "--config",
                f"{tmp}/c.yaml",
                "--record",
                str(out),
                "--until-eof",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    write_golden(run_recording(out), HERE / "session.golden.json")
    (HERE / "session.truth.json").write_text(json.dumps({"digits": session.digits}) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), golden and truth")


if __name__ == "__main__":
    main()

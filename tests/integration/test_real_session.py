"""A real session through the whole daemon: MNIST handwriting on camera, FSDD speakers on
the microphone, as files; `streamfuse run --camera X.mp4 --mic X.wav --json --until-eof`.

The shipped model trained on all five FSDD speakers (other takes of the same digits are
possible) and on the first 80 % of each digit's MNIST images; the images here come from
the last 20 %, never seen in training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ..conftest import require_data
from .helpers import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.replay, pytest.mark.timeout(240)]

N_DIGITS = 20


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[int]]:
    root = require_data("fsdd", "mnist")
    from streamfuse_plugins.demo.session import RATE, real_material, write_session
    from streamfuse_plugins.models import data as D

    images, labels = D.load_mnist(root)
    clips = [c for c in D.load_clips(root, RATE, voices=False)]
    rng = np.random.default_rng(7)
    digits = [int(d) for d in rng.integers(0, 10, N_DIGITS)]
    pics, pcm = real_material(images, labels, clips, digits, rng)
    s = write_session(tmp_path_factory.mktemp("real"), digits, pics, pcm)
    return s.video, s.audio, digits


def test_real_session_is_classified(session: tuple[Path, Path, list[int]], tmp_path: Path) -> None:
    from streamfuse_plugins.demo.session import score

    video, audio, digits = session
    res = run_cli(
        "run",
        "--camera",
        str(video),
        "--mic",
        str(audio),
        "--json",
        "--until-eof",
        "--output",
        f"ipc://{tmp_path}/result",
        "--http-port",
        "0",
        timeout=200,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    results = [json.loads(line) for line in res.stdout.splitlines()]
    report = score(results, digits)
    print(f"real session: {report}")  # shown with pytest -s
    assert report["graded"] == N_DIGITS, report
    assert report["accuracy"] >= 0.9, report
    # every window of the file was classified once, in order, none degraded
    starts = [
        next(i["media_t0"] for i in r["inputs"] if i["stream"] == "audio/mic0") for r in results
    ]
    assert starts == sorted(starts) and len(set(starts)) == len(starts) == 2 * N_DIGITS - 1
    assert not any(r["degraded"] for r in results)

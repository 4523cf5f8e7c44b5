"""Regression-test your pipeline on recorded sessions, in a few lines of pytest.

    from streamfuse.testing import run_recording, assert_matches_golden

    def test_front_door_session():
        results = run_recording("tests/data/front_door.mcap")
        assert [r.label for r in results[:3]] == ["7", "7", "2"]
        assert_matches_golden(results, "tests/data/front_door.golden.json")

:func:`run_recording` replays the session in lockstep (see :mod:`streamfuse.replay`): no
sockets, no sleeping, the engine's own code on the recorded clock, the same classifications
on every run. ``write_golden`` records the answers you have checked once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import RunConfig
from .messages import Classification
from .record import read_recording
from .replay import replay_lockstep

__all__ = ["assert_matches_golden", "golden_rows", "run_recording", "write_golden"]


def run_recording(
    path: str | Path,
    *,
    model: str | Path | None = None,
    config: RunConfig | None = None,
    backend: str = "reference",
) -> list[Classification]:
    """Every classification the engine makes on the recording at ``path``."""
    rec = read_recording(path)
    cfg = config or RunConfig(run_dir="/nonexistent")
    if model is not None:
        cfg.engine.model = str(model)
    return replay_lockstep(rec, cfg, backend=backend)


def golden_rows(results: list[Classification]) -> list[dict[str, Any]]:
    """What a golden file keeps of each classification."""
    return [
        {
            "stream": r.stream,
            "seq": r.seq,
            "media_pos": r.media_pos,
            "label": r.label,
            "score": round(r.score, 6),
            "image_label": r.image_label,
            "audio_label": r.audio_label,
            "degraded": r.degraded,
        }
        for r in results
    ]


def write_golden(results: list[Classification], path: str | Path) -> None:
    Path(path).write_text(json.dumps(golden_rows(results), indent=1) + "\n")


def assert_matches_golden(
    results: list[Classification], path: str | Path, *, score_tol: float = 1e-4
) -> None:
    """Labels, order and flags must be equal; scores within ``score_tol``."""
    want = json.loads(Path(path).read_text())
    got = golden_rows(results)
    assert len(got) == len(want), f"{len(got)} classifications, golden has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        diff = {k: (g[k], w[k]) for k in w if k != "score" and g.get(k) != w[k]}
        assert not diff, f"classification {i} differs from the golden: {diff}"
        assert abs(g["score"] - w["score"]) <= score_tol, (
            f"classification {i}: score {g['score']} vs golden {w['score']}"
        )

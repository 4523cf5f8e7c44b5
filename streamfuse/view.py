"""What a person sees: one-line message descriptions, rate summaries, the live table."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .messages import AudioWindow, Classification, Envelope, Heartbeat, VideoFrame
from .transport import Subscriber

__all__ = ["TopicView", "age_ns", "describe", "envelope_json", "summary_rows"]


def age_ns(env: Envelope, now_ns: int) -> int:
    """How long ago the message's content was complete: capture time, or for an audio
    window the capture time of its end."""
    h = env.header
    return now_ns - (h.t_end if isinstance(h, AudioWindow) else h.t_capture)


def describe(env: Envelope) -> str:
    """A short human description of a message's content."""
    h = env.header
    size = 0 if env.payload is None else env.payload.nbytes
    if isinstance(h, VideoFrame):
        return f"{h.width}x{h.height} {h.pixel_format} {h.encoding} {size} B"
    if isinstance(h, AudioWindow):
        ms = h.n_samples * 1000 / h.sample_rate
        fmt = f"{h.sample_rate} Hz x{h.channels} {h.sample_format}"
        return f"{fmt} {h.n_samples} samples ({ms:.0f} ms)"
    if isinstance(h, Heartbeat):
        extra = "".join(f" {k}={v}" for k, v in {**h.drops, **h.errors}.items())
        return f"{h.source}: sent {h.sent}, {h.rate_hz:.1f} Hz{extra}"
    if isinstance(h, Classification):
        return f"{h.label} {h.score:.2f}"
    return type(h).__name__  # pragma: no cover


def envelope_json(env: Envelope, now_ns: int) -> dict[str, Any]:
    """Header fields plus topic, payload size and age, ready for ``json.dumps``."""
    out: dict[str, Any] = {"topic": env.topic.decode("utf-8", "replace")}
    out.update(msgspec.to_builtins(env.header))
    out["payload_bytes"] = 0 if env.payload is None else env.payload.nbytes
    out["age_ms"] = round(age_ns(env, now_ns) / 1e6, 3)
    return out


@dataclass
class TopicView:
    """Per-topic running view used by ``subscribe`` and ``demo``."""

    ages_ms: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    last: str = ""

    def add(self, env: Envelope, now_ns: int) -> None:
        self.ages_ms.append(age_ns(env, now_ns) / 1e6)
        self.last = describe(env)

    def age_p50(self) -> float | None:
        if not self.ages_ms:
            return None
        s = sorted(self.ages_ms)
        return s[len(s) // 2]


def summary_rows(sub: Subscriber, views: dict[bytes, TopicView]) -> list[dict[str, Any]]:
    """One row per topic: count, rate, sequence gaps, reorderings, median age."""
    rows = []
    for topic, st in sorted(sub.streams.items()):
        view = views.get(topic)
        p50 = view.age_p50() if view else None
        rows.append(
            {
                "topic": topic.decode("utf-8", "replace"),
                "received": st.received,
                "rate_hz": round(st.rate_hz(), 2),
                "gaps": st.gaps,
                "reordered": st.reordered,
                "age_p50_ms": None if p50 is None else round(p50, 3),
                "last": view.last if view else "",
            }
        )
    return rows


def latency_summary(results: list[Classification]) -> dict[str, float]:
    """Median and 99th percentile of total and inference latency, in ms."""
    import numpy as np

    out: dict[str, float] = {}
    for stage in ("total", "inference"):
        values = [r.latency[stage] / 1e6 for r in results if stage in r.latency]
        for q in (50, 99):
            out[f"{stage}_ms_p{q}"] = float(np.percentile(values, q)) if values else 0.0
    return out

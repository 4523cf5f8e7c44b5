"""Replaying MCAP recordings: live (same topics, original timing) or lockstep (virtual clock).

Live: each topic is published on its own endpoint (the sensors' ``ipc://<run_dir>/...``
endpoints, so ``streamfuse run --replay`` puts it where the cameras and microphone would be)
or all on one. Every capture time is shifted by one constant so the recording happens
*now*: an engine cannot tell it from live sensors. At the end each topic gets an ``eof``
heartbeat, as a file source's would.

Lockstep: no sockets and no wall clock. The engine's own code (synchronizer, preprocessing,
model) runs on the recorded receive times as its clock, one message after another, as
fast as the machine allows; the same recording and model give the same classifications,
byte for byte, on every run (ONNX Runtime on one thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .backend import BackendOptions, ModelInfo, open_backend
from .config import CameraConfig, MicConfig, RunConfig
from .engine import Engine
from .errors import ConfigError
from .messages import Classification, Heartbeat
from .record import Recorded, Recording
from .transport import Publisher, heartbeat_topic

__all__ = ["config_for", "data_topics", "replay_live", "replay_lockstep"]

log = logging.getLogger(__name__)

SENSOR_PREFIXES = ("video/", "audio/")


def data_topics(rec: Recording) -> list[str]:
    return sorted({m.topic for m in rec.messages if m.topic.startswith(SENSOR_PREFIXES)})


def config_for(topics: list[str], base: RunConfig | None = None) -> RunConfig:
    """``base`` (or the defaults) with the cameras and microphone of a recording's topics."""
    cams = [t.removeprefix("video/") for t in topics if t.startswith("video/")]
    mics = [t.removeprefix("audio/") for t in topics if t.startswith("audio/")]
    if not cams or not mics:
        raise ConfigError("replay", f"the recording needs video/ and audio/ topics, has {topics}")
    cfg = base or RunConfig(run_dir="/nonexistent")
    cfg.cameras = [CameraConfig(name=c) for c in cams]
    cfg.mic = MicConfig(name=mics[0], hop_ms=cfg.mic.hop_ms)
    return cfg


def _recv_mono(m: Recorded, clock_offset: int) -> int:
    """When the recorder received ``m``, on the capture clock (CLOCK_MONOTONIC)."""
    return m.log_time - clock_offset


def replay_lockstep(
    rec: Recording,
    cfg: RunConfig | None = None,
    *,
    backend: str = "reference",
    on_result: Callable[[Classification], None] | None = None,
) -> list[Classification]:
    """Run the engine over ``rec`` on its recorded clock; return every classification.

    The default ``reference`` backend computes in float64 and rounds to float32, so the
    output is the same bytes on any CPU; ``onnxruntime`` is faster and the same bytes on
    every run on one machine, but its last bits depend on the CPU's instruction set.
    """
    cfg = config_for(data_topics(rec), cfg)
    model = ModelInfo.load(cfg.engine.model)
    options = BackendOptions(device="cpu", max_batch=cfg.engine.max_batch, threads=1)
    engine = Engine(cfg, open_backend(backend, model, options), virtual=True)
    wanted = {*(cfg.camera_topic(c) for c in cfg.cameras), cfg.mic_topic}
    msgs = [m for m in rec.messages if m.topic in wanted]
    results: list[Classification] = []

    def emit(batch: list[Classification]) -> None:
        results.extend(batch)
        if on_result is not None:
            for r in batch:
                on_result(r)

    if msgs:
        engine.begin(_recv_mono(msgs[0], rec.clock_offset))
    for m in msgs:
        now = _recv_mono(m, rec.clock_offset)
        emit(engine.classify(engine.tick(now)))
        emit(engine.classify(engine.handle(m.envelope(), now)))
    emit(engine.classify(engine.flush()))
    engine.backend.close()
    return results


def replay_live(
    rec: Recording,
    endpoint_for: Callable[[str], str],
    stop: threading.Event,
    *,
    rate: float = 1.0,
    loop: bool = False,
    start_s: float = 0.0,
    topics: Iterable[str] = SENSOR_PREFIXES,
    wait_for_subscriber: float = 0.0,
    readers: int = 1,
) -> dict[str, Any]:
    """Publish ``rec`` with its original timing (``rate`` times faster) until it ends (or
    ``stop``; forever with ``loop``), after ``readers`` readers of each topic have subscribed
    (waiting at most ``wait_for_subscriber`` seconds). Returns what was sent per topic."""
    if rate <= 0:
        raise ConfigError("--rate", f"must be > 0, got {rate}")
    prefixes = tuple(topics)
    msgs = [m for m in rec.messages if m.topic.startswith(prefixes)]
    if start_s:
        first = msgs[0].log_time if msgs else 0
        msgs = [m for m in msgs if m.log_time - first >= start_s * 1e9]
    if not msgs:
        raise ConfigError("replay", f"nothing to replay on topics {list(prefixes)}")
    pubs: dict[str, Publisher] = {}
    by_topic: dict[str, Publisher] = {}
    for topic in sorted({m.topic for m in msgs}):
        ep = endpoint_for(topic)
        if ep not in pubs:
            pubs[ep] = Publisher(ep, linger_ms=2000)
        by_topic[topic] = pubs[ep]
    sent: Counter[str] = Counter()
    seq_base: Counter[str] = Counter()
    try:
        if wait_for_subscriber > 0:
            for topic, pub in by_topic.items():
                if (
                    not pub.wait_for_subscriber(
                        wait_for_subscriber, topic=topic.encode(), count=readers, stop=stop
                    )
                    and not stop.is_set()
                ):
                    log.warning(
                        "not %d reader(s) of %s after %.1f s", readers, topic, wait_for_subscriber
                    )
        lap = 0
        while not stop.is_set():
            first = _recv_mono(msgs[0], rec.clock_offset)
            t_start = time.monotonic_ns() + 50_000_000
            shift = t_start - first  # capture clock of the recording -> now
            top: Counter[str] = Counter()
            for m in msgs:
                due = t_start + int((_recv_mono(m, rec.clock_offset) - first) / rate)
                delay = (due - time.monotonic_ns()) / 1e9
                if delay > 0 and stop.wait(delay):
                    break
                env = m.envelope()
                hdr = env.header
                hdr.t_capture += shift
                if hdr.t_wall:
                    hdr.t_wall += shift
                hdr.seq += seq_base[m.topic]
                top[m.topic] = max(top[m.topic], hdr.seq + 1)
                by_topic[m.topic].send(m.topic, hdr, env.payload)
                sent[m.topic] += 1
            lap += 1
            if not loop:
                break
            for t, n in top.items():  # sequence numbers continue across laps
                seq_base[t] = n
        now = time.monotonic_ns()
        for topic, pub in by_topic.items():
            pub.send(
                heartbeat_topic(topic),
                Heartbeat(
                    stream=topic.rsplit("/", 1)[-1],
                    t_capture=now,
                    t_wall=time.time_ns(),
                    source="replay",
                    sent=sent[topic],
                    state="eof" if not stop.is_set() else "stopped",
                ),
            )
    finally:
        for pub in pubs.values():
            pub.close()
    return {"sent": dict(sent), "laps": lap, "endpoints": sorted(pubs)}

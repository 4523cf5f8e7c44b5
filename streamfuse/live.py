"""The live view: the running daemon in Foxglove, over its WebSocket protocol.

``streamfuse run --foxglove [HOST:]PORT`` starts this as one more supervised process. It
reads what the engine reads (each sensor's endpoint, trusted only for its own topics) and
the engine's results, and serves through the official ``foxglove-sdk`` server
(``foxglove.websocket.v1``):

====================================  ==================================================
``video/<camera>/image``              ``foxglove.CompressedImage`` (JPEG, at most ``fps``)
``audio/<mic>/audio``                 ``foxglove.RawAudio`` (pcm-s16, each window's new
                                      samples: the Audio panel plays it)
``result/<camera>/json``              the classification (JSON, its JSON Schema)
``result/<camera>/annotations``       ``foxglove.ImageAnnotations``: the label on its frame
``streamfuse/stats``                  per stream: rate, sent, drops and errors (JSON)
====================================  ==================================================

Frames are read as shared-memory views and only the thinned ones are encoded, so the view
costs the sensors nothing; a client that stalls loses its own oldest messages (the SDK's
per-client backlog, ``message_backlog_size``) and slows no one, the engine least of all: it
is another process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import foxglove
from foxglove.channels import CompressedImageChannel, ImageAnnotationsChannel, RawAudioChannel

from . import fox
from .config import RunConfig
from .engine import RESULT_PREFIX
from .messages import AudioWindow, Classification, Envelope, Heartbeat, VideoFrame
from .transport import Sources, heartbeat_topic

__all__ = ["STATS_SCHEMA", "LiveView"]

log = logging.getLogger(__name__)

STATS_SCHEMA: dict[str, Any] = {
    "title": "streamfuse.Stats",
    "type": "object",
    "properties": {
        "streams": {
            "type": "object",
            "description": "per stream (video/front, audio/mic0, result/): its last heartbeat",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "rate_hz": {"type": "number"},
                    "sent": {"type": "integer"},
                    "drops": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "errors": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "state": {"type": "string"},
                },
                "required": ["rate_hz", "sent", "drops", "errors", "state"],
            },
        },
        "live": {
            "type": "object",
            "description": "this view's own counts: images sent, frames skipped (thinned)",
            "additionalProperties": {"type": "integer"},
        },
    },
    "required": ["streams", "live"],
}


class LiveView:
    """Serve ``cfg``'s sensors and results on a Foxglove WebSocket server at ``host:port``."""

    def __init__(
        self, cfg: RunConfig, host: str, port: int, *, fps: float = 10.0, backlog: int = 256
    ) -> None:
        self.cfg = cfg
        self.ctx = foxglove.Context()
        self.server = foxglove.start_server(
            name="streamfuse",
            host=host,
            port=port,
            context=self.ctx,
            message_backlog_size=backlog,
        )
        self.port = self.server.port
        self.cameras = [cfg.camera_topic(c) for c in cfg.cameras]
        self.mic = cfg.mic_topic
        self._period = int(1e9 / fps) if fps > 0 else 0
        self._last_frame: dict[str, int] = {}
        self._audio = fox.AudioBlocks()
        self._offset = time.time_ns() - time.monotonic_ns()
        c = self.ctx
        self._images = {t: CompressedImageChannel(f"{t}/image", context=c) for t in self.cameras}
        self._sound = RawAudioChannel(f"{self.mic}/audio", context=c)
        results = [RESULT_PREFIX + t.removeprefix("video/") for t in self.cameras]
        self._results = {  # (named as in a recording: one layout serves both)
            t: foxglove.Channel(f"{t}/json", schema=fox.CLASSIFICATION_SCHEMA, context=c)
            for t in results
        }
        self._notes = {t: ImageAnnotationsChannel(f"{t}/annotations", context=c) for t in results}
        self._stats = foxglove.Channel(fox.STATS_TOPIC, schema=STATS_SCHEMA, context=c)
        self.streams: dict[str, dict[str, Any]] = {}
        self.counts = {"images": 0, "thinned": 0, "audio_blocks": 0, "results": 0}

    def run(self, stop: threading.Event) -> None:
        cfg = self.cfg
        owners: dict[str, list[str]] = {}
        for topic in (*self.cameras, self.mic):
            owners.setdefault(cfg.source_endpoint(topic), []).extend(
                [topic, heartbeat_topic(topic)]
            )
        owners[cfg.engine.output] = [heartbeat_topic(RESULT_PREFIX), *self._results]
        # Views on the cameras' slots: only the frames shown are read.
        sub = Sources(owners, rcvhwm=64, curve=cfg.curve_clients(), shm_copy=False)
        last_stats = 0
        try:
            while not stop.is_set():
                env = sub.recv(timeout=0.1)
                now = time.monotonic_ns()
                if env is not None:
                    try:
                        self._show(env, sub)
                    except Exception:  # the last resort: one message never ends the view
                        log.exception("live view: a message on %s (skipped)", env.topic)
                if now - last_stats >= 1_000_000_000:
                    self._stats.log({"streams": self.streams, "live": self.counts})
                    last_stats = now
        finally:
            sub.close()
            self.server.stop()

    def _show(self, env: Envelope, sub: Sources) -> None:
        topic, header, payload = env.topic.decode(), env.header, env.payload
        wall = self._offset
        if isinstance(header, VideoFrame) and payload is not None:
            last = self._last_frame.get(topic)
            if last is not None and header.t_capture - last < self._period:
                self.counts["thinned"] += 1
                return
            image = fox.compressed_image(header, payload, wall)
            if image is not None and sub.intact(env):  # (its slot not reused meanwhile)
                self._last_frame[topic] = header.t_capture
                self._images[topic].log(image, log_time=fox.wall_ns(header, wall))
                self.counts["images"] += 1
        elif isinstance(header, AudioWindow) and payload is not None:
            block = self._audio.block(topic, header, payload, wall)
            if block is not None:
                self._sound.log(block, log_time=fox.wall_ns(header, wall))
                self.counts["audio_blocks"] += 1
        elif isinstance(header, Classification):
            self._results[topic].log(fox.classification_doc(header))
            if (notes := fox.label_overlay(header, wall)) is not None:
                self._notes[topic].log(notes)
            self.counts["results"] += 1
        elif isinstance(header, Heartbeat):
            self.streams[topic.removeprefix("heartbeat/")] = {
                "rate_hz": header.rate_hz,
                "sent": header.sent,
                "drops": dict(header.drops),
                "errors": dict(header.errors),
                "state": header.state,
            }

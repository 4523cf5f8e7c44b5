"""streamfuse messages as Foxglove's well-known schemas, for recordings and the live view.

The message classes and their protobuf schemas come from the official ``foxglove-sdk``
(``foxglove.messages``: ``encode()`` and ``get_schema()``), so a recording and the live
WebSocket server speak the very schemas the Foxglove app decodes:

- a frame -> ``foxglove.CompressedImage`` (JPEG; stamped with its capture time);
- the new samples of each audio window -> ``foxglove.RawAudio`` (``pcm-s16``: windows
  overlap, so each block holds only what the window before did not, and the Audio panel
  plays the microphone once, in order);
- a classification -> ``foxglove.ImageAnnotations`` (its label and score over the image it
  was made from) and the classification itself as JSON with its complete JSON Schema.

Times: Foxglove wants wall-clock time; a capture time is on the capturing box's
CLOCK_MONOTONIC, so it is put on CLOCK_REALTIME with the header's own ``t_wall`` where the
sender set one, else with the recording box's realtime - monotonic offset.
"""

from __future__ import annotations

import json
from typing import Any

import cv2
import msgspec
import numpy as np
from foxglove import Schema
from foxglove.messages import (
    Color,
    CompressedImage,
    ImageAnnotations,
    Point2,
    RawAudio,
    TextAnnotation,
    Timestamp,
)

from . import messages
from .messages import AudioWindow, Classification, VideoFrame

RESULT_PREFIX = "result/"
STATS_TOPIC = "streamfuse/stats"

__all__ = [
    "CLASSIFICATION_SCHEMA",
    "STATS_TOPIC",
    "AudioBlocks",
    "compressed_image",
    "jpeg",
    "label_overlay",
    "layout",
    "schema_of",
    "stamp",
    "wall_ns",
]


def _object_schema(kind: type[Any]) -> dict[str, Any]:
    """msgspec's JSON Schema of a struct, with the struct itself at the top (Foxglove wants
    an object schema there; msgspec puts a ``$ref`` there)."""
    raw = msgspec.json.schema(kind)
    defs = raw.get("$defs", {})
    return {**defs[kind.__name__], "title": f"streamfuse.{kind.__name__}", "$defs": defs}


CLASSIFICATION_SCHEMA: dict[str, Any] = _object_schema(Classification)
"""The JSON Schema of a classification as JSON (every field, its type, which are required)."""


def schema_of(kind: type[Any]) -> Schema:
    """The protobuf schema of one of ``foxglove.messages``' classes."""
    return kind.get_schema()


def wall_ns(header: Any, realtime_minus_monotonic: int) -> int:
    """A header's capture time on the wall clock (its own ``t_wall`` if it has one)."""
    return max(0, header.t_wall or header.t_capture + realtime_minus_monotonic)


def stamp(ns: int) -> Timestamp:
    sec, nsec = divmod(max(0, ns), 1_000_000_000)
    return Timestamp(sec=sec, nsec=nsec)


def jpeg(header: VideoFrame, payload: Any, quality: int = 75) -> bytes | None:
    """A frame as JPEG (as it is, if it already is one); None if it cannot be encoded."""
    if header.encoding == "jpeg":
        return bytes(payload)
    env = messages.Envelope(b"", header, memoryview(payload))
    try:
        img = messages.image_array(env)
    except Exception:
        return None
    if img.ndim == 3 and header.pixel_format in ("rgb8", "rgba8"):
        img = img[:, :, 2::-1]
    elif img.ndim == 3 and header.pixel_format == "bgra8":
        img = img[:, :, :3]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return bytes(buf) if ok else None


def compressed_image(
    header: VideoFrame, payload: Any, realtime_minus_monotonic: int
) -> CompressedImage | None:
    data = jpeg(header, payload)
    if data is None:
        return None
    return CompressedImage(
        timestamp=stamp(wall_ns(header, realtime_minus_monotonic)),
        frame_id=header.stream,
        data=data,
        format="jpeg",
    )


class AudioBlocks:
    """Turns overlapping audio windows into back-to-back ``RawAudio`` blocks per topic."""

    def __init__(self) -> None:
        self._end: dict[str, int] = {}  # per topic: the capture time up to which it was sent

    def block(
        self, topic: str, header: AudioWindow, payload: Any, realtime_minus_monotonic: int
    ) -> RawAudio | None:
        """The samples of this window after the previous one's end (None: nothing new)."""
        env = messages.Envelope(b"", header, memoryview(payload))
        x = messages.audio_array(env)
        if x.ndim == 1:
            x = x[:, None]
        n = x.shape[0]
        start = 0
        last = self._end.get(topic)
        if last is not None and last > header.t_capture:
            start = min(n, (last - header.t_capture) * header.sample_rate // 1_000_000_000)
        if start >= n:
            return None
        self._end[topic] = header.t_end
        x = x[start:]
        if x.dtype != np.int16:
            x = np.clip(np.nan_to_num(x.astype(np.float32)) * 32767.0, -32768, 32767)
        skipped = start * 1_000_000_000 // header.sample_rate  # (already sent)
        return RawAudio(
            timestamp=stamp(wall_ns(header, realtime_minus_monotonic) + skipped),
            data=np.ascontiguousarray(x.astype("<i2")).tobytes(),
            format="pcm-s16",
            sample_rate=header.sample_rate,
            number_of_channels=x.shape[1],
        )


def label_overlay(c: Classification, realtime_minus_monotonic: int) -> ImageAnnotations | None:
    """The label and score over the frame it was made from (stamped with that frame's capture
    time, so Foxglove draws it on that image); None without a frame."""
    frame = next((i for i in c.inputs if i.stream.startswith("video/")), None)
    if frame is None:
        return None
    color = Color(r=1.0, g=0.6, b=0.0, a=1.0) if c.degraded else Color(r=0.1, g=1.0, b=0.3, a=1.0)
    text = f"{c.label} {c.score:.2f}" + (" (degraded)" if c.degraded else "")
    return ImageAnnotations(
        texts=[
            TextAnnotation(
                timestamp=stamp(frame.t0 + realtime_minus_monotonic),
                position=Point2(x=8.0, y=40.0),
                text=text,
                font_size=32.0,
                text_color=color,
                background_color=Color(r=0.0, g=0.0, b=0.0, a=0.6),
            )
        ]
    )


def classification_doc(c: Classification) -> dict[str, Any]:
    return json.loads(msgspec.json.encode(c))


def layout(cameras: list[str], mic: str) -> str:
    """A Foxglove layout (JSON, through foxglove-sdk's layout API) for a daemon with these
    camera topics (``video/front``) and microphone topic: per camera an Image panel with the
    label overlay, the Audio panel on the microphone, a Plot of each camera's fused and
    per-sensor scores and of the audio level, and Raw Messages on the first camera's
    classification and on the stats."""
    import foxglove.layouts as fl

    results = [RESULT_PREFIX + c.removeprefix("video/") for c in cameras]
    images = [
        fl.SplitItem(
            content=fl.ImagePanel(
                config=fl.ImageConfig(
                    image_mode=fl.ImageModeConfig(
                        image_topic=f"{cam}/image",
                        annotations={
                            f"{res}/annotations": fl.ImageAnnotationSettings(visible=True)
                        },
                    )
                )
            )
        )
        for cam, res in zip(cameras, results, strict=True)
    ]
    scores = [
        fl.PlotSeries(value=f"{res}/json.{field}")
        for res in results
        for field in ("score", "image_score", "audio_score")
    ]
    side = fl.SplitContainer(
        direction="column",
        items=[
            fl.SplitItem(content=fl.AudioPanel(config=fl.AudioConfig(topic=f"{mic}/audio"))),
            fl.SplitItem(content=fl.PlotPanel(config=fl.PlotConfig(paths=scores))),
            fl.SplitItem(
                content=fl.RawMessagesPanel(
                    config=fl.RawMessagesConfig(topic_path=f"{results[0]}/json")
                )
            ),
            fl.SplitItem(
                content=fl.RawMessagesPanel(config=fl.RawMessagesConfig(topic_path=STATS_TOPIC))
            ),
        ],
    )
    view = fl.SplitContainer(
        direction="row",
        items=[
            fl.SplitItem(proportion=2, content=fl.SplitContainer(direction="column", items=images)),
            fl.SplitItem(proportion=1, content=side),
        ],
    )
    return json.dumps(json.loads(fl.Layout(content=view).to_json()), indent=2) + "\n"

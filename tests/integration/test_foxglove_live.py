"""The live Foxglove view, read by a client written from the protocol's specification
(foxglove/ws-protocol docs/spec.md, `foxglove.websocket.v1`) with the `websockets` package,
protobuf decoded from the advertised FileDescriptorSet by google.protobuf itself.

(foxglove-sdk 0.30 accepts only the subprotocol's successor name, `foxglove.sdk.v1`; the
client offers both, as the Foxglove app does, and reads the frames as the v1 spec says.)"""

from __future__ import annotations

import base64
import json
import struct
import time
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from websockets.sync.client import ClientConnection, connect

from streamfuse import Client

from ..conftest import Children
from .helpers import free_port, wait_healthy, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SUBPROTOCOLS = ["foxglove.sdk.v1", "foxglove.websocket.v1"]
WANTED = {
    "video/front/image",
    "audio/mic0/audio",
    "result/front/json",
    "result/front/annotations",
    "streamfuse/stats",
}


def _proto_class(schema_name: str, schema_b64: str) -> Any:
    fds = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(schema_b64))
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(schema_name))


def _layout_topics() -> set[str]:
    doc = json.loads((Path(__file__).parents[2] / "configs" / "foxglove-layout.json").read_text())
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if k in ("imageTopic", "topic", "topicPath") and isinstance(v, str):
                    found.add(v)
                elif k == "value" and isinstance(v, str):
                    found.add(v.split(".")[0])  # a message path: topic.field
                elif k == "annotations" and isinstance(v, dict):
                    found.update(v)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)
    return found


def _connect(port: int, deadline: float) -> ClientConnection:
    while True:
        try:
            return connect(f"ws://127.0.0.1:{port}", subprotocols=SUBPROTOCOLS)  # type: ignore[arg-type]
        except OSError:
            assert time.monotonic() < deadline, "the live view is not serving"
            time.sleep(0.2)


def _channels(ws: ClientConnection, deadline: float) -> dict[str, dict[str, Any]]:
    info = json.loads(ws.recv(timeout=10))
    assert info["op"] == "serverInfo" and ws.subprotocol in SUBPROTOCOLS
    channels: dict[str, dict[str, Any]] = {}
    while not set(channels) >= WANTED:
        assert time.monotonic() < deadline, sorted(channels)
        msg = ws.recv(timeout=10)
        if isinstance(msg, str) and (doc := json.loads(msg))["op"] == "advertise":
            channels.update({c["topic"]: c for c in doc["channels"]})
    return channels


def test_a_foxglove_client_sees_images_audio_results_overlays_and_stats(
    tmp_path: Path, children: Children
) -> None:
    ws_port = free_port()
    path, cfg = write_config(tmp_path)
    sup = children.streamfuse("run", "--config", str(path), "--foxglove", f"127.0.0.1:{ws_port}")
    health = wait_healthy(cfg["http"]["port"])
    assert health["children"]["foxglove"]["running"]
    deadline = time.monotonic() + 60
    with _connect(ws_port, deadline) as ws:
        channels = _channels(ws, deadline)
        # the shipped layout (configs/foxglove-layout.json) names only topics served here
        assert _layout_topics() <= set(channels), _layout_topics() - set(channels)
        by_id = {c["id"]: c for c in channels.values() if c["topic"] in WANTED}
        subs = [{"id": k, "channelId": cid} for k, cid in enumerate(by_id)]
        ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))
        sub_channel = {s["id"]: by_id[s["channelId"]] for s in subs}
        got: dict[str, list[tuple[int, bytes]]] = {}

        def counted() -> bool:  # a stats message that has seen the camera's frames
            docs = (json.loads(d) for _, d in got.get("streamfuse/stats", []))
            return any(d["streams"].get("video/front", {}).get("sent", 0) > 0 for d in docs)

        while not (set(got) >= WANTED and len(got["result/front/json"]) >= 2 and counted()):
            assert time.monotonic() < deadline, sorted(got)
            msg = ws.recv(timeout=10)
            if isinstance(msg, bytes) and msg[0] == 0x01:  # Message Data
                sub_id, t = struct.unpack_from("<IQ", msg, 1)
                got.setdefault(sub_channel[sub_id]["topic"], []).append((t, msg[13:]))
    decoded: dict[str, Any] = {}
    for topic, c in channels.items():
        if topic not in WANTED:
            continue
        data = got[topic][-1][1]
        if c["encoding"] == "protobuf":
            assert c["schemaName"].startswith("foxglove.")
            decoded[topic] = _proto_class(c["schemaName"], c["schema"]).FromString(data)
        else:
            assert c["encoding"] == "json"
            doc = json.loads(data)
            jsonschema.validate(doc, json.loads(c["schema"]))
            decoded[topic] = doc
    image = decoded["video/front/image"]
    assert image.format == "jpeg" and image.frame_id == "front"
    pixels = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR)
    assert pixels.shape == (480, 640, 3)
    audio = decoded["audio/mic0/audio"]
    assert audio.format == "pcm-s16" and audio.sample_rate == 16000
    assert audio.number_of_channels == 1 and len(audio.data) >= 2 * 16000 * 250 // 1000 - 2
    result = decoded["result/front/json"]
    assert result["kind"] == "classification" and 0 <= result["score"] <= 1
    labels = {json.loads(d)["label"] for _, d in got["result/front/json"]}
    text = decoded["result/front/annotations"].texts[0].text
    assert text.split()[0] in labels
    stats = decoded["streamfuse/stats"]
    assert {"video/front", "audio/mic0", "result/"} <= set(stats["streams"]), stats
    assert stats["streams"]["video/front"]["sent"] > 0
    assert stats["live"]["images"] >= 1 and stats["live"]["thinned"] >= 1
    children.stop(sup)


def test_a_stalled_foxglove_client_slows_nothing(tmp_path: Path, children: Children) -> None:
    """A client that subscribes to the images and then never reads: the engine's results
    keep their rate and latency (its own process; the server drops that client's oldest)."""
    ws_port = free_port()
    path, cfg = write_config(tmp_path)
    cfg["foxglove"] = {"fps": 30}
    path.write_text(yaml.safe_dump(cfg))
    sup = children.streamfuse("run", "--config", str(path), "--foxglove", str(ws_port))
    wait_healthy(cfg["http"]["port"])
    deadline = time.monotonic() + 60
    with Client(cfg["engine"]["output"]) as client, _connect(ws_port, deadline) as ws:

        def results(n: int) -> tuple[float, list[float]]:
            """The next ``n`` results: how long they took to come, and their latencies."""
            lat: list[float] = []
            t0 = time.monotonic()
            while len(lat) < n:
                assert time.monotonic() - t0 < 30, f"{len(lat)} of {n} results in 30 s"
                if (r := client.recv(timeout=1)) is not None:
                    lat.append(r.latency["total"] / 1e6)
            return time.monotonic() - t0, lat

        channels = _channels(ws, deadline)
        took_before, before = results(12)
        image = channels["video/front/image"]["id"]
        ws.send(json.dumps({"op": "subscribe", "subscriptions": [{"id": 1, "channelId": image}]}))
        took_during, during = results(
            24
        )  # ~180 images of ~30 KB queued at a reader that never reads
    # a count, and the time it took as a ratio: as fast as before (windows come every 0.25 s)
    assert took_during / 2 < 1.25 * took_before + 0.25, (took_before, took_during)
    assert float(np.median(during)) < 3 * float(np.median(before)) + 20, (before, during)
    children.stop(sup)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("nope", "error: --foxglove: 'nope': give [HOST:]PORT"),
        ("127.0.0.1:", "error: --foxglove: '127.0.0.1:': give [HOST:]PORT"),
        ("99999", "error: foxglove.port in "),
        ("taken", "error: foxglove.port: tcp://127.0.0.1:{port}: the port is in use"),
    ],
)
def test_a_bad_foxglove_address_is_one_line_before_anything_starts(
    value: str, expected: str, tmp_path: Path
) -> None:
    import socket

    from .helpers import run_cli

    path, _ = write_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        arg = str(port) if value == "taken" else value
        res = run_cli("run", "--config", str(path), "--foxglove", arg, timeout=30)
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith(expected.format(port=port)), line

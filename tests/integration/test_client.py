"""The subscriber SDK against a real publisher: typed results, gaps, garbage, reconnect."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from streamfuse import Client
from streamfuse.messages import Classification
from streamfuse.transport import Publisher

from .helpers import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def result(seq: int, label: str = "3", stream: str = "front") -> Classification:
    return Classification(stream=stream, seq=seq, t_capture=time.monotonic_ns(), label=label)


def test_sequence_gaps_count_as_missed_and_garbage_is_skipped() -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    with Publisher(ep) as pub, Client(ep) as client:
        assert pub.wait_for_subscriber(5)
        raw = pub._sock  # the publisher's own socket, to send what a broken peer would
        pub.send("result/front", result(0))
        raw.send_multipart([b"result/front", b"\xc1 not msgpack"])
        raw.send_multipart([b"result/front"])
        pub.send("result/front", result(4))
        got = [client.recv(timeout=5), client.recv(timeout=5)]
        assert [r.seq for r in got if r is not None] == [0, 4]
        assert client.missed == 3 and client.rejected == 2 and client.received == 2


def test_a_flooded_client_loses_messages_and_says_how_many() -> None:
    """sndhwm 4 + rcvhwm 2 and a client that does not read while 20,000 go out: the
    publisher drops for it without waiting, and the client counts the gap."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    with Publisher(ep, sndhwm=4) as pub, Client(ep, rcvhwm=2) as client:
        assert pub.wait_for_subscriber(5)
        t0 = time.monotonic()
        for seq in range(20_000):
            pub.send("result/front", result(seq))
        assert time.monotonic() - t0 < 10  # never blocked on the reader
        seqs = []
        while (r := client.recv(timeout=1)) is not None:
            seqs.append(r.seq)
        assert client.missed > 1000
        assert client.missed + len(seqs) == seqs[-1] + 1


def test_client_reconnects_to_a_restarted_publisher() -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    with Client(ep, reconnect_max_ms=200) as client:
        with Publisher(ep) as pub:
            assert pub.wait_for_subscriber(5)
            pub.send("result/front", result(0))
            assert client.recv(timeout=5) is not None
        time.sleep(0.5)  # the daemon is down
        with Publisher(ep) as pub:
            # The client comes back on its own. (libzmq attaches the new connection when the
            # app next uses the socket, as an app blocked in recv() does; so keep reading.)
            deadline = time.monotonic() + 10
            r = None
            while r is None and time.monotonic() < deadline:
                pub.send("result/front", result(0, label="7"))
                r = client.recv(timeout=0.1)
            assert r is not None and r.label == "7"


def test_asyncio_iteration_and_topic_filter() -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"

    async def main() -> list[str]:
        out = []
        with Publisher(ep) as pub:
            async with Client(ep, topics=["result/back"]) as client:

                async def publish(label: str) -> None:
                    for seq in range(200):  # until the subscription has arrived
                        pub.send("result/front", result(seq, stream="front"))
                        pub.send("result/back", result(seq, label=label, stream="back"))
                        await asyncio.sleep(0.05)

                sender = asyncio.ensure_future(publish("9"))
                first = await client.arecv(timeout=10)
                sender.cancel()
                assert first is not None
                out.append(f"{first.stream}:{first.label}")
                sender = asyncio.ensure_future(publish("2"))
                async for r in client:
                    if r.label == "2":
                        out.append(f"{r.stream}:{r.label}")
                        break
                    assert r.stream == "back"
                sender.cancel()
        return out

    assert asyncio.run(main()) == ["back:9", "back:2"]


def test_a_bad_endpoint_is_named() -> None:
    from streamfuse.errors import EndpointError

    with pytest.raises(EndpointError, match="nonsense://x"):
        Client("nonsense://x")
    assert zmq.zmq_version_info() >= (4, 3)


def test_the_robot_example_stops_only_when_sight_and_sound_agree() -> None:
    """examples/robot_app.py against a publisher sending what the daemon would: each branch
    of the app (STOP, careful, a plain line) reached, and a confident "0" that the two
    sensors disagree on, or one under --min-score, does not stop the robot."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    agree = {"image_label": "0", "audio_label": "0", "image_score": 0.97, "audio_score": 0.9}
    sent = [
        Classification(stream="front", seq=0, t_capture=1, label="0", score=0.96, **agree),
        Classification(stream="front", seq=1, t_capture=2, label="0", score=0.95,
                       image_label="0", audio_label="6"),
        Classification(stream="front", seq=2, t_capture=3, label="0", score=0.5, **agree),
        Classification(stream="front", seq=3, t_capture=4, label="0", score=0.93,
                       degraded=True, missing=["audio/mic0"], image_label="0"),
        Classification(stream="front", seq=4, t_capture=5, label="7", score=0.99,
                       image_label="7", audio_label="7"),
    ]  # fmt: skip
    app = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "robot_app.py"), "--endpoint", ep,
         "--count", str(len(sent)), "--min-score", "0.9"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with Publisher(ep) as pub:
            assert pub.wait_for_subscriber(30), "the robot app never subscribed"
            for r in sent:
                pub.send("result/front", r)
            out, err = app.communicate(timeout=30)
    finally:
        app.kill()
    assert app.returncode == 0, err
    assert out.splitlines() == [
        "STOP: saw and heard '0' (0.96)",
        "front: 0 (0.95)",  # the microphone heard a 6: no stop
        "front: 0 (0.50)",  # agreed, but under --min-score
        "careful: running on audio/mic0 missing",
        "front: 7 (0.99)",
    ]

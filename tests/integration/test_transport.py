"""Publisher and Subscriber over real ZeroMQ sockets."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfuse import messages as m
from streamfuse.errors import EndpointError
from streamfuse.transport import Publisher, Sources, Subscriber

pytestmark = pytest.mark.integration


def frame(seq: int, w: int = 64, h: int = 48) -> tuple[m.VideoFrame, np.ndarray]:
    img = np.full((h, w, 3), seq % 256, np.uint8)
    return m.VideoFrame(stream="front", seq=seq, t_capture=seq, width=w, height=h), img


def test_frames_arrive_intact_and_in_order(endpoint: str, zctx: zmq.Context) -> None:
    with (
        Publisher(endpoint, context=zctx) as pub,
        Subscriber(endpoint, ["video/"], context=zctx) as sub,
    ):
        assert pub.wait_for_subscriber(5, b"video/front")
        for i in range(20):
            pub.send("video/front", *frame(i))
        got = [sub.recv(timeout=5) for _ in range(20)]
    assert [e.header.seq for e in got if e] == list(range(20))
    assert all(int(m.image_array(e)[0, 0, 0]) == e.header.seq for e in got if e)
    assert sub.streams[b"video/front"].gaps == 0


def test_sequence_gaps_are_counted(endpoint: str, zctx: zmq.Context) -> None:
    with Publisher(endpoint, context=zctx) as pub, Subscriber(endpoint, context=zctx) as sub:
        assert pub.wait_for_subscriber(5)
        for i in (0, 1, 5, 6, 3):
            pub.send("video/front", *frame(i))
        for _ in range(5):
            assert sub.recv(timeout=5) is not None
    st_ = sub.streams[b"video/front"]
    assert (st_.received, st_.gaps, st_.reordered) == (5, 3, 1)


def test_recv_times_out_with_none(endpoint: str, zctx: zmq.Context) -> None:
    with Publisher(endpoint, context=zctx), Subscriber(endpoint, context=zctx) as sub:
        assert sub.recv(timeout=0.05) is None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    garbage=st.lists(
        st.lists(st.binary(max_size=64), min_size=1, max_size=4), min_size=1, max_size=5
    )
)
def test_garbage_on_the_socket_is_counted_and_the_subscriber_keeps_going(
    endpoint: str, zctx: zmq.Context, garbage: list[list[bytes]]
) -> None:
    raw = zctx.socket(zmq.XPUB)
    raw.bind(endpoint)
    try:
        with Subscriber(endpoint, context=zctx) as sub:
            raw.recv()  # the subscription: the subscriber is connected
            for parts in garbage:
                raw.send_multipart([b"video/front", *parts])
            good_header, img = frame(7)
            raw.send_multipart([b"video/front", m.encode(good_header), img.tobytes()])
            env = sub.recv(timeout=5)
            assert env is not None and env.header.seq == 7
            # Every garbage message was either rejected and counted, or happened to be valid.
            assert sum(sub.rejected.values()) + sub.streams[b"video/front"].received - 1 == len(
                garbage
            )
    finally:
        raw.close(linger=0)


@pytest.mark.parametrize("reader", ["subscriber", "sources"])
def test_a_flood_of_rejects_does_not_hold_recv_past_its_timeout(
    reader: str, endpoint: str, zctx: zmq.Context
) -> None:
    """A reader whose queue holds more garbage than it can reject within its timeout still
    returns on time (the engine's loop, its heartbeats and deadlines, depend on it). Found
    by benchmarks/fuzz.py: on a busy box the engine went 3 s without a heartbeat."""
    import time

    raw = zctx.socket(zmq.XPUB)
    raw.setsockopt(zmq.SNDHWM, 0)
    raw.bind(endpoint)
    n = 30_000
    try:
        sub: Subscriber | Sources
        if reader == "subscriber":
            sub = Subscriber(endpoint, rcvhwm=0, context=zctx)
        else:
            sub = Sources({endpoint: ["video/front"]}, rcvhwm=0)
        with sub:
            raw.recv()  # subscribed
            for i in range(n):
                raw.send_multipart([b"video/front", b"\xc1 not msgpack %d" % i])
            deadline = time.monotonic() + 10
            while sum(sub.rejected.values()) == 0:  # the flood is arriving
                assert sub.recv(timeout=0) is None and time.monotonic() < deadline
            t = time.monotonic()
            assert sub.recv(timeout=0.01) is None
            took = time.monotonic() - t
            assert took < 0.25, took  # rejecting all 30,000 takes ~1 s
            assert sum(sub.rejected.values()) < n
    finally:
        raw.close(linger=0)


def test_a_publisher_can_wait_for_each_of_its_readers(endpoint: str, zctx: zmq.Context) -> None:
    """``count``: readers of the topic counted apart (two on the same prefix are two);
    ``prefix``: exactly that subscription (b"": a recorder's, of everything). What `run`
    uses so that no reader misses a sensor's or the engine's first message."""
    with Publisher(endpoint, context=zctx) as pub, Subscriber(endpoint, ["video/"], context=zctx):
        assert pub.wait_for_subscriber(5, b"video/front", count=1)
        assert not pub.wait_for_subscriber(0.3, b"video/front", count=2)
        assert not pub.wait_for_subscriber(0.1, prefix=b"")
        with Subscriber(endpoint, ["video/"], context=zctx):
            assert pub.wait_for_subscriber(5, b"video/front", count=2)
            assert not pub.wait_for_subscriber(0.1, prefix=b"")
        with Subscriber(endpoint, [""], context=zctx):
            assert pub.wait_for_subscriber(5, prefix=b"")
            assert pub.wait_for_subscriber(5, b"video/front", count=2)


def test_specific_rejections_are_counted_by_reason(endpoint: str, zctx: zmq.Context) -> None:
    raw = zctx.socket(zmq.XPUB)
    raw.bind(endpoint)
    try:
        with Subscriber(endpoint, context=zctx) as sub:
            raw.recv()
            hdr, img = frame(1)
            raw.send_multipart([b"video/front", m.encode(hdr), img.tobytes()[:-1]])  # short payload
            raw.send_multipart([b"video/front", b"\xc1\xc1"])  # not msgpack
            raw.send_multipart(
                [
                    b"video/front",
                    msgpack.packb({**msgpack.unpackb(m.encode(hdr)), "v": 99}),
                    img.tobytes(),
                ]
            )
            raw.send_multipart([b"video/front", m.encode(hdr), img.tobytes()])
            assert sub.recv(timeout=5) is not None
            assert sub.rejected == {"size_mismatch": 1, "malformed": 1, "unknown_version": 1}
    finally:
        raw.close(linger=0)


def test_bad_endpoints_name_the_endpoint(zctx: zmq.Context) -> None:
    with pytest.raises(EndpointError, match="'nonsense'"):
        Publisher("nonsense", context=zctx)
    with pytest.raises(EndpointError, match=r"tcp://127\.0\.0\.1:notaport"):
        Subscriber("tcp://127.0.0.1:notaport", context=zctx)


def test_two_publishers_cannot_bind_one_endpoint(zctx: zmq.Context) -> None:
    first = Publisher("tcp://127.0.0.1:*", context=zctx)
    try:
        with pytest.raises(EndpointError, match="Address already in use"):
            Publisher(first.endpoint, context=zctx)
    finally:
        first.close()


def test_each_endpoint_speaks_only_for_its_own_topics(tmp_path: Path) -> None:
    """Trust by origin: the camera's endpoint cannot speak for the microphone (its topic is
    never even subscribed there) nor for a look-alike of its own topic (rejected
    ``foreign_topic``, no state); the microphone's own heartbeat arrives."""
    cam_ep, mic_ep = f"ipc://{tmp_path}/cam", f"ipc://{tmp_path}/mic"
    beat = m.Heartbeat(stream="x", t_capture=1, state="eof")
    with (
        Publisher(cam_ep, lossless=True) as cam,
        Publisher(mic_ep, lossless=True) as mic,
        Sources(
            {cam_ep: ["video/front", "heartbeat/video/front"], mic_ep: ["heartbeat/audio/mic0"]}
        ) as sources,
    ):
        assert cam.wait_for_subscriber(5, b"heartbeat/video/front")
        assert mic.wait_for_subscriber(5, b"heartbeat/audio/mic0")
        cam.send("heartbeat/audio/mic0", beat)  # the camera forging the mic's end
        for i in range(100):
            cam.send(f"heartbeat/video/front{i}", beat)  # look-alikes of its own topic
        cam.send("video/front", *frame(0))
        mic.send("heartbeat/audio/mic0", beat)
        got = [sources.recv(timeout=5) for _ in range(2)]
        assert sources.recv(timeout=0.3) is None
    assert sorted(e.topic for e in got if e) == [b"heartbeat/audio/mic0", b"video/front"]
    assert sources.rejected == {"foreign_topic": 100}
    assert set(sources.streams) == {b"heartbeat/audio/mic0", b"video/front"}

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

from ..conftest import examples

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
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
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


# docs/protocol.md's limits, each at its edge and one past it, as a sender in another
# language would put them on the wire (plain msgpack: nothing checked on the way out).
_N = 2**62  # counters and times: 0 .. 2^62-1
_VIDEO = {"v": 1, "kind": "video", "stream": "f", "t_capture": 1, "width": 2, "height": 1,
          "pixel_format": "gray8"}  # fmt: skip
_AUDIO = {"v": 1, "kind": "audio", "stream": "a", "t_capture": 1, "sample_rate": 16_000,
          "channels": 1, "sample_format": "s16le", "n_samples": 2}  # fmt: skip
_RESULT = {"v": 1, "kind": "classification", "stream": "f", "t_capture": 1}
_BEAT = {"v": 1, "kind": "heartbeat", "stream": "f", "t_capture": 1}
_REF = {"stream": "video/f", "t0": 1, "t1": 1}
LIMITS: list[tuple[str, dict[str, object], dict[str, object]]] = [
    # (what, the field(s) at the limit: accepted, one past it: invalid)
    ("seq", {"seq": _N - 1}, {"seq": _N}),
    ("seq below 0", {"seq": 0}, {"seq": -1}),
    ("t_capture", {"t_capture": _N - 1}, {"t_capture": _N}),
    ("t_wall", {"t_wall": _N - 1}, {"t_wall": _N}),
    ("media_pos", {"media_pos": _N - 1}, {"media_pos": _N}),
    ("stream length", {"stream": "s" * 256}, {"stream": "s" * 257}),
    ("stream empty", {"stream": "s"}, {"stream": ""}),
    ("width", {"width": 16384}, {"width": 16385}),
    ("height", {"height": 16384, "width": 1}, {"height": 16385, "width": 1}),
    ("width 0", {"width": 1}, {"width": 0}),
    ("sample_rate low", {"sample_rate": 1000}, {"sample_rate": 999}),
    ("sample_rate high", {"sample_rate": 384_000}, {"sample_rate": 384_001}),
    ("channels", {"channels": 64}, {"channels": 65}),
    ("channels 0", {"channels": 1}, {"channels": 0}),
    ("n_samples: 10 s", {"n_samples": 160_000}, {"n_samples": 160_001}),
    ("score", {"score": 1.001}, {"score": 1.0011}),
    ("score below 0", {"score": 0.0}, {"score": -0.001}),
    ("score NaN", {"score": 0.5}, {"score": float("nan")}),
    ("label", {"label": "l" * 256}, {"label": "l" * 257}),
    ("topk", {"topk": [["3", 0.1]] * 1024}, {"topk": [["3", 0.1]] * 1025}),
    ("inputs", {"inputs": [_REF] * 64}, {"inputs": [_REF] * 65}),
    ("missing", {"missing": ["audio/a"] * 64}, {"missing": ["audio/a"] * 65}),
    ("latency entries", {"latency": {f"s{i}": 1 for i in range(64)}},
     {"latency": {f"s{i}": 1 for i in range(65)}}),
    ("source", {"source": "s" * 4096}, {"source": "s" * 4097}),
    ("last_error", {"last_error": "e" * 4096}, {"last_error": "e" * 4097}),
    ("drops entries", {"drops": {f"r{i}": 1 for i in range(256)}},
     {"drops": {f"r{i}": 1 for i in range(257)}}),
    ("drops key", {"drops": {"k" * 256: 1}}, {"drops": {"k" * 257: 1}}),
    ("drops count", {"drops": {"late": _N - 1}}, {"drops": {"late": _N}}),
    ("rate_hz", {"rate_hz": 1e9}, {"rate_hz": 1.0000001e9}),
    ("rate_hz NaN", {"rate_hz": 0.0}, {"rate_hz": float("inf")}),
]  # fmt: skip
_KIND = {"width": _VIDEO, "height": _VIDEO, "sample_rate": _AUDIO, "channels": _AUDIO,
         "n_samples": _AUDIO, "score": _RESULT, "label": _RESULT, "topk": _RESULT,
         "inputs": _RESULT, "missing": _RESULT, "latency": _RESULT, "source": _BEAT,
         "last_error": _BEAT, "drops": _BEAT, "rate_hz": _BEAT}  # fmt: skip


def _wire(fields: dict[str, object]) -> list[bytes]:
    base = next((_KIND[k] for k in fields if k in _KIND), _VIDEO)
    header = {**base, **fields}
    topic = {"video": b"video/f", "audio": b"audio/a", "classification": b"result/f",
             "heartbeat": b"heartbeat/video/f"}[str(header["kind"])]  # fmt: skip
    frames = [topic, msgpack.packb(header)]
    if header["kind"] == "video":
        frames.append(bytes(int(header["width"]) * int(header["height"])))  # type: ignore[call-overload]
    elif header["kind"] == "audio":
        frames.append(bytes(2 * int(header["n_samples"]) * int(header["channels"])))  # type: ignore[call-overload]
    return frames


def test_every_documented_limit_holds_at_the_socket(endpoint: str, zctx: zmq.Context) -> None:
    """Each limit in docs/protocol.md's validation section, sent over a real socket at the
    limit (delivered) and one past it (rejected as `invalid`, counted, the reader goes on);
    the topic's 256 bytes too (`malformed` past them)."""
    raw = zctx.socket(zmq.XPUB)
    raw.bind(endpoint)
    try:
        with Subscriber(endpoint, context=zctx) as sub:
            raw.recv()  # its subscription
            for what, ok, bad in LIMITS:
                raw.send_multipart(_wire(ok))
                env = sub.recv(timeout=5)
                assert env is not None, f"{what} at the limit was not delivered: {sub.rejected}"
                before = sub.rejected["invalid"]
                raw.send_multipart(_wire(bad))
                raw.send_multipart(_wire({}))  # and the next good message comes through
                assert sub.recv(timeout=5) is not None
                assert sub.rejected["invalid"] == before + 1, f"{what} past the limit passed"
            for topic, reason in ((b"video/" + b"t" * 250, None), (b"video/" + b"t" * 251,
                                                                  "malformed")):  # fmt: skip
                raw.send_multipart([topic, *_wire({})[1:]])
                raw.send_multipart(_wire({}))
                got = sub.recv(timeout=5)
                assert got is not None
                if reason is None:
                    assert got.topic == topic
                    assert sub.recv(timeout=5) is not None
                else:
                    assert got.topic == b"video/f" and sub.rejected[reason] == 1
            assert set(sub.rejected) <= {"invalid", "malformed"}
            assert sub.rejected["invalid"] == len(LIMITS)
    finally:
        raw.close(linger=0)


def test_a_bug_in_a_reader_is_counted_logged_once_per_topic_and_skipped(
    endpoint: str,
    zctx: zmq.Context,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/protocol.md `internal_error`: a message that meets a bug in the reader (here a
    fault put into the decoder for one topic) is counted, logged once per topic, skipped;
    the reader goes on with the next message on the same socket."""
    real = m.decode

    def buggy(parts, **kw):  # type: ignore[no-untyped-def]
        if bytes(parts[0]) == b"video/bug":
            raise KeyError("a bug")
        return real(parts, **kw)

    monkeypatch.setattr(m, "decode", buggy)
    with Publisher(endpoint, context=zctx) as pub, Subscriber(endpoint, context=zctx) as sub:
        assert pub.wait_for_subscriber(5)
        hdr, img = frame(1)
        for topic in ("video/bug", "video/bug", "video/front"):
            pub.send(topic, hdr, img)
        env = sub.recv(timeout=5)
        assert env is not None and env.topic == b"video/front"
        assert sub.rejected == {"internal_error": 2}
    logged = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(logged) == 1 and "'video/bug'" in logged[0].getMessage()
    assert "KeyError" in logged[0].getMessage()

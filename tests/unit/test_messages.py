"""The wire format: round trips, plain-msgpack interop, and rejection of bad input."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfuse import messages as m
from streamfuse.errors import DecodeError

from ..conftest import examples

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)
nanos = st.integers(0, m.MAX_INT - 1)
base = {
    "stream": names | st.just("n" * 256),
    "seq": st.integers(0, m.MAX_INT - 1),
    "t_capture": nanos,
    "t_wall": nanos,
    "media_pos": st.none() | nanos,
}

# Every field of every kind has a strategy (test_every_field_is_generated checks), reaching
# its documented edges: dimensions to 16384, 64 channels, names of 256 characters.
video_fields = {
    # one side at the full 16384, the other small: the payload stays small
    "width": st.integers(1, 16384),
    "height": st.integers(1, 4),
    "pixel_format": st.sampled_from(sorted(m.PIXEL_FORMATS)),
    "encoding": st.just("raw"),  # jpeg: its payload is checked apart (test_each_reject_reason)
    **base,
}
video = st.builds(m.VideoFrame, **video_fields)
audio_fields = {
    "sample_rate": st.integers(1000, 384_000),
    "channels": st.integers(1, 64),
    "sample_format": st.sampled_from(sorted(m.SAMPLE_FORMATS)),
    "n_samples": st.integers(1, 64),
    **{**base, "t_capture": st.integers(0, m.MAX_INT - m.MAX_WINDOW_NS - 1)},
}
audio = st.builds(m.AudioWindow, **audio_fields)
probabilities = st.floats(0.0, 1.0)
names = st.text(min_size=1, max_size=12)
input_ref = st.builds(
    m.InputRef,
    stream=names,
    seq=nanos,
    t0=nanos,
    t1=nanos,
    media_t0=st.none() | nanos,
    media_t1=st.none() | nanos,
)
classification_fields = dict(
    label=st.text(max_size=10) | st.just("l" * 256),
    score=probabilities,
    topk=st.lists(st.tuples(st.text(max_size=5), probabilities), max_size=3),
    image_label=st.none() | st.text(max_size=10),
    image_score=st.none() | probabilities,
    audio_label=st.none() | st.text(max_size=10),
    audio_score=st.none() | probabilities,
    degraded=st.booleans(),
    missing=st.lists(names, max_size=3),
    inputs=st.lists(input_ref, max_size=3),
    latency=st.dictionaries(st.text(max_size=10), st.integers(0, 2**62), max_size=7),
    model=st.text(max_size=12),
    backend=st.text(max_size=20),
    reasons=st.dictionaries(names, names, max_size=3),
    **base,
)
classification = st.builds(m.Classification, **classification_fields)
counters = st.dictionaries(st.text(max_size=10), st.integers(0, m.MAX_INT - 1), max_size=4)
CLOCK_OFFSETS = st.dictionaries(st.text(max_size=8), st.integers(-(2**62), 2**62), max_size=3)
heartbeat_fields = dict(
    source=st.text(max_size=20) | st.just("s" * 4096),
    pid=st.integers(0, 2**31 - 1),
    uptime_ns=nanos,
    sent=st.integers(0, m.MAX_INT - 1),
    rate_hz=st.floats(0.0, 1e9),
    drops=counters,
    errors=counters,
    last_error=st.none() | st.text(max_size=20),
    state=st.sampled_from(["running", "eof", "stopped", "limit"]),
    depths=counters,
    received=counters,
    clock_sync=st.sampled_from(["synced", "unsynced", "unknown"]),
    clock_error_ns=st.none() | nanos,
    model_swaps=st.integers(0, m.MAX_INT - 1),
    clock_offsets_ns=CLOCK_OFFSETS,
    **base,
)
heartbeat = st.builds(m.Heartbeat, **heartbeat_fields)
any_header = st.one_of(video, audio, classification, heartbeat)


def payload_for(h: m.Message) -> bytes | None:
    size = m.expected_payload_size(h)
    if not size:
        return None
    if isinstance(h, m.AudioWindow) and h.sample_format == "f32le":  # finite samples only
        return np.linspace(-1, 1, size // 4, dtype="<f4").tobytes()
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def parts(h: m.Message, payload: bytes | None = None) -> list[bytes]:
    out = [b"t/x", m.encode(h)]
    p = payload if payload is not None else payload_for(h)
    if p is not None:
        out.append(p)
    return out


def test_every_field_is_generated() -> None:
    """A field added to a kind without a strategy here would go untested: fail instead."""
    kinds = [
        (m.VideoFrame, video_fields),
        (m.AudioWindow, audio_fields),
        (m.Classification, classification_fields),
        (m.Heartbeat, heartbeat_fields),
    ]
    for kind, fields in kinds:
        assert set(kind.__struct_fields__) - {"v"} == set(fields), kind.__name__


@given(any_header)
def test_every_kind_round_trips(h: m.Message) -> None:
    env = m.decode(parts(h))
    assert env.header == h
    assert (env.payload.tobytes() if env.payload is not None else None) == payload_for(h)


@given(any_header)
def test_plain_msgpack_reads_every_kind(h: m.Message) -> None:
    """A C++ or Rust app with any msgpack library sees a plain map with these keys."""
    plain = msgpack.unpackb(m.encode(h), raw=False, strict_map_key=False)
    assert isinstance(plain, dict)
    assert plain["v"] == m.PROTOCOL_VERSION
    assert (
        plain["kind"]
        == {
            m.VideoFrame: "video",
            m.AudioWindow: "audio",
            m.Classification: "classification",
            m.Heartbeat: "heartbeat",
        }[type(h)]
    )
    # the keys on the wire are those docs/protocol.md lists, not the struct's own names
    assert set(plain) == WIRE_COMMON | WIRE_KEYS[plain["kind"]]
    for key in set(plain) - {"kind"}:
        expected = getattr(h, key)
        if key == "inputs":  # maps with the documented keys
            expected = [{k: getattr(r, k) for k in WIRE_INPUT} for r in expected]
        elif isinstance(expected, list):  # tuples travel as arrays
            expected = [list(x) if isinstance(x, tuple) else x for x in expected]
        assert plain[key] == expected, key


#: The wire keys of docs/protocol.md's tables, written out here (a renamed field fails).
WIRE_COMMON = {"kind", "v", "stream", "seq", "t_capture", "t_wall", "media_pos"}
WIRE_KEYS = {
    "video": {"width", "height", "pixel_format", "encoding"},
    "audio": {"sample_rate", "channels", "sample_format", "n_samples"},
    "classification": {"label", "score", "topk", "image_label", "image_score", "audio_label",
                       "audio_score", "degraded", "missing", "inputs", "latency", "model",
                       "backend", "reasons"},
    "heartbeat": {"source", "pid", "uptime_ns", "sent", "rate_hz", "drops", "errors",
                  "last_error", "state", "depths", "received", "clock_sync", "clock_error_ns",
                  "clock_offsets_ns", "model_swaps"},
}  # fmt: skip
WIRE_INPUT = {"stream", "seq", "t0", "t1", "media_t0", "media_t1"}


def test_the_wire_keys_here_are_the_documented_ones() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    for key in sorted(WIRE_COMMON | set().union(*WIRE_KEYS.values()) | WIRE_INPUT):
        assert f"`{key}`" in doc, key


def test_a_message_built_with_plain_msgpack_decodes() -> None:
    header = msgpack.packb(
        {
            "kind": "audio",
            "v": 1,
            "stream": "mic0",
            "seq": 3,
            "t_capture": 10,
            "sample_rate": 16000,
            "channels": 1,
            "sample_format": "s16le",
            "n_samples": 4,
            "added_in_a_later_version": [1, 2],
        }
    )
    env = m.decode([b"audio/mic0", header, b"\x00" * 8])
    assert isinstance(env.header, m.AudioWindow)
    assert env.header.n_samples == 4 and env.header.t_wall == 0 and env.header.media_pos is None
    assert m.audio_array(env).shape == (4, 1)


@settings(max_examples=examples(500))
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=4))
def test_garbage_is_rejected_with_a_reason_never_a_crash(frames: list[bytes]) -> None:
    try:
        m.decode(frames)
    except DecodeError as err:
        assert err.reason in (
            "malformed",
            "truncated",
            "oversized",
            "invalid",
            "size_mismatch",
            "unknown_version",
            "unknown_kind",
        )
        assert str(err)


@given(any_header, st.data())
def test_truncated_headers_are_rejected(h: m.Message, data: st.DataObject) -> None:
    raw = m.encode(h)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(DecodeError) as exc:
        m.decode([b"t", raw[:cut], payload_for(h) or b""])
    assert exc.value.reason in ("truncated", "malformed", "invalid")


VF = m.VideoFrame(stream="front", t_capture=1, width=4, height=2)


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"t"], "malformed"),
        ([b"t", m.encode(VF), bytes(24), b"extra"], "malformed"),
        ([b"t", b"\xc1", bytes(24)], "malformed"),
        ([b"t", msgpack.packb([1, 2, 3]), bytes(24)], "malformed"),
        ([b"t", m.encode(VF)[:-3], bytes(24)], "truncated"),
        ([b"t", b"\x80" + bytes(m.MAX_HEADER_BYTES), b""], "oversized"),
        ([b"t", m.encode(VF), bytes(23)], "size_mismatch"),
        ([b"t", m.encode(VF), bytes(25)], "size_mismatch"),
        ([b"t", m.encode(VF)], "size_mismatch"),
        (
            [b"t", msgpack.packb({**msgpack.unpackb(m.encode(VF)), "v": 2}), bytes(24)],
            "unknown_version",
        ),
        ([b"t", msgpack.packb({"v": 9, "kind": "hologram"}), b""], "unknown_version"),
        ([b"t", msgpack.packb({"v": 1, "kind": "hologram"}), b""], "unknown_kind"),
        (
            [b"t", msgpack.packb({**msgpack.unpackb(m.encode(VF)), "width": -4}), bytes(24)],
            "invalid",
        ),
        (
            [b"t", msgpack.packb({**msgpack.unpackb(m.encode(VF)), "width": "4"}), bytes(24)],
            "invalid",
        ),
        (
            [
                b"t",
                msgpack.packb({**msgpack.unpackb(m.encode(VF)), "pixel_format": "yuv"}),
                bytes(24),
            ],
            "invalid",
        ),
        (
            [
                b"t",
                m.encode(m.VideoFrame(stream="f", t_capture=1, width=4, height=2, encoding="jpeg")),
                b"GIF89a",
            ],
            "size_mismatch",
        ),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_each_reject_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        m.decode(frames)
    assert exc.value.reason == reason
    assert "rejected message on topic 't'" in str(exc.value)


def test_payload_over_the_limit_is_oversized() -> None:
    with pytest.raises(DecodeError) as exc:
        m.decode([b"t", m.encode(VF), bytes(24)], max_payload=16)
    assert exc.value.reason == "oversized"


def test_arrays_are_views_of_the_payload() -> None:
    env = m.decode([b"t", m.encode(VF), bytes(range(24))])
    img = m.image_array(env)
    assert img.shape == (2, 4, 3) and img[1, 3, 2] == 23
    assert env.payload is not None
    assert np.shares_memory(img, np.frombuffer(env.payload, np.uint8))  # a copy fails
    aw = m.AudioWindow(stream="a", t_capture=1, sample_rate=8000, channels=2, n_samples=3)
    pcm = np.arange(6, dtype="<f4")
    env = m.decode([b"audio/a", m.encode(aw), pcm.tobytes()])
    x = m.audio_array(env)
    assert x.shape == (3, 2) and x[2, 1] == 5.0
    assert env.payload is not None and np.shares_memory(x, np.frombuffer(env.payload, np.uint8))


def test_audio_window_end_time() -> None:
    w = m.AudioWindow(stream="a", t_capture=1_000, sample_rate=16000, channels=1, n_samples=8000)
    assert w.t_end == 1_000 + 500_000_000


# Structure-aware hostile headers: the real keys, every kind, values at and past the edges.
_edge_ints = st.sampled_from([-1, 0, 1, 2**31, 2**32, 2**62 - 1, 2**62, 2**63 - 1, 2**64 - 1])
_hostile_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | _edge_ints
    | st.floats()
    | st.text(max_size=300)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
_all_keys = sorted(
    {f for t in (m.VideoFrame, m.AudioWindow, m.Classification, m.Heartbeat)
     for f in t.__struct_fields__} | {"kind"}
)  # fmt: skip


@settings(max_examples=examples(500), deadline=None)
@given(
    kind=st.sampled_from(["video", "audio", "classification", "heartbeat", "other", 7]),
    fields=st.dictionaries(st.sampled_from(_all_keys), _hostile_values, max_size=8),
    topic=st.binary(min_size=0, max_size=300),
    payload=st.none() | st.binary(max_size=256),
    depth=st.integers(0, 2000),
)
def test_hostile_headers_are_accepted_or_rejected_by_reason_never_raised(
    kind: object, fields: dict[str, object], topic: bytes, payload: bytes | None, depth: int
) -> None:
    header = msgpack.packb({"v": 1, "kind": kind, **fields}, use_bin_type=True)
    if depth:  # wrap the whole header in `depth` one-element arrays
        header = b"\x91" * depth + header
    frames = [topic, header] + ([payload] if payload is not None else [])
    try:
        env = m.decode(frames)
    except DecodeError as err:
        assert err.reason in {
            "malformed", "truncated", "oversized", "invalid", "size_mismatch",
            "unknown_version", "unknown_kind",
        }  # fmt: skip
        assert "\n" not in str(err)
        return
    h = env.header  # what passes is within the ranges every reader relies on
    assert 0 <= h.seq < m.MAX_INT and 0 <= h.t_capture < m.MAX_INT
    assert env.topic.decode("utf-8") and len(env.topic) <= m.MAX_TOPIC_BYTES
    m.encode(h)  # and can be sent on again (a heartbeat, a recording)


@pytest.mark.parametrize(
    ("topic", "header"),
    [
        (b"audio/mic0", m.VideoFrame(stream="x", t_capture=1, width=1, height=1)),
        (b"video/front", m.Heartbeat(stream="x", t_capture=1)),
        (b"heartbeat/video/front", m.Classification(stream="x", t_capture=1)),
        (b"result/front", m.Heartbeat(stream="x", t_capture=1)),
    ],
)
def test_a_kind_on_another_kinds_topic_is_invalid(topic: bytes, header: m.Message) -> None:
    size = m.expected_payload_size(header)
    with pytest.raises(DecodeError) as info:
        m.decode([topic, m.encode(header), *([bytes(size)] if size else [])])
    assert info.value.reason == "invalid" and "on a topic of" in str(info.value)


def test_trailing_bytes_after_the_header_are_malformed() -> None:
    raw = m.encode(m.Heartbeat(stream="x", t_capture=1))
    with pytest.raises(DecodeError) as info:
        m.decode([b"heartbeat/x", raw + b"\x00"])
    assert info.value.reason == "malformed" and "trailing" in str(info.value)


def _window(rate: int, n: int, t: int = 1, fmt: str = "f32le", ch: int = 1) -> list[bytes]:
    w = m.AudioWindow(
        stream="a", t_capture=t, sample_rate=rate, channels=ch, n_samples=n,
        sample_format=fmt,  # type: ignore[arg-type]
    )  # fmt: skip
    width = 4 if fmt == "f32le" else 2
    return [b"audio/a", m.encode(w), bytes(n * ch * width)]


def test_an_audio_window_is_at_most_ten_seconds_long() -> None:
    m.decode(_window(1000, 10_000))  # exactly 10 s
    with pytest.raises(DecodeError) as info:
        m.decode(_window(1000, 10_001))
    assert (info.value.reason, info.value.detail) == (
        "invalid", "audio window of 10.0 s (at most 10 s)"
    )  # fmt: skip
    assert info.value.topic == b"audio/a"
    with pytest.raises(DecodeError) as info:
        m.decode(_window(1000, 12_500, fmt="s16le"))  # whatever the sample format
    assert info.value.detail == "audio window of 12.5 s (at most 10 s)"


def test_an_audio_window_ends_inside_the_time_range() -> None:
    second = 1_000_000_000
    m.decode(_window(1000, 1000, t=m.MAX_INT - second - 1))  # ends one ns inside
    for t in (m.MAX_INT - second, m.MAX_INT - 1):
        with pytest.raises(DecodeError) as info:
            m.decode(_window(1000, 1000, t=t))
        assert (info.value.reason, info.value.detail) == (
            "invalid", "audio window ends past the time range"
        )  # fmt: skip
        assert info.value.topic == b"audio/a"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 7])
def test_a_float_window_with_a_nan_or_inf_sample_is_invalid(bad: float, where: int) -> None:
    frames = _window(8000, 4, ch=2)
    pcm = np.zeros(8, dtype="<f4")
    pcm[where] = bad
    with pytest.raises(DecodeError) as info:
        m.decode([*frames[:2], pcm.tobytes()])
    assert (info.value.reason, info.value.detail) == (
        "invalid", "audio window holds NaN or Inf samples"
    )  # fmt: skip
    assert info.value.topic == b"audio/a"
    # the same bytes as 16-bit integers are samples like any other
    m.decode([*_window(8000, 8, ch=2, fmt="s16le")[:2], pcm.tobytes()])


def test_16_bit_windows_are_int16_arrays_and_float_windows_float32() -> None:
    pcm = np.array([[1, -2], [3, -32768]], dtype="<i2")
    x = m.audio_array(m.decode([*_window(8000, 2, ch=2, fmt="s16le")[:2], pcm.tobytes()]))
    assert x.dtype == np.dtype("<i2") and x.shape == (2, 2) and x.tolist() == pcm.tolist()
    f = np.array([[0.5], [-0.25], [1.0]], dtype="<f4")
    y = m.audio_array(m.decode([*_window(8000, 3)[:2], f.tobytes()]))
    assert y.dtype == np.dtype("<f4") and y.shape == (3, 1) and y.tolist() == f.tolist()


def test_pixel_formats_give_their_channel_count() -> None:
    for fmt, channels in (("gray8", 1), ("bgr8", 3), ("rgb8", 3), ("rgba8", 4)):
        vf = m.VideoFrame(stream="f", t_capture=1, width=5, height=3, pixel_format=fmt)  # type: ignore[arg-type]
        img = m.image_array(m.decode([b"video/f", m.encode(vf), bytes(range(15 * channels))]))
        assert img.shape == (3, 5, channels) and img.dtype == np.uint8
        assert img[2, 4, channels - 1] == 15 * channels - 1  # row-major, channels last


def test_the_array_readers_refuse_what_they_cannot_read() -> None:
    jpeg = m.VideoFrame(stream="f", t_capture=1, width=4, height=2, encoding="jpeg")
    aw = m.AudioWindow(stream="a", t_capture=1, sample_rate=8000, channels=1, n_samples=1)
    cases = [
        (m.image_array, m.Envelope(b"video/f", jpeg, memoryview(b"\xff\xd8\xff\xd9"))),
        (m.image_array, m.Envelope(b"video/f", VF, None)),
        (m.image_array, m.Envelope(b"audio/a", aw, memoryview(bytes(4)))),
        (m.audio_array, m.Envelope(b"audio/a", aw, None)),
        (m.audio_array, m.Envelope(b"video/f", VF, memoryview(bytes(24)))),
    ]
    for reader, env in cases:
        kind = "a raw VideoFrame" if reader is m.image_array else "an AudioWindow"
        with pytest.raises(TypeError, match=f"^{reader.__name__}\\(\\) needs {kind} envelope$"):
            reader(env)


def _packed(**fields: object) -> bytes:
    packed: bytes = msgpack.packb({**msgpack.unpackb(m.encode(VF)), **fields})
    return packed


@pytest.mark.parametrize(
    ("header", "reason", "detail"),
    [
        (msgpack.packb(7), "malformed", "header is not a MessagePack map: Expected `object`"),
        (msgpack.packb([1, 2]), "malformed", "header is not a MessagePack map: Expected `object`"),
        (_packed(v="1"), "unknown_version", "schema version '1', this build reads 1"),
        (_packed(v=[1]), "invalid", "Expected `int | str | null`, got `array` - at `$.v`"),
        (_packed(kind=5), "invalid", "Expected `str`, got `int` - at `$.kind`"),
        (_packed(v=3, width="x"), "unknown_version", "schema version 3, this build reads 1"),
        (msgpack.packb({"v": 1, "kind": "hologram"}), "unknown_kind",
         "kind 'hologram', known: ['audio', 'classification', 'heartbeat', 'video']"),
        (_packed(width="4"), "invalid", "Expected `int`, got `str` - at `$.width`"),
        (msgpack.packb({"v": 1}), "invalid", "Object missing required field `kind`"),
        # a map the full decoder refuses first, with bytes after it (only the peek reads on)
        (_packed(width="4") + b"\x00", "malformed",
         "header is not a MessagePack map: Expected `int`, got `str` - at `$.width`"),
    ],
)  # fmt: skip
def test_a_header_that_does_not_fit_says_the_most_useful_reason(
    header: bytes, reason: str, detail: str
) -> None:
    with pytest.raises(DecodeError) as info:
        m.decode([b"video/f", header, bytes(24)])
    assert info.value.reason == reason and info.value.detail.startswith(detail)
    assert info.value.topic == b"video/f"


def test_a_classification_prints_the_heads_it_has() -> None:
    c = m.Classification(stream="front", t_capture=1, label="7", score=0.9)
    assert c.heads() == ""
    c = m.Classification(
        stream="front", t_capture=1, label="7", score=0.9,
        image_label="7", image_score=0.984, audio_label="1", audio_score=0.5,
    )  # fmt: skip
    assert c.heads() == "image 7 0.98  audio 1 0.50"
    c = m.Classification(
        stream="front", t_capture=1, label="7", score=0.9,
        audio_label="1", audio_score=0.5, image_label="7",
    )  # fmt: skip
    assert c.heads() == "audio 1 0.50"  # a head without its score is not printed

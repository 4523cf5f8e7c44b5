"""The shared-memory reader's checks of a reference, against real segments in /dev/shm
(one process, no sockets: the cross-process cases are tests/integration/test_shm.py)."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator

import msgpack
import pytest

from streamfuse import shm
from streamfuse.errors import ConfigError, DecodeError

TOPIC = b"video/front"
BAD = "bad shared-memory reference: "


@pytest.fixture
def ring() -> Iterator[shm.Ring]:
    r = shm.Ring(capacity=64, slots=4)
    yield r
    r.close()


def _ref(name: str, slot: int, gen: int, size: int) -> bytes:
    packed: bytes = msgpack.packb([name, slot, gen, size])
    return packed


def _refused(reader: shm.ShmReader, ref: bytes, topic: bytes = TOPIC) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        reader.read(ref, topic)
    assert info.value.topic == topic
    return info.value


def test_a_reference_reads_exactly_its_bytes_copied_or_in_place(ring: shm.Ring) -> None:
    payload = os.urandom(48)
    ref = ring.write(payload)
    copied = shm.ShmReader().read(ref, TOPIC)
    assert bytes(copied) == payload and not isinstance(copied.obj, shm._SlotView)
    for _ in range(4):
        ring.write(bytes(48))  # the slot is written again: a copy is the reader's own
    assert bytes(copied) == payload
    ref = ring.write(payload)
    reader = shm.ShmReader(copy=False)
    view = reader.read(ref, TOPIC)
    assert bytes(view) == payload and view.readonly and reader.intact(view)
    assert reader.intact(copied) and reader.intact(memoryview(b"inline"))
    reader.close()


@pytest.mark.parametrize(
    ("slot", "size"), [(-1, 8), (4, 8), (99, 8), (0, -1), (0, 65), (2**63, 0), (0, 2**64 - 1)]
)
def test_a_slot_or_size_outside_the_segment_is_malformed(
    ring: shm.Ring, slot: int, size: int
) -> None:
    """Slot -1 must not read the last slot (negative indexing), slot 4 of 4 must not raise
    IndexError, a size past the slot must not read the next one."""
    ring.write(bytes(8))
    err = _refused(shm.ShmReader(), _ref(ring.name, slot, 1, size))
    assert (err.reason, err.detail) == (
        "malformed",
        f"slot {slot} / size {size} outside segment {ring.name} (4 slots of 64 bytes)",
    )


def test_the_edges_of_the_segment_are_read(ring: shm.Ring) -> None:
    for _ in range(4):
        ref = ring.write(bytes(range(64)))  # the last slot, all 64 bytes
    assert msgpack.unpackb(ref)[1:] == [3, 4, 64]
    assert bytes(shm.ShmReader().read(ref, TOPIC)) == bytes(range(64))
    empty = ring.write(b"")
    assert bytes(shm.ShmReader().read(empty, TOPIC)) == b""


@pytest.mark.parametrize("copy", [True, False])
def test_a_slot_written_again_is_overwritten_not_torn(ring: shm.Ring, copy: bool) -> None:
    old = ring.write(b"A" * 16)
    for _ in range(4):  # nobody registered: round robin reaches slot 0 again
        ring.write(b"B" * 16)
    err = _refused(shm.ShmReader(copy=copy), old)
    assert (err.reason, err.detail) == (
        "overwritten",
        f"slot 0 of {ring.name} was reused before it was read (subscriber more than a ring behind)",
    )


def test_a_view_says_when_its_slot_was_reused(ring: shm.Ring) -> None:
    reader = shm.ShmReader(copy=False)
    view = reader.read(ring.write(b"A" * 16), TOPIC)
    assert reader.intact(view)
    for _ in range(8):  # the view holds slot 0 from this reader; the ring needs it anyway
        ring.write(b"B" * 16)
    assert not reader.intact(view)
    reader.close()


@pytest.mark.parametrize(
    ("ref", "detail"),
    [
        (b"\xc1", f"{BAD}MessagePack data is malformed"),
        (msgpack.packb(["sf-1-deadbeef", 0, 1]), f"{BAD}Expected `array` of at least length 4"),
        (msgpack.packb({"segment": "x"}), f"{BAD}Expected `array`, got `object`"),
        (msgpack.packb(["sf-1-deadbeef", "0", 1, 1]), f"{BAD}Expected `int`, got `str`"),
        (_ref("../../etc/passwd", 0, 1, 1), "'../../etc/passwd' is not a streamfuse segment"),
        (_ref("psm_1234", 0, 1, 1), "'psm_1234' is not a streamfuse segment"),
        (_ref("sf-1-deadbeef\n", 0, 1, 1), "'sf-1-deadbeef\\n' is not a streamfuse segment"),
    ],
)  # fmt: skip
def test_a_reference_that_is_not_one_is_malformed(ref: bytes, detail: str) -> None:
    err = _refused(shm.ShmReader(), ref)
    assert err.reason == "malformed" and err.detail.startswith(detail), err.detail


def test_a_segment_that_is_not_there_is_unavailable_and_says_what_to_do() -> None:
    err = _refused(shm.ShmReader(), _ref("sf-1-deadbeef", 0, 1, 1))
    assert err.reason == "shm_unavailable"
    assert err.detail == (
        "cannot open shared-memory segment sf-1-deadbeef: No such file or directory; the "
        "publisher is gone, or runs in another IPC namespace (a container without "
        "--ipc=host: start it with STREAMFUSE_SHM=0)"
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "empty segment"), (b"NOTARING" + bytes(600), "not a streamfuse ring (bad magic)")],
)
def test_a_foreign_segment_under_a_streamfuse_name_is_malformed(
    content: bytes, problem: str
) -> None:
    name = f"sf-{os.getpid()}-0badf00d"
    path = f"/dev/shm/{name}"
    with open(path, "wb") as f:
        f.write(content)
    try:
        err = _refused(shm.ShmReader(), _ref(name, 0, 1, 1))
    finally:
        os.unlink(path)
    assert (err.reason, err.detail) == ("malformed", f"segment {name}: {problem}")


def test_a_reader_registers_once_per_segment_and_frees_its_entry(ring: shm.Ring) -> None:
    seg = ring._seg
    reader = shm.ShmReader()
    for _ in range(3):
        reader.read(ring.write(b"x"), TOPIC)
    rows = [r for r in seg.readers if r[0] != 0]
    assert len(rows) == 1 and int(rows[0][1]) == os.getpid()
    assert int(rows[0][2]) == ring.gen  # done with all it copied
    reader.close()
    assert not seg.readers[:, 0].any()


def test_a_view_holds_its_slot_and_the_hold_minus_one_before_it(ring: shm.Ring) -> None:
    reader = shm.ShmReader(copy=False, hold=2)
    gens = [msgpack.unpackb(ref)[2] for ref in (ring.write(b"a"), ring.write(b"b"))]
    for g, ref in zip(gens, (ring.write(b"c"), ring.write(b"d")), strict=True):
        reader.read(ref, TOPIC)
        del g
    row = next(r for r in ring._seg.readers if r[0] != 0)
    assert int(row[2]) == ring.gen - 2  # finished with everything before the last two
    assert shm.ShmReader(copy=False, hold=0).hold == 1
    single = shm.ShmReader(copy=False)  # the default: only the latest view is held
    for _ in range(2):
        single.read(ring.write(b"e"), b"video/other")
    floors = sorted(int(r[2]) for r in ring._seg.readers if r[0] != 0)
    assert floors == [ring.gen - 4, ring.gen - 1]  # the first reader's, and its own
    single.close()
    reader.close()


def test_a_topic_whose_publisher_restarted_unmaps_the_old_ring() -> None:
    first, second = shm.Ring(64, 2), shm.Ring(64, 2)
    try:
        reader = shm.ShmReader()
        reader.read(first.write(b"1"), TOPIC)
        reader.read(first.write(b"1"), b"video/side")
        assert set(reader._segs) == {first.name}
        reader.read(second.write(b"2"), TOPIC)  # front's publisher: a new ring
        assert set(reader._segs) == {second.name}  # the old one is gone for every topic
        assert not first._seg.readers[:, 0].any()
        assert reader._by_topic == {TOPIC: second.name}
        reader.close()
    finally:
        first.close()
        second.close()


def test_a_reader_keeps_at_most_max_segments_mapped() -> None:
    rings = [shm.Ring(16, 2) for _ in range(shm.MAX_SEGMENTS + 1)]
    try:
        reader = shm.ShmReader()
        for i, r in enumerate(rings):
            reader.read(r.write(b"z"), f"video/{i}".encode())
        assert len(reader._segs) == shm.MAX_SEGMENTS
        assert rings[0].name not in reader._segs and rings[-1].name in reader._segs
        assert not rings[0]._seg.readers[:, 0].any()  # its entry freed as it went
        reader.close()
    finally:
        for r in rings:
            r.close()


def test_a_segment_with_every_reader_entry_taken_is_still_read(
    ring: shm.Ring, caplog: pytest.LogCaptureFixture
) -> None:
    ring._seg.readers[:, 0] = 7  # 16 other readers
    with caplog.at_level(logging.WARNING, logger="streamfuse.shm"):
        assert bytes(shm.ShmReader().read(ring.write(b"ok"), TOPIC)) == b"ok"
    assert [r.getMessage() for r in caplog.records] == [
        "segment has 16 readers already; this one reads unregistered"
    ]
    # it shares the last entry: that one says what it has read, none other
    assert ring._seg.readers[:, 2].tolist() == [0] * 15 + [ring.gen]
    ring._seg.readers[:, 0] = 0


def test_without_streamfuse_shm_ipc_payloads_go_through_shared_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STREAMFUSE_SHM", raising=False)
    assert shm.wanted("ipc:///tmp/x", None) and not shm.wanted("tcp://127.0.0.1:1", None)


def test_many_topics_on_one_ring_are_remembered_up_to_the_bound(ring: shm.Ring) -> None:
    reader = shm.ShmReader()
    for i in range(shm.MAX_SEGMENTS + 5):
        reader.read(ring.write(b"t"), f"video/{i}".encode())
    assert len(reader._by_topic) == shm.MAX_SEGMENTS and list(reader._segs) == [ring.name]
    reader.close()


def test_each_segment_holds_its_own_views() -> None:
    """hold=2 per segment: reading from two rings in turn, each one's entry says the
    generation before its own last two, not the other's."""
    a, b = shm.Ring(16, 8), shm.Ring(16, 8)
    try:
        reader = shm.ShmReader(copy=False, hold=2)
        for _ in range(3):
            reader.read(a.write(b"a"), b"video/a")
        for _ in range(5):
            reader.read(b.write(b"b"), b"video/b")
        reader.read(a.write(b"a"), b"video/a")  # a: gens 1..4 read, holds 3 and 4

        def floor(r: shm.Ring) -> int:
            return int(next(row for row in r._seg.readers if row[0] != 0)[2])

        assert (floor(a), floor(b)) == (2, 3)
        reader.close()
    finally:
        a.close()
        b.close()


def _mappings(name: str) -> int:
    with open("/proc/self/maps") as f:
        return sum(f"/dev/shm/{name}" in line for line in f)


def test_a_view_the_app_holds_keeps_its_ring_mapped_until_it_goes() -> None:
    """A copy=False payload outlives the reader's mapping of its ring (the publisher
    restarted, or the reader closed): it still reads what was sent, not freed memory or
    another ring remapped at the same address (what it read before this was fixed: a
    segfault, or the new ring's bytes). The mapping goes with the last payload on it."""
    first, second = shm.Ring(64, 2), shm.Ring(64, 2)
    try:
        reader = shm.ShmReader(copy=False)
        view = reader.read(first.write(b"held"), TOPIC)  # the app keeps it
        mapped = _mappings(first.name)  # the writer's mapping and the reader's
        reader.read(second.write(b"new"), TOPIC)  # the publisher restarted: first detached
        assert first.name not in reader._segs and first.name not in reader._held
        assert bytes(view) == b"held" and _mappings(first.name) == mapped
        kept = reader.read(second.write(b"kept"), TOPIC)
        reader.close()
        assert bytes(view) == b"held" and bytes(kept) == b"kept"
        del view
        assert _mappings(first.name) == mapped - 1  # only the writer's is left
        del kept
        gone = shm.ShmReader()  # copy=True: unmapped at once on close
        gone.read(first.write(b"x"), TOPIC)
        assert _mappings(first.name) == mapped
        gone.close()
        assert _mappings(first.name) == mapped - 1
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("endpoint", "setting", "env", "want"),
    [
        ("ipc:///tmp/x", None, "", True),
        ("tcp://127.0.0.1:5555", None, "", False),
        ("tcp://127.0.0.1:5555", True, "0", True),  # the setting wins
        ("ipc:///tmp/x", False, "", False),
        *[("ipc:///tmp/x", None, v, False) for v in ("0", "off", "false", "no", " OFF ")],
        *[("ipc:///tmp/x", None, v, True) for v in ("1", "on", "auto", "true", "yes")],
        ("tcp://h:1", None, "on", False),  # auto is still only ipc://
    ],
)
def test_when_payloads_go_through_shared_memory(
    endpoint: str, setting: bool | None, env: str, want: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMFUSE_SHM", env)
    assert shm.wanted(endpoint, setting) is want


def test_a_bad_streamfuse_shm_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMFUSE_SHM", "sometimes")
    with pytest.raises(ConfigError) as info:
        shm.wanted("ipc:///tmp/x", None)
    assert (info.value.field, info.value.problem) == (
        "STREAMFUSE_SHM", "'sometimes': use 0/off, or 1/auto (the default)"
    )  # fmt: skip


def test_pid_alive_knows_the_living_the_dead_and_the_impossible() -> None:
    assert shm.pid_alive(os.getpid()) and shm.pid_alive(1)
    assert not shm.pid_alive(2**22 + 1)  # above pid_max's ceiling
    assert not shm.pid_alive(2**70)


# docs/protocol.md's segment layout, written out here rather than taken from shm.py
MAGIC, TABLE, SLOTS_AT = b"SFSHM\x00\x01\x00", 16, 512


def test_the_segment_is_laid_out_as_the_protocol_documents(ring: shm.Ring) -> None:
    refs = [ring.write(b"first"), ring.write(b"second!")]  # no reader yet: slots 0 and 1
    reader = shm.ShmReader()
    for ref in refs:
        reader.read(ref, TOPIC)
    with open(f"/dev/shm/{ring.name}", "rb") as f:
        raw = f.read()
    assert raw[:8] == MAGIC and struct.unpack_from("<II", raw, 8) == (4, 64)
    entries = [struct.unpack_from("<QQQ", raw, TABLE + 24 * i) for i in range(16)]
    (mine,) = [e for e in entries if e[0] != 0]
    assert mine[1:] == (os.getpid(), 2)  # its pid, the last gen it consumed
    slots = []
    for k in range(4):
        gen, size = struct.unpack_from("<QQ", raw, SLOTS_AT + k * (16 + 64))
        start = SLOTS_AT + k * (16 + 64) + 16
        slots.append((gen, raw[start : start + size]))
    assert slots == [(1, b"first"), (2, b"second!"), (0, b""), (0, b"")]
    reader.close()


def _handmade(name: str, slots: int, capacity: int, payloads: dict[int, tuple[int, bytes]],
              size: int | None = None) -> None:  # fmt: skip
    """A segment written from the documented layout alone (another implementation's)."""
    raw = bytearray(size if size is not None else SLOTS_AT + slots * (16 + capacity))
    raw[:8] = MAGIC
    struct.pack_into("<II", raw, 8, slots, capacity)
    for k, (gen, data) in payloads.items():
        at = SLOTS_AT + k * (16 + capacity)
        struct.pack_into("<QQ", raw, at, gen, len(data))
        raw[at + 16 : at + 16 + len(data)] = data
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(raw)


def test_a_segment_made_from_the_documented_layout_alone_is_read() -> None:
    name = f"sf-{os.getpid()}-0000cafe"
    _handmade(name, 3, 32, {0: (5, b"zero"), 2: (7, b"the last slot, 32 bytes in full!")})
    try:
        reader = shm.ShmReader()
        last = reader.read(_ref(name, 2, 7, 32), TOPIC)
        assert bytes(last) == b"the last slot, 32 bytes in full!"
        assert bytes(reader.read(_ref(name, 0, 5, 4), TOPIC)) == b"zero"
        assert _refused(reader, _ref(name, 1, 6, 1)).reason == "overwritten"  # gen 0 there
        with open(f"/dev/shm/{name}", "rb") as f:  # it registered in the reader table
            token, pid, gen = struct.unpack_from("<QQQ", f.read(), TABLE)
        assert token != 0 and (pid, gen) == (os.getpid(), 5)
        reader.close()
    finally:
        os.unlink(f"/dev/shm/{name}")


@pytest.mark.parametrize(
    ("slots", "capacity", "size", "problem"),
    [(4, 64, 600, "4 slots of 64 bytes do not fit"),
     (2, 64, SLOTS_AT + 2 * 80 - 1, "2 slots of 64 bytes do not fit"),
     (0, 64, 500, "not a streamfuse ring (bad magic)")],  # shorter than the header
)  # fmt: skip
def test_a_segment_smaller_than_its_header_says_is_malformed(
    slots: int, capacity: int, size: int, problem: str
) -> None:
    name = f"sf-{os.getpid()}-0000beef"
    _handmade(name, slots, capacity, {}, size=size)
    try:
        err = _refused(shm.ShmReader(), _ref(name, 0, 1, 1))
    finally:
        os.unlink(f"/dev/shm/{name}")
    assert (err.reason, err.detail) == ("malformed", f"segment {name}: {problem}")


def test_a_segment_of_just_a_header_and_no_slots_is_read_as_one() -> None:
    name = f"sf-{os.getpid()}-0000f00d"
    _handmade(name, 0, 64, {}, size=SLOTS_AT)
    try:
        err = _refused(shm.ShmReader(), _ref(name, 0, 1, 1))
    finally:
        os.unlink(f"/dev/shm/{name}")
    assert err.detail == f"slot 0 / size 1 outside segment {name} (0 slots of 64 bytes)"

"""Payloads through shared memory (streamfuse.shm) between real processes and sockets."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamfuse import messages as m
from streamfuse.errors import ConfigError
from streamfuse.shm import TAG
from streamfuse.transport import Publisher, Subscriber

from ..conftest import examples, require
from .helpers import run_cli

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm on this system"),
]

W, H = 320, 240  # 230 KB: above the 64 KiB threshold


def frame(seq: int) -> tuple[m.VideoFrame, np.ndarray]:
    img = np.full((H, W, 3), seq % 256, np.uint8)
    img.reshape(-1)[:8] = np.frombuffer(seq.to_bytes(8, "little"), np.uint8)
    return m.VideoFrame(stream="front", seq=seq, t_capture=seq, width=W, height=H), img


def intact(env: m.Envelope) -> bool:
    img = m.image_array(env)
    seq = env.header.seq
    stamp = int.from_bytes(img.reshape(-1)[:8].tobytes(), "little")
    return stamp == seq and int(img[-1, -1, 2]) == seq % 256


def receive(sub: Subscriber, n: int, timeout: float = 10) -> list[m.Envelope]:
    """Up to ``n`` messages, stopping at the first wait longer than ``timeout``."""
    got = []
    while len(got) < n and (env := sub.recv(timeout=timeout)) is not None:
        got.append(env)
    return got


def segments(pid: int) -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"sf-{pid}-*")}


# A publisher in its own process, as a camera is: python -c PUBLISHER endpoint n lossless slots
PUBLISHER = """
import sys, time, numpy as np
from streamfuse import Publisher, VideoFrame
ep, n, lossless, slots = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
with Publisher(ep, lossless=lossless, shm_slots=slots, linger_ms=2000) as pub:
    pub.wait_for_subscriber(10, b"video/front")
    for i in range(n):
        img = pub.loan("video/front", (240, 320, 3)) if i % 2 else np.empty((240, 320, 3), np.uint8)
        img[...] = i % 256
        img.reshape(-1)[:8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)
        hdr = VideoFrame(stream="front", seq=i, t_capture=i, width=320, height=240)
        pub.send("video/front", hdr, img)
    print("done", flush=True)
    time.sleep(float(sys.argv[5]) if len(sys.argv) > 5 else 0.5)
"""


def start_publisher(
    endpoint: str, n: int, *, lossless: bool, slots: int = 8, hold: float = 0.5
) -> subprocess.Popen[str]:
    flag = "1" if lossless else "0"
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, endpoint, str(n), flag, str(slots), str(hold)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_large_payloads_cross_processes_through_shared_memory_intact(endpoint: str) -> None:
    with (
        start_publisher(endpoint, 200, lossless=True, slots=4) as proc,
        Subscriber(endpoint, ["video/"]) as sub,
    ):
        envs = receive(sub, 200)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
    proc.wait(10)
    assert [e.header.seq for e in envs] == list(range(200))
    assert all(intact(e) for e in envs)
    # every payload came through the ring (loaned and copied alike), none inline
    assert sub.shm_received == 200 and not sub.rejected


def test_a_slow_subscriber_is_waited_for_by_a_lossless_publisher(endpoint: str) -> None:
    seen = []
    with (
        start_publisher(endpoint, 60, lossless=True, slots=2) as proc,
        Subscriber(endpoint, ["video/"], rcvhwm=1000) as sub,
    ):
        while len(seen) < 60 and (env := sub.recv(timeout=10)) is not None:
            seen.append(env.header.seq if intact(env) else -1)
            time.sleep(0.005)  # slower than the publisher: it must wait, not overwrite
    proc.wait(10)
    assert seen == list(range(60)) and not sub.rejected


def test_a_subscriber_a_ring_behind_a_live_publisher_loses_frames_counted_never_torn(
    endpoint: str, zctx: zmq.Context
) -> None:
    with (
        Publisher(endpoint, shm_slots=3, sndhwm=1000, context=zctx) as pub,
        Subscriber(endpoint, ["video/"], rcvhwm=1000, context=zctx) as sub,
    ):
        assert pub.wait_for_subscriber(5, b"video/front")
        for i in range(20):  # the subscriber reads nothing meanwhile
            pub.send("video/front", *frame(i))
        envs = receive(sub, 20, timeout=1)
    assert sub.rejected["overwritten"] == 17  # only the last 3 slots still hold theirs
    assert [e.header.seq for e in envs] == [17, 18, 19] and all(intact(e) for e in envs)


def test_zero_copy_views_say_when_their_slot_was_reused(endpoint: str, zctx: zmq.Context) -> None:
    with (
        Publisher(endpoint, shm_slots=2, context=zctx) as pub,
        Subscriber(endpoint, ["video/"], shm_copy=False, context=zctx) as sub,
    ):
        assert pub.wait_for_subscriber(5, b"video/front")
        pub.send("video/front", *frame(0))
        env = sub.recv(timeout=5)
        assert env is not None and env.payload is not None and env.payload.readonly
        assert intact(env) and sub.intact(env)
        for i in (1, 2):  # two more sends on a 2-slot ring reuse frame 0's slot
            pub.send("video/front", *frame(i))
        assert not sub.intact(env)
        assert [e.header.seq for e in (sub.recv(timeout=5), sub.recv(timeout=5)) if e] == [1, 2]
        del env  # views must go before the subscriber can unmap (it also copes if they don't)


def test_tcp_and_small_payloads_stay_inline_and_the_env_switch_turns_shm_off(
    endpoint: str, zctx: zmq.Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        Publisher("tcp://127.0.0.1:0", context=zctx) as pub,
        Subscriber(pub.endpoint, context=zctx) as sub,
    ):
        assert pub.wait_for_subscriber(5)
        loaned = pub.loan("video/front", (H, W, 3))  # not shared memory on tcp: a plain array
        loaned[...] = 7
        pub.send("video/front", m.VideoFrame(stream="f", t_capture=1, width=W, height=H), loaned)
        env = sub.recv(timeout=5)
        assert env is not None and int(m.image_array(env)[5, 5, 0]) == 7
        assert sub.shm_received == 0
    monkeypatch.setenv("STREAMFUSE_SHM", "0")
    with (
        Publisher(endpoint, context=zctx) as pub,
        Subscriber(endpoint, context=zctx) as sub,
    ):
        assert pub.wait_for_subscriber(5)
        pub.send("video/front", *frame(3))
        pub.send("video/side", *frame(4))
        assert sub.recv(timeout=5) is not None and sub.recv(timeout=5) is not None
        assert sub.shm_received == 0 and segments(os.getpid()) == set()


def test_the_ring_goes_when_the_publisher_closes_or_is_killed(endpoint: str) -> None:
    with Publisher(endpoint) as pub:
        pub.send("video/front", *frame(0))
        assert len(segments(os.getpid())) == 1
    assert segments(os.getpid()) == set()

    with (
        start_publisher(endpoint, 3, lossless=False, hold=60) as proc,
        Subscriber(endpoint, ["video/"]) as sub,
    ):
        assert sub.recv(timeout=10) is not None  # attached: the reader must not own it
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
        assert len(segments(proc.pid)) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        deadline = time.monotonic() + 5  # the publisher's resource tracker unlinks it
        while segments(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert segments(proc.pid) == set()


def test_a_lossless_publisher_stops_waiting_for_a_reader_that_died(
    endpoint: str, zctx: zmq.Context
) -> None:
    with (
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time\n"
                "from streamfuse import Subscriber\n"
                "sub = Subscriber(sys.argv[1], ['video/'], rcvhwm=1000)\n"
                "assert sub.recv(timeout=10) is not None\n"
                "print('attached', flush=True)\n"
                "time.sleep(60)\n",
                endpoint,
            ],
            stdout=subprocess.PIPE,
            text=True,
        ) as reader,
        Publisher(endpoint, lossless=True, shm_slots=2, sndhwm=1000, context=zctx) as pub,
    ):
        sent = 0
        assert pub.wait_for_subscriber(10, b"video/front")

        def send_all() -> None:
            nonlocal sent
            for i in range(10):
                pub.send("video/front", *frame(i))
                sent += 1

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        assert reader.stdout is not None and reader.stdout.readline().strip() == "attached"
        time.sleep(0.5)
        assert sent < 10  # waiting for the reader to free a slot
        reader.kill()
        reader.wait(5)
        sender.join(5)
        assert sent == 10, "the publisher should give up on a dead reader"


REAL = "(the live publisher's segment)"


def _expected(ref: bytes, slots: int, capacity: int) -> str:
    """The reason a reference must be rejected for, from the protocol's rules (not the
    code): not a [str, int, int, int] array, or not a streamfuse segment name -> malformed;
    no such segment -> shm_unavailable; slot or size outside the live segment -> malformed;
    an in-range slot holding another generation -> overwritten."""
    try:
        value = msgpack.unpackb(ref)
    except Exception:
        return "malformed"
    if not (isinstance(value, list) and len(value) == 4 and isinstance(value[0], str)
            and all(type(v) is int for v in value[1:])):  # fmt: skip
        return "malformed"
    name, slot, _gen, size = value
    if name != REAL:
        named = re.fullmatch(r"sf-[0-9]+-[0-9a-f]{8}", name)
        return "shm_unavailable" if named else "malformed"
    if not (0 <= slot < slots and 0 <= size <= capacity):
        return "malformed"
    return "overwritten"  # (no slot ever holds a generation this test made up)


edge_ints = st.one_of(
    st.integers(-2, 12),
    st.sampled_from([-1, -(2**63), 2**63 - 1, 2**63, 2**64 - 1, 99, W * H * 3, W * H * 3 + 1]),
)


@settings(
    max_examples=examples(80),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ref=st.one_of(
        st.binary(max_size=40),
        st.lists(st.one_of(st.integers(-5, 2**64 - 1), st.text(max_size=20)), max_size=5).map(
            msgpack.packb
        ),
        st.tuples(
            st.sampled_from([REAL, REAL, "sf-1-deadbeef", "../../etc/passwd", "psm_1234"]),
            edge_ints,
            st.integers(10**6, 2**63 - 1),  # a generation no slot holds
            edge_ints,
        ).map(lambda t: msgpack.packb(list(t))),
    )
)
def test_garbage_shared_memory_references_are_rejected_by_reason(
    endpoint: str, zctx: zmq.Context, ref: bytes
) -> None:
    """Each reference is rejected for the reason the protocol gives (one reason, exactly),
    the slot and size bounds of a real, live segment included (slot -1 must not read the
    last slot; slot 99 must not raise out of recv)."""
    live = endpoint + "-live"
    before = segments(os.getpid())
    with Publisher(live, shm_slots=8, context=zctx) as pub, Subscriber(live, context=zctx) as keep:
        assert pub.wait_for_subscriber(5, b"video/front")
        pub.send("video/front", *frame(0))  # a real segment of 8 slots
        assert keep.recv(timeout=5) is not None
        (name,) = segments(os.getpid()) - before
        raw = zctx.socket(zmq.PUB)
        raw.bind(endpoint)
        with Subscriber(endpoint, context=zctx) as sub:
            hdr, img = frame(1)
            raw_header = m.encode(hdr)
            body = ref.replace(msgpack.packb(REAL), msgpack.packb(name))
            deadline = time.monotonic() + 5
            while sum(sub.rejected.values()) == 0 and time.monotonic() < deadline:
                raw.send_multipart([b"video/front", raw_header, TAG, body])
                assert sub.recv(timeout=0.02) is None
            assert dict(sub.rejected) and set(sub.rejected) == {_expected(ref, 8, W * H * 3)}
            # and the subscriber still takes a good message afterwards
            raw.send_multipart([b"video/front", raw_header, img])
            assert sub.recv(timeout=5) is not None
        raw.close(linger=0)


def test_a_reader_that_keeps_up_keeps_the_ring_small_in_memory(
    endpoint: str, zctx: zmq.Context
) -> None:
    with (
        Publisher(endpoint, shm_slots=64, context=zctx) as pub,
        Subscriber(endpoint, ["video/"], context=zctx) as sub,
    ):
        assert pub.wait_for_subscriber(5, b"video/front")
        for i in range(100):
            pub.send("video/front", *frame(i))
            env = sub.recv(timeout=5)
            assert env is not None and intact(env)
        (seg,) = segments(os.getpid())
        st = os.stat(f"/dev/shm/{seg}")
    # 64 slots of 230 KB reserved, but tmpfs holds only the pages written: two slots' worth
    assert st.st_size > 60 * W * H * 3
    assert st.st_blocks * 512 <= 3 * W * H * 3


def test_a_bad_shm_setting_or_a_foreign_segment_is_named(
    endpoint: str, zctx: zmq.Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMFUSE_SHM", "maybe")
    with pytest.raises(ConfigError, match=r"STREAMFUSE_SHM.*'maybe'"):
        Publisher(endpoint, context=zctx)
    res = run_cli(
        "capture", "camera", "--source", "synthetic", "--topic", "video/x",
        "--endpoint", endpoint, "--max-messages", "1", env={"STREAMFUSE_SHM": "maybe"},
    )  # fmt: skip
    assert res.returncode != 0 and "STREAMFUSE_SHM" in res.stderr
    assert "Traceback" not in res.stderr
    monkeypatch.delenv("STREAMFUSE_SHM")
    # a segment with a streamfuse-looking name but other contents: rejected, not trusted
    from multiprocessing.shared_memory import SharedMemory

    foreign = SharedMemory(name=f"sf-{os.getpid()}-0badf00d", create=True, size=4096)
    foreign.buf[:] = os.urandom(4096)
    raw = zctx.socket(zmq.PUB)
    raw.bind(endpoint)
    try:
        with Subscriber(endpoint, context=zctx) as sub:
            ref = msgpack.packb([foreign.name, 0, 1, 10])
            deadline = time.monotonic() + 5
            while not sub.rejected and time.monotonic() < deadline:
                raw.send_multipart([b"video/front", m.encode(frame(1)[0]), TAG, ref])
                assert sub.recv(timeout=0.02) is None
        assert dict(sub.rejected) == {"malformed": sub.rejected["malformed"]} and sub.rejected
    finally:
        raw.close(linger=0)
        foreign.close()
        foreign.unlink()


FULL_SHM = """
import sys, numpy as np
from streamfuse.messages import VideoFrame
from streamfuse.transport import Publisher, Subscriber
ep = sys.argv[1]
frame = np.zeros((480, 640, 3), np.uint8)  # 921,600 bytes a slot
def send(pub, i):
    pub.send("video/front", VideoFrame(stream="front", seq=i, t_capture=i, width=640,
             height=480), frame)
with Publisher(ep) as pub, Subscriber(ep, ["video/"]) as sub:
    assert pub.wait_for_subscriber(5, b"video/")
    send(pub, 0)
    got = [sub.recv(timeout=5).header.seq]  # the reader registers; slot 0 is reserved
    with open("/dev/shm/filler", "wb") as f:  # then /dev/shm fills up from outside
        try:
            while True:
                f.write(b"x" * 65536)
                f.flush()
        except OSError:
            pass
    for i in range(1, 6):  # a backlog: the writer needs slots never touched before
        send(pub, i)
    got += [sub.recv(timeout=5).header.seq for _ in range(5)]
    print(got, sub.shm_received)
"""


def test_a_full_dev_shm_is_enospc_and_inline_never_sigbus(tmp_path: Path) -> None:
    """tmpfs allocates a page when it is first touched: writing a frame into a slot on a
    full /dev/shm was a SIGBUS that killed the camera. Slots are reserved first
    (posix_fallocate), so it is ENOSPC, and the frames go on inline."""
    require(os.geteuid() == 0 and shutil.which("unshare") is not None,
            "needs root and unshare for a private /dev/shm (a mount namespace)")  # fmt: skip
    res = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'mount -t tmpfs -o size=8m tmpfs /dev/shm && exec "$0" -c "$1" "$2"',
         sys.executable, FULL_SHM, f"ipc://{tmp_path}/cam"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]  # -7 would be the SIGBUS
    assert res.stdout.split() == ["[0,", "1,", "2,", "3,", "4,", "5]", "2"]  # 2 via shm
    assert "shared memory failed" in res.stderr and "No space left" in res.stderr


def test_a_restarted_publishers_old_ring_is_unmapped(endpoint: str) -> None:
    """A camera restart makes a new ring; the reader maps the new one and lets the old go
    (each restart used to leave ~2.5 MB mapped in the engine)."""
    names = []
    with Subscriber(endpoint, ["video/"]) as sub:
        for _ in range(3):  # three camera processes, one after another
            with Publisher(endpoint) as pub:
                # libzmq attaches a reconnected pipe when the subscriber next uses its socket
                deadline = time.monotonic() + 10
                while not pub.wait_for_subscriber(0.05, b"video/"):
                    assert sub.recv(timeout=0.05) is None and time.monotonic() < deadline
                pub.send("video/front", *frame(0))
                assert sub.recv(timeout=5) is not None
                names.append(next(iter(pub._rings.values())).name)
        maps = Path("/proc/self/maps").read_text()
        mapped = [n for n in names if f"/dev/shm/{n}" in maps]
    assert len(set(names)) == 3 and mapped == [names[-1]]


def test_a_shared_memory_reference_over_tcp_is_not_resolved_here() -> None:
    """A publisher on another box could name a segment that happens to exist on this one:
    over tcp:// a reference is rejected, never read from this box's /dev/shm."""
    with Publisher("tcp://127.0.0.1:0", shm=False) as pub:
        local = Publisher("ipc:///tmp/sf-ref-" + os.urandom(4).hex())  # a real local segment
        with local, Subscriber(pub.endpoint, ["video/"]) as sub:
            assert pub.wait_for_subscriber(5, b"video/")
            h, img = frame(7)
            local._ring(b"video/front", img).write(img)
            ring = next(iter(local._rings.values()))
            ref = msgpack.packb([ring.name, 0, 1, img.nbytes])
            pub._sock.send_multipart([b"video/front", m.encode(h), TAG, ref])
            pub.send("video/front", *frame(8))  # and a plain one after it
            got = sub.recv(timeout=5)
    assert got is not None and got.header.seq == 8
    assert sub.rejected == {"shm_not_local": 1}


def test_held_views_stay_valid_and_are_never_torn_silently(endpoint: str) -> None:
    """A reader holding its latest 4 views (the engine holds 48): the publisher writes new
    frames into other slots while it has any, so the held ones stay intact; a reader that
    stalls leaves it none, and then a live publisher reuses the oldest, which intact()
    reports (the engine blanks such a frame and counts it) -- never torn pixels."""

    def seq_of(env: m.Envelope) -> int:
        return int.from_bytes(bytes(env.payload[:8]), "little")  # type: ignore[index]

    with (
        Publisher(endpoint, shm_slots=8) as pub,
        Subscriber(endpoint, ["video/"], shm_copy=False, shm_hold=4) as sub,
    ):
        assert pub.wait_for_subscriber(5, b"video/")
        views = []
        for i in range(6):
            pub.send("video/front", *frame(i))
            env = sub.recv(timeout=5)
            assert env is not None
            views.append(env)
        held = views[-4:]
        for i in range(6, 9):  # three more, into the slots nobody holds
            pub.send("video/front", *frame(i))
        assert [seq_of(e) for e in held] == [2, 3, 4, 5] and all(sub.intact(e) for e in held)
        for i in range(9, 40):  # the reader stalls: no free slot is left
            pub.send("video/front", *frame(i))
        states = [(sub.intact(e), seq_of(e)) for e in held]
    assert not all(ok for ok, _ in states), "a live publisher reuses a stalled reader's slots"
    assert all(seq == 2 + k for k, (ok, seq) in enumerate(states) if ok)  # intact: unchanged


THRESHOLD_CASES = [
    (m.VideoFrame(stream="g", t_capture=1, width=257, height=255, pixel_format="gray8"),
     65_535, False),
    (m.VideoFrame(stream="g", t_capture=1, width=256, height=256, pixel_format="gray8"),
     65_536, True),
    (m.AudioWindow(stream="a", t_capture=1, sample_rate=16_000, channels=1, n_samples=16_000),
     64_000, False),
    (m.AudioWindow(stream="a", t_capture=1, sample_rate=48_000, channels=1, n_samples=48_000,
                   sample_format="f32le"), 192_000, True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("header", "size", "through_shm"),
    THRESHOLD_CASES,
    ids=["frame-64KiB-1", "frame-64KiB", "audio-16k-f32-1s", "audio-48k-f32-1s"],
)
def test_the_64_kib_threshold_is_the_payload_size_whatever_its_kind(
    header: m.Message, size: int, through_shm: bool, endpoint: str, zctx: zmq.Context
) -> None:
    """docs/protocol.md: payloads of 64 KiB and more go through the ring on ipc://, below
    it inline; audio windows too (a 1 s 48 kHz f32 window is 192 KB)."""
    assert m.expected_payload_size(header) == size
    payload = (np.arange(size, dtype=np.uint32) * 2654435761 % 255).astype(np.uint8)
    if isinstance(header, m.AudioWindow):  # f32: finite samples
        payload = np.linspace(-1, 1, size // 4, dtype="<f4").view(np.uint8)
    topic = "video/g" if isinstance(header, m.VideoFrame) else "audio/a"
    with Publisher(endpoint, context=zctx) as pub, Subscriber(endpoint, context=zctx) as sub:
        assert pub.wait_for_subscriber(5)
        pub.send(topic, header, payload)
        env = sub.recv(timeout=5)
        assert env is not None and bytes(env.payload) == payload.tobytes()
        assert sub.shm_received == int(through_shm)

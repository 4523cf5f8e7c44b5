"""MCAP recording and replay with real files, processes and sockets.

`tests/data/session.mcap` was recorded by the project itself (tests/data/make_session.py):
four spoken-and-shown digits through `streamfuse run --record`.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import signal
import site
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from mcap.exceptions import McapError
from mcap.reader import make_reader

from streamfuse import messages
from streamfuse.errors import SourceError
from streamfuse.record import ENCODING, pack_frames, read_recording, unpack_frames
from streamfuse.testing import assert_matches_golden, run_recording
from streamfuse.transport import Subscriber

from ..conftest import Children, require, require_system, require_tool
from .helpers import collect, free_port, http_json, run_cli, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.replay, pytest.mark.timeout(180)]

DATA = Path(__file__).resolve().parents[1] / "data"
SESSION = DATA / "session.mcap"
GOLDEN = DATA / "session.golden.json"
# kill -9 loses the chunk being filled (at most one frame here) and what the recorder had
# received but not yet handed to the kernel: its backlog, a few frames at this load.
IN_FLIGHT = 6
DIGITS = json.loads((DATA / "session.truth.json").read_text())["digits"]


def test_the_recorded_session_replays_to_its_golden_classifications() -> None:
    """What a user's CI does with streamfuse.testing: a few lines."""
    results = run_recording(SESSION)
    assert_matches_golden(results, GOLDEN)
    # and the golden itself is right about the digits shown and spoken each whole second
    whole = [r for r in results if r.media_pos is not None and r.media_pos % 1_000_000_000]
    assert [r.label for r in whole] == [str(d) for d in DIGITS]


def test_lockstep_replay_is_identical_byte_for_byte() -> None:
    runs = [run_cli("replay", str(SESSION), "--lockstep", "--json", timeout=120) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout.splitlines()) == 7


# Runs `streamfuse ARGS` with this interpreter's packages, under QEMU user-mode emulation,
# first saying on stderr which of the instruction sets that pick numpy's kernels it sees.
EMULATED = (
    "import site, sys\n"
    "for d in sys.argv[1].split(':'): site.addsitedir(d)\n"
    "from numpy._core._multiarray_umath import __cpu_features__ as f\n"
    "sys.stderr.write('cpu: ' + ' '.join(k for k in sys.argv[2].split() if f[k]) + '\\n')\n"
    "from streamfuse.cli import main\n"
    "sys.argv = ['streamfuse', *sys.argv[3:]]\n"
    "main()\n"
)
ISA = ("AVX", "F16C", "FMA3", "AVX2", "AVX512F")  # what numpy and OpenBLAS dispatch on


def test_lockstep_with_an_unknown_backend_names_the_installed_ones() -> None:
    res = run_cli("replay", str(SESSION), "--lockstep", "--backend", "nope")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "unknown backend 'nope'" in res.stderr and "'reference'" in res.stderr


def test_lockstep_is_the_same_bytes_on_another_cpu() -> None:
    """Another machine, emulated: QEMU's Nehalem has SSE4.2 but no AVX, so numpy and OpenBLAS
    take their SSE kernels where this box (AVX2 and FMA; the doc's AVX-512 box alike) takes
    AVX ones; the control checks that the emulated CPU really lacks what this one has. ONNX
    Runtime's fp32 scores then differ in their last bits (docs/recording.md); the reference
    backend that lockstep uses must not."""
    from numpy._core._multiarray_umath import __cpu_features__

    require(platform.machine() == "x86_64", "emulates an x86-64 CPU: needs an x86-64 host")
    qemu = require_tool("qemu-x86_64")
    here = {k for k in ISA if __cpu_features__[k]}
    require("AVX2" in here, f"needs a host with AVX2 to differ from the emulated CPU ({here})")
    python = os.path.realpath(sys.executable)  # under QEMU, a venv's launcher finds no venv
    packages = ":".join(site.getsitepackages())
    cli = ["replay", str(SESSION), "--lockstep", "--json"]
    with ThreadPoolExecutor(2) as pool:  # side by side: the emulated run is the long one
        emulating = pool.submit(
            subprocess.run,
            [qemu, "-cpu", "Nehalem-v1", python, "-c", EMULATED, packages, " ".join(ISA), *cli],
            capture_output=True,
            text=True,
            timeout=300,
            # On an AMD EPYC host OpenBLAS's own detection took a kernel the emulated Nehalem
            # lacks (numpy's import-time sanity dot died of SIGILL; earlier hosts did not):
            # name the core type, as that machine's own detection would find it.
            env={**os.environ, "OPENBLAS_CORETYPE": "Nehalem"},
        )
        native = run_cli(*cli, timeout=120)
        emulated = emulating.result()
    assert native.returncode == 0 and emulated.returncode == 0, emulated.stderr[-2000:]
    seen = next(x for x in emulated.stderr.splitlines() if x.startswith("cpu:")).split()[1:]
    assert not set(seen) & here, f"the emulated CPU has {seen}: the same kernels as this one"
    assert len(native.stdout.splitlines()) == 7
    assert emulated.stdout == native.stdout


def test_live_replay_through_the_daemon_gives_the_golden_labels(tmp_path: Path) -> None:
    res = run_cli(
        "run", "--replay", str(SESSION), "--json", "--until-eof",
        "--output", f"ipc://{tmp_path}/result", "--http-port", "0",
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    live = [json.loads(line) for line in res.stdout.splitlines()]
    golden = json.loads(GOLDEN.read_text())
    assert [(r["media_pos"], r["label"]) for r in live] == [
        (g["media_pos"], g["label"]) for g in golden
    ]
    assert not any(r["degraded"] for r in live)


@pytest.fixture
def stalled_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder's writes take 50 ms each: a disk that takes 20 frames/s (a fake of the
    disk's speed only; the files, sockets and shared memory are real)."""
    from streamfuse import record as rec_mod

    real_write = rec_mod.Recorder.write

    def stalled_write(self: Any, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.05)
        real_write(self, *args, **kwargs)

    monkeypatch.setattr(rec_mod.Recorder, "write", stalled_write)


def _send_60_frames(endpoint: str, rec: threading.Thread, stop: threading.Event) -> None:
    """Start ``rec`` (a recorder of ``endpoint``), send it 60 frames of 230 KB at ~100/s from
    a live publisher (it reuses its 8 shared-memory slots, never waits), then stop it."""
    import numpy as np

    from streamfuse.messages import VideoFrame
    from streamfuse.transport import Publisher

    rng = np.random.default_rng(0)
    with Publisher(endpoint, shm_slots=8) as pub:
        rec.start()
        assert pub.wait_for_subscriber(10, b"video/front")
        for i in range(60):
            img = rng.integers(0, 255, (240, 320, 3), np.uint8)
            pub.send("video/front", VideoFrame(stream="front", seq=i, t_capture=i + 1,
                                               width=320, height=240), img)  # fmt: skip
            time.sleep(0.01)
        time.sleep(0.2)
        stop.set()
        rec.join(60)


@pytest.mark.usefixtures("stalled_disk")
def test_a_slow_disk_costs_the_recorder_memory_not_frames(tmp_path: Path) -> None:
    """Frames arrive through shared memory, whose slots a live publisher reuses: the recorder
    must take each frame out of its slot as it arrives, even while its disk stalls."""

    from streamfuse import record as rec_mod

    endpoint = f"ipc://{tmp_path}/cam"
    out = tmp_path / "slow.mcap"
    stop = threading.Event()
    summary: list[Any] = []
    rec = threading.Thread(
        target=lambda: summary.append(
            rec_mod.record([endpoint], ["video/"], out, stop, compression="none")
        )
    )
    _send_60_frames(endpoint, rec, stop)
    assert summary and summary[0].written.get("video/front") == 60, summary
    assert not summary[0].lost and not summary[0].rejected
    got = read_recording(out)
    assert [m.envelope().header.seq for m in got.messages if m.topic == "video/front"] == list(
        range(60)
    )


@pytest.mark.usefixtures("stalled_disk")
def test_a_disk_too_slow_for_too_long_fills_the_backlog_then_drops_counted(tmp_path: Path) -> None:
    """The backlog for a slow disk is bounded (``max_backlog``): past it, what arrives is
    dropped and counted per topic, never the box's memory taken; what was queued is all
    written, in order, and written + overflow accounts for every frame sent."""

    from streamfuse import record as rec_mod

    endpoint = f"ipc://{tmp_path}/cam"
    out = tmp_path / "slow.mcap"
    stop = threading.Event()
    limit = 5 * 240 * 320 * 3  # five frames
    summary: list[Any] = []
    rec = threading.Thread(
        target=lambda: summary.append(
            rec_mod.record([endpoint], ["video/"], out, stop, compression="none", max_backlog=limit)
        )
    )
    _send_60_frames(endpoint, rec, stop)
    (s,) = summary
    written, over = s.written.get("video/front", 0), s.overflow.get("video/front", 0)
    assert over > 0 and written + over == 60, s
    assert limit // 5 <= s.backlog_peak_bytes <= limit, s
    assert not s.lost and not s.rejected
    seqs = [m.envelope().header.seq for m in read_recording(out).messages]
    assert len(seqs) == written and seqs == sorted(set(seqs)) and seqs[:4] == list(range(4))


@pytest.fixture(scope="module")
def load_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 s of `streamfuse run --record`: 2 cameras 640x480 raw at 30 fps, the microphone,
    the results (one recording, read by the tests below)."""
    tmp_path = tmp_path_factory.mktemp("load")
    cfg = {
        "cameras": [
            {"name": "left", "source": "synthetic", "fps": 30, "width": 640, "height": 480},
            {"name": "right", "source": "synthetic", "fps": 30, "width": 640, "height": 480},
        ],
        "engine": {"output": f"ipc://{tmp_path}/result"},
        "http": {"port": free_port()},
        "run_dir": str(tmp_path / "run"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "load.mcap"
    argv = [sys.executable, "-m", "streamfuse", "run", "--config", str(tmp_path / "c.yaml")]
    sup = subprocess.Popen(
        [*argv, "--record", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    # the cameras publish once every reader (engine, standby, recorder) is in: from then on
    wait_healthy(cfg["http"]["port"])
    deadline = time.monotonic() + 60
    while not all(
        http_json(cfg["http"]["port"], "/healthz")[1]["sources"][t]["received"] > 0
        for t in ("video/left", "video/right")
    ):
        assert time.monotonic() < deadline, "the cameras did not start"
        time.sleep(0.1)
    time.sleep(7)  # the recording's length
    sup.send_signal(signal.SIGTERM)
    _, err = sup.communicate(timeout=30)
    assert sup.returncode == 0, err
    return out


def test_recording_is_lossless_at_the_engine_benchmark_load(load_recording: Path) -> None:
    """Every sequence number of every topic is in the file, from 0 (the recorder subscribed
    before anyone published); its Foxglove channels decode with the official decoders
    (protobuf through mcap-protobuf-support, JSON against its embedded schema): images
    stamped with their frame's capture time, the audio blocks back to back, covering every
    window."""
    out = load_recording
    rec = read_recording(out)
    assert rec.problem is None
    seqs: dict[str, list[int]] = {}
    for m in rec.messages:
        seqs.setdefault(m.topic, []).append(m.envelope().header.seq)
    assert {"video/left", "video/right", "audio/mic0", "result/left", "result/right"} <= set(seqs)
    assert len(seqs["video/left"]) > 150 and len(seqs["result/left"]) >= 8
    for topic, s in seqs.items():
        assert s == list(range(len(s))), f"{topic}: {s[:5]}... not every seq from 0"
    _check_foxglove_channels(out, rec)


def test_recordings_read_back_with_foxglove_typescript_reader(load_recording: Path) -> None:
    """@mcap/core (indexed and streaming, CRCs checked) and @mcap/support (protobuf from the
    embedded descriptors) in node: the same messages per topic as the Python reader, every
    Foxglove channel decoded, every record parsed (tests/ts/read_mcap.mjs)."""
    require_system("node")
    script = Path(__file__).resolve().parents[1] / "ts" / "read_mcap.mjs"
    done = subprocess.run(["node", str(script), str(load_recording)], capture_output=True,
                          text=True, timeout=60, cwd=script.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rec = read_recording(load_recording)
    ours: dict[str, int] = {}
    for m in rec.messages:
        ours[m.topic] = ours.get(m.topic, 0) + 1
    theirs = report["topics"]
    assert {t: v["count"] for t, v in theirs.items() if v["encoding"] == ENCODING} == ours
    foxglove = {t: v for t, v in theirs.items() if v["encoding"] != ENCODING}
    assert {"video/left/image", "audio/mic0/audio", "result/left/annotations"} <= set(foxglove)
    assert all(v["decoded"] == v["count"] > 0 for v in foxglove.values()), foxglove
    assert foxglove["video/left/image"]["schema"] == "foxglove.CompressedImage"
    assert foxglove["audio/mic0/audio"]["first"]["format"] == "pcm-s16"
    assert foxglove["result/left/json"]["schema"] == "streamfuse.Classification"
    assert report["done"] and report["streamed_messages"] == sum(
        v["count"] for v in theirs.values()
    )


def _check_foxglove_channels(path: Path, rec: Any) -> None:
    import bisect

    import jsonschema
    from mcap.decoder import DecoderFactory as McapDecoderFactory
    from mcap_protobuf.decoder import DecoderFactory

    class Json(McapDecoderFactory):  # mcap ships no JSON decoder: json.loads is one
        def decoder_for(self, message_encoding: str, schema: Any) -> Any:
            return json.loads if message_encoding == "json" else None

    frames: dict[str, list[int]] = {}
    for m in rec.messages:
        if m.topic in ("video/left", "video/right"):
            frames.setdefault(m.topic, []).append(m.envelope().header.t_capture)

    def a_frame_at(topic: str, wall: int) -> bool:  # within 5 ms (frames are 33 ms apart)
        times = frames[topic]
        i = bisect.bisect_left(times, wall - rec.clock_offset - 5_000_000)
        return i < len(times) and abs(times[i] + rec.clock_offset - wall) <= 5_000_000

    windows = [m.envelope().header for m in rec.messages if m.topic == "audio/mic0"]
    decoded: dict[str, list[Any]] = {}
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory(), Json()])
        summary = reader.get_summary()
        assert summary is not None
        encodings = {c.topic: c.message_encoding for c in summary.channels.values()}
        for schema, channel, _message, proto in reader.iter_decoded_messages(
            topics=[t for t, e in encodings.items() if e in ("protobuf", "json")]
        ):
            if channel.message_encoding == "json":
                jsonschema.validate(proto, json.loads(schema.data))  # type: ignore[union-attr]
                decoded.setdefault(channel.topic, []).append(proto)
            else:
                assert schema is not None and schema.name.startswith("foxglove.")
                decoded.setdefault(channel.topic, []).append(proto)
    assert encodings["video/left/image"] == "protobuf"
    for topic in ("video/left", "video/right"):
        images = decoded[f"{topic}/image"]
        assert len(images) >= 20 and images[0].data[:2] == b"\xff\xd8"
        stamps = [i.timestamp.seconds * 10**9 + i.timestamp.nanos for i in images]
        assert all(b - a >= 99_000_000 for a, b in itertools.pairwise(stamps))  # <= 10 fps
        assert all(a_frame_at(topic, t) for t in stamps), "stamped with a frame's capture time"
    blocks = decoded["audio/mic0/audio"]
    assert {b.format for b in blocks} == {"pcm-s16"} and blocks[0].sample_rate == 16000
    samples = [len(b.data) // 2 for b in blocks]
    starts = [b.timestamp.seconds * 10**9 + b.timestamp.nanos for b in blocks]
    for (t0, n), t1 in zip(zip(starts, samples, strict=True), starts[1:], strict=False):
        assert abs(t0 + n * 10**9 // 16000 - t1) <= 63_000, "blocks back to back"
    span = windows[-1].t_end - windows[0].t_capture
    assert abs(sum(samples) - span * 16000 // 10**9) <= len(windows), "every window's samples"
    for topic in ("result/left", "result/right"):
        assert len(decoded[f"{topic}/json"]) == len([m for m in rec.messages if m.topic == topic])
        notes = decoded[f"{topic}/annotations"]
        assert notes and notes[0].texts[0].text.split()[0] == decoded[f"{topic}/json"][0]["label"]
    assert all(0 <= d["rms"] <= 1 for d in decoded["audio/mic0/level"])


def test_kill_9_while_recording_leaves_a_readable_file_and_recover_completes_it(
    tmp_path: Path, children: Children
) -> None:
    """The camera holds its first frame until the recorder and a probe listen, so the file starts at
    seq 0; a probe beside the recorder says how far the camera was when kill -9 came, and
    the file lacks at most the frames still in flight (each 900 KB frame fills its own
    256 KB chunks: the chunk being filled is at most one frame)."""
    ep = f"ipc://{tmp_path}/cam"
    out = tmp_path / "cut.mcap"
    rec = children.streamfuse("record", "--endpoint", ep, "--out", str(out))
    cam = children.streamfuse(
        "capture", "camera", "--source", "synthetic", "--topic", "video/front",
        "--endpoint", ep, "--fps", "30", "--wait-for-subscriber", "30", "--readers", "2",
    )  # fmt: skip
    with Subscriber(ep, ["video/front"], shm_copy=False) as probe:
        last = -1
        deadline = time.monotonic() + 60
        while last < 90:  # 3 s of frames the recorder has had time to write
            assert time.monotonic() < deadline, f"the camera got to seq {last}"
            env = probe.recv(timeout=1)
            last = env.header.seq if env is not None else last
        os.kill(rec.pid, signal.SIGKILL)
    rec.communicate(timeout=10)
    children.stop(cam)
    with open(out, "rb") as f, pytest.raises(McapError):  # the library's own refusal, no other
        make_reader(f).get_summary()  # no footer: cut off mid-file
    partial = read_recording(out)
    assert partial.problem is not None and partial.truncated_at
    n = len(partial.messages)
    seqs = [m.envelope().header.seq for m in partial.messages if m.topic == "video/front"]
    assert seqs == list(range(len(seqs))), f"not every seq from 0: {seqs[:3]}...{seqs[-3:]}"
    lost = last + 1 - len(seqs)  # frames the camera had sent when the recorder died
    assert lost <= IN_FLIGHT, f"kill -9 lost {lost} frames (seq {len(seqs)}..{last})"
    fixed = tmp_path / "fixed.mcap"
    res = run_cli("recover", str(out), str(fixed), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["recovered"] == n
    with open(fixed, "rb") as f:  # now a complete file the official reader indexes
        summary = make_reader(f).get_summary()
    assert summary is not None and summary.statistics is not None
    assert sum(summary.statistics.channel_message_counts.values()) >= n
    again = read_recording(fixed)  # and what it holds is what the cut file held, bytes and all
    assert again.problem is None and len(again.messages) == n
    for a, b in zip(partial.messages, again.messages, strict=True):
        assert (a.topic, a.log_time, a.publish_time) == (b.topic, b.log_time, b.publish_time)
        assert [bytes(f) for f in a.frames] == [bytes(f) for f in b.frames]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        (lambda d: b"", "is empty"),
        (lambda d: b"PK\x03\x04 this is a zip file" * 10, "bad magic bytes at offset 0"),
        (lambda d: d[:200], "file ends inside a record after byte"),
        (lambda d: _flip(d, 100), "after byte"),
    ],
    ids=["empty", "not-mcap", "cut-in-first-chunk", "flipped-byte-in-first-chunk"],
)
def test_a_damaged_file_is_a_clear_error_naming_the_offset(
    damage: object, expect: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(damage(SESSION.read_bytes()))  # type: ignore[operator]
    with pytest.raises(SourceError, match=expect) as info:
        read_recording(bad)
    assert str(bad) in str(info.value)
    res = run_cli("replay", str(bad), "--lockstep")
    assert (
        res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    )


def test_damage_late_in_the_file_keeps_what_comes_before(tmp_path: Path) -> None:
    data = SESSION.read_bytes()
    bad = tmp_path / "late.mcap"
    bad.write_bytes(data[: int(len(data) * 0.7)])
    rec = read_recording(bad)
    full = read_recording(SESSION)
    assert 0 < len(rec.messages) < len(full.messages)
    assert rec.problem and str(rec.truncated_at) in rec.problem
    assert [m.log_time for m in rec.messages] == [m.log_time for m in full.messages][
        : len(rec.messages)
    ]


def test_foxglove_channels_decode_with_the_official_reader() -> None:
    from mcap.decoder import DecoderFactory as McapDecoderFactory
    from mcap_protobuf.decoder import DecoderFactory

    class Json(McapDecoderFactory):  # mcap ships no JSON decoder: json.loads is one
        def decoder_for(self, message_encoding: str, schema: Any) -> Any:
            return json.loads if message_encoding == "json" else None

    with open(SESSION, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory(), Json()])
        summary = reader.get_summary()
        assert summary is not None
        chans = {c.topic: c for c in summary.channels.values()}
        schemas = summary.schemas
        image_channel = chans["video/front/image"]
        assert schemas[image_channel.schema_id].name == "foxglove.CompressedImage"
        assert image_channel.message_encoding == "protobuf"
        assert chans["video/front"].message_encoding == "streamfuse-zmq-v1"
        wire = schemas[chans["video/front"].schema_id]
        assert wire.name == "streamfuse.v1.VideoFrame"
        assert wire.encoding == "streamfuse-header-jsonschema"
        assert "pixel_format" in json.loads(wire.data)["$defs"]["VideoFrame"]["properties"]
        seen: dict[str, Any] = {}
        for _, channel, _, decoded in reader.iter_decoded_messages(
            topics=["video/front/image", "audio/mic0/level", "result/front/json"]
        ):
            seen.setdefault(channel.topic, decoded)
    image = seen["video/front/image"]
    assert image.format == "jpeg" and bytes(image.data)[:2] == b"\xff\xd8"
    assert 0 < seen["audio/mic0/level"]["rms"] <= 1
    assert seen["result/front/json"]["kind"] == "classification"


@given(st.lists(st.binary(max_size=300), max_size=6))
def test_frame_packing_round_trips(frames: list[bytes]) -> None:
    assert [bytes(f) for f in unpack_frames(pack_frames(frames))] == frames


@given(st.binary(max_size=64))
def test_unpacking_garbage_raises_a_value_error_or_reads_frames(data: bytes) -> None:
    try:
        frames = unpack_frames(data)
    except ValueError as exc:
        assert "byte" in str(exc)
    else:
        assert pack_frames(frames) == data


@pytest.mark.parametrize("reader", ["record", "subscribe"])
def test_reader_processes_survive_hostile_messages(
    reader: str, tmp_path: Path, children: Children
) -> None:
    """`streamfuse record` died on seq = 2**32 (MCAP's uint32 sequence) and on a topic that
    is not UTF-8; `subscribe` on a header of nested arrays. Each is counted now, and the
    valid messages around them are kept."""
    from streamfuse.transport import Publisher

    endpoint = f"ipc://{tmp_path}/cam"
    out = tmp_path / "r.mcap"
    with Publisher(endpoint, lossless=True) as pub:
        argv = {"record": ["record", "--out", str(out), "--progress", "0.1"],
                "subscribe": ["subscribe"]}[reader]  # fmt: skip
        proc = children.streamfuse(*argv, "--endpoint", endpoint, "--json")
        assert pub.wait_for_subscriber(20, prefix=b"")  # a reader of every topic
        frame = {"kind": "video", "v": 1, "stream": "x", "t_capture": 1, "width": 1, "height": 1}
        raw = pub._sock
        raw.send_multipart([b"video/x", msgpack.packb({**frame, "seq": 2**64 - 1}), bytes(3)])
        raw.send_multipart([b"video/x\xff", msgpack.packb(frame), bytes(3)])
        raw.send_multipart([b"video/x", b"\x91" * 1000 + b"\xc0"])
        for seq in (0, 2**32, 2**32 + 1):  # valid, past MCAP's uint32 sequence
            hdr = messages.VideoFrame(stream="x", seq=seq, t_capture=seq + 1, width=1, height=1)
            pub.send("video/x", hdr, bytes(3))
        seen = ""
        if reader == "subscribe":  # it prints each message: until the last one
            assert proc.stdout is not None
            while f'"seq": {2**32 + 1}' not in seen and '"seq":' + str(2**32 + 1) not in seen:
                line = proc.stdout.readline()
                assert line, "subscribe ended before the last message"
                seen += line
        else:  # its progress lines (JSON): until the 3 valid written and the 3 rejected
            assert proc.stderr is not None
            got: dict[str, int] = {}
            while got.get("written", 0) < 3 or got.get("rejected", 0) < 3:
                said = proc.stderr.readline()
                assert said, "record ended before it had them all"
                if said.startswith('{"progress"'):  # (warnings about the hostile ones too)
                    got = json.loads(said)["progress"]
        status, stdout, stderr = children.stop(proc)
        stdout = seen + stdout
    assert status == 0, stderr[-2000:]
    if reader == "record":
        summary = json.loads(stdout.strip().splitlines()[-1])
        assert summary["rejected"] == {"invalid": 1, "malformed": 2}
        seqs = [
            r.envelope().header.seq for r in read_recording(out).messages if r.topic == "video/x"
        ]
        assert seqs == [0, 2**32, 2**32 + 1]
    else:
        lines = [json.loads(line) for line in stdout.splitlines()]
        assert [d["seq"] for d in lines if d["topic"] == "video/x"] == [0, 2**32, 2**32 + 1]
        assert json.loads(stderr.strip().splitlines()[-1])["rejected"] == {
            "invalid": 1, "malformed": 2
        }  # fmt: skip


def _replay_into(endpoint: str, children: Children, *flags: str, want: int) -> tuple[
    list[tuple[int, messages.Envelope]], subprocess.Popen[str]
]:  # fmt: skip
    """`streamfuse replay SESSION --endpoint EP FLAGS`, read by one subscriber of everything:
    up to ``want`` messages, each with its receive time."""
    got: list[tuple[int, messages.Envelope]] = []
    with Subscriber(endpoint, [""]) as sub:
        proc = children.streamfuse("replay", str(SESSION), "--endpoint", endpoint, *flags)
        deadline = time.monotonic() + 60
        while len(got) < want and time.monotonic() < deadline:
            env = sub.recv(timeout=1)
            if env is not None:
                got.append((time.monotonic_ns(), env))
    return got, proc


def test_replay_start_topic_rate_and_wait_for_subscriber(endpoint: str, children: Children) -> None:
    """--start skips the recording's first seconds, --topic keeps those topics, --rate
    speeds the pacing up by its factor, --wait-for-subscriber holds the first message until
    someone listens (so nothing is lost from the start), --json reports what went out."""
    video = [x for x in read_recording(SESSION).messages if x.topic == "video/front"]
    want = [x for x in video if x.log_time - video[0].log_time >= 2e9]  # of the topics kept
    got, proc = _replay_into(
        endpoint, children, "--start", "2", "--topic", "video/", "--rate", "2",
        "--wait-for-subscriber", "30", "--json", want=len(want),
    )  # fmt: skip
    status, out, err = children.wait(proc)
    assert status == 0, err
    assert json.loads(out)["sent"] == {"video/front": len(want)}
    assert {env.topic for _, env in got} == {b"video/front"}
    assert [env.header.seq for _, env in got] == [x.envelope().header.seq for x in want]
    assert [bytes(env.payload) for _, env in got[:3]] == [bytes(x.frames[-1]) for x in want[:3]]
    recorded = (want[-1].log_time - want[0].log_time) / 1e9
    replayed = (got[-1][0] - got[0][0]) / 1e9
    assert 0.8 < replayed / (recorded / 2) < 1.25, (recorded, replayed)


def test_replay_loop_continues_the_sequence_and_readers_waits_for_each(
    endpoint: str, children: Children
) -> None:
    """--loop starts over at the end with sequence numbers that go on (a reader sees no
    duplicate and no gap) and each lap's capture times later than the last lap's;
    --readers 2 holds the first message until two readers are in."""
    n = sum(x.topic == "audio/mic0" for x in read_recording(SESSION).messages)
    with Subscriber(endpoint, ["audio/"]) as early:
        proc = children.streamfuse(
            "replay", str(SESSION), "--endpoint", endpoint, "--topic", "audio/", "--loop",
            "--rate", "8", "--wait-for-subscriber", "30", "--readers", "2",
        )  # fmt: skip
        assert early.recv(timeout=3) is None  # one reader in: it waits for the second
        with Subscriber(endpoint, ["audio/"]) as second:
            got = collect(second, 2 * n + 2, timeout=60)
        children.stop(proc)
    seqs = [env.header.seq for env in got]
    assert seqs == list(range(len(seqs))) and len(seqs) > 2 * n  # past two laps, from 0
    t = [env.header.t_capture for env in got]  # each lap shifted to its own start
    assert all(t[i + n] > t[i] for i in range(len(t) - n)), "a lap's times do not go on"


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--rate", "0"], "error: --rate: must be > 0, got 0.0"),
        (["--start", "99"], "error: replay: nothing to replay on topics"),
        (["--topic", "nothing/"], "error: replay: nothing to replay on topics ['nothing/']"),
        ([], "error: replay: give exactly one of --endpoint EP or --run-dir DIR"),
    ],
)
def test_bad_replay_flags_are_one_line(flags: list[str], needle: str, endpoint: str) -> None:
    args = [*flags, "--endpoint", endpoint] if flags else []
    res = run_cli("replay", str(SESSION), *args)
    assert res.returncode == 2 and res.stderr.startswith(needle), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("flags", "option"),
    [(["--progress", "0"], "--progress"), (["--progress", "soon"], "--progress"),
     (["--max-backlog-mib", "0"], "--max-backlog-mib"),
     (["--compression", "gzip"], "--compression"), (["--min-free", "-1"], "--min-free")],
)  # fmt: skip
def test_bad_record_flags_are_one_line_naming_the_flag(
    flags: list[str], option: str, tmp_path: Path
) -> None:
    res = run_cli("record", "--endpoint", "ipc:///tmp/none", "--out", str(tmp_path / "r.mcap"),
                  *flags)  # fmt: skip
    assert res.returncode == 2 and f"'{option}'" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "r.mcap").exists()

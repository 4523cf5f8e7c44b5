"""The engine: subscribe -> synchronize -> batch -> infer -> publish classifications.

One process, one thread, one loop. Every received message goes through the pure
:class:`~streamfuse.sync.Synchronizer`; each bundle it emits becomes one sample per camera,
the samples that are ready together form one batch, and each sample becomes one
:class:`~streamfuse.messages.Classification` on ``result/<camera>`` with its inputs and a
latency ledger. The publisher drops for a subscriber that falls ``sndhwm`` messages behind
(it sees sequence gaps): a slow subscriber never slows the engine.

If the microphone goes silent for ``mic_timeout_ms`` the engine keeps classifying from the
cameras alone, once per hop, with the audio blanked and the result marked degraded.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path

import msgspec
import numpy as np

from .backend import (
    Backend,
    BackendOptions,
    Inputs,
    ModelInfo,
    Outputs,
    RemoteBackend,
    open_backend,
)
from .clock import clock_state, local_offset_ns, to_local
from .config import RunConfig
from .errors import ConfigError
from .messages import AudioWindow, Classification, Envelope, Heartbeat, InputRef, VideoFrame
from .preprocess import Preprocessor
from .sync import Bundle, Synchronizer
from .transport import Publisher, Sources, heartbeat_topic

__all__ = ["RESULT_PREFIX", "Engine", "EngineStats", "Standby"]

log = logging.getLogger(__name__)

HELD_FRAMES = 48
"""Per camera: the latest frames kept as shared-memory views (1.6 s at 30 fps; a camera's
ring has 64 slots, so it never has to reuse a held one while the engine keeps up)."""
RESULT_PREFIX = "result/"


class Requests:
    """Requests counted by a signal handler: it only adds one. (No lock: a handler runs on
    the main thread between two bytecodes, and one that took a lock the main thread held —
    ``threading.Event.set`` — deadlocked it.)"""

    def __init__(self) -> None:
        self.count = 0

    def add(self) -> None:
        self.count += 1


RELOAD = Requests()
"""Added to by the engine process's SIGHUP handler: the model watch looks now."""
IDLE_S = 0.1
"""The longest the loop waits for input when nothing is due: how soon it sees a stop, a
model to swap in, a changed model file. Deadlines (a window's, a heartbeat's) wake it on
time; it does not poll."""
RELAY_HWM = 10_000
STANDBY_TICK_S = 0.05
HANDOVER_MAX = 64
HANDOVER_BYTES = 64 << 20
"""What a standby keeps for the takeover: the samples of the last hang_timeout_s + 2 s
(at most 12 s), at most this many and their frames' copies within this many bytes."""
"""A standby's loop wakes this often with nothing arriving (it has no deadline to meet)."""


class Standby:
    """A standby engine's word from the supervisor, one line on a pipe (its stdin):
    ``go {"after": T0, "seq": {"front": N}}`` — take over; the engine before classified the
    windows up to the one that started at T0 (capture time, ns) and published result seq N
    last. End of file (the supervisor is gone) sets ``stop``."""

    def __init__(self, fd: int, stop: threading.Event) -> None:
        self.go = threading.Event()
        self.after = -1
        self.seq: dict[str, int] = {}
        self._fd = fd
        self._stop = stop
        threading.Thread(target=self._read, name="standby", daemon=True).start()

    def _read(self) -> None:
        # os.read, not a buffered file: a daemon thread blocked in a BufferedReader holds
        # its lock, and the interpreter aborts on it at exit.
        line = b""
        while chunk := os.read(self._fd, 4096):
            line += chunk
            if b"\n" not in line:
                continue
            word, _, rest = line.partition(b"\n")[0].strip().partition(b" ")
            line = b""
            if word != b"go":
                log.warning("standby: ignored %r on its pipe", word[:80])
                continue
            try:
                handover = json.loads(rest or b"{}")
                self.after = int(handover.get("after", -1))
                self.seq = {str(k): int(v) for k, v in handover.get("seq", {}).items()}
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("standby: handover %r not understood (%s); taking over", rest, exc)
            self.go.set()
            return
        self._stop.set()  # the pipe closed before any word: the supervisor is gone


@dataclass
class _Sample:
    camera: str
    """Camera topic (the microphone's, for an audio-only model)."""
    frame: Envelope | None
    """The frame nearest the window's centre (K frames: the middle one of ``frames``)."""
    audio: Envelope | None
    t_latest: int
    arrived: int
    pushed: int
    decided: int
    missing: list[str]
    frames: tuple[Envelope, ...] = ()
    """The K frames a temporal model takes (``k-frames`` policy), oldest first."""
    reasons: dict[str, str] = field(default_factory=dict)
    """Why an input or the inference is missing, beyond the clock (``inference``)."""

    @property
    def stream(self) -> str:
        return self.camera.partition("/")[2]


@dataclass
class EngineStats:
    published: int = 0
    batches: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    model_swaps: int = 0


class Engine:
    def __init__(
        self, cfg: RunConfig, backend: Backend | None = None, *, virtual: bool = False
    ) -> None:
        self.cfg = cfg
        self.virtual = virtual
        """Lockstep: time is what the caller passes in; no wall clock is read."""
        self._model_signature = _signature(_model_path(cfg))  # (before reading it)
        self.model = load_model(cfg)
        self.frames = self.model.image.frames if self.model.image is not None else 1
        fits(self.model, cfg, self.frames)
        if backend is None:
            backend = open_backend(cfg.engine.backend, self.model, backend_options(cfg))
        self.backend = backend
        self._remote: RemoteBackend | None = _remote(backend)
        self._fallback: Backend | None = None
        if cfg.engine.fallback is not None:
            options = replace(backend_options(cfg), settings={})
            self._fallback = open_backend(cfg.engine.fallback, self.model, options)
        self._inflight: deque[_InFlight] = deque()
        self._outage = 0
        """Remote batches failed in a row."""
        self._carry: list[Classification] = []
        """Results collected outside classify() (a swap waits for the old backend's)."""
        self.pre = Preprocessor(self.model)
        self.sync = Synchronizer(cfg.sync_config(k=self.frames))
        self.cameras = [cfg.camera_topic(c) for c in cfg.cameras]
        self.mic = cfg.mic_topic
        self.stats = EngineStats()
        self._arrivals: OrderedDict[tuple[str, int], tuple[int, int]] = OrderedDict()
        self._seq: Counter[str] = Counter()
        self._latest_frame: dict[str, Envelope] = {}
        self._last_audio_ns = 0
        self._last_camera_only = 0
        self._ended: set[str] = set()
        self._served = _Served(self.model, _tag(backend))
        """The model and backend the next batch runs on (results name them)."""
        self._watch: ModelWatch | None = None
        self._output: Publisher | None = None
        self._intact: Callable[[Envelope], bool] = lambda env: True  # (replayed: copies)
        # Sources on other boxes: their times mapped through t_wall (streamfuse.clock).
        self._wall = {t for t in (*self.cameras, self.mic) if cfg.clock_of(t) == "wall"}
        self._clock_bound = {
            t: int(sensor.clock_error_ms * 1_000_000)
            for t, sensor in cfg.sensors()
            if sensor.clock_error_ms is not None
        }
        self._remote_clock: dict[str, tuple[str, int | None]] = {}
        self._local_clock = clock_state()
        self._unsynced: set[str] = set()
        self.clock_drops: Counter[str] = Counter()
        self.clock_offsets: dict[str, int] = {}
        """Per source on another box: its t_capture minus ours for the same instant."""

    def swap(self, model: ModelInfo, backend: Backend, pre: Preprocessor | None = None) -> None:
        """Serve ``model`` on ``backend`` from the next batch on (both loaded and warm)."""
        old = self.backend
        self._carry += self.collect(wait=True)  # (its requests out: answered by it)
        self.model, self.backend, self.pre = model, backend, pre or Preprocessor(model)
        self._remote = _remote(backend)
        self._served = _Served(model, _tag(backend))
        self.stats.model_swaps += 1
        old.close()
        log.info("model %s (%s) now serving on %s", model.path, self._served.sha, self._served.tag)

    # --- the loop ----------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        until_eof: bool = False,
        relay: str | None = None,
        standby: Standby | None = None,
        recorder: bool = False,
    ) -> str:
        """Serve until ``stop`` is set or (``until_eof``) every file source has ended.
        Returns why it ended: ``stopped`` or ``eof``.

        ``relay``: publish into the supervisor's :class:`~streamfuse.transport.Relay` (which
        holds ``engine.output``) instead of binding ``engine.output``. ``standby``: first
        follow the sensors without classifying until told to take over (:class:`Standby`),
        then classify the windows the engine before it did not get to and go on.
        ``recorder``: send nothing before a recorder (a reader of every topic) subscribed,
        so that a recording starts with the first heartbeat and result."""
        cfg = self.cfg
        # Each sensor's endpoint speaks for its own data and heartbeat topics, nothing else.
        owners: dict[str, list[str]] = {}
        for topic in (*self.cameras, self.mic):
            ep = cfg.source_endpoint(topic)  # its own, or ipc://<run_dir>/<topic> if started
            owners.setdefault(ep, []).extend([topic, heartbeat_topic(topic)])
        if relay is not None:
            # (the relay drains at once; engine.sndhwm applies to each subscriber past it)
            pub = Publisher(relay, sndhwm=RELAY_HWM, connect=True)
            pub.wait_for_subscriber(1.0)  # the supervisor's: the first heartbeat reaches it
            if recorder and not pub.wait_for_subscriber(15.0, prefix=b"", stop=stop):
                log.warning("no recorder subscribed after 15 s; publishing anyway")
        else:
            pub = Publisher(cfg.engine.output, sndhwm=cfg.engine.sndhwm, curve=cfg.curve_server())
        self._output = pub
        # Frames stay in their shared-memory slots (views; the latest HELD_FRAMES of each
        # camera held there) until a window wants one: only paired frames are read.
        sub = Sources(
            owners, rcvhwm=256, curve=cfg.curve_clients(), shm_copy=False, shm_hold=HELD_FRAMES
        )
        self._intact = sub.intact
        hb_topic = heartbeat_topic(RESULT_PREFIX)
        ended = "stopped"
        watch = self._watch = ModelWatch(self)
        try:
            backlog = [] if standby is None else self._stand_by(sub, stop, standby)
            if stop.is_set():
                return ended
            start = last_hb = time.monotonic_ns()
            hb_seq = 0
            published_at_hb = 0
            if standby is None:
                self.begin(start)
            else:
                self._seq.update({c: n + 1 for c, n in standby.seq.items()})
            # Say so at once (not a heartbeat interval later): the supervisor's READY and
            # health, and how soon a restarted engine counts as back.
            pub.send(hb_topic, self._heartbeat(sub, hb_seq, start, start, 0.0))
            hb_seq += 1
            for msg in self.classify(backlog):
                pub.send(RESULT_PREFIX + msg.stream, msg)
            sources = set(self.cameras) | {self.mic}
            while not stop.is_set():
                now = time.monotonic_ns()
                wake = min(now + int(IDLE_S * 1e9), last_hb + 1_000_000_000)
                if (due := self.due()) is not None:
                    wake = min(wake, due)
                # (remote requests out: their answers are looked for every millisecond)
                env = sub.recv(timeout=0.001 if self._inflight else max(0, wake - now) / 1e9)
                now = time.monotonic_ns()
                watch.poll(now)  # a new model, loaded and warm: served from here
                try:
                    samples = self.tick(now) if env is None else self.handle(env, now)
                    for msg in self.classify(samples):
                        pub.send(RESULT_PREFIX + msg.stream, msg)
                except Exception as exc:  # the last resort: a message never ends the engine
                    self._internal_error(env, exc)
                if until_eof and sources <= self._ended:
                    # every source has ended: flush what the synchronizer still holds
                    for msg in [*self.classify(self.flush()), *self.collect(wait=True)]:
                        pub.send(RESULT_PREFIX + msg.stream, msg)
                    ended = "eof"
                    break
                if now - last_hb >= 1_000_000_000:
                    dt = (now - last_hb) / 1e9
                    rate = (self.stats.published - published_at_hb) / dt
                    pub.send(hb_topic, self._heartbeat(sub, hb_seq, now, start, rate))
                    hb_seq, last_hb, published_at_hb = hb_seq + 1, now, self.stats.published
            for msg in self.collect(wait=True):  # (stopped with requests out: their answers)
                pub.send(RESULT_PREFIX + msg.stream, msg)
            now = time.monotonic_ns()
            pub.send(hb_topic, self._heartbeat(sub, hb_seq, now, start, 0.0, state=ended))
        finally:
            sub.close()
            pub.close()
            if self._watch is not None:
                self._watch.close()
            self.backend.close()
            if self._fallback is not None:
                self._fallback.close()
        return ended

    def _stand_by(self, sub: Sources, stop: threading.Event, standby: Standby) -> list[_Sample]:
        """Follow the sensors (the synchronizer kept current, nothing classified) until
        ``standby`` says take over; return the samples of the windows decided meanwhile
        that the engine before did not classify (those after ``standby.after``)."""
        held: deque[tuple[_Sample, int]] = deque()  # and the bytes of its frame's copy
        copied = 0
        # long enough for a hung engine to be found out (hang_timeout_s, plus the heartbeat
        # interval) and killed: its windows are classified after all
        retain = int((min(self.cfg.hang_timeout_s, 10.0) + 2.0) * 1e9)
        self.begin(time.monotonic_ns())
        while not stop.is_set() and not standby.go.is_set():
            env = sub.recv(timeout=STANDBY_TICK_S)
            now = time.monotonic_ns()
            if self._watch is not None:
                self._watch.poll(now)  # (a standby follows the model file too)
            try:
                samples = self.tick(now) if env is None else self.handle(env, now)
            except Exception as exc:
                self._internal_error(env, exc)
                continue
            for s in samples:
                if s.audio is None:  # camera-only (the microphone silent): not handed over
                    continue
                size = 0
                if s.frame is not None and s.frame.payload is not None:
                    # its own copy: the ring slot may be reused before the takeover
                    copy = memoryview(bytes(s.frame.payload))
                    if self._intact(s.frame):
                        s.frame, size = Envelope(s.frame.topic, s.frame.header, copy), copy.nbytes
                held.append((s, size))
                copied += size
            while held and (
                len(held) > HANDOVER_MAX
                or copied > HANDOVER_BYTES
                or now - held[0][0].decided > retain
            ):
                copied -= held.popleft()[1]
        self.stats.published = 0  # what a standby counts is what it has published
        return [s for s, _ in held if s.audio.header.t_capture > standby.after]  # type: ignore[union-attr]

    # --- one step of the loop (also driven by lockstep replay on a virtual clock) --------

    def begin(self, now: int) -> None:
        """The clock at start (the microphone counts as heard then)."""
        self._last_audio_ns = now

    def handle(self, env: Envelope, now: int) -> list[_Sample]:
        """One received message at ``now``; the samples that became ready."""
        topic = env.topic.decode()  # (its kind agrees with it: messages.decode saw to that)
        if topic in self._wall and not isinstance(env.header, Heartbeat):
            mapped = self._map_clock(topic, env)
            if mapped is None:
                return self.tick(now)
            env = mapped
        if isinstance(env.header, Heartbeat):
            source = topic.removeprefix("heartbeat/")
            if source in self._wall:  # how far its t_wall can be trusted
                self._remote_clock[source] = (env.header.clock_sync, env.header.clock_error_ns)
            if env.header.state == "eof":
                self._ended.add(topic.removeprefix("heartbeat/"))
            return self.tick(now)
        if isinstance(env.header, AudioWindow):
            self._last_audio_ns = now
        elif isinstance(env.header, VideoFrame):
            self._latest_frame[topic] = env
        pushed = now if self.virtual else time.monotonic_ns()
        self._arrivals[(topic, env.header.seq)] = (now, pushed)
        while len(self._arrivals) > 4096:  # frames no window wanted
            self._arrivals.popitem(last=False)
        bundles = self.sync.push(env, pushed)
        return [s for b in bundles for s in self._samples(b)] + self._camera_only(now)

    def due(self) -> int | None:
        """When a :meth:`tick` next has something to do if nothing arrives: a window's
        deadline or, the microphone silent, the next camera-only round; None: only input."""
        due = self.sync.due()
        if self.model.image is not None and self.mic not in self._ended:
            silent_ns = int(self.cfg.engine.mic_timeout_ms * 1e6)
            hop_ns = int(self.cfg.mic.hop_ms * 1e6)
            rounds = max(self._last_audio_ns + silent_ns, self._last_camera_only + hop_ns)
            due = rounds if due is None else min(due, rounds)
        return due

    def _map_clock(self, topic: str, env: Envelope) -> Envelope | None:
        """A message from another box, its t_capture put on this box's clock through its
        t_wall; None (counted ``clock_unsynced``) while that cannot be trusted to within the
        sync tolerance."""
        h = env.header
        error = self._clock_error(topic)
        if error is None or error > self.sync.config.tolerance or h.t_wall == 0:
            self.clock_drops[topic] += 1
            self._unsynced.add(topic)
            return None
        self._unsynced.discard(topic)
        local = to_local(h.t_wall, local_offset_ns())
        self.clock_offsets[topic] = h.t_capture - local
        return Envelope(env.topic, msgspec.structs.replace(h, t_capture=local), env.payload)

    def _clock_error(self, topic: str) -> int | None:
        """How far a mapped time may be off: the configured bound, else the two boxes'
        reported maximum errors added; None where either is not synchronized or not known."""
        if (bound := self._clock_bound.get(topic)) is not None:
            return bound
        sync, remote = self._remote_clock.get(topic, ("unknown", None))
        local_sync, local = self._local_clock
        if sync != "synced" or local_sync != "synced" or remote is None or local is None:
            return None
        return remote + local

    def tick(self, now: int) -> list[_Sample]:
        """Nothing arrived: release bundles whose deadline has come."""
        return [s for b in self.sync.poll(now) for s in self._samples(b)] + self._camera_only(now)

    def flush(self) -> list[_Sample]:
        """Every source has ended: everything still pending, at its deadline."""
        far = (self._last_audio_ns if self.virtual else time.monotonic_ns()) + 10**12
        return [s for b in self.sync.poll(far) for s in self._samples(b)]

    def _samples(self, b: Bundle) -> list[_Sample]:
        out = []
        audio = b.audio
        assert audio is not None and isinstance(audio.header, AudioWindow)
        a_topic = audio.topic.decode()
        a_arr, a_push = self._arrivals.pop((a_topic, audio.header.seq), (b.emitted_at,) * 2)
        if self.model.image is None:  # an audio-only model: one sample per window
            return [
                _Sample(self.mic, None, audio, audio.header.t_end, a_arr, a_push, b.emitted_at, [])
            ]
        for cam in self.cameras:
            frames = b.frames.get(cam, ())
            frame = frames[len(frames) // 2] if frames else None
            latest, arrived, pushed = audio.header.t_end, a_arr, a_push
            if frame is not None:
                f_arr, f_push = self._arrivals.get((cam, frame.header.seq), (a_arr, a_push))
                if frame.header.t_capture > latest:
                    latest, arrived, pushed = frame.header.t_capture, f_arr, f_push
                if f_push > pushed:  # the bundle could not leave before its later input
                    arrived, pushed = f_arr, f_push
            missing = list(b.missing)
            if self.frames > 1 and frame is not None and len(frames) < self.frames:
                missing.append(cam)  # fewer frames than the model takes: blanked
            out.append(
                _Sample(
                    cam, frame, audio, latest, arrived, pushed, b.emitted_at, missing, tuple(frames)
                )
            )
        return out

    def _camera_only(self, now: int) -> list[_Sample]:
        """With the microphone silent, classify the newest frame per camera once per hop."""
        silent_ns = int(self.cfg.engine.mic_timeout_ms * 1e6)
        hop_ns = int(self.cfg.mic.hop_ms * 1e6)
        if now - self._last_audio_ns < silent_ns or now - self._last_camera_only < hop_ns:
            return []
        if self.mic in self._ended or self.model.image is None:
            return []
        self._last_camera_only = now
        out = []
        for cam in self.cameras:
            frame = self._latest_frame.pop(cam, None)
            if frame is None:
                continue
            f_arr, f_push = self._arrivals.pop((cam, frame.header.seq), (now, now))
            out.append(
                _Sample(cam, frame, None, frame.header.t_capture, f_arr, f_push, now, [self.mic])
            )
        return out

    # --- inference ---------------------------------------------------------------------

    def classify(self, samples: list[_Sample]) -> list[Classification]:
        """Run the model on ``samples`` (in batches of max_batch) and build the results."""
        out, self._carry = self._carry, []
        for i in range(0, len(samples), self.backend.max_batch):
            out += self._classify_batch(samples[i : i + self.backend.max_batch])
        if self._inflight:
            out += self.collect()
        return out

    def _classify_batch(self, samples: list[_Sample]) -> list[Classification]:
        if not samples:
            return []
        clock = (lambda: 0) if self.virtual else time.monotonic_ns
        t0 = clock()
        pre = self.pre
        pixels: list[np.ndarray | None] = []
        pcm: list[np.ndarray] = []
        pcm_done: dict[int, np.ndarray] = {}  # one mic window serves every camera's sample
        for s in samples:
            if pre.image is not None:
                pixels.append(self._pixels(s))
            if pre.audio is not None:
                if s.audio is None:
                    pcm.append(pre.blank_pcm())
                    continue
                if id(s.audio) not in pcm_done:
                    try:
                        pcm_done[id(s.audio)] = pre.audio.pcm(s.audio)
                    except Exception as exc:  # a window the model cannot take: silence
                        self._error("preprocess", f"{s.audio.topic.decode()}: {exc}")
                        pcm_done[id(s.audio)] = pre.blank_pcm()
                        s.missing.append(s.audio.topic.decode())
                pcm.append(pcm_done[id(s.audio)])
        try:
            feeds = pre.inputs(pixels, pcm)
        except Exception as exc:
            self._error("preprocess", f"batch of {len(samples)}: {exc}")
            return []
        t1 = clock()
        served = self._served
        if self._remote is not None:  # sent now, collected by classify() when it is back
            fallback = {k: v.copy() for k, v in feeds.items()} if self._fallback else None
            job = _InFlight(samples, fallback, t0, t1, self._remote.submit(feeds), served)
            job.future.add_done_callback(job.done)
            self._inflight.append(job)
            return []
        try:
            out = self.backend.infer(feeds)
        except Exception as exc:
            self._error("inference", f"batch of {len(samples)}: {exc}")
            return []
        return self._results(samples, out, t0, t1, clock(), served)

    def collect(self, wait: bool = False) -> list[Classification]:
        """The results of the remote requests that are back, in the order they were sent;
        a request past its timeout (or failed) is run on ``engine.fallback`` or published
        degraded (``inference_unavailable``). ``wait``: until none is out."""
        out: list[Classification] = []
        while self._inflight:
            job = self._inflight[0]
            assert self._remote is not None
            late = time.monotonic_ns() - job.t1 > self._remote.timeout_s * 1e9
            if not job.future.done() and not late:
                if not wait and len(self._inflight) <= self._remote.max_in_flight:
                    break
                futures.wait([job.future], timeout=self._remote.timeout_s)
                continue
            self._inflight.popleft()
            error: BaseException | None
            if job.future.done() and (error := job.future.exception()) is None:
                self.stats.batches += 1
                if self._outage:
                    log.warning("remote inference back after %d batches without", self._outage)
                    self._outage = 0
                done = job.done_ns or time.monotonic_ns()
                out += self._results(
                    job.samples, job.future.result(), job.t0, job.t1, done, job.served
                )
                continue
            why = "timed out" if not job.future.done() else str(error)
            out += self._unavailable(job, why)
        return out

    def _unavailable(self, job: _InFlight, why: str) -> list[Classification]:
        # counted every time, said once per outage (and when it is over: collect())
        self.stats.errors["inference_unavailable"] += 1
        self.stats.last_error = f"remote inference unavailable: {why}"
        if self._outage == 0:
            then = f"running on {self._fallback.name}" if self._fallback else "results degraded"
            log.warning("remote inference unavailable (%s); %s", why, then)
        self._outage += 1
        for s in job.samples:
            s.reasons["inference"] = "inference_unavailable"
        if self._fallback is not None and job.feeds is not None:
            try:
                out = self._fallback.infer(job.feeds)
            except Exception as exc:
                self._error("inference", f"fallback, batch of {len(job.samples)}: {exc}")
            else:
                self.stats.errors["inference_fallback"] += 1
                served = _Served(job.served.model, _tag(self._fallback))
                # inference: from the request sent, through its timeout, to the fallback's
                now = time.monotonic_ns()
                return self._results(job.samples, out, job.t0, job.t1, now, served)
        # no answer: each window still gets its result, with no label, saying why
        for s in job.samples:
            s.missing.append("inference")
        return self._results(job.samples, None, job.t0, job.t1, time.monotonic_ns(), job.served)

    def _results(
        self,
        samples: list[_Sample],
        out: Outputs | None,
        t0: int,
        t1: int,
        t2: int,
        served: _Served,
    ) -> list[Classification]:
        clock = (lambda: 0) if self.virtual else time.monotonic_ns
        labels = served.labels
        heads = served.model.contract.outputs
        kind = served.model.contract.output_kind
        probs = p_img = p_aud = None
        if out is not None:
            probs = _probs(out[heads.fused], kind)
            p_img = _probs(out[heads.image], kind) if heads.image is not None else None
            p_aud = _probs(out[heads.audio], kind) if heads.audio is not None else None
        results = []
        for i, s in enumerate(samples):
            msg = Classification(
                stream=s.stream,
                seq=self._seq[s.stream],
                t_capture=s.t_latest,
                t_wall=0 if self.virtual else time.time_ns(),
                media_pos=_media(s.frame) if s.frame else _media(s.audio),
                image_label=None if p_img is None else labels[int(p_img[i].argmax())],
                image_score=None if p_img is None else float(p_img[i].max()),
                audio_label=None if p_aud is None else labels[int(p_aud[i].argmax())],
                audio_score=None if p_aud is None else float(p_aud[i].max()),
                degraded=bool(s.missing),
                missing=sorted(set(s.missing)),
                reasons={
                    **{m: "clock_unsynced" for m in s.missing if m in self._unsynced},
                    **s.reasons,
                },
                inputs=[_ref(e) for e in (s.frame, s.audio) if e is not None],
                model=served.sha,
                backend=served.tag,
            )
            if probs is not None:
                order = np.argsort(-probs[i], kind="stable")[:3]
                msg.label, msg.score = labels[order[0]], float(probs[i, order[0]])
                msg.topk = [(labels[j], float(probs[i, j])) for j in order]
            msg.latency = _ledger(s, (t0, t1, t2, clock()), self.virtual)
            self._seq[s.stream] += 1
            self.stats.published += 1
            results.append(msg)
        return results

    def _pixels(self, s: _Sample) -> np.ndarray | None:
        """The sample's frame(s) as the model's pixels; None (fed as zeros) where there are
        none, they do not decode, or their slot was reused before they were read."""
        pre = self.pre
        assert pre.image is not None
        frames = s.frames if self.frames > 1 else (s.frame,) if s.frame is not None else ()
        if s.frame is None or len(frames) < self.frames:
            return None
        try:
            px = [pre.image.pixels(f) for f in frames]
        except Exception as exc:  # a frame that cannot be decoded: blank it, say so
            self._error("preprocess", f"{s.camera}: {exc}")
            s.missing.append(s.camera)
            return None
        if not all(self._intact(f) for f in frames):  # read while reused
            self._error("overwritten", f"{s.camera}: its slot was reused before use")
            s.missing.append(s.camera)
            return None
        return np.stack(px) if self.frames > 1 else px[0]

    # --- health -------------------------------------------------------------------------

    def _internal_error(self, env: Envelope | None, exc: Exception) -> None:
        topic = env.topic.decode(errors="replace") if env is not None else "(tick)"
        first = self.stats.errors["internal_error"] == 0
        self.stats.errors["internal_error"] += 1
        self.stats.last_error = f"internal error on {topic}: {type(exc).__name__}: {exc}"
        if first:
            log.exception("internal error on a message of %s (counted, skipped)", topic)

    def _error(self, kind: str, message: str) -> None:
        self.stats.errors[kind] += 1
        self.stats.last_error = message
        log.warning("%s", message)

    def _heartbeat(
        self, sub: Sources, seq: int, now: int, start: int, rate: float, state: str = "running"
    ) -> Heartbeat:
        drops: Counter[str] = Counter({k: v for k, v in self.sync.drops.items() if k != "unpaired"})
        pub_refused = self._output.auth_refused if self._output is not None else 0
        for reason, n in sub.rejected.items():
            drops[f"rejected_{reason}"] += n
        if self.clock_drops:
            drops["clock_unsynced"] = sum(self.clock_drops.values())
        gaps = sum(st.gaps for st in sub.streams.values())
        if gaps:
            drops["gap"] = gaps
        return Heartbeat(
            stream="engine",
            seq=seq,
            t_capture=now,
            t_wall=time.time_ns(),
            source=f"{self._served.tag} model {self._served.sha}",
            pid=os.getpid(),
            uptime_ns=now - start,
            sent=self.stats.published,
            rate_hz=rate,
            drops=dict(drops),
            errors={**self.stats.errors, **({"auth_refused": pub_refused} if pub_refused else {})},
            last_error=self.stats.last_error,
            state=state,  # type: ignore[arg-type]
            depths=self.sync.depths(),
            received={
                t.decode(errors="replace"): st.received
                for t, st in sub.streams.items()
                if not t.startswith(b"heartbeat/")
            },
            clock_offsets_ns=dict(self.clock_offsets),
            model_swaps=self.stats.model_swaps,
        )


def _media(env: Envelope | None) -> int | None:
    return None if env is None else env.header.media_pos


def _ref(env: Envelope) -> InputRef:
    h = env.header
    t1 = h.t_end if isinstance(h, AudioWindow) else h.t_capture
    m0 = h.media_pos
    return InputRef(
        stream=env.topic.decode(),
        seq=h.seq,
        t0=h.t_capture,
        t1=t1,
        media_t0=m0,
        media_t1=None if m0 is None else m0 + (t1 - h.t_capture),
    )


#: The latency ledger's stages, in order: each runs from the end of the one before it.
STAGES = ("transport", "queue", "sync_wait", "dispatch", "preprocess", "inference", "publish")


def _ledger(s: _Sample, batch: tuple[int, int, int, int], virtual: bool) -> dict[str, int]:
    """ns per stage of one result, from the latest input's capture to its publication;
    ``batch``: (preprocessing began, inference began, inference done, published). The stages
    sum to ``total`` exactly; a stage that would be negative (another box's capture time
    mapped onto this clock a little late) counts as 0 and ``total`` as their sum. On the
    recorded clock (lockstep replay) the engine's own stages take no time."""
    t0, t1, t2, t_pub = (s.decided,) * 4 if virtual else batch
    ends = (s.t_latest, s.arrived, s.pushed, s.decided, t0, t1, t2, t_pub)
    ledger = {k: max(0, b - a) for k, (a, b) in zip(STAGES, pairwise(ends), strict=True)}
    ledger["total"] = sum(ledger.values())
    return ledger


def _probs(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "probabilities":
        return x
    z = x.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class _Served:
    """What a result names of the model that made it (a swap may come in between)."""

    model: ModelInfo
    tag: str
    """``name/device/precision`` of the backend."""

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.labels

    @property
    def sha(self) -> str:
        return self.model.sha256[:12]


def _tag(backend: Backend) -> str:
    return f"{backend.name}/{backend.device}/{backend.precision}"


@dataclass
class _InFlight:
    """A batch sent to a remote backend, not yet collected."""

    samples: list[_Sample]
    feeds: Inputs | None
    """A copy of its inputs, for the fallback (None without one)."""
    t0: int
    t1: int
    future: Future[Outputs]
    served: _Served
    done_ns: int = 0

    def done(self, _: object) -> None:
        self.done_ns = time.monotonic_ns()


def backend_options(cfg: RunConfig) -> BackendOptions:
    e = cfg.engine
    settings = msgspec.to_builtins(e.triton) if e.backend == "triton" else {}
    return BackendOptions(
        device=e.device or "cpu",
        precision=e.precision,
        max_batch=e.max_batch,
        threads=e.threads,
        settings=settings,
    )


def _remote(backend: Backend) -> RemoteBackend | None:
    """The backend as a remote one (requests sent and collected later), or None."""
    return backend if hasattr(backend, "submit") else None  # type: ignore[return-value]


def fits(model: ModelInfo, cfg: RunConfig, k: int) -> None:
    """Raise ConfigError where ``model`` cannot serve ``cfg``'s sensors (a synchronizer
    pairing ``k`` frames per window)."""
    frames = model.image.frames if model.image is not None else 1
    if frames > 1 and cfg.sync.policy != "k-frames":
        raise ConfigError(
            "sync.policy", f"model {model.path} takes {frames} frames a sample: use k-frames"
        )
    if frames != k and (frames > 1 or k > 1):
        raise ConfigError(
            "contract image.frames",
            f"model {model.path} takes {frames} frames a sample; the engine pairs {k}",
        )


class ModelWatch:
    """Hot swap: a changed ``engine.model`` file (or SIGHUP) is loaded and warmed in a thread
    beside the serving model; :meth:`poll`, called by the loop between batches, swaps it in.
    A model that does not load, or does not fit the sensors, is counted
    (``model_swap_failed``) and the serving model goes on."""

    CHECK_NS = 500_000_000

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.path = _model_path(engine.cfg)
        self._seen = engine._model_signature
        self._pending: tuple[int, int, int] | None = None
        self._checked = 0
        self._requested = RELOAD.count
        self._ready: tuple[ModelInfo, Backend, Preprocessor] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def poll(self, now: int) -> None:
        if self._ready is not None:  # (no lock on the loop's every turn: only when there is one)
            with self._lock:
                ready, self._ready = self._ready, None
            if ready is not None:
                self.engine.swap(*ready)
        if self._thread is not None and self._thread.is_alive():
            return
        forced = RELOAD.count != self._requested
        if not forced and now - self._checked < self.CHECK_NS:
            return
        self._checked = now
        sig = _signature(self.path)
        if forced:
            self._requested = RELOAD.count
        elif sig == self._seen:
            self._pending = None
            return
        elif sig != self._pending:  # changed: load once it has stayed so for one check
            self._pending = sig
            return
        self._seen, self._pending = sig, None
        self._thread = threading.Thread(target=self._load, name="model-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        engine = self.engine
        try:
            model = load_model(engine.cfg)
            if model.sha256 == engine.model.sha256:
                return
            fits(model, engine.cfg, engine.frames)
            pre = Preprocessor(model)
            backend = open_backend(engine.cfg.engine.backend, model, backend_options(engine.cfg))
        except Exception as exc:
            engine._error("model_swap_failed", f"model {self.path} not swapped in: {exc}")
            return
        with self._lock:
            self._ready = (model, backend, pre)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            if self._ready is not None:
                self._ready[1].close()
                self._ready = None


def load_model(cfg: RunConfig) -> ModelInfo:
    """``engine.model``, or the model as the Triton server serves it (``contract: server``)."""
    if cfg.engine.backend == "triton" and cfg.engine.triton.contract == "server":
        from .backend import _backend_class

        served: ModelInfo = _backend_class("triton").served_model(backend_options(cfg).settings)
        return served
    return ModelInfo.load(cfg.engine.model)


def _model_path(cfg: RunConfig) -> Path:
    from .backend import default_model_path

    return Path(cfg.engine.model) if cfg.engine.model else default_model_path()


def _signature(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0, 0)
    return (st.st_mtime_ns, st.st_size, st.st_ino)

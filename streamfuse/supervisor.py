"""``streamfuse run``: start the camera, microphone and engine processes and keep them up.

- Children are ``python -m streamfuse capture ...`` / ``engine ...`` processes. A child
  that exits is restarted, whatever its status, after a backoff that doubles (0.2 s -> 10 s
  by default) and resets once it has run for ``restart_reset_s`` (30 s); only a sensor
  whose last heartbeat says ``eof`` (a file at its end) or a replay at its end is done. A
  recorder restarts onto a new part of its file. A child whose heartbeats stop for
  ``hang_timeout_s`` (hung, not crashed) is killed and restarted the same way.
- ``engine.output`` is bound by the supervisor (a :class:`~streamfuse.transport.Relay`):
  engines publish into it, so subscribers never lose their connection. With
  ``engine.standby`` a second engine, its model loaded, follows the sensors without
  classifying; when the engine exits (or is killed as hung) the standby takes over at once,
  classifies the windows the dead one had not, and goes on with its result sequence; a new
  standby starts 5 s later.
- SIGTERM/SIGINT stop the sensors first, then the engine; a child that has not exited after
  5 s is killed. Children get PR_SET_PDEATHSIG, so even a killed supervisor leaves none.
- File sources of one session share a start epoch, so a video and a wav of the same
  session stay aligned.
- Under systemd (``Type=notify``): READY=1 once the engine's first heartbeat arrives,
  WATCHDOG=1 while it keeps coming, STOPPING=1 on the way out.
- ``/healthz`` (JSON; 503 while the engine is not heartbeating) and Prometheus ``/metrics``
  (per-stream rates, drops by reason, queue depths, latency histograms, restarts) on a
  local HTTP port.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig, dump_config, validate
from .engine import RESULT_PREFIX
from .errors import ConfigError, EndpointError, RecordingStopped
from .messages import Classification, Heartbeat
from .rundir import RunDir
from .transport import Relay, Sources, heartbeat_topic

__all__ = ["Supervisor", "sd_notify"]

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
STABLE_S = 30.0
STANDBY_DELAY_S = 5.0
"""After a takeover, the new standby starts this much later (or the restart delay)."""
HEALTHY_S = 3.0


def sd_notify(state: str) -> bool:
    """Send ``state`` to systemd if it is listening (``$NOTIFY_SOCKET``); the protocol is
    one datagram on a unix socket (sd_notify(3)); abstract sockets start with ``@``."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", state.split("\n")[0], exc)
        return False


def record_part(path: str, n: int) -> str:
    """``session.mcap`` -> ``session.part1.mcap``: where a restarted recorder goes on."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.part{n}{p.suffix}"))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    sensor: bool
    restart: bool = True
    heartbeat: str | None = None
    """The stream its heartbeats name (``result/`` for the engine, its topic for a sensor)."""
    hangs: int = 0
    killed: bool = False
    """Killed as hung, not yet reaped (a many-threaded process can take a while to go:
    it is not hung a second time meanwhile)."""
    proc: subprocess.Popen[bytes] | None = None
    last_pid: int | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    restart_at: float | None = None
    done: bool = False
    exit_codes: list[int] = field(default_factory=list)


class _Metrics:
    """Prometheus view of the heartbeats and classifications the supervisor sees."""

    def __init__(self, sup: Supervisor) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.sup = sup
        self.registry = CollectorRegistry()
        buckets = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
        self.latency = Histogram(
            "streamfuse_latency_seconds",
            "Per-stage latency of classifications (stage=total: capture to publication).",
            ["stage"],
            buckets=buckets,
            registry=self.registry,
        )
        self.registry.register(self)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rate = GaugeMetricFamily(
            "streamfuse_stream_rate_hz", "Messages per second by stream.", labels=["stream"]
        )
        drops = CounterMetricFamily(
            "streamfuse_drops", "Messages lost, by stream and reason.", labels=["stream", "reason"]
        )
        errors = CounterMetricFamily(
            "streamfuse_errors", "Errors, by stream and kind.", labels=["stream", "kind"]
        )
        depth = GaugeMetricFamily(
            "streamfuse_queue_depth", "Engine synchronizer queue depths.", labels=["queue"]
        )
        restarts = CounterMetricFamily(
            "streamfuse_child_restarts", "Child process restarts.", labels=["child"]
        )
        results = CounterMetricFamily(
            "streamfuse_classifications", "Classifications seen, by camera.", labels=["camera"]
        )
        swaps = CounterMetricFamily(
            "streamfuse_model_swaps",
            "Models swapped in while running (failed swaps: streamfuse_errors"
            '{kind="model_swap_failed"}).',
            labels=["stream"],
        )
        for stream, hb in list(self.sup.heartbeats.items()):
            rate.add_metric([stream], hb.rate_hz)
            if stream == RESULT_PREFIX:
                swaps.add_metric([stream], hb.model_swaps)
            for reason, n in hb.drops.items():
                drops.add_metric([stream, reason], n)
            for kind, n in hb.errors.items():
                errors.add_metric([stream, kind], n)
            for queue, n in hb.depths.items():
                depth.add_metric([queue], n)
        for child in self.sup.children:
            restarts.add_metric([child.name], child.restarts)
        for cam, n in self.sup.result_counts.items():
            results.add_metric([cam], n)
        age = GaugeMetricFamily(
            "streamfuse_source_data_age_seconds",
            "Seconds since the engine last received data from a sensor.",
            labels=["stream", "external"],
        )
        now = time.monotonic()
        offset = GaugeMetricFamily(
            "streamfuse_source_clock_offset_seconds",
            "A source on another box: its capture clock minus the engine's (through t_wall).",
            labels=["stream"],
        )
        for topic, src in self.sup.sources(now).items():
            age.add_metric([topic, str(src["external"]).lower()], src["last_data_s"])
            if src["clock_offset_ms"] is not None:
                offset.add_metric([topic], src["clock_offset_ms"] / 1e3)
        rejected = CounterMetricFamily(
            "streamfuse_supervisor_rejected",
            "Messages the supervisor refused, by reason.",
            labels=["reason"],
        )
        for reason, n in self.sup.rejected().items():
            rejected.add_metric([reason], n)
        yield from (rate, drops, errors, depth, restarts, results, age, offset, rejected, swaps)


class Supervisor:
    def __init__(
        self,
        cfg: RunConfig,
        *,
        until_eof: bool = False,
        on_result: Callable[[Classification], None] | None = None,
        epoch_ns: int | None = None,
        replay: str | None = None,
        record: str | None = None,
        record_options: list[str] | None = None,
    ) -> None:
        """``record_options``: more ``streamfuse record`` options (split, min-free)."""
        self.cfg = cfg
        self.until_eof = until_eof
        self.replay = replay
        self.record = record
        self.on_result = on_result
        self.epoch_ns = epoch_ns if epoch_ns is not None else time.monotonic_ns() + 2_000_000_000
        self.heartbeats: dict[str, Heartbeat] = {}
        self.hb_seen_at: dict[str, float] = {}
        self.result_counts: dict[str, int] = {}
        self.ready = False
        self.failure: str | None = None
        self.monitor: Sources | None = None
        self.record_parts: list[str] = [record] if record else []
        """The files the recorder wrote: a restarted recorder starts a new part."""
        self.record_options = list(record_options or [])
        self.recording_stopped: str | None = None
        """Why the recorder stopped for good (the disk), if it did."""
        self.arrivals: dict[str, tuple[int, float]] = {
            t: (0, time.monotonic()) for t in self._sensor_topics()
        }
        """Per sensor: the engine's received count and when it last grew (liveness of an
        external source, which need not heartbeat)."""
        self.ended = "not started"
        """Why :meth:`run` returned: ``eof``, ``stopped`` (a signal or the caller) or ``failed``."""
        self.started_at = time.monotonic()
        self.run_dir = RunDir(cfg.run_dir)
        cfg.run_dir = str(self.run_dir.path)
        try:  # a long $TMPDIR can push the sensors' ipc paths past the socket limit
            validate(cfg, f"the run folder {cfg.run_dir}")
        except ConfigError:
            self.run_dir.close()
            raise
        self.config_file = self.run_dir.path / "config.json"
        self.config_file.write_bytes(dump_config(cfg))
        self.inner = f"ipc://{self.run_dir.path}/results"
        """Where engines publish; the relay in front of it holds ``engine.output``."""
        self.relay: Relay | None = None
        self.handover: dict[str, Any] = {"after": -1, "seq": {}}
        """The newest window (its capture time) the engine classified and its last result
        seq per camera: what a standby taking over goes on from."""
        self.children = self._plan()
        self.metrics = _Metrics(self)
        self.http_port: int | None = None

    # --- what to run ---------------------------------------------------------------------

    def _plan(self) -> list[Child]:
        cfg = self.cfg
        py = [sys.executable, "-m", "streamfuse"]
        common = ["--epoch-ns", str(self.epoch_ns), "--wait-for-subscriber", "15"]
        engine = [*py, "engine", "--config", str(self.config_file), "--relay", self.inner]
        if self.until_eof:
            engine.append("--until-eof")
        standby = cfg.engine.standby and not self.until_eof
        # Every reader of the sensors' data subscribes before a sensor sends its first
        # message, and the recorder before the engine's first: nothing is missing from a
        # recording's start (seq 0 of every topic).
        live = cfg.foxglove.port is not None
        readers = 1 + standby + bool(self.record) + live
        common += ["--readers", str(readers)]
        children = [
            Child(
                "engine",
                [*engine, *(["--wait-for-recorder"] if self.record else [])],
                sensor=False,
                heartbeat=RESULT_PREFIX,
            )
        ]
        if standby:
            children.append(Child("standby", [*engine, "--standby"], sensor=False))
        if live:
            argv = [*py, "live", "--config", str(self.config_file)]
            children.append(Child("foxglove", argv, sensor=False))
        if self.record:
            argv = [*py, "record", "--out", self.record, "--config", str(self.config_file)]
            argv += self.record_options
            for ep in (cfg.engine.output, *(cfg.source_endpoint(t) for t in self._sensor_topics())):
                argv += ["--endpoint", ep]
            # restarted like any child, each time onto a new part: never over the last file
            children.append(Child("recorder", argv, sensor=False))
        if self.replay:
            argv = [*py, "replay", self.replay, "--run-dir", cfg.run_dir, "--readers", str(readers)]
            children.append(Child("replay", [*argv, "--wait-for-subscriber", "15"], sensor=True))
            return children
        for cam in cfg.cameras:
            topic = cfg.camera_topic(cam)
            if cam.source is None:  # an external publisher: subscribed to, not started
                continue
            argv = [*py, "capture", "camera", "--source", cam.source, "--topic", topic]
            argv += ["--endpoint", cfg.endpoint(topic), *common]
            sizes = {"--fps": cam.fps, "--width": cam.width, "--height": cam.height}
            for flag, value in {**sizes, "--jpeg": cam.jpeg}.items():
                if value is not None:
                    argv += [flag, str(value)]
            children.append(Child(f"camera {cam.name}", argv, sensor=True, heartbeat=topic))
        mic = cfg.mic
        if mic.source is None:
            return children
        argv = [*py, "capture", "mic", "--source", mic.source, "--topic", cfg.mic_topic]
        argv += ["--endpoint", cfg.endpoint(cfg.mic_topic), *common, "--rate", str(mic.rate)]
        argv += ["--window-ms", str(mic.window_ms), "--hop-ms", str(mic.hop_ms)]
        children.append(Child(f"mic {mic.name}", argv, sensor=True, heartbeat=cfg.mic_topic))
        return children

    def _start(self, child: Child) -> None:
        argv = child.argv
        if child.name == "recorder" and self.record and child.restarts:
            argv = list(argv)
            argv[argv.index("--out") + 1] = record_part(self.record, child.restarts)
            self.record_parts.append(argv[argv.index("--out") + 1])
        child.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if child.name == "standby" else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None,
            preexec_fn=_die_with_parent,
        )
        child.last_pid = child.proc.pid
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Run until ``stop`` (or, with ``until_eof``, the engine's last classification).
        Returns the exit status: 0, or 1 when a child failed in a way that ends the run.
        The run folder is removed on the way out, whatever the way."""
        try:
            return self._run(stop)
        finally:
            self.run_dir.close()

    def reload_model(self) -> None:
        """SIGHUP: the engine and its standby look at ``engine.model`` again now (a hot
        swap if it changed; they also notice a change within a second on their own)."""
        for child in self.children:
            if child.name in ("engine", "standby") and child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGHUP)

    def _run(self, stop: threading.Event) -> int:
        cfg = self.cfg
        self.started_at = time.monotonic()
        if cfg.http.port:
            self._serve_http()
        # engine.output is bound here, not by the engine: subscribers stay connected while
        # an engine restarts or its standby takes over.
        self.relay = Relay(
            self.inner, cfg.engine.output, sndhwm=cfg.engine.sndhwm, curve=cfg.curve_server()
        )
        # Trust by origin: the engine's endpoint speaks for its heartbeat and its results,
        # a sensor's for its own heartbeat; anything else is rejected, counted, and ignored.
        results = [RESULT_PREFIX + c.name for c in cfg.cameras]
        results.append(RESULT_PREFIX + cfg.mic_topic.partition("/")[2])  # audio-only models
        owners = {cfg.engine.output: [heartbeat_topic(RESULT_PREFIX), *results]}
        for topic in self._sensor_topics():
            owners.setdefault(cfg.source_endpoint(topic), []).append(heartbeat_topic(topic))
        monitor = Sources(owners, rcvhwm=10_000, curve=cfg.curve_clients())
        self.monitor = monitor
        for child in self.children:
            self._start(child)
        watchdog_s = int(os.environ.get("WATCHDOG_USEC", "0")) / 2e6
        last_ping = 0.0
        status = 0
        self.ended = "stopped"
        try:
            while not stop.is_set():
                env = monitor.recv(timeout=0.05)
                if env is not None and self._observe(env.topic.decode(), env.header):
                    self.ended = "eof"  # the engine said eof: everything has been classified
                    break
                if not self._tend_children():
                    status, self.ended = 1, "failed"
                    break
                now = time.monotonic()
                if watchdog_s and self.healthy() and now - last_ping >= watchdog_s:
                    sd_notify("WATCHDOG=1")
                    last_ping = now
        finally:
            sd_notify("STOPPING=1")
            self._stop_children()
            # The children's last heartbeats (their final counts) are queued by now.
            while (env := monitor.recv(timeout=0.05)) is not None:
                if isinstance(env.header, Heartbeat):
                    self._observe(env.topic.decode(), env.header)
            monitor.close()
            self.relay.close()
        return status

    def summary(self) -> dict[str, Any]:
        """What the run did, from the last heartbeat of every process: per sensor stream
        sent, received by the engine, rate and drops by reason; results; restarts; uptime."""
        engine = self.heartbeats.get(RESULT_PREFIX)
        received = engine.received if engine is not None else {}
        streams = {}
        for topic in self._sensor_topics():
            hb = self.heartbeats.get(topic)
            up = hb.uptime_ns / 1e9 if hb is not None else 0.0
            streams[topic] = {
                "sent": hb.sent if hb is not None else 0,
                "received": received.get(topic, 0),
                "rate_hz": round(hb.sent / up, 2) if hb is not None and up > 0 else 0.0,
                "drops": dict(hb.drops) if hb is not None else {},
            }
        return {
            "ended": self.ended,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "streams": streams,
            "results": {
                "published": engine.sent if engine is not None else 0,
                "seen": sum(self.result_counts.values()),
                "by_camera": dict(self.result_counts),
            },
            "engine_drops": dict(engine.drops) if engine is not None else {},
            "restarts": {c.name: c.restarts for c in self.children},
            **(
                {"recorded": rec["files"], "recording_stopped": rec["reason"]}
                if (rec := self.recording())
                else {}
            ),
        }

    def _sensor_topics(self) -> list[str]:
        return [*(self.cfg.camera_topic(c) for c in self.cfg.cameras), self.cfg.mic_topic]

    def _observe(self, topic: str, header: Any) -> bool:
        if isinstance(header, Classification):
            self.result_counts[header.stream] = self.result_counts.get(header.stream, 0) + 1
            self.handover["seq"][header.stream] = header.seq
            for ref in header.inputs:
                if ref.stream == self.cfg.mic_topic and ref.t0 > self.handover["after"]:
                    self.handover["after"] = ref.t0
            for stage, ns in header.latency.items():
                self.metrics.latency.labels(stage).observe(ns / 1e9)
            if self.on_result is not None:
                self.on_result(header)
        elif isinstance(header, Heartbeat):
            stream = topic.removeprefix("heartbeat/")
            self.heartbeats[stream] = header
            self.hb_seen_at[stream] = time.monotonic()
            if stream == RESULT_PREFIX:
                now = time.monotonic()
                for topic, n in header.received.items():
                    if topic in self.arrivals and self.arrivals[topic][0] != n:
                        self.arrivals[topic] = (n, now)
                if not self.ready:
                    self.ready = True
                    sd_notify(f"READY=1\nSTATUS=engine up ({header.source})")
                    log.info("ready: %s", header.source)
                if header.state == "eof" and self.until_eof:
                    return True
        return False

    def _tend_children(self) -> bool:
        """Reap and restart children; False when the run cannot go on."""
        now = time.monotonic()
        low, high = self.cfg.restart_backoff_s
        for child in self.children:
            if child.done:
                continue
            if child.proc is None:
                if child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
                continue
            rc = child.proc.poll()
            if rc is None:
                if child.backoff and now - child.started_at > self.cfg.restart_reset_s:
                    child.backoff = 0.0
                if not child.killed and self._hung(child, now):
                    child.hangs += 1
                    child.killed = True
                    log.warning(
                        "%s (pid %d) sent no heartbeat for %.1f s: killing it",
                        child.name,
                        child.proc.pid,
                        self.cfg.hang_timeout_s,
                    )
                    child.proc.kill()  # reaped on the next round, then restarted as a crash
                continue
            child.exit_codes.append(rc)
            child.proc, child.killed = None, False
            if rc == 0 and child.name == "replay":
                child.done = True  # a recording replayed to its end
                continue
            if rc == 0 and child.sensor:
                self._drain_until_final(child)  # its last heartbeat may still be queued
            last = self.heartbeats.get(child.heartbeat) if child.heartbeat else None
            if rc == 0 and child.sensor and last is not None and last.state in ("eof", "limit"):
                log.info("%s ended (end of its source)", child.name)
                child.done = True
                continue
            if not child.restart:
                log.error("%s exited with status %d; not restarted", child.name, rc)
                child.done = True
                continue
            if child.name == "recorder" and rc == RecordingStopped.EXIT_STATUS:
                # it said why (one error line) and its file is complete: a restart would
                # only stop again; classifying goes on, /healthz says recording stopped
                self.recording_stopped = self._why_recording_stopped()
                log.error("recording stopped (%s); the daemon goes on", self.recording_stopped)
                child.done = True
                continue
            if child is self.children[0] and self._take_over(child, rc, now):
                continue
            if self.until_eof:
                self.failure = f"{child.name} exited with status {rc} during an --until-eof run"
                log.error("%s", self.failure)
                return False
            child.backoff = min(high, child.backoff * 2 if child.backoff else low)
            child.restart_at = now + child.backoff
            child.restarts += 1
            log.warning(
                "%s exited with status %d; restarting in %.1f s", child.name, rc, child.backoff
            )
        return True

    def _why_recording_stopped(self) -> str:
        folder = Path(self.record_parts[-1]).parent if self.record_parts else Path(".")
        try:
            free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free on {folder}"
        except OSError as exc:
            free = f"{folder}: {exc.strerror}"
        return f"the disk: {free}"

    def recording(self) -> dict[str, Any] | None:
        """The recording's state for /healthz: its files (split parts included) and whether
        it still goes on."""
        if not self.record:
            return None
        files: list[str] = []
        for base in self.record_parts:
            p = Path(base)
            files += (
                [base]
                if p.exists()
                else sorted(map(str, p.parent.glob(f"{p.stem}.[0-9][0-9][0-9]{p.suffix}")))
            )
        recorder = next(c for c in self.children if c.name == "recorder")
        alive = recorder.proc is not None and recorder.proc.poll() is None
        state = "stopped" if self.recording_stopped else "recording" if alive else "restarting"
        return {"state": state, "reason": self.recording_stopped, "files": files}

    def _take_over(self, engine: Child, rc: int, now: float) -> bool:
        """The engine has exited: hand over to the standby if one is running (it was
        following the sensors, its model loaded); False when there is none."""
        standby = next((c for c in self.children if c.name == "standby"), None)
        if standby is None or standby.proc is None or standby.proc.poll() is not None:
            return False
        # Its last results may still be on their way here (the engine is gone: all that
        # comes now is queued or in flight): the standby goes on from after them.
        # (Bounded: sensors' heartbeats keep coming, and a flood of them must not hold it.)
        deadline = time.monotonic() + 0.1
        while self.monitor is not None and time.monotonic() < deadline:
            if (env := self.monitor.recv(timeout=0.02)) is None:
                break
            self._observe(env.topic.decode(), env.header)
        try:
            assert standby.proc.stdin is not None
            standby.proc.stdin.write(b"go " + json.dumps(self.handover).encode() + b"\n")
            standby.proc.stdin.flush()
        except (OSError, ValueError):
            return False  # it died this instant: a plain restart
        engine.proc, engine.last_pid, engine.started_at = standby.proc, standby.proc.pid, now
        engine.killed = False
        engine.restarts += 1
        standby.proc = None
        # A new one once this one has settled: loading a model takes a core for ~1 s, which
        # on a small box would starve the engine just when it catches up on its backlog.
        standby.restart_at = now + max(self.cfg.restart_backoff_s[0], STANDBY_DELAY_S)
        log.warning(
            "engine exited with status %d; the standby (pid %d) took over", rc, engine.last_pid
        )
        return True

    def _drain_until_final(self, child: Child, limit_s: float = 0.25) -> None:
        """Read queued heartbeats until ``child``'s final one (not ``running``) is in."""
        deadline = time.monotonic() + limit_s
        while self.monitor is not None and time.monotonic() < deadline:
            last = self.heartbeats.get(child.heartbeat or "")
            if last is not None and last.state != "running" and last.pid == child.last_pid:
                return
            env = self.monitor.recv(timeout=0.05)
            if env is not None:
                self._observe(env.topic.decode(), env.header)

    def _stop_children(self) -> None:
        # Sensors first (their last heartbeats reach the engine), then the engine, then the
        # recorder (which so gets the last classifications).
        sensors = [c for c in self.children if c.sensor]
        rest = [c for c in self.children[1:] if not c.sensor]
        for group in (sensors, [self.children[0]], rest):
            procs = [c.proc for c in group if c.proc is not None and c.proc.poll() is None]
            for p in procs:
                p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for p in procs:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("pid %d did not stop in %.0f s; killing it", p.pid, STOP_GRACE_S)
                    p.kill()
                    p.wait()

    def _hung(self, child: Child, now: float) -> bool:
        """Running, past its start-up, and its heartbeats have stopped."""
        limit = self.cfg.hang_timeout_s
        if not limit or child.heartbeat is None:
            return False
        seen = self.hb_seen_at.get(child.heartbeat, 0.0)
        last = max(seen, child.started_at)  # a fresh child gets the whole timeout to start
        # Before its first heartbeat a child may be loading a model or waiting for a reader.
        grace = 30.0 if seen < child.started_at else 0.0
        return now - last > limit + grace

    # --- health ---------------------------------------------------------------------------

    def sources(self, now: float) -> dict[str, dict[str, Any]]:
        """Per sensor: started or external, where, how much the engine has received, and
        whether it is stale (nothing new for ``hang_timeout_s``, 3 s by default)."""
        limit = self.cfg.hang_timeout_s or 3.0
        engine = self.heartbeats.get(RESULT_PREFIX)
        offsets = engine.clock_offsets_ns if engine is not None else {}
        out = {}
        for topic, sensor in self.cfg.sensors():
            n, since = self.arrivals[topic]
            offset = offsets.get(topic)
            out[topic] = {
                "external": sensor.endpoint is not None,
                "endpoint": self.cfg.source_endpoint(topic),
                "received": n,
                "last_data_s": round(now - since, 3),
                "stale": now - since > limit,
                "clock": self.cfg.clock_of(topic),
                "clock_offset_ms": None if offset is None else round(offset / 1e6, 3),
            }
        return out

    def rejected(self) -> dict[str, int]:
        """Messages the supervisor refused, by reason (``foreign_topic``: forged)."""
        return dict(self.monitor.rejected) if self.monitor is not None else {}

    def healthy(self) -> bool:
        seen = self.hb_seen_at.get(RESULT_PREFIX)
        return seen is not None and time.monotonic() - seen < HEALTHY_S

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "status": "ok" if self.healthy() else "starting" if not self.ready else "unhealthy",
            "children": {
                c.name: {
                    "pid": c.proc.pid if c.proc else None,
                    "running": c.proc is not None and c.proc.poll() is None,
                    "done": c.done,
                    "restarts": c.restarts,
                    "hangs": c.hangs,
                    "exit_codes": c.exit_codes[-5:],
                }
                for c in self.children
            },
            "heartbeat_age_s": {k: round(now - v, 3) for k, v in self.hb_seen_at.items()},
            "sources": self.sources(now),
            "insecure": self.cfg.security.insecure,
            **({"recording": self.recording()} if self.record else {}),
            "rejected": self.rejected(),
            "classifications": self.result_counts,
        }

    def _serve_http(self) -> None:
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client import make_wsgi_app

        metrics_app = make_wsgi_app(self.metrics.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                body = json.dumps(self.health()).encode()
                code = "200 OK" if self.healthy() else "503 Service Unavailable"
                start_response(code, [("Content-Type", "application/json")])
                return [body]
            if path == "/metrics":
                return metrics_app(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"streamfuse: /healthz or /metrics\n"]

        class Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            server = make_server(self.cfg.http.host, self.cfg.http.port, app, handler_class=Quiet)
        except OSError as exc:
            url = f"http://{self.cfg.http.host}:{self.cfg.http.port}"
            raise EndpointError(url, "bind", exc.strerror or str(exc)) from None
        self.http_port = server.server_port
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        log.info("health and metrics on http://%s:%d/", self.cfg.http.host, self.http_port)

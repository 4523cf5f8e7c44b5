"""The ``streamfuse`` command line. Human-readable output by default, JSON with ``--json``."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from .capture import AudioOptions, VideoOptions, open_source, run_capture
from .errors import ConfigError, StreamfuseError
from .transport import MAX_TOPICS, Publisher, Subscriber

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("streamfuse")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


class StopEvent(threading.Event):
    """Set by SIGINT/SIGTERM; ``signal`` names the one that came (None: not a signal)."""

    signal: str | None = None


_signal_pipe: int | None = None
"""Write end of the pipe the signal handler writes the signal's number to."""
_stop: StopEvent | None = None
"""The event the newest :func:`install_stop_handlers` returned."""


def install_stop_handlers() -> StopEvent:
    """SIGINT and SIGTERM set the returned event; the loops watching it end cleanly.

    The handler itself only writes the signal's number to a pipe; a thread sets the event.
    A handler runs on the main thread between two of its bytecodes, and setting the event
    there deadlocked whenever the signal came while the main thread held that same event's
    lock, waiting on it (a camera pacing its frames with ``stop.wait``: it never exited)."""
    global _signal_pipe, _stop
    stop = _stop = StopEvent()
    if _signal_pipe is None:
        read, write = os.pipe()
        os.set_blocking(write, False)
        threading.Thread(target=_deliver, args=(read,), name="stop-signals", daemon=True).start()
        _signal_pipe = write
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    return stop


def _on_signal(signum: int, frame: object) -> None:
    assert _signal_pipe is not None
    with contextlib.suppress(BlockingIOError):  # 64 KiB of signals not yet delivered
        os.write(_signal_pipe, bytes([signum]))


def _deliver(read: int) -> None:
    while data := os.read(read, 64):
        if (stop := _stop) is not None:
            stop.signal = signal.Signals(data[-1]).name
            stop.set()


class _Group(click.Group):
    """Turns any StreamfuseError into ``error: ...`` on stderr and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StreamfuseError as err:
            click.echo(f"error: {' '.join(str(err).split())}", err=True)  # always one line
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="streamfuse")
def main(verbose: int) -> None:
    """streamfuse: camera + microphone -> synchronized fusion inference over ZeroMQ."""
    _setup_logging(verbose)
    # OpenCV logs its own multi-line warnings (a missing V4L2 index: two of them) before our
    # one-line error; keep its errors only (read at cv2's first import, which is lazy).
    os.environ.setdefault("OPENCV_LOG_LEVEL", "DEBUG" if verbose > 1 else "ERROR")


@main.group()
def capture() -> None:
    """Run a sensor process that publishes on a ZeroMQ endpoint."""


def _capture_options(f: F) -> F:
    opts = [
        click.option("--source", required=True, help="Where to read from (see --help of each)."),
        click.option("--topic", required=True, help="Topic to publish on, e.g. video/front."),
        click.option(
            "--endpoint", required=True, help="Endpoint to bind, e.g. tcp://127.0.0.1:5555."
        ),
        click.option("--stream", default=None, help="Stream id (default: last part of the topic)."),
        click.option(
            "--fast",
            is_flag=True,
            help="Files: publish as fast as subscribers read (lossless), not at native rate.",
        ),
        click.option(
            "--epoch-ns",
            type=int,
            default=None,
            help="Files: CLOCK_MONOTONIC ns of media position 0 (share it across sources).",
        ),
        click.option(
            "--wait-for-subscriber",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="Wait up to this long for a subscriber before publishing.",
        ),
        click.option(
            "--readers",
            type=click.IntRange(1, 64),
            default=1,
            show_default=True,
            help="With --wait-for-subscriber: wait for this many readers of the data.",
        ),
        click.option(
            "--max-messages", type=int, default=None, help="Stop after this many messages."
        ),
        click.option(
            "--heartbeat", type=float, default=1.0, metavar="SECONDS", help="Heartbeat interval."
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the exit summary as JSON."),
        click.option("--key", default=None, help="CURVE secret key file: serve only over CURVE."),
        click.option(
            "--authorized-keys",
            default=None,
            help="With --key: a folder of the subscribers' public keys let in (default any).",
        ),
        click.option(
            "--insecure", is_flag=True, help="Allow a bind beyond loopback without CURVE."
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _check_topic(topic: str) -> str:
    if not topic or any(c.isspace() for c in topic) or topic.startswith("heartbeat/"):
        raise ConfigError("--topic", f"{topic!r} is not a valid data topic (e.g. video/front)")
    return topic


def _run_capture_command(
    kind: Literal["video", "audio"],
    common: dict[str, Any],
    options_type: type[VideoOptions] | type[AudioOptions],
    specific: dict[str, Any],
) -> None:
    """Shared body of ``capture camera`` and ``capture mic``: ``common`` holds the options of
    :func:`_capture_options`, ``specific`` those of the one command."""
    topic = _check_topic(common["topic"])
    stop = install_stop_handlers()
    options = options_type(
        stream=common["stream"] or topic.rsplit("/", 1)[-1],
        realtime=not common["fast"],
        epoch_ns=common["epoch_ns"],
        stop=stop,
        **specific,
    )
    curve = _curve_server(common)
    src = open_source(kind, common["source"], options)
    wait = common["wait_for_subscriber"]
    try:
        # --fast: a file publishes as fast as its slowest subscriber reads, never dropping.
        lossless = common["fast"]
        with Publisher(common["endpoint"], linger_ms=2000, lossless=lossless, curve=curve) as pub:
            if isinstance(options, VideoOptions):  # frames go straight into the send slot
                options.frame_buffer = functools.partial(pub.loan, topic)
            click.echo(f"{kind} {src.description} -> {pub.endpoint} topic {topic}", err=True)
            # Wait for the readers of the data itself (a monitor of heartbeats does not
            # count): under `run`, the engine, its standby and the recorder, so that none
            # misses the first message.
            readers = common["readers"]
            ready = wait <= 0 or pub.wait_for_subscriber(
                wait, topic=topic.encode(), count=readers, stop=stop
            )
            if not ready and not stop.is_set():
                log.warning("not %d reader(s) after %.1f s; publishing anyway", readers, wait)
            summary = run_capture(
                src,
                pub,
                topic,
                options.stream,
                stop=stop,
                heartbeat_interval=common["heartbeat"],
                max_messages=common["max_messages"],
            )
    finally:
        src.close()
    if common["as_json"]:
        click.echo(json.dumps({**asdict(summary), "rate_hz": round(summary.rate_hz, 3)}))
    else:
        extra = "".join(f", {k}={v}" for k, v in {**summary.drops, **summary.errors}.items())
        click.echo(
            f"{topic}: sent {summary.sent} in {summary.seconds:.1f} s "
            f"({summary.rate_hz:.1f}/s), ended: {summary.ended}{extra}"
        )


def _curve_server(common: dict[str, Any]) -> Any:
    """The CurveServer a sensor binds as; beyond loopback without --key is an error."""
    from .security import CurveServer, leaves_box, load_secret

    if common["key"] is None:
        if leaves_box(common["endpoint"]) and not common["insecure"]:
            raise ConfigError(
                "--endpoint",
                f"{common['endpoint']} leaves this box: give --key (streamfuse keys generate) "
                "or --insecure",
            )
        return None
    public, secret = load_secret(common["key"], "--key")
    return CurveServer(public, secret, authorized=common["authorized_keys"])


@capture.command("camera")
@_capture_options
@click.option(
    "--fps", type=float, default=None, help="Frame rate (synthetic, devices; decimates files)."
)
@click.option("--width", type=int, default=None, help="Output width (frames are resized).")
@click.option("--height", type=int, default=None, help="Output height.")
@click.option(
    "--jpeg",
    "jpeg_quality",
    type=click.IntRange(1, 100),
    default=None,
    help="Send JPEG at this quality instead of raw pixels.",
)
def capture_camera(
    fps: float | None,
    width: int | None,
    height: int | None,
    jpeg_quality: int | None,
    **common: Any,
) -> None:
    """Publish camera frames.

    SOURCE is a device index (0, /dev/video0), a video file, a stream URL
    (http://, rtsp://, udp://) or 'synthetic' (moving test pattern with the frame number).
    """
    specific = {"fps": fps, "width": width, "height": height, "jpeg_quality": jpeg_quality}
    _run_capture_command("video", common, VideoOptions, specific)


@capture.command("mic")
@_capture_options
@click.option("--rate", type=int, default=16000, show_default=True, help="Sample rate in Hz.")
@click.option("--channels", type=int, default=1, show_default=True)
@click.option("--window-ms", type=float, default=1000.0, show_default=True, help="Window length.")
@click.option("--hop-ms", type=float, default=500.0, show_default=True, help="Window spacing.")
@click.option(
    "--sample-format", type=click.Choice(["f32le", "s16le"]), default="f32le", show_default=True
)
def capture_mic(
    rate: int, channels: int, window_ms: float, hop_ms: float, sample_format: str, **common: Any
) -> None:
    """Publish audio windows.

    SOURCE is a sounddevice device name or index ('pulse', 3), an audio file (wav, flac,
    ogg), or 'synthetic' (440 Hz tone + noise; 'synthetic:1000' for another pitch).
    """
    specific = {
        "rate": rate,
        "channels": channels,
        "window_ms": window_ms,
        "hop_ms": hop_ms,
        "sample_format": sample_format,
    }
    _run_capture_command("audio", common, AudioOptions, specific)


@main.command()
@click.option(
    "--endpoint", "endpoints", multiple=True, required=True, help="Endpoint(s) to connect to."
)
@click.option(
    "--topic", "topics", multiple=True, default=("",), help="Topic prefix(es); default all."
)
@click.option("--count", type=int, default=None, help="Exit after this many messages.")
@click.option("--duration", type=float, default=None, help="Exit after this many seconds.")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per message; summary on stderr."
)
@click.option("--server-key", default=None, help="The publishers' CURVE public key file.")
@click.option("--key", default=None, help="With --server-key: this side's secret key file.")
def subscribe(
    endpoints: Sequence[str],
    topics: Sequence[str],
    count: int | None,
    duration: float | None,
    as_json: bool,
    server_key: str | None,
    key: str | None,
) -> None:
    """Print every message received, then a per-topic rate/drop summary."""
    from .view import TopicView, age_ns, describe, envelope_json, summary_rows

    stop = install_stop_handlers()
    deadline = None if duration is None else time.monotonic() + duration
    views: dict[bytes, TopicView] = {}
    n = 0
    from .security import CurveClient

    curve = CurveClient.to(server_key, key, "--server-key") if server_key else None
    with Subscriber(endpoints, topics, curve=curve) as sub:
        while not stop.is_set() and (count is None or n < count):
            if deadline is not None and time.monotonic() >= deadline:
                break
            env = sub.recv(timeout=0.2)
            if env is None:
                continue
            now = time.monotonic_ns()
            if env.topic in views or len(views) < MAX_TOPICS:  # bounded, like the counts
                views.setdefault(env.topic, TopicView()).add(env, now)
            n += 1
            if as_json:
                click.echo(json.dumps(envelope_json(env, now)))
            else:
                age = age_ns(env, now) / 1e6
                click.echo(
                    f"{env.topic.decode(errors='replace'):<20} #{env.header.seq:<7} "
                    f"{describe(env)}  age {age:.1f} ms"
                )
        rows = summary_rows(sub, views)
        rejected = dict(sub.rejected)
    if as_json:
        click.echo(json.dumps({"summary": rows, "rejected": rejected}), err=True)
    else:
        click.echo("-- summary --")
        for r in rows:
            click.echo(
                f"{r['topic']:<20} {r['received']:>7} msgs {r['rate_hz']:>8.1f} Hz "
                f"{r['gaps']:>5} gaps {r['reordered']:>4} reordered"
            )
        if rejected:
            click.echo("rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())))


@main.command()
@click.option("--digits", type=int, default=12, show_default=True, help="Seconds of session.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which digits and images.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
def demo(digits: int, seed: int, as_json: bool) -> None:
    """The whole daemon on a generated session, no camera or microphone needed.

    A video of digits (one a second, 640x480 at 30 fps) is the camera and a wav of the same
    digits spoken is the microphone; both are generated from what the package ships. The
    shipped model classifies every window; the end shows accuracy against the sequence.
    """
    from rich.console import Console
    from rich.live import Live
    from streamfuse_plugins.demo.session import demo_line, demo_session, demo_table, score

    from .config import load_config
    from .messages import Classification
    from .supervisor import Supervisor
    from .view import latency_summary

    if digits < 1:
        raise ConfigError("--digits", f"must be >= 1, got {digits}")
    stop = install_stop_handlers()
    console = Console(stderr=as_json)
    live_table = console.is_terminal

    def say(text: str) -> None:  # plain lines: never wrapped mid-URL, flushed at once
        click.echo(text, err=as_json)

    results: list[Classification] = []
    with tempfile.TemporaryDirectory(prefix="streamfuse-demo-") as tmp:
        say(f"generating {digits} s of video (640x480, 30 fps) + speech ...")
        session = demo_session(Path(tmp), n=digits, seed=seed)
        cfg = load_config(
            None,
            {
                "camera": str(session.video),
                "mic": str(session.audio),
                "output": f"ipc://{tmp}/result",
                "http_port": _free_port(),
            },
        )
        sup = Supervisor(cfg, until_eof=True)
        say(f"camera {session.video.name} + microphone {session.audio.name} -> engine")
        say(f"results on {cfg.engine.output}")
        say(f"metrics on http://127.0.0.1:{cfg.http.port}/metrics")
        say("starting the camera, microphone and engine processes ...")
        if live_table:
            with Live(demo_table(results, session.digits), console=console) as live:

                def on_table(c: Classification) -> None:
                    results.append(c)
                    live.update(demo_table(results, session.digits))

                sup.on_result = on_table
                status = sup.run(stop)
        else:

            def on_line(c: Classification) -> None:
                results.append(c)
                say(demo_line(c, session.digits))

            sup.on_result = on_line
            status = sup.run(stop)
    if sup.failure:
        raise StreamfuseError(sup.failure)
    report = {**score(results, session.digits), **latency_summary(results), "status": status}
    report["backend"] = results[0].backend if results else None
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(
            f"accuracy {report['correct']}/{report['graded']} = {report['accuracy']:.0%} "
            f"of the windows within one digit's second; latency capture->result "
            f"p50 {report['total_ms_p50']:.1f} ms, p99 {report['total_ms_p99']:.1f} ms "
            f"(inference p50 {report['inference_ms_p50']:.2f} ms, {report['backend']})"
        )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@main.command()
@click.option("--json", "as_json", is_flag=True)
def devices(as_json: bool) -> None:
    """List the cameras and microphones this machine has."""
    from streamfuse_plugins.sources.camera import list_cameras
    from streamfuse_plugins.sources.microphone import list_microphones

    cams = list_cameras()
    try:
        mics = list_microphones()
    except StreamfuseError as err:
        mics = [f"(unavailable: {err})"]
    if as_json:
        click.echo(json.dumps({"cameras": cams, "microphones": mics}))
        return
    click.echo("cameras:")
    for c in cams or ["(none)"]:
        click.echo(f"  {c}")
    click.echo("microphones:")
    for m in mics or ["(none)"]:
        click.echo(f"  {m}")


def _add_model_commands() -> None:
    from .modelcli import (
        backends,
        build_engine,
        evaluate,
        export,
        model_group,
        train,
        triton_group,
    )
    from .recordcli import record, recover, replay
    from .runcli import (
        config_group,
        engine,
        foxglove_layout,
        keys_group,
        live,
        run,
        systemd_unit,
    )

    main.add_command(record)
    main.add_command(replay)
    main.add_command(recover)
    main.add_command(run)
    main.add_command(engine)
    main.add_command(live)
    main.add_command(foxglove_layout)
    main.add_command(config_group)
    main.add_command(systemd_unit)
    main.add_command(keys_group)
    main.add_command(backends)
    main.add_command(build_engine)
    main.add_command(train)
    main.add_command(evaluate)
    main.add_command(export)
    main.add_command(model_group)
    main.add_command(triton_group)


_add_model_commands()

if __name__ == "__main__":  # pragma: no cover
    main()

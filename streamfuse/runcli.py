"""``streamfuse run`` (the supervised daemon) and ``streamfuse engine`` (its inference child)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from typing import Any

import click
import msgspec

from .config import RunConfig, load_config
from .messages import Classification
from .recordcli import disk_options

log = logging.getLogger("streamfuse")


def describe(c: Classification) -> str:
    """One human-readable line for a classification."""
    lat = c.latency
    media = f" t={c.media_pos / 1e9:6.2f}s" if c.media_pos is not None else ""
    line = (
        f"{c.stream:<8}{media}  {c.label} ({c.score:.2f})  {c.heads()}  "
        f"total {lat.get('total', 0) / 1e6:.1f} ms "
        f"(inference {lat.get('inference', 0) / 1e6:.2f} ms)"
    )
    if c.degraded:
        line += f"  DEGRADED: missing {', '.join(c.missing)}"
    return line


def describe_summary(s: dict[str, Any]) -> str:
    """The exit block of ``streamfuse run``: one row per sensor stream, then the results."""
    why = f"{s['ended']} by {s['signal']}" if s.get("signal") else s["ended"]
    lines = [f"streamfuse: {why} after {s['uptime_s']:.1f} s"]
    lines.append(f"  {'stream':<20}{'sent':>8}{'received':>10}{'rate':>10}  drops")
    for topic, st in s["streams"].items():
        drops = ", ".join(f"{k}={v}" for k, v in sorted(st["drops"].items())) or "none"
        lines.append(
            f"  {topic:<20}{st['sent']:>8}{st['received']:>10}{st['rate_hz']:>8.1f}/s  {drops}"
        )
    res = s["results"]
    engine_drops = ", ".join(f"{k}={v}" for k, v in sorted(s["engine_drops"].items()))
    lines.append(
        f"  results published {res['published']}"
        + (f"; engine drops {engine_drops}" if engine_drops else "; engine drops none")
    )
    restarts = ", ".join(f"{k} {v}" for k, v in s["restarts"].items() if v) or "none"
    lines.append(f"  restarts: {restarts}")
    return "\n".join(lines)


@click.command()
@click.option(
    "--config", "config_path", default=None, help="YAML config (configs/streamfuse.yaml)."
)
@click.option("--camera", default=None, help="Override the first camera's source.")
@click.option("--mic", default=None, help="Override the microphone's source.")
@click.option(
    "--camera-endpoint", default=None, help="The first camera is an outside publisher here."
)
@click.option("--mic-endpoint", default=None, help="The microphone is an outside publisher here.")
@click.option("--output", default=None, help="Override engine.output (where results go).")
@click.option("--http-port", type=int, default=None, help="Override http.port (0: off).")
@click.option(
    "--foxglove", default=None, metavar="[HOST:]PORT", help="Serve a live Foxglove view here."
)
@click.option("--json", "as_json", is_flag=True, help="Classifications as JSON lines on stdout.")
@click.option("--until-eof", is_flag=True, help="Exit once file sources end and all is classified.")
@click.option("--replay", default=None, help="An MCAP recording replaces the sensors.")
@click.option("--record", default=None, help="Record sensors and results to this MCAP file.")
@disk_options
def run(
    config_path: str | None,
    camera: str | None,
    mic: str | None,
    camera_endpoint: str | None,
    mic_endpoint: str | None,
    output: str | None,
    http_port: int | None,
    foxglove: str | None,
    as_json: bool,
    until_eof: bool,
    replay: str | None,
    record: str | None,
    split_size: float | None,
    split_duration: float | None,
    min_free: float,
) -> None:
    """Run the daemon: camera and microphone processes, the engine, health and metrics."""
    from .cli import install_stop_handlers
    from .supervisor import Supervisor

    cfg = load_config(
        config_path,
        {
            "camera": camera,
            "mic": mic,
            "camera_endpoint": camera_endpoint,
            "mic_endpoint": mic_endpoint,
            "output": output,
            "http_port": http_port,
            "foxglove": foxglove,
        },
    )
    if replay:
        from .record import recording_topics
        from .replay import config_for

        cfg = config_for(recording_topics(replay), cfg)
    _preflight(cfg)
    if cfg.security.insecure:
        log.warning("security.insecure: TCP beyond this box may carry data without CURVE")
    encoder = msgspec.json.Encoder()

    def on_result(c: Classification) -> None:
        if as_json:
            sys.stdout.buffer.write(encoder.encode(c) + b"\n")
            sys.stdout.flush()
        else:
            click.echo(describe(c))

    stop = install_stop_handlers()
    record_options = ["--min-free", str(min_free)]
    if split_size is not None:
        record_options += ["--split-size", str(split_size)]
    if split_duration is not None:
        record_options += ["--split-duration", str(split_duration)]
    sup = Supervisor(
        cfg,
        until_eof=until_eof,
        on_result=on_result,
        replay=replay,
        record=record,
        record_options=record_options,
    )
    click.echo(
        f"streamfuse: {len(cfg.cameras)} camera(s) + mic -> {cfg.engine.output}"
        + (f"; health/metrics on http://{cfg.http.host}:{cfg.http.port}/" if cfg.http.port else "")
        + (
            f"; Foxglove on ws://{cfg.foxglove.host}:{cfg.foxglove.port}"
            if cfg.foxglove.port
            else ""
        ),
        err=True,
    )
    signal.signal(signal.SIGHUP, lambda *_: sup.reload_model())
    status = sup.run(stop)
    summary = {**sup.summary(), "signal": stop.signal}
    if as_json:
        click.echo(json.dumps({"summary": summary}), err=True)
    else:
        click.echo(describe_summary(summary), err=True)
    if sup.failure:
        click.echo(f"error: {sup.failure}", err=True)
    sys.exit(status)


@click.command(hidden=True)
@click.option("--config", "config_path", required=True)
@click.option("--until-eof", is_flag=True)
@click.option("--relay", default=None, help="Publish into this relay, not engine.output.")
@click.option("--standby", is_flag=True, help="Follow the sensors until stdin says `go`.")
@click.option("--wait-for-recorder", is_flag=True, help="Publish once a recorder subscribed.")
def engine(
    config_path: str, until_eof: bool, relay: str | None, standby: bool, wait_for_recorder: bool
) -> None:
    """The inference process (started by `streamfuse run`)."""
    from .cli import install_stop_handlers
    from .engine import RELOAD, Engine, Standby

    cfg = load_config(config_path)
    stop = install_stop_handlers()
    signal.signal(signal.SIGHUP, lambda *_: RELOAD.add())  # hot swap (even while loading)
    eng = Engine(cfg)
    waiting = Standby(sys.stdin.fileno(), stop) if standby else None
    ended = eng.run(
        stop, until_eof=until_eof, relay=relay, standby=waiting, recorder=wait_for_recorder
    )
    log.info("engine %s after %d classifications", ended, eng.stats.published)


@click.command(hidden=True)
@click.option("--config", "config_path", required=True)
def live(config_path: str) -> None:
    """The live Foxglove view (started by `streamfuse run --foxglove`)."""
    from .cli import install_stop_handlers
    from .live import LiveView

    cfg = load_config(config_path)
    assert cfg.foxglove.port is not None, "the supervisor starts this with foxglove.port set"
    stop = install_stop_handlers()
    try:
        view = LiveView(cfg, cfg.foxglove.host, cfg.foxglove.port, fps=cfg.foxglove.fps)
    except RuntimeError as exc:  # the SDK's own words (the address, the port in use)
        from .errors import ConfigError

        where = f"{cfg.foxglove.host}:{cfg.foxglove.port}"
        raise ConfigError("foxglove", f"cannot serve on {where}: {exc}") from None
    log.info("Foxglove live view on ws://%s:%d", cfg.foxglove.host, view.port)
    view.run(stop)


@click.command("foxglove-layout")
@click.option("--config", "config_path", default=None, help="Its cameras and microphone.")
def foxglove_layout(config_path: str | None) -> None:
    """Print a Foxglove layout (JSON) for the live view or a recording: images with the
    label overlay, the audio panel, score plots, raw messages. (configs/foxglove-layout.json
    is this for the defaults: import it in Foxglove's Layouts menu.)"""
    from .fox import layout

    cfg = load_config(config_path)
    click.echo(layout([cfg.camera_topic(c) for c in cfg.cameras], cfg.mic_topic), nl=False)


@click.group("config")
def config_group() -> None:
    """The daemon's configuration file."""


@config_group.command("defaults")
def config_defaults() -> None:
    """Print every setting with its default, meaning and range (a valid config file)."""
    from .config import defaults_yaml

    click.echo(defaults_yaml(), nl=False)


@click.group("keys")
def keys_group() -> None:
    """CURVE key pairs for TCP between boxes (ZeroMQ certificate files, as zmq.auth's)."""


@keys_group.command("generate")
@click.argument("directory")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def keys_generate(directory: str, name: str, as_json: bool) -> None:
    """Write DIRECTORY/NAME.key (public: give it to peers) and NAME.key_secret (keep it)."""
    from .security import generate_keys

    if not name or "/" in name or name.startswith("."):
        from .errors import ConfigError

        raise ConfigError("NAME", f"{name!r}: a plain file name, e.g. front")
    try:
        public, secret = generate_keys(directory, name)
    except OSError as exc:
        from .errors import ConfigError

        raise ConfigError("DIRECTORY", f"{directory}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps({"public": str(public), "secret": str(secret)}))
    else:
        click.echo(f"public key {public} (give it to peers); secret key {secret} (keep it)")


@click.command("systemd-unit")
@click.option(
    "--exec",
    "exec_path",
    default=None,
    help="The streamfuse executable (default: this one).",
)
@click.option(
    "--config",
    "config_path",
    default="/etc/streamfuse/streamfuse.yaml",
    show_default=True,
    help="The config the service runs with.",
)
def systemd_unit(exec_path: str | None, config_path: str) -> None:
    """Print a hardened systemd unit (Type=notify, watchdog) for this installation."""
    click.echo(render_systemd_unit(exec_path, config_path), nl=False)


def render_systemd_unit(exec_path: str | None, config_path: str) -> str:
    """The packaged unit with ExecStart pointing at ``exec_path`` (default: the streamfuse
    script beside this interpreter, else ``python -m streamfuse``)."""
    from importlib.resources import files
    from pathlib import Path

    if exec_path is None:
        script = Path(sys.executable).with_name("streamfuse")
        exec_path = str(script) if script.exists() else f"{sys.executable} -m streamfuse"
    template = files("streamfuse").joinpath("streamfuse.service").read_text()
    return template.replace("@EXEC@", exec_path).replace("@CONFIG@", config_path)


def _check_free(endpoint: str, field: str) -> None:
    """A tcp:// endpoint whose port another process listens on is an error now, not an
    engine that fails to bind at every restart."""
    import errno
    import socket

    from .errors import ConfigError
    from .security import tcp_address

    address = tcp_address(endpoint)
    if address is None or address[1] == "*":
        return
    host = "0.0.0.0" if address[0] == "*" else address[0]
    port = address[1]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq binds
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    field, f"{endpoint}: the port is in use by another process"
                ) from None
            raise ConfigError(field, f"{endpoint}: cannot bind ({exc.strerror})") from None


def _preflight(cfg: RunConfig) -> None:
    """Fail now, with one clear line, on what would make the engine crash at every restart."""
    from .backend import ModelInfo, backend_names
    from .errors import ConfigError

    ModelInfo.load(cfg.engine.model)
    _check_free(cfg.engine.output, "engine.output")
    if cfg.foxglove.port is not None:
        _check_free(f"tcp://{cfg.foxglove.host}:{cfg.foxglove.port}", "foxglove.port")
    cfg.curve_clients()  # every key file readable, or one line naming it, before anything starts
    names = backend_names()
    if cfg.engine.backend != "auto" and cfg.engine.backend not in names:
        raise ConfigError(
            "engine.backend", f"unknown backend {cfg.engine.backend!r}; installed: {names}"
        )

"""``streamfuse record``, ``replay`` and ``recover``: MCAP sessions."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import msgspec

from .errors import ConfigError, RecordingStopped


def disk_options(f: Any) -> Any:
    """--split-size, --split-duration, --min-free: for `record` and for `run --record`."""
    for opt in reversed(
        [
            click.option("--split-size", type=click.FloatRange(min=1.0), default=None,
                         metavar="MB", help="Start a new part (NAME.000.mcap, ...) at this size."),
            click.option("--split-duration", type=click.FloatRange(min=1.0), default=None,
                         metavar="S", help="Start a new part after this many seconds."),
            click.option("--min-free", type=click.FloatRange(min=0.0), default=64.0,
                         show_default=True, metavar="MB",
                         help="Stop, the file complete, while the disk has this much free."),
        ]
    ):  # fmt: skip
        f = opt(f)
    return f


@click.command()
@click.option(
    "--endpoint", "endpoints", multiple=True, required=True, help="Connect here (repeat)."
)
@click.option(
    "--topic", "topics", multiple=True, help="Topic prefix to record (repeat; default all)."
)
@click.option("--out", required=True, help="MCAP file to write.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option(
    "--compression", type=click.Choice(["lz4", "zstd", "none"]), default="lz4", show_default=True
)
@click.option("--no-foxglove", is_flag=True, help="Skip the Foxglove image/level/json channels.")
@click.option(
    "--config",
    "config_path",
    default=None,
    help="A daemon config: connect to its endpoints with the CURVE keys it names.",
)
@click.option(
    "--max-backlog-mib",
    type=click.IntRange(1, 1 << 20),
    default=256,
    show_default=True,
    help="Hold at most this much for a disk that is behind; past it, drop (counted).",
)
@disk_options
@click.option(
    "--progress",
    "progress_s",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    metavar="S",
    help="Every S seconds while it changes: messages written and rejected so far, on stderr "
    "(a JSON line with --json).",
)
@click.option("--json", "as_json", is_flag=True)
def record(
    endpoints: tuple[str, ...],
    topics: tuple[str, ...],
    out: str,
    duration: float | None,
    compression: str,
    no_foxglove: bool,
    config_path: str | None,
    max_backlog_mib: int,
    split_size: float | None,
    split_duration: float | None,
    min_free: float,
    progress_s: float | None,
    as_json: bool,
) -> None:
    """Record every message on the endpoints into MCAP; Ctrl-C to stop. Nothing is dropped
    unless the disk falls behind by --max-backlog-mib (then counted, as OVERFLOW)."""
    from .cli import install_stop_handlers
    from .record import record as do_record

    curve = None
    if config_path:
        from .config import load_config

        curve = load_config(config_path).curve_clients()
    stop = install_stop_handlers()

    def progress(p: dict[str, Any]) -> None:
        line = json.dumps({"progress": p}) if as_json else (
            f"recording {out}: {p['written']} messages, {p['bytes'] / 1e6:.1f} MB in "
            f"{p['seconds']:.1f} s; {p['rejected']} rejected"
        )  # fmt: skip
        click.echo(line, err=True)

    try:
        summary = do_record(
            list(endpoints),
            list(topics),
            out,
            stop,
            duration=duration,
            compression=compression,  # type: ignore[arg-type]
            foxglove=not no_foxglove,
            curve=curve,
            max_backlog=max_backlog_mib << 20,
            split_size=None if split_size is None else int(split_size * 1e6),
            split_duration=split_duration,
            min_free=int(min_free * 1e6),
            progress=progress if progress_s else None,
            progress_s=progress_s or 1.0,
        )
    except RecordingStopped as exc:  # the disk was too full before the first byte
        click.echo(f"error: {exc}", err=True)
        sys.exit(RecordingStopped.EXIT_STATUS)
    if as_json:
        click.echo(json.dumps(asdict(summary)))
    else:
        _print_record_summary(out, summary)
    if summary.stopped:
        click.echo(f"error: {summary.stopped}", err=True)
        sys.exit(RecordingStopped.EXIT_STATUS)


def _print_record_summary(out: str, summary: Any) -> None:
    total = sum(summary.written.values())
    parts = f" in {len(summary.parts)} parts" if len(summary.parts) > 1 else ""
    click.echo(
        f"{out}: {total} messages, {summary.bytes / 1e6:.1f} MB{parts} in {summary.seconds:.1f} s"
    )
    for topic in sorted({*summary.written, *summary.overflow}):
        n = summary.written.get(topic, 0)
        lost, over = summary.lost.get(topic, 0), summary.overflow.get(topic, 0)
        click.echo(
            f"  {topic:<28} {n:>7}"
            + (f"  LOST {lost}" if lost else "")
            + (f"  OVERFLOW {over}" if over else "")
        )
    if summary.rejected:
        click.echo(f"  rejected (not recorded): {summary.rejected}")


@click.command()
@click.argument("path")
@click.option("--endpoint", default=None, help="Publish every topic here.")
@click.option("--run-dir", default=None, help="Publish each topic where `run` expects its sensor.")
@click.option("--rate", type=float, default=1.0, show_default=True, help="Speed factor.")
@click.option("--loop", is_flag=True, help="Start over at the end.")
@click.option("--start", "start_s", type=float, default=0.0, help="Skip this many seconds.")
@click.option("--topic", "topics", multiple=True, help="Topic prefixes (default video/ audio/).")
@click.option("--wait-for-subscriber", type=float, default=0.0, metavar="SECONDS")
@click.option("--readers", type=click.IntRange(1, 64), default=1, help="Readers to wait for.")
@click.option("--lockstep", is_flag=True, help="Run the engine on recorded time; print results.")
@click.option("--model", default=None, help="--lockstep: ONNX model (default: shipped).")
@click.option(
    "--backend",
    default="reference",
    show_default=True,
    help="--lockstep: 'reference' (float64, the same bytes on every CPU) or 'onnxruntime' "
    "(faster; the same bytes on every run, last bits differ between CPU types).",
)
@click.option("--json", "as_json", is_flag=True)
def replay(
    path: str,
    endpoint: str | None,
    run_dir: str | None,
    rate: float,
    loop: bool,
    start_s: float,
    topics: tuple[str, ...],
    wait_for_subscriber: float,
    readers: int,
    lockstep: bool,
    model: str | None,
    backend: str,
    as_json: bool,
) -> None:
    """Replay an MCAP recording live (same topics, original timing) or in --lockstep."""
    from .cli import install_stop_handlers
    from .config import RunConfig
    from .record import read_recording
    from .replay import SENSOR_PREFIXES, replay_live, replay_lockstep

    rec = read_recording(path)
    if rec.problem:
        click.echo(f"warning: {path}: {rec.problem}; replaying what precedes it", err=True)
    if lockstep:
        from .runcli import describe

        encoder = msgspec.json.Encoder()
        cfg = RunConfig(run_dir="/nonexistent")
        cfg.engine.model = model

        def show(c: object) -> None:
            if as_json:
                sys.stdout.buffer.write(encoder.encode(c) + b"\n")
            else:
                click.echo(describe(c))  # type: ignore[arg-type]

        results = replay_lockstep(rec, cfg, backend=backend, on_result=show)
        sys.stdout.flush()
        click.echo(f"{len(results)} classifications (lockstep)", err=True)
        return
    if (endpoint is None) == (run_dir is None):
        raise ConfigError("replay", "give exactly one of --endpoint EP or --run-dir DIR")
    cfg = RunConfig(run_dir=run_dir or "")

    def endpoint_for(topic: str) -> str:
        return endpoint if endpoint is not None else cfg.endpoint(topic)

    stop = install_stop_handlers()
    report = replay_live(
        rec,
        endpoint_for,
        stop,
        rate=rate,
        loop=loop,
        start_s=start_s,
        topics=topics or SENSOR_PREFIXES,
        wait_for_subscriber=wait_for_subscriber,
        readers=readers,
    )
    if as_json:
        click.echo(json.dumps(report))
    else:
        sent = ", ".join(f"{t} {n}" for t, n in sorted(report["sent"].items()))
        click.echo(f"replayed {path}: {sent}")


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--json", "as_json", is_flag=True)
def recover(src: str, dst: str, as_json: bool) -> None:
    """Rewrite what is readable of a damaged recording (e.g. killed -9) as a complete file."""
    from .record import recover as do_recover

    if Path(src).resolve() == Path(dst).resolve():
        raise ConfigError("recover", "write to a different file than the one being read")
    report = do_recover(src, dst)
    if as_json:
        click.echo(json.dumps(report))
    else:
        where = f" (readable up to byte {report['truncated_at']})" if report["truncated_at"] else ""
        click.echo(f"recovered {report['recovered']} messages{where} -> {dst}")

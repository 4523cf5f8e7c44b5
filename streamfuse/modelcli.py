"""``streamfuse train``, ``eval`` and ``export``: the model commands (torch loads lazily)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click
import yaml

from .errors import ConfigError, StreamfuseError


def _need_torch(command: str) -> None:
    """The model commands need torch, which the runtime install leaves out: say how to get it."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise StreamfuseError(
            f"`streamfuse {command}` needs torch, which is not installed: pip install "
            "'streamfuse[train]' (without CUDA, first the CPU build: pip install torch "
            "--index-url https://download.pytorch.org/whl/cpu)"
        )


def load_train_config(path: str | None, overrides: dict[str, Any]) -> Any:
    from streamfuse_plugins.models.train import TrainConfig

    raw: dict[str, Any] = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError("--config", f"{path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError("--config", f"{path} must hold a mapping of settings")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(raw, source=path or "command line")


def _progress(label: str, as_json: bool) -> Any:
    """A rich progress bar on stderr (none with --json)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    if as_json:
        return None
    return Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


@click.command()
@click.option(
    "--config", "config_path", default=None, help="Training YAML (configs/train/av-digits.yaml)."
)
@click.option("--out", default="runs/av-digits", show_default=True, help="Output folder.")
@click.option("--epochs", type=int, default=None, help="Override the config's epochs.")
@click.option(
    "--data", default=None, help="Data folder (default: $STREAMFUSE_DATA or ../shared/data)."
)
@click.option(
    "--limit", type=int, default=None, help="Use only this many training clips (smoke runs)."
)
@click.option("--json", "as_json", is_flag=True)
def train(
    config_path: str | None,
    out: str,
    epochs: int | None,
    data: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Train the fusion model; write model.pt, model.onnx and model_card.json."""
    _need_torch("train")
    from streamfuse_plugins.models.export import export_onnx
    from streamfuse_plugins.models.train import load_checkpoint, run_training

    cfg = load_train_config(config_path, {"epochs": epochs, "data": data, "limit": limit})
    out_dir = Path(out)
    bar = _progress("training", as_json)
    task = None

    def progress(step: int, total: int, loss: float) -> None:
        nonlocal task
        if bar is None:
            return
        if task is None:
            task = bar.add_task("train", total=total, loss=loss)
        bar.update(task, completed=step, loss=loss)

    if cfg.strategy == "crossfit":
        bar = None  # many experts, some at once: a line each

    def say(line: str) -> None:  # stderr, so also with --json
        click.echo(line, err=True)

    if bar:
        bar.start()
    try:
        card = run_training(cfg, out_dir, progress, say)
    finally:
        if bar:
            bar.stop()
    net, _, _ = load_checkpoint(out_dir / "model.pt")
    card["onnx"] = export_onnx(
        net,
        out_dir / "model.onnx",
        {
            "streamfuse.card": json.dumps(
                {k: card[k] for k in ("checkpoint_sha256", "metrics", "train_seconds")}
            )
        },
    )
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=2))
    if as_json:
        click.echo(json.dumps(card))
        return
    click.echo(
        f"trained in {card['train_seconds']:.0f} s -> {out_dir}/"
        "{model.pt, model.onnx, model_card.json}"
    )
    for name, m in card["metrics"].items():
        c = m["clean"]
        click.echo(
            f"  {name:<26} fused {c['fused']:.3f}  image {c['image']:.3f}  audio {c['audio']:.3f}"
        )


@click.command("eval")
@click.option("--config", "config_path", default=None, help="Training YAML.")
@click.option(
    "--speakers",
    default="all",
    show_default=True,
    help="Comma-separated FSDD speakers to hold out in turn.",
)
@click.option("--epochs", type=int, default=None)
@click.option("--data", default=None)
@click.option(
    "--limit", type=int, default=None, help="Use only this many training clips (smoke runs)."
)
@click.option(
    "--baselines",
    is_flag=True,
    help="Targets against the single-sensor models, PASS/FAIL per fold, and the ablations.",
)
@click.option(
    "--card",
    default=None,
    help="Write the results into this model card (JSON) as its leave_one_speaker_out.",
)
@click.option("--json", "as_json", is_flag=True)
def evaluate(
    config_path: str | None,
    speakers: str,
    epochs: int | None,
    data: str | None,
    limit: int | None,
    baselines: bool,
    card: str | None,
    as_json: bool,
) -> None:
    """Leave-one-speaker-out: per-modality and fused accuracy, clean, degraded, and blanked."""
    _need_torch("eval")
    from streamfuse_plugins.models.data import FSDD_SPEAKERS
    from streamfuse_plugins.models.train import CONDITIONS, leave_one_speaker_out

    cfg = load_train_config(config_path, {"epochs": epochs, "data": data, "limit": limit})
    names = list(FSDD_SPEAKERS) if speakers == "all" else [s.strip() for s in speakers.split(",")]
    bad = set(names) - set(FSDD_SPEAKERS)
    if bad:
        raise ConfigError("--speakers", f"unknown {sorted(bad)}; known: {', '.join(FSDD_SPEAKERS)}")
    if cfg.strategy == "crossfit":
        _evaluate_crossfit(cfg, names, baselines, as_json, card, config_path)
        return
    if card:
        raise ConfigError("--card", "only the crossfit recipe's evaluation goes into a card")
    bar = _progress("leave-one-speaker-out", as_json)
    tasks: dict[str, Any] = {}

    def progress(label: str, step: int, total: int, loss: float) -> None:
        if bar is None:
            return
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total, loss=loss)
        bar.update(tasks[label], completed=step, loss=loss)

    if bar:
        bar.start()
    try:
        results = leave_one_speaker_out(cfg, names, progress, baselines=baselines)
    finally:
        if bar:
            bar.stop()
    rows = [c for c in next(iter(results.values()))]
    mean = {
        row: {
            k: sum(r[row][k] for r in results.values()) / len(results)
            for k in results[names[0]][row]
        }
        for row in rows
    }
    targets = _targets(mean)
    if as_json:
        click.echo(json.dumps({"per_speaker": results, "mean": mean, "targets": targets}))
        return
    click.echo(f"{'held out':<10} {'condition':<18} {'fused':>6} {'image':>6} {'audio':>6}")
    for spk, r in [*results.items(), ("MEAN", mean)]:
        for cond in CONDITIONS:
            m = r[cond]
            click.echo(
                f"{spk:<10} {cond:<18} {m['fused']:6.3f} {m['image']:6.3f} {m['audio']:6.3f}"
            )
        for row in rows[len(CONDITIONS) :]:
            m = r[row]
            click.echo(f"{spk:<10} {row:<18} clean {m['clean']:.3f}  degraded {m['degraded']:.3f}")
    for name, t in targets.items():
        click.echo(
            f"target {name}: {t['value']:+.3f} (needs {t['needs']}) "
            + ("PASS" if t["pass"] else "FAIL")
        )


def _evaluate_crossfit(
    cfg: Any,
    names: list[str],
    baselines: bool,
    as_json: bool,
    card: str | None = None,
    config_path: str | None = None,
) -> None:
    """Leave-one-speaker-out of the cross-fitted recipe: per fold and condition, accuracy and
    ECE of the fused output and of each expert; with --baselines every target PASS/FAIL per
    fold and the ablations (worst fold and mean)."""
    import time

    from streamfuse_plugins.models.crossfit import EVAL_CONDITIONS, leave_one_speaker_out, targets

    existing = _read_card(Path(card)) if card else None  # before the hour of work, not after
    t0 = time.monotonic()

    def progress(line: str) -> None:  # stderr, so also with --json
        click.echo(line, err=True)

    results = leave_one_speaker_out(cfg, names, progress, ablations=baselines)
    report: dict[str, Any] = {"per_speaker": results, "seconds": round(time.monotonic() - t0, 1)}
    conds = list(EVAL_CONDITIONS)
    heads = ["fused", "image", "audio"]
    report["worst"] = {
        c: {h: min(r[c][h] for r in results.values()) for h in results[names[0]][c]} for c in conds
    }
    report["mean"] = {
        c: {h: sum(r[c][h] for r in results.values()) / len(results) for h in results[names[0]][c]}
        for c in conds
    }
    if baselines:
        report["targets"] = targets(results)
    if card and existing is not None:
        _write_card(Path(card), existing, report, config_path, names, baselines)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"{'held out':<10} {'condition':<16} {'fused':>6} {'image':>6} {'audio':>6}"
        f" {'ECE fused':>9} {'image':>6} {'audio':>6}"
    )
    for spk, r in [*results.items(), ("MEAN", report["mean"]), ("WORST", report["worst"])]:
        for c in conds:
            m = r[c]
            acc = " ".join(f"{m[h]:6.3f}" for h in heads)
            cal = " ".join(f"{m[h + ' ece']:{w}.3f}" for h, w in zip(heads, (9, 6, 6), strict=True))
            click.echo(f"{spk:<10} {c:<16} {acc} {cal}")
    if not baselines:
        click.echo(f"({report['seconds']:.0f} s)")
        return
    ablations = [k for k in results[names[0]]["clean"] if k not in heads and "ece" not in k]
    click.echo("\nablations: fused accuracy, worst fold / mean")
    click.echo(
        f"{'condition':<16} " + " ".join(f"{a[:26]:>26}" for a in ["stacked (shipped)", *ablations])
    )
    for c in conds:
        cells = [
            f"{report['worst'][c][k]:.3f} / {report['mean'][c][k]:.3f}".rjust(26)
            for k in ["fused", *ablations]
        ]
        click.echo(f"{c:<16} " + " ".join(cells))
    click.echo("\ntargets (each fold):")
    for t in report["targets"]:
        mark = "PASS" if t["pass"] else "FAIL"
        value, needs = f"{t['value']:+.3f}", f"{t['needs']:+.3f}"
        click.echo(f"  {mark}  {t['fold']:<9} {t['target']:<44} {value} (needs >= {needs})")
    failed = sum(not t["pass"] for t in report["targets"])
    met = f"{len(report['targets']) - failed}/{len(report['targets'])}"
    click.echo(f"{met} targets met ({report['seconds']:.0f} s)")


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError("--card", f"{path} is not a readable model card: {reason}") from None
    if not isinstance(card, dict):
        raise ConfigError("--card", f"{path} is not a model card (a JSON object)")
    return card


def _write_card(
    path: Path,
    card: dict[str, Any],
    report: dict[str, Any],
    config_path: str | None,
    names: list[str],
    baselines: bool,
) -> None:
    command = ["streamfuse eval", f"--config {config_path}" if config_path else ""]
    if len(names) < 5:
        command.append(f"--speakers {','.join(names)}")
    command.append("--baselines" if baselines else "")
    card["leave_one_speaker_out"] = {
        "command": " ".join(c for c in command if c),
        "note": "each fold holds one FSDD speaker out of everything: its experts, the "
        "out-of-fold outputs the temperatures and the stacker are fitted on, and the gate; "
        "image-only and audio-only models are the fold's experts themselves",
        **report,
    }
    path.write_text(json.dumps(card, indent=2) + "\n")


def _targets(mean: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """The model issue's targets, on leave-one-speaker-out means."""

    def target(value: float, threshold: float, needs: str) -> dict[str, Any]:
        return {"value": value, "needs": needs, "pass": value >= threshold - 1e-9}

    img = mean.get("image-only model")
    aud = mean.get("audio-only model")
    best_single = max(
        img["degraded"] if img else mean["degraded"]["image"],
        aud["degraded"] if aud else mean["degraded"]["audio"],
    )
    out = {
        "fused clean": target(mean["clean"]["fused"], 0.95, ">= 0.95"),
        "degraded: fused - best single": target(
            mean["degraded"]["fused"] - best_single, 0.05, ">= +0.05"
        ),
    }
    if img and aud:
        out["image blank: fused - audio-only model"] = target(
            mean["image blank"]["fused"] - aud["clean"], -0.03, ">= -0.03"
        )
        out["audio blank: fused - image-only model"] = target(
            mean["audio blank"]["fused"] - img["clean"], -0.03, ">= -0.03"
        )
    return out


@click.command()
@click.option("--checkpoint", required=True, help="model.pt from `streamfuse train`.")
@click.option("--out", required=True, help="ONNX file to write.")
@click.option("--json", "as_json", is_flag=True)
def export(checkpoint: str, out: str, as_json: bool) -> None:
    """Export a checkpoint to ONNX (opset 17, dynamic batch), checked against torch; the
    checkpoint is copied beside it (``.pt``) for the torch backend."""
    _need_torch("export")
    from streamfuse_plugins.models.export import export_onnx
    from streamfuse_plugins.models.train import load_checkpoint

    net, _, _ = load_checkpoint(Path(checkpoint))
    report = export_onnx(net, Path(out))
    # The torch backend loads the weights from beside the ONNX file.
    weights = Path(out).with_suffix(".pt")
    if weights.resolve() != Path(checkpoint).resolve():
        shutil.copyfile(checkpoint, weights)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(
            f"{out}: {report['bytes'] / 1e6:.2f} MB, opset {report['opset']}, "
            f"max |torch - onnxruntime| {report['max_abs_diff']:.1e}"
        )


@click.command("backends")
@click.option("--json", "as_json", is_flag=True)
def backends(as_json: bool) -> None:
    """Which inference backends can run here, in the order `auto` tries them, and why not."""
    from .backend import available_backends

    rows = available_backends()
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        mark = "yes" if r["available"] else "no "
        click.echo(f"{mark}  {r['backend']:<12} {r['device']:<5} {r['reason'] or ''}".rstrip())


@click.command("build-engine")
@click.option("--model", "model_path", default=None, help="ONNX model (default: the shipped one).")
@click.option(
    "--precision", type=click.Choice(["fp16", "fp32", "int8"]), default="fp16", show_default=True
)
@click.option("--max-batch", type=int, default=8, show_default=True, help="Profile: batch 1..N.")
@click.option("--device", default="cuda:0", show_default=True)
@click.option(
    "--cache-dir",
    default=None,
    help="Engine cache (default $STREAMFUSE_CACHE or ~/.cache/streamfuse).",
)
@click.option("--calibration", default=None, help="int8: .npz with image and audio arrays.")
@click.option("--json", "as_json", is_flag=True)
def build_engine(
    model_path: str | None,
    precision: str,
    max_batch: int,
    device: str,
    cache_dir: str | None,
    calibration: str | None,
    as_json: bool,
) -> None:
    """Build (or find in the cache) the TensorRT engine for a model, ahead of time."""
    from .backend import BackendOptions, ModelInfo
    from .errors import BackendError

    try:
        from streamfuse_plugins.backends.tensorrt_backend import TensorRTBackend, get_engine
    except ImportError as exc:  # pragma: no cover - the plugin ships with the package
        raise BackendError("tensorrt", f"plugin missing: {exc}") from None
    reason = TensorRTBackend.unavailable(device)
    if reason is not None:
        raise BackendError("tensorrt", f"cannot build here: {reason}")
    model = ModelInfo.load(model_path)
    options = BackendOptions(
        device=device,
        precision=precision,  # type: ignore[arg-type]
        max_batch=max_batch,
        cache_dir=Path(cache_dir) if cache_dir else None,
        calibration=Path(calibration) if calibration else None,
    )

    def progress(phase: str, step: int, total: int) -> None:
        if not as_json:
            click.echo(f"  {phase}: {step}/{total}", err=True)

    hit, _, _ = get_engine(model, options, progress)
    report = {
        "engine": str(hit.path),
        "built": hit.built,
        "seconds": round(hit.seconds, 1),
        "bytes": len(hit.data),
        "precision": precision,
        "max_batch": max_batch,
    }
    if as_json:
        click.echo(json.dumps(report))
    elif hit.built:
        click.echo(f"built {hit.path} ({len(hit.data) / 1e6:.1f} MB) in {hit.seconds:.0f} s")
    else:
        click.echo(f"cached: {hit.path} ({len(hit.data) / 1e6:.1f} MB)")


@click.group("model")
def model_group() -> None:
    """Give an ONNX model its contract, and read it back (docs/models.md)."""


@model_group.command("annotate")
@click.argument("model_path", metavar="MODEL.onnx")
@click.option("--contract", "contract_path", required=True, help="The contract, YAML.")
@click.option("--out", required=True, help="The annotated ONNX file to write.")
@click.option("--json", "as_json", is_flag=True)
def annotate(model_path: str, contract_path: str, out: str, as_json: bool) -> None:
    """Embed a contract in MODEL.onnx's metadata, checked against its graph."""
    from .contract import annotate as embed
    from .contract import load_contract_file

    contract = load_contract_file(contract_path)
    written = embed(Path(model_path), contract, Path(out))
    if as_json:
        click.echo(json.dumps({"out": out, "contract": written.to_builtins()}))
    else:
        click.echo(
            f"{out}: contract embedded ({len(written.labels)} labels, "
            f"inputs {', '.join(_inputs(written))})"
        )


def _inputs(contract: Any) -> list[str]:
    return [s.input for s in (contract.image, contract.audio) if s is not None]


@model_group.command("inspect")
@click.argument("model_path", metavar="MODEL.onnx", required=False)
@click.option("--json", "as_json", is_flag=True)
def inspect_model(model_path: str | None, as_json: bool) -> None:
    """Print a model's contract, its graph's inputs and outputs, and whether they agree
    (default: the shipped model). Exits 1 where they do not."""
    from .contract import inspect as read

    report = read(Path(model_path) if model_path else None)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"model    {report['path']}")
        click.echo(f"sha256   {report['sha256']}")
        for kind in ("inputs", "outputs"):
            for t in report["graph"][kind]:
                dims = ", ".join(str(d) for d in t["shape"])
                click.echo(f"{kind[:-1]:<8} {t['name']}: {t['dtype']} [{dims}]")
        if report["contract"] is not None:
            import yaml

            click.echo("contract:")
            text = yaml.safe_dump(report["contract"], sort_keys=False, default_flow_style=None)
            click.echo("  " + text.rstrip().replace("\n", "\n  "))
        click.echo("agrees   yes" if report["agrees"] else f"agrees   NO: {report['problem']}")
    if not report["agrees"]:
        raise SystemExit(1)


@click.group("triton")
def triton_group() -> None:
    """Serve the model from NVIDIA Triton Inference Server (docs/triton.md)."""


@triton_group.command("export-repo")
@click.argument("out", metavar="DIR")
@click.option("--config", "config_path", default=None, help="The daemon's config (its model).")
@click.option("--model", "model_path", default=None, help="Instead: this ONNX model.")
@click.option("--name", default=None, help="The model's name there (engine.triton.model_name).")
@click.option("--max-batch", type=int, default=None, help="Default: engine.max_batch.")
@click.option("--plan", default=None, help="Also a TensorRT engine (streamfuse build-engine).")
@click.option("--json", "as_json", is_flag=True)
def export_repo_cmd(
    out: str,
    config_path: str | None,
    model_path: str | None,
    name: str | None,
    max_batch: int | None,
    plan: str | None,
    as_json: bool,
) -> None:
    """Write a Triton model repository for the configured model into DIR."""
    from .backend import ModelInfo
    from .config import load_config
    from .tritonrepo import export_repo

    cfg = load_config(config_path)
    model = ModelInfo.load(model_path or cfg.engine.model)
    name = name or cfg.engine.triton.model_name or model.path.stem
    batch = max_batch or cfg.engine.max_batch
    files = export_repo(
        model, Path(out), name=name, max_batch=batch, plan=Path(plan) if plan else None
    )
    if as_json:
        click.echo(json.dumps({"model_name": name, "files": [str(f) for f in files]}))
        return
    for f in files:
        click.echo(str(f))
    click.echo(
        f"serve it: docker run --rm -p8001:8001 -v {Path(out).resolve()}:/models "
        f"nvcr.io/nvidia/tritonserver:<xx.yy>-py3 tritonserver --model-repository=/models"
    )

"""The backend interface, every backend this machine can run, and the engine cache.

Parity: every available backend against ONNX Runtime on the shipped model with fixed inputs,
within a tolerance per precision. GPU backends (torch CUDA, TensorRT) run where a GPU (and
TensorRT) exists and skip elsewhere saying so.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is a core dependency; pip install -e .")

from streamfuse.backend import (
    AUTO_ORDER,
    BackendOptions,
    ModelInfo,
    available_backends,
    default_model_path,
    open_backend,
)
from streamfuse.enginecache import EngineCache
from streamfuse.errors import BackendError, ConfigError

TOLERANCE = {"fp64": 1e-5, "fp32": 1e-4, "fp16": 2e-2, "int8": 1e-1}


def _available(name: str, device: str) -> str | None:
    row = next(r for r in available_backends() if (r["backend"], r["device"]) == (name, device))
    return None if row["available"] else row["reason"]


@pytest.fixture(scope="module")
def model() -> ModelInfo:
    return ModelInfo.load()


@pytest.fixture(scope="module")
def reference(model: ModelInfo) -> dict[int, dict[str, np.ndarray]]:
    ort = open_backend("onnxruntime", model)
    return {b: ort.infer(model.example_inputs(b, seed=b)) for b in (1, 3, 8)}


def test_the_shipped_model_carries_its_contract(model: ModelInfo) -> None:
    assert model.path == default_model_path()
    assert model.labels == tuple(str(i) for i in range(10))
    assert model.input_shapes == {"image": (1, 32, 32), "audio": (16000,)}
    assert model.audio is not None and model.audio.sample_rate == 16000
    assert model.outputs == ("probs", "image_probs", "audio_probs")
    assert len(model.sha256) == 64


@pytest.mark.parametrize(
    ("name", "device", "precision", "cuda_graphs"),
    [
        ("reference", "cpu", "fp64", False),
        ("torch", "cpu", "fp32", False),
        ("torch", "cuda", "fp32", False),
        ("torch", "cuda", "fp32", True),
        ("torch", "cuda", "fp16", True),
        ("onnxruntime", "cuda", "fp32", False),
        ("tensorrt", "cuda", "fp32", False),
        ("tensorrt", "cuda", "fp16", False),
    ],
)
def test_backend_matches_onnxruntime(
    name: str,
    device: str,
    precision: str,
    cuda_graphs: bool,
    model: ModelInfo,
    reference: dict[int, dict[str, np.ndarray]],
    tmp_path: Path,
) -> None:
    reason = _available(name, device) if (name, device) in AUTO_ORDER else None
    if reason is None and name == "onnxruntime" and device == "cuda":
        from streamfuse_plugins.backends.onnxruntime_backend import OnnxRuntimeBackend

        reason = OnnxRuntimeBackend.unavailable(device)
    if reason is not None:
        pytest.skip(f"{name} on {device}: {reason}")
    options = BackendOptions(
        device=device,
        precision=precision,  # type: ignore[arg-type]
        max_batch=8,
        cuda_graphs=cuda_graphs,
        cache_dir=tmp_path,
    )
    backend = open_backend(name, model, options)
    assert backend.precision == precision
    for batch, ref in reference.items():
        got = backend.infer(model.example_inputs(batch, seed=batch))
        assert set(got) == set(model.outputs)
        for key in model.outputs:
            assert got[key].shape == (batch, len(model.labels))
            np.testing.assert_allclose(got[key], ref[key], atol=TOLERANCE[precision], rtol=0)
        assert (got["probs"].argmax(1) == ref["probs"].argmax(1)).all()
    backend.close()


def test_auto_takes_the_first_backend_that_can_run_and_says_why(
    model: ModelInfo, caplog: pytest.LogCaptureFixture
) -> None:
    rows = available_backends()
    first = next(r for r in rows if r["available"])
    with caplog.at_level(logging.INFO, logger="streamfuse.backend"):
        backend = open_backend("auto", model)
    assert (backend.name, backend.device.split(":")[0]) == (first["backend"], first["device"])
    chosen = next(r.getMessage() for r in caplog.records if "backend auto" in r.getMessage())
    for r in rows[: rows.index(first)]:  # every better backend is named with its reason
        assert f"{r['backend']} on {r['device']}: {r['reason']}" in chosen


def test_bad_requests_name_what_is_wrong(model: ModelInfo, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        open_backend("tpu", model)
    with pytest.raises(ConfigError, match=r"backend\.precision"):
        BackendOptions(precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"backend\.max_batch"):
        BackendOptions(max_batch=0)
    with pytest.raises(BackendError, match="fp16 is not offered on cpu"):
        open_backend("torch", model, BackendOptions(precision="fp16"))
    with pytest.raises(BackendError, match="onnxruntime: cannot run on npu"):
        open_backend("onnxruntime", model, BackendOptions(device="npu"))
    backend = open_backend("torch", model, BackendOptions(max_batch=2))
    with pytest.raises(BackendError, match="batch 3 > max_batch 2"):
        backend.infer(model.example_inputs(3))


def test_torch_backend_needs_the_checkpoint_beside_the_model(tmp_path: Path) -> None:
    lonely = tmp_path / "m.onnx"
    lonely.write_bytes(default_model_path().read_bytes())
    with pytest.raises(BackendError, match=r"needs the checkpoint .*m\.pt beside"):
        open_backend("torch", ModelInfo.load(lonely))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a readable ONNX model"),
        (b"\x08\x07garbage\xff" * 10, "not a readable ONNX model"),
        (None, "has no streamfuse contract in its metadata"),
    ],
)
def test_a_bad_model_file_is_named(content: bytes | None, match: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    if content is None:  # a valid ONNX model without our metadata
        import onnx

        proto = onnx.load(str(default_model_path()))
        del proto.metadata_props[:]
        onnx.save(proto, str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as info:
        ModelInfo.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        ModelInfo.load(tmp_path / "missing.onnx")


def test_stub_only_tensorrt_counts_as_unavailable(tmp_path: Path) -> None:
    """tensorrt-stubs installs an empty `tensorrt` namespace package: it imports, but is not
    TensorRT. The availability check must not be fooled."""
    (tmp_path / "tensorrt").mkdir()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from streamfuse_plugins.backends.tensorrt_backend import TensorRTBackend as T;"
        "print(T.unavailable('cuda'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert "no Builder" in out.stdout


def test_cuda_graph_batch_sizes() -> None:
    from streamfuse_plugins.backends.torch_backend import graph_batches

    assert graph_batches(1) == [1]
    assert graph_batches(8) == [1, 2, 4, 8]
    assert graph_batches(6) == [1, 2, 4, 6]
    assert graph_batches(9) == [1, 2, 4, 8, 9]


# --- engine cache: pure file logic, exercised with real processes and a fake builder ---

SLOT = {"model_sha256": "ab" * 32, "precision": "fp16", "max_batch": 8}
KEY = {**SLOT, "tensorrt": "10.13.0", "gpu": "Orin", "compute_capability": "8.7"}


def _race(root: str, log_path: str, barrier: Any) -> None:
    def build() -> bytes:
        with open(log_path, "a") as f:
            f.write(f"built {time.time()}\n")
        time.sleep(0.5)  # long enough that every other process arrives meanwhile
        with open(log_path, "a") as f:
            f.write(f"done {time.time()}\n")
        return b"PLAN" * 1000

    barrier.wait(timeout=60)  # all four imported and here: they start together
    with open(log_path, "a") as f:
        f.write(f"enter {time.time()}\n")
    hit = EngineCache(Path(root)).get_or_build(SLOT, KEY, build)
    assert hit.data == b"PLAN" * 1000


def test_processes_starting_together_build_once(tmp_path: Path) -> None:
    log_path = tmp_path / "builds.log"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [
        ctx.Process(target=_race, args=(str(tmp_path / "cache"), str(log_path), barrier))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    events = [line.split() for line in log_path.read_text().splitlines()]
    assert [e for e, _ in events].count("built") == 1
    # and they did race: all four asked for the engine while it was being built
    done = next(float(t) for e, t in events if e == "done")
    assert sum(1 for e, t in events if e == "enter" and float(t) < done) == 4
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"]
    assert leftovers == []


def test_a_changed_key_rebuilds_with_one_line_naming_the_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = EngineCache(tmp_path)
    first = cache.get_or_build(SLOT, KEY, lambda: b"old")
    assert first.built
    assert not cache.get_or_build(SLOT, KEY, lambda: b"unused").built
    newer = {**KEY, "tensorrt": "10.14.0"}
    with caplog.at_level(logging.WARNING, logger="streamfuse.enginecache"):
        hit = cache.get_or_build(SLOT, newer, lambda: b"new")
    assert hit.built and hit.data == b"new" and hit.path == first.path
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "tensorrt: '10.13.0' -> '10.14.0'" in lines[0]


def test_a_corrupted_engine_file_is_rebuilt(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    hit = cache.get_or_build(SLOT, KEY, lambda: b"good plan")
    hit.path.write_bytes(b"good pla")  # cut short behind the cache's back
    again = cache.get_or_build(SLOT, KEY, lambda: b"good plan")
    assert again.built and again.path.read_bytes() == b"good plan"
    (tmp_path / (cache.slot(SLOT) + ".json")).write_text("{not json")
    assert cache.get_or_build(SLOT, KEY, lambda: b"good plan").built


def test_backends_command_lists_every_candidate() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streamfuse", "backends", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout)
    assert [(r["backend"], r["device"]) for r in rows] == list(AUTO_ORDER)
    assert all(r["available"] or r["reason"] for r in rows)


def test_build_engine_without_tensorrt_is_a_clear_error() -> None:
    if _available("tensorrt", "cuda") is None:
        pytest.skip("TensorRT is present: the build itself is tested below")
    out = subprocess.run(
        [sys.executable, "-m", "streamfuse", "build-engine"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: backend tensorrt: cannot build here:")
    assert "Traceback" not in out.stderr


@pytest.mark.gpu
def test_build_engine_builds_then_caches(tmp_path: Path) -> None:
    reason = _available("tensorrt", "cuda")
    if reason is not None:
        pytest.skip(f"tensorrt on cuda: {reason}")
    argv = [sys.executable, "-m", "streamfuse", "build-engine", "--json"]
    argv += ["--cache-dir", str(tmp_path), "--max-batch", "4"]
    first = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    second = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    assert first["built"] and not second["built"] and first["engine"] == second["engine"]

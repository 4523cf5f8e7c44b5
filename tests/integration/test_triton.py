"""The triton backend against a real Triton Inference Server (nvidia-pytriton's bundled
tritonserver, in its own venv: tests/triton_server.py), not a mock: the same numbers as
local ONNX Runtime, clear errors for what the server refuses, and a daemon that survives
the server dying (fallback or degraded results) and uses it again when it returns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamfuse.backend import BackendOptions, ModelInfo, default_model_path, open_backend
from streamfuse.errors import BackendError

from ..conftest import require
from .helpers import free_port, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
TRITON_PY = Path(os.environ.get("STREAMFUSE_TRITON_PYTHON", ROOT / ".venv-triton/bin/python"))


class Server:
    """tritonserver (via pytriton) serving ``model`` as ``name`` on free loopback ports."""

    def __init__(self, model: Path, name: str, port: int | None = None) -> None:
        self.model, self.name = model, name
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, log: Path) -> Server:
        argv = [str(TRITON_PY), "-m", "tests.triton_server", str(self.model), self.name,
                str(self.port), str(free_port()), str(free_port())]  # fmt: skip
        # its output (tritonserver's log, then "ready") to a file: a pipe nobody drains
        # would stop the server once full
        start = log.stat().st_size if log.exists() else 0
        with log.open("a") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         text=True, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.proc.poll() is None:
            with log.open() as f:
                f.seek(start)
                if any(line.startswith("ready") for line in f):
                    return self
            time.sleep(0.2)
        raise AssertionError(f"tritonserver did not come up; see {log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # tritonserver and its stubs too
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require(TRITON_PY.is_file(), f"needs {TRITON_PY} with nvidia-pytriton (`make test` builds it)")
    s = Server(default_model_path(), "av_digits").start(tmp_path_factory.mktemp("t") / "triton.log")
    yield s
    s.kill()


def _triton(url: str, **settings: Any) -> Any:
    options = BackendOptions(
        max_batch=8, settings={"url": url, "model_name": "av_digits", **settings}
    )
    return open_backend("triton", ModelInfo.load(), options)


@pytest.mark.parametrize("shm", ["auto", "off"])
def test_classifications_through_triton_equal_local_onnxruntime(server: Server, shm: str) -> None:
    model = ModelInfo.load()
    remote = _triton(server.url, shared_memory=shm)
    local = open_backend("onnxruntime", model, BackendOptions(max_batch=8))
    try:
        assert bool(remote._shm) == (shm == "auto")  # inputs through shared memory, or inline
        for batch in (1, 3, 8):
            feeds = model.example_inputs(batch, seed=batch)
            got, want = remote.infer(feeds), local.infer(feeds)
            for name in model.outputs:
                assert got[name].shape == want[name].shape == (batch, 10)
                np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)
    finally:
        remote.close()


def test_the_contract_can_come_from_the_server(server: Server) -> None:
    """``engine.triton.contract: server``: no local model file; the contract from the model
    config's ``streamfuse.contract`` parameter, the input shapes from the model metadata."""
    from streamfuse_plugins.backends.triton_backend import TritonBackend

    settings = {"url": server.url, "model_name": "av_digits"}
    served = TritonBackend.served_model(settings)
    local = ModelInfo.load()
    assert served.contract == local.contract and served.input_shapes == local.input_shapes
    assert str(served.path) == f"triton:{server.url}/av_digits"
    remote = open_backend("triton", served, BackendOptions(max_batch=8, settings=settings))
    try:
        feeds = local.example_inputs(3)
        want = open_backend("onnxruntime", local).infer(feeds)
        got = remote.infer(feeds)
        np.testing.assert_allclose(got["probs"], want["probs"], rtol=0, atol=1e-5)
    finally:
        remote.close()


def test_what_the_server_refuses_is_one_clear_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=rf"backend triton: {server.url}: model 'nope': .*"):
        _triton(server.url, model_name="nope")
    # a model whose contract disagrees with what the server serves under that name
    import yaml

    from .. import colour_model as C

    bare, out = tmp_path / "c.onnx", tmp_path / "colours.onnx"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(C.build(bare)))
    from streamfuse.contract import annotate, load_contract_file

    annotate(bare, load_contract_file(tmp_path / "c.yaml"), out)
    options = BackendOptions(max_batch=8, settings={"url": server.url, "model_name": "av_digits"})
    with pytest.raises(BackendError, match="has no input 'pixels'"):
        open_backend("triton", ModelInfo.load(out), options)
    # a request of the wrong shape, refused by the server itself
    remote = _triton(server.url, shared_memory="off")
    try:
        bad = {
            "image": np.zeros((1, 1, 16, 16), np.float32),
            "audio": np.zeros((1, 16000), np.float32),
        }
        with pytest.raises(BackendError, match=rf"backend triton: {server.url}: .*image"):
            remote.infer(bad)
    finally:
        remote.close()


def _daemon(tmp: Path, url: str, **engine: Any) -> subprocess.Popen[str]:
    triton = {"url": url, "model_name": "av_digits", "timeout_ms": 500}
    path, _ = write_config(
        tmp,
        engine={"backend": "triton", "standby": False, "triton": triton, **engine},
        http={"port": 0},
    )
    argv = [sys.executable, "-m", "streamfuse", "run", "--config", str(path), "--json"]
    with (tmp / "daemon.log").open("w") as log:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)  # (and closes its stdout)


def _read(proc: subprocess.Popen[str], n: int, timeout: float = 30) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("{"):
            out.append(json.loads(line))
    assert len(out) == n, f"{len(out)} of {n} results in {timeout} s"
    return out


def test_the_server_dying_falls_back_and_its_return_is_used(server: Server, tmp_path: Path) -> None:
    """A daemon on the triton backend with ONNX Runtime as fallback: results come from
    Triton; the server killed mid-run, they come from the fallback, saying so; the server
    back on the same port, from Triton again. The engine never restarts, no window is lost."""
    proc = _daemon(tmp_path, server.url, fallback="onnxruntime")
    try:
        first = _read(proc, 6, timeout=60)
        assert {r["backend"] for r in first} == {f"triton/remote:{server.url}/fp32"}
        assert all(r["reasons"] == {} and r["label"] for r in first)
        server.kill()
        during = _read(proc, 8)
        fell_back = [r for r in during if r["backend"].startswith("onnxruntime/")]
        assert len(fell_back) >= 4, [r["backend"] for r in during]
        for r in fell_back:
            assert r["reasons"] == {"inference": "inference_unavailable"} and r["label"]
        server.start(tmp_path / "triton.log")
        after: list[dict[str, Any]] = []  # (what it published while the server started first)
        while not after or after[-1]["backend"].startswith("onnxruntime/"):
            after += _read(proc, 1)
        after += _read(proc, 4)
        assert {r["backend"] for r in after[-5:]} == {f"triton/remote:{server.url}/fp32"}
    finally:
        _stop(proc)
    results = first + during + after
    assert [r["seq"] for r in results] == list(range(len(results)))  # none lost, one engine
    log = (tmp_path / "daemon.log").read_text()
    assert '"restarts": {"engine": 0' in log


def test_without_a_fallback_the_results_say_inference_unavailable(
    server: Server, tmp_path: Path
) -> None:
    proc = _daemon(tmp_path, server.url)
    try:
        before = _read(proc, 3, timeout=60)
        server.kill()
        during = _read(proc, 6)
    finally:
        _stop(proc)
        server.start(tmp_path / "triton.log")  # (for any test after this one)
    assert all(r["label"] for r in before)
    lost = [r for r in during if r["reasons"] == {"inference": "inference_unavailable"}]
    assert len(lost) >= 3
    for r in lost:  # each window still published: no label, degraded, saying why
        assert r["label"] == "" and r["degraded"] and "inference" in r["missing"]
    assert [r["seq"] for r in before + during] == list(range(len(before) + len(during)))

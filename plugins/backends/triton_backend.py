"""Triton Inference Server (KServe v2 over gRPC, ``tritonclient[grpc]``): the remote backend.

The model's contract stays local (the ONNX file's metadata, as for every backend); the
server holds the same model under ``engine.triton.model_name`` (``streamfuse triton
export-repo`` writes its repository). At open the server's model metadata is checked
against the contract (input and output names, dtypes, per-sample shapes) so a mismatch is
one error naming the tensor, not a refused request later.

One request per batch, sent with ``async_infer``: :meth:`submit` returns a future at once
and the engine collects it later, so the engine's loop never waits on the network. A
request not answered within ``timeout_ms`` (or refused, or a server that is down) fails its
future; the engine then runs the batch on ``engine.fallback`` or publishes it degraded with
reason ``inference_unavailable``. gRPC reconnects by itself: the first request after the
server returns succeeds. Inputs go through system shared memory (one region per input,
sized for max_batch, registered with the server) when the server is on this host.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import threading
from concurrent.futures import Future
from typing import Any, ClassVar

import numpy as np

from streamfuse.backend import BackendOptions, Inputs, ModelInfo, Outputs, Precision
from streamfuse.errors import BackendError

log = logging.getLogger(__name__)

#: numpy dtype -> KServe v2 datatype
_V2 = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.uint8): "UINT8",
       np.dtype(np.float64): "FP64"}  # fmt: skip
_COUNTER = itertools.count()


def _local(url: str) -> bool:
    host = url.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or host.startswith("unix:")


class TritonBackend:
    name: ClassVar[str] = "triton"
    max_in_flight: ClassVar[int] = 4
    """Requests out at once (each has its own slot of the shared-memory regions)."""

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        try:
            import tritonclient.grpc  # noqa: F401
        except ImportError as exc:
            return f"tritonclient[grpc] is not importable (pip install 'streamfuse[triton]'): {exc}"
        return None

    def __init__(self, model: ModelInfo, options: BackendOptions) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        s = options.settings
        self.model = model
        self.max_batch = options.max_batch
        self.precision: Precision = "fp32"
        self.url = str(s.get("url", "127.0.0.1:8001"))
        self.model_name = str(s.get("model_name") or model.path.stem)
        self.model_version = str(s.get("model_version", ""))
        self.timeout_s = float(s.get("timeout_ms", 200.0)) / 1e3
        self.device = f"remote:{self.url}"
        self._grpc = grpcclient
        self._error = InferenceServerException
        try:
            self._client = grpcclient.InferenceServerClient(
                self.url,
                ssl=bool(s.get("ssl", False)),
                root_certificates=s.get("root_certificates"),
                private_key=s.get("private_key"),
                certificate_chain=s.get("certificate_chain"),
                # back within a second of the server's return (gRPC's default backoff grows
                # to two minutes); and no message size limit, as tritonclient's default
                channel_args=[
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    ("grpc.max_send_message_length", 2**31 - 1),
                    ("grpc.max_receive_message_length", 2**31 - 1),
                ],
            )
            meta = self._client.get_model_metadata(
                self.model_name, self.model_version, as_json=True, client_timeout=5.0
            )
        except InferenceServerException as exc:
            raise BackendError(
                self.name, f"{self.url}: model {self.model_name!r}: {_why(exc)}"
            ) from None
        self._check(meta)
        self._shm: dict[str, tuple[str, Any, int]] = {}
        self._registered = False
        """Whether the server knows our regions (a restarted one does not): until it is
        known again, inputs go inline."""
        self._registering = threading.Lock()
        self._slots = itertools.cycle(range(self.max_in_flight))
        if s.get("shared_memory", "auto") == "auto" and _local(self.url):
            self._register_shm()
        self._lock = threading.Lock()

    @classmethod
    def served_model(cls, settings: dict[str, Any]) -> ModelInfo:
        """The model as the server serves it: its contract from the model config's
        ``streamfuse.contract`` parameter (``streamfuse triton export-repo`` writes it), the
        inputs' shapes from the model metadata."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        from streamfuse.contract import METADATA_KEY, Contract
        from streamfuse.errors import ConfigError

        url, name = str(settings.get("url")), str(settings.get("model_name") or "")
        version = str(settings.get("model_version", ""))
        if not name:
            raise ConfigError("engine.triton.model_name", "name the model (contract: server)")
        client = grpcclient.InferenceServerClient(url)
        try:
            config = client.get_model_config(name, version, as_json=True, client_timeout=5.0)
            meta = client.get_model_metadata(name, version, as_json=True, client_timeout=5.0)
        except InferenceServerException as exc:
            raise BackendError(cls.name, f"{url}: model {name!r}: {_why(exc)}") from None
        finally:
            client.close()
        raw = config.get("config", {}).get("parameters", {}).get(METADATA_KEY, {})
        if "string_value" not in raw:
            raise BackendError(
                cls.name,
                f"{url}: model {name!r} has no {METADATA_KEY} parameter "
                "(streamfuse triton export-repo writes it); use contract: file",
            )
        try:
            contract = Contract.parse(json.loads(raw["string_value"]), f"{url} {name}: contract")
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{url} {name}: contract", f"not JSON: {exc}") from None
        shapes = {t["name"]: tuple(int(d) for d in t["shape"][1:]) for t in meta["inputs"]}
        return ModelInfo.served(f"triton:{url}/{name}", contract, shapes)

    def _check(self, meta: dict[str, Any]) -> None:
        """The server's tensors against the contract: names, datatypes, per-sample shapes."""
        served = {t["name"]: t for t in meta.get("inputs", [])}
        where = f"{self.url} model {self.model_name!r}"
        for name, shape in self.model.input_shapes.items():
            if name not in served:
                raise BackendError(self.name, f"{where} has no input {name!r} (has {list(served)})")
            want = _V2[self.model.input_dtype(name)]
            got = served[name]["datatype"]
            dims = [int(d) for d in served[name]["shape"]][1:]  # (after the batch axis)
            if got != want:
                raise BackendError(
                    self.name, f"{where}: input {name!r} is {got}, the contract {want}"
                )
            if len(dims) != len(shape) or any(
                g not in (-1, w) for g, w in zip(dims, shape, strict=True)
            ):
                raise BackendError(
                    self.name,
                    f"{where}: input {name!r} is [-1, {dims}], the contract [-1, {list(shape)}]",
                )
        outs = {t["name"] for t in meta.get("outputs", [])}
        missing = [n for n in self.model.outputs if n not in outs]
        if missing:
            raise BackendError(self.name, f"{where} has no output {missing} (has {sorted(outs)})")

    def _register_shm(self) -> None:
        import tritonclient.utils.shared_memory as shm

        for name, shape in self.model.input_shapes.items():
            size = int(np.prod((self.max_batch, *shape))) * self.model.input_dtype(name).itemsize
            region = f"streamfuse_{os.getpid()}_{next(_COUNTER)}_{name}"
            try:
                handle = shm.create_shared_memory_region(
                    region, f"/{region}", size * self.max_in_flight
                )
                self._shm[name] = (region, handle, size)
                self._announce(region, size)
            except Exception as exc:  # a server in a container without our /dev/shm
                log.warning("triton: inputs inline, not through shared memory: %s", exc)
                self._unregister_shm()
                return
        self._registered = True

    def _announce(self, region: str, slot_bytes: int) -> None:
        """Tell the server about one of our regions (all its slots)."""
        self._client.register_system_shared_memory(
            region, f"/{region}", slot_bytes * self.max_in_flight, client_timeout=5.0
        )

    def _register_again(self) -> None:
        """After a failure and a success (the server may be a new one that does not know our
        regions). Runs on a gRPC callback thread, never the engine's loop; one at a time."""
        if not self._registering.acquire(blocking=False):
            return
        try:
            for region, _, size in self._shm.values():
                try:
                    self._announce(region, size)
                except self._error as exc:
                    if "already" not in _why(exc):  # (the same server: still has it)
                        raise
            self._registered = True
        except Exception as exc:  # tried again after the next success
            log.debug("triton: shared memory not registered again yet: %s", exc)
        finally:
            self._registering.release()

    def _unregister_shm(self) -> None:
        import tritonclient.utils.shared_memory as shm

        for region, handle, _ in self._shm.values():
            with contextlib.suppress(Exception):  # the server is gone: nothing to tell it
                self._client.unregister_system_shared_memory(region)
            shm.destroy_shared_memory_region(handle)
        self._shm.clear()

    def _request(self, inputs: Inputs) -> list[Any]:
        import tritonclient.utils.shared_memory as shm

        out = []
        slot = next(self._slots)  # the engine has at most max_in_flight requests out
        shared = self._registered
        for name, array in inputs.items():
            inp = self._grpc.InferInput(name, list(array.shape), _V2[array.dtype])
            if shared and name in self._shm:
                region, handle, size = self._shm[name]
                at = slot * size
                shm.set_shared_memory_region(handle, [np.ascontiguousarray(array)], offset=at)
                inp.set_shared_memory(region, array.nbytes, offset=at)
            else:
                inp.set_data_from_numpy(np.ascontiguousarray(array))
            out.append(inp)
        return out

    def submit(self, inputs: Inputs) -> Future[Outputs]:
        future: Future[Outputs] = Future()
        names = list(self.model.outputs)

        def done(result: Any, error: Any) -> None:
            if error is not None:
                self._registered = False  # inline until the server answers again
                future.set_exception(BackendError(self.name, f"{self.url}: {_why(error)}"))
                return
            future.set_result({n: result.as_numpy(n) for n in names})
            if self._shm and not self._registered:
                self._register_again()  # (it answered: it may be a new server)

        with self._lock:
            try:
                self._client.async_infer(
                    self.model_name,
                    self._request(inputs),
                    done,
                    model_version=self.model_version,
                    outputs=[self._grpc.InferRequestedOutput(n) for n in names],
                    client_timeout=self.timeout_s,
                )
            except self._error as exc:
                future.set_exception(BackendError(self.name, f"{self.url}: {_why(exc)}"))
        return future

    def infer(self, inputs: Inputs) -> Outputs:
        return self.submit(inputs).result(timeout=self.timeout_s + 1.0)

    def warmup(self) -> None:
        for b in sorted({1, self.max_batch}):
            try:
                self.infer(self.model.example_inputs(b))
            except BackendError as err:
                raise BackendError(
                    self.name, f"warm-up (batch {b}) refused: {err.problem}"
                ) from None

    def close(self) -> None:
        try:
            self._unregister_shm()
            self._client.close()
        except Exception as exc:  # closing after the server went away
            log.debug("triton close: %s", exc)


def _why(exc: Any) -> str:
    """One line from an InferenceServerException (its message and status)."""
    msg = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    status = exc.status() if hasattr(exc, "status") and callable(exc.status) else None
    text = " ".join(str(msg).split())
    return f"{text} ({status})" if status and status not in text else text

"""A real Triton Inference Server for the tests: ``nvidia-pytriton``'s bundled tritonserver
serving an ONNX model through its Python backend, run by ONNX Runtime (CPU) inside the
bound function (the bundled server has no onnxruntime backend of its own).

    python -m tests.triton_server MODEL.onnx NAME GRPC_PORT HTTP_PORT METRICS_PORT

Prints ``ready`` on stdout once the model is served, then serves until killed. The inputs
and outputs it declares come from the model's graph (not from streamfuse's contract), so a
contract that disagrees with the server is a disagreement with an independent party.
"""

from __future__ import annotations

import os
import sys
import sysconfig

import numpy as np


def main() -> None:
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    # The Python backend's stub must load this interpreter's libpython, not the system's
    # (a pyenv build beside Debian's: the stub then fails on a stdlib mismatch).
    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}"

    path, name, grpc_port, http_port, metrics_port = sys.argv[1:6]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    # The model's contract in its model config, as `streamfuse triton export-repo` writes it
    # (pytriton has no setting for model config parameters: its generated config, extended).
    from pytriton.models.model import Model

    props = sess.get_modelmeta().custom_metadata_map
    generate = Model._get_triton_model_config

    def with_contract(self: Model) -> object:
        config = generate(self)
        if "streamfuse.contract" in props:
            config.backend_parameters["streamfuse.contract"] = props["streamfuse.contract"]
        return config

    Model._get_triton_model_config = with_contract  # type: ignore[method-assign]
    types = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(float16)": np.float16}

    def tensors(values: list) -> list[Tensor]:  # type: ignore[type-arg]
        return [Tensor(name=v.name, dtype=types[v.type], shape=tuple(v.shape[1:])) for v in values]

    outputs = [o.name for o in sess.get_outputs()]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(outputs, sess.run(outputs, inputs), strict=True))

    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=int(grpc_port),
        http_address="127.0.0.1",
        http_port=int(http_port),
        metrics_port=int(metrics_port),
    )
    # pytriton restricts the shared-memory protocol by default (tritonserver does not)
    security = TritonSecurityConfig(restricted_endpoints=["model-repository", "trace", "logging"])
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=name,
            infer_func=infer,
            inputs=tensors(sess.get_inputs()),
            outputs=tensors(sess.get_outputs()),
            config=ModelConfig(
                max_batch_size=8, batcher=DynamicBatcher(max_queue_delay_microseconds=500)
            ),
            strict=True,
        )
        triton.run()
        print("ready", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()

"""torch: eager on CPU; on CUDA, fp16 autocast, one CUDA graph per batch size, pinned buffers.

Loads the checkpoint that sits beside the ONNX file (``model.onnx`` -> ``model.pt``; the
shipped ``av_digits.onnx`` -> ``av_digits.pt``), builds the same network, and checks the
checkpoint's configuration against the ONNX model's contract.

CUDA path: every batch size in 1, 2, 4, ... max_batch gets static device buffers and a
captured CUDA graph; a batch of n replays the smallest graph >= n with the rest zero-filled.
Host<->device copies go through pinned buffers on the backend's own stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from streamfuse.backend import (
    BackendOptions,
    Inputs,
    ModelInfo,
    Outputs,
    Precision,
    no_nvidia_gpu,
)
from streamfuse.errors import BackendError, ConfigError


def graph_batches(max_batch: int) -> list[int]:
    """Batch sizes that get a CUDA graph: powers of two below ``max_batch``, and it."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


class TorchBackend:
    name: ClassVar[str] = "torch"

    @classmethod
    def unavailable(cls, device: str) -> str | None:
        if device.startswith("cuda") and (no_gpu := no_nvidia_gpu()) is not None:
            return no_gpu  # without importing torch (a second on a small box)
        try:
            import torch
        except ImportError as exc:
            return f"torch is not importable: {exc}"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                return f"torch {torch.__version__} sees no CUDA GPU"
        elif device != "cpu":
            return f"unknown device {device!r} (cpu or cuda)"
        return None

    def __init__(self, model: ModelInfo, options: BackendOptions) -> None:
        import torch
        from streamfuse_plugins.models.fusion import Exportable
        from streamfuse_plugins.models.train import load_checkpoint

        self.model = model
        self.device = options.device
        self.max_batch = options.max_batch
        cuda = self.device.startswith("cuda")
        default: Precision = "fp16" if cuda else "fp32"
        self.precision: Precision = options.precision or default
        if self.precision == "int8" or (self.precision == "fp16" and not cuda):
            raise BackendError(self.name, f"{self.precision} is not offered on {self.device}")
        ckpt = Path(model.path).with_suffix(".pt")
        if not ckpt.is_file():
            raise BackendError(
                self.name, f"needs the checkpoint {ckpt} beside {model.path} (train writes both)"
            )
        try:
            net, _, _ = load_checkpoint(ckpt)
        except ConfigError as err:
            raise BackendError(self.name, str(err)) from None
        if model.image is None or model.audio is None:
            raise BackendError(self.name, "runs streamfuse-trained image+audio models only")
        self._names = (model.image.input, model.audio.input)
        stored = model.metadata.get("config")
        if isinstance(stored, dict) and stored != net.cfg.to_dict():
            raise BackendError(
                self.name, f"{ckpt} is a different architecture from {model.path}'s contract"
            )
        if options.threads:
            torch.set_num_threads(options.threads)
        self._torch = torch
        self._dev = torch.device(self.device)
        self._net = Exportable(net).eval().to(self._dev)
        self._graphs: dict[int, Any] = {}
        self._use_graphs = cuda and options.cuda_graphs
        self._stream = torch.cuda.Stream(self._dev) if cuda else None

    def _forward(self, image: Any, audio: Any) -> tuple[Any, ...]:
        torch = self._torch
        with torch.inference_mode():
            if self.precision == "fp16":
                with torch.autocast("cuda", dtype=torch.float16):
                    out = self._net(image, audio)
                return tuple(o.float() for o in out)
            return tuple(self._net(image, audio))

    def warmup(self) -> None:
        if self._use_graphs:
            for b in graph_batches(self.max_batch):
                self._capture(b)
        for b in sorted({1, self.max_batch}):
            self.infer(self.model.example_inputs(b))

    def _capture(self, batch: int) -> None:
        """Static buffers + a CUDA graph for one batch size (warm-up runs on a side stream)."""
        torch = self._torch
        image_shape, audio_shape = (self.model.input_shapes[n] for n in self._names)
        image = torch.zeros((batch, *image_shape), device=self._dev)
        audio = torch.zeros((batch, *audio_shape), device=self._dev)
        assert self._stream is not None
        self._stream.wait_stream(torch.cuda.current_stream(self._dev))
        with torch.cuda.stream(self._stream):
            for _ in range(3):
                self._forward(image, audio)
        torch.cuda.current_stream(self._dev).wait_stream(self._stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            outputs = self._forward(image, audio)
        pinned = {
            "image": torch.zeros((batch, *image_shape), pin_memory=True),
            "audio": torch.zeros((batch, *audio_shape), pin_memory=True),
            "out": [torch.zeros(o.shape, pin_memory=True) for o in outputs],
        }
        self._graphs[batch] = (graph, image, audio, outputs, pinned)

    def infer(self, inputs: Inputs) -> Outputs:
        torch = self._torch
        image, audio = (inputs[n] for n in self._names)
        n = image.shape[0]
        if n > self.max_batch:
            raise BackendError(self.name, f"batch {n} > max_batch {self.max_batch}")
        if not self._use_graphs:
            ti = torch.from_numpy(np.ascontiguousarray(image)).to(self._dev)
            ta = torch.from_numpy(np.ascontiguousarray(audio)).to(self._dev)
            out = self._forward(ti, ta)
            return {k: o.cpu().numpy() for k, o in zip(self.model.outputs, out, strict=True)}
        size = next(b for b in sorted(self._graphs) if b >= n)
        graph, s_image, s_audio, s_out, pinned = self._graphs[size]
        pinned["image"].numpy()[:n] = image
        pinned["image"].numpy()[n:] = 0
        pinned["audio"].numpy()[:n] = audio
        pinned["audio"].numpy()[n:] = 0
        assert self._stream is not None
        with torch.cuda.stream(self._stream):
            s_image.copy_(pinned["image"], non_blocking=True)
            s_audio.copy_(pinned["audio"], non_blocking=True)
            graph.replay()
            for host, dev in zip(pinned["out"], s_out, strict=True):
                host.copy_(dev, non_blocking=True)
        self._stream.synchronize()
        return {
            k: host.numpy()[:n].copy()
            for k, host in zip(self.model.outputs, pinned["out"], strict=True)
        }

    def close(self) -> None:
        self._graphs.clear()

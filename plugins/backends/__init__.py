"""Inference backends: ONNX Runtime, torch (CPU/CUDA), TensorRT. See streamfuse.backend."""

"""Execution backends: ONNX Runtime (CPU/CUDA/TensorRT provider) and native TensorRT."""

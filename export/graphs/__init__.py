"""ONNX graphs: specs, export, graph passes, the package writer and verification."""

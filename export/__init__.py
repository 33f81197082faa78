"""PyTorch reference model, checkpoint IO, ONNX export and engine building."""

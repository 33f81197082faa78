"""TensorRT: the ONNX support table, lint-trt, engine building and the plan command."""

"""INT4: block-wise weights, AWQ, quantized embedding and head, TensorRT twins, search."""

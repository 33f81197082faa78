"""INT8: Q/DQ quantization of the graphs, INT8 cross K/V, fp16 twins, budget search."""

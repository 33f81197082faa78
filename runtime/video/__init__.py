"""Video in: decoding, live rolling windows, and saved video states."""

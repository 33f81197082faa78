"""Calibration: choosing videos, running the FP32 runtime on them, streaming statistics."""

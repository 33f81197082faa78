"""Calibration data, INT8 quantization and accuracy drift reports."""

"""Torch-free inference: video decoding, prompts, backends and generation."""

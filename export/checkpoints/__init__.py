"""Checkpoint folders: safetensors IO, compose, random checkpoints of real shapes."""

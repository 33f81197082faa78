"""Drift: what quantization changed, stage by stage and answer by answer, and its report."""

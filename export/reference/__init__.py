"""The PyTorch reference CrossLMM: SigLIP, pooling, projector, Qwen2.5 with DCAL."""

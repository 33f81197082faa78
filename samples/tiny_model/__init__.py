"""Helpers of ``samples/train_tiny_model.py``: tokenizer, data, training loop."""

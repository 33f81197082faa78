"""crosslmm-edge: take a CrossLMM video model from a checkpoint to a device.

Subpackages: ``crosslmm_edge.export`` (PyTorch reference, checkpoints, ONNX),
``crosslmm_edge.calibration`` (INT8), ``crosslmm_edge.runtime`` (torch-free
inference).
"""

__version__ = "0.2.0"

"""Quantization: int8 inference modules running on pyslim's native int8 kernels.

``pyslim.quant.nn.Int8Linear`` and ``Int8Conv2d`` convert float modules (``from_float``) into modules whose
forward runs the native int8 GEMM / convolution. The QAT / PTQ strategies build on them.
"""

from pyslim.quant import nn

__all__ = ["nn"]

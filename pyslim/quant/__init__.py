"""Quantization: QAT, PACT, PTQ-static, PTQ-dynamic, embedding quantization, conversion to int8 modules
running on pyslim's native kernels, and ONNX (QDQ) export.

Example::

    >>> import pyslim.quant as Q
    >>> quanter = Q.QAT()                              # PaddleSlim's defaults
    >>> model = quanter.quantize(model)                # fake-quant layers, train as usual
    >>> int8_model = quanter.convert(model)            # Int8Conv2d / Int8Linear on the native kernels
    >>> int8 = Q.quant_post_dynamic(float_model)       # weights int8, activations quantized per call
"""

from pyslim.quant import nn
from pyslim.quant.dynamic import (
    WeightOnlyInt16Conv2d,
    WeightOnlyInt16Linear,
    quant_post_dynamic,
    quant_post_only_weight,
)
from pyslim.quant.embedding import QuantizedEmbedding, quant_embedding
from pyslim.quant.observers import (
    AbsMaxObserver,
    AvgObserver,
    EMDObserver,
    HistObserver,
    KLObserver,
    MSEObserver,
    make_observer,
)
from pyslim.quant.onnx_export import export_onnx
from pyslim.quant.ptq import load_quantized_model, ptq_sensitivity, quant_post_static, save_quantized_model
from pyslim.quant.qat import DEFAULT_QAT_CONFIG, QAT, QuantedConv2d, QuantedLinear, fuse_conv_bn
from pyslim.quant.quanters import (
    PACT,
    FakeQuantAbsMax,
    FakeQuantChannelWiseAbsMax,
    FakeQuantMovingAverageAbsMax,
    pact_param_groups,
)

__all__ = [
    "AbsMaxObserver",
    "AvgObserver",
    "EMDObserver",
    "HistObserver",
    "KLObserver",
    "MSEObserver",
    "load_quantized_model",
    "make_observer",
    "ptq_sensitivity",
    "quant_post_static",
    "save_quantized_model",
    "DEFAULT_QAT_CONFIG",
    "FakeQuantAbsMax",
    "FakeQuantChannelWiseAbsMax",
    "FakeQuantMovingAverageAbsMax",
    "PACT",
    "QAT",
    "QuantedConv2d",
    "QuantedLinear",
    "QuantizedEmbedding",
    "WeightOnlyInt16Conv2d",
    "WeightOnlyInt16Linear",
    "export_onnx",
    "fuse_conv_bn",
    "nn",
    "pact_param_groups",
    "quant_embedding",
    "quant_post_dynamic",
    "quant_post_only_weight",
]

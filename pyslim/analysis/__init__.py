"""Model analysis: FLOPs (MACs, PaddleSlim's counting rules) and model size.

    >>> from pyslim.analysis import flops, model_size
    >>> flops(model, torch.randn(1, 3, 224, 224)), model_size(model).parameters
"""

from pyslim.analysis.flops import ModelSize, flops, model_size

__all__ = ["flops", "model_size", "ModelSize"]

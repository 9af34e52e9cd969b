"""ONNX export of int8 models (QDQ format): int8 weight initializers with per-channel DequantizeLinear, and
QuantizeLinear -> DequantizeLinear in front of every quantized layer's input.

How: a float twin of the model is built in which each :class:`pyslim.quant.nn.Int8Linear` /
:class:`~pyslim.quant.nn.Int8Conv2d` becomes a plain Linear / Conv2d (same qualified name) holding the
dequantized weights and fake-quantizing its input with ``torch.fake_quantize_per_tensor_affine`` (int8,
[-128, 127]); the TorchScript exporter turns that into QuantizeLinear/DequantizeLinear and names weight
initializers after the parameters. The graph is then rewritten with the ``onnx`` helper API: each quantized
layer's weight initializer becomes an int8 initializer plus a per-output-channel (axis 0) DequantizeLinear
whose output carries the old name, so every consumer (Conv, Gemm, a Transpose before MatMul) is untouched.
Why not export fake-quant ops directly: ``torch.fake_quantize_per_channel_affine`` with PaddleSlim's range
[-127, 127] does not export, and the dynamo exporter does not handle fake-quant ops.

Dynamic-activation layers (from ``abs_max`` activations) export a per-tensor QuantizeLinear whose scale and
zero point are computed in the graph from each input, the same formula as the int8 modules use per tensor
(an ``Int8Linear`` with the default per-row dynamic activations is approximated per tensor).

Example::

    >>> import torch
    >>> from pyslim.quant import nn as qnn
    >>> from pyslim.quant.onnx_export import export_onnx
    >>> model = torch.nn.Sequential(qnn.Int8Linear.from_float(torch.nn.Linear(8, 4), activation=(0.02, 0)))
    >>> export_onnx(model, torch.randn(2, 8), "/tmp/model.onnx")
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Dict, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyslim.quant import nn as qnn

__all__ = ["export_onnx"]

_OPSET = 13  # per-channel DequantizeLinear (axis) needs 13


def _fake_quant_input(x: Tensor, layer: nn.Module) -> Tensor:
    if not layer.dynamic:
        return torch.fake_quantize_per_tensor_affine(x, layer.act_scale_value, layer.act_zero_point_value, -128, 127)
    if layer.dynamic_symmetric:
        # symmetric per tensor: scale = max|x| / 127, zero point 0
        scale = torch.clamp(x.abs().max() / 127.0, min=1e-12).reshape(1)
        zero_point = torch.zeros(1, dtype=torch.int32)
    else:
        # asymmetric per tensor over [min(x, 0), max(x, 0)], 256 levels, int8 zero point
        lo = torch.clamp(x.min(), max=0.0)
        hi = torch.clamp(x.max(), min=0.0)
        scale = torch.where(hi > lo, (hi - lo) / 255.0, torch.ones_like(hi)).reshape(1)
        zero_point = torch.clamp(-128 - torch.round(lo / scale), -128, 127).to(torch.int32).reshape(1)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -128, 127)


class _TwinLinear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(_fake_quant_input(x, self), self.weight, self.bias)


class _TwinConv2d(nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(_fake_quant_input(x, self), self.weight, self.bias)


def _dequantized_weight(layer: nn.Module) -> Tensor:
    w = layer.weight_int8.to(torch.float32)
    return w * layer.weight_scale.reshape(-1, *([1] * (w.dim() - 1)))


def _twin_layer(layer: nn.Module) -> nn.Module:
    bias = layer.bias is not None
    if isinstance(layer, qnn.Int8Linear):
        twin = _TwinLinear(layer.in_features, layer.out_features, bias=bias)
        twin.dynamic_symmetric = bool(layer.symmetric)
    else:
        twin = _TwinConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                           layer.dilation, layer.groups, bias=bias)
        twin.dynamic_symmetric = False
    with torch.no_grad():
        twin.weight.copy_(_dequantized_weight(layer))
        if bias:
            twin.bias.copy_(layer.bias)
    twin.dynamic = bool(layer.dynamic)
    twin.act_scale_value = float(layer.act_scale)
    twin.act_zero_point_value = int(layer.act_zero_point)
    return twin.eval()


def _float_twin(int8_model: nn.Module) -> Tuple[nn.Module, Dict[str, nn.Module]]:
    twin = copy.deepcopy(int8_model).cpu().eval()
    layers = {name: m for name, m in twin.named_modules() if isinstance(m, (qnn.Int8Linear, qnn.Int8Conv2d))}
    if not layers:
        raise ValueError("int8_model has no Int8Linear / Int8Conv2d layers: convert the model first "
                         "(QAT.convert or pyslim.quant.nn.*.from_float)")
    originals = {name: int8_model.get_submodule(name) for name in layers}
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent_name), child, _twin_layer(layer))
    return twin, originals


def _rewrite_weights(model_proto, originals: Dict[str, nn.Module]) -> None:
    import onnx
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    by_name = {init.name: init for init in graph.initializer}
    dq_nodes = []
    for name, layer in originals.items():
        weight_name = f"{name}.weight"
        init = by_name.get(weight_name)
        if init is None:
            raise RuntimeError(f"the exported graph has no initializer {weight_name!r} for layer {name!r}; "
                               f"initializers: {sorted(by_name)[:20]}")
        graph.initializer.remove(init)
        q = layer.weight_int8.detach().cpu().numpy()
        scale = layer.weight_scale.detach().cpu().to(torch.float32).numpy()
        graph.initializer.extend([
            numpy_helper.from_array(q, f"{weight_name}_quantized"),
            numpy_helper.from_array(scale, f"{weight_name}_scale"),
            numpy_helper.from_array(np.zeros(q.shape[0], dtype=np.int8), f"{weight_name}_zero_point"),
        ])
        # The DequantizeLinear output takes the old initializer's name: consumers need no change.
        dq_nodes.append(helper.make_node("DequantizeLinear",
                                         [f"{weight_name}_quantized", f"{weight_name}_scale",
                                          f"{weight_name}_zero_point"],
                                         [weight_name], name=f"{name}/weight/DequantizeLinear", axis=0))
    for i, node in enumerate(dq_nodes):
        graph.node.insert(i, node)
    onnx.checker.check_model(model_proto, full_check=True)


def export_onnx(int8_model: nn.Module, example_inputs: Union[Tensor, Tuple[Tensor, ...]], path: str,
                opset_version: int = _OPSET) -> None:
    """Writes ``int8_model`` (with :class:`pyslim.quant.nn.Int8Linear` / ``Int8Conv2d`` layers) to ``path`` as an
    ONNX QDQ model: int8 weight initializers with per-output-channel DequantizeLinear, and each quantized
    layer's input activation through QuantizeLinear -> DequantizeLinear with its int8 (scale, zero point).
    The batch dimension of every input is dynamic. Validated with ``onnx.checker`` (full check). Example
    (``quanter`` a :class:`pyslim.quant.qat.QAT`, ``model`` QAT-trained)::

        export_onnx(quanter.convert(model), torch.randn(1, 1, 28, 28), "mnist_int8.onnx")
    """
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("export_onnx needs the package 'onnx': pip install onnx") from exc
    if not isinstance(int8_model, nn.Module):
        raise TypeError(f"int8_model must be a torch.nn.Module; got {type(int8_model).__name__}")
    if isinstance(int8_model, (qnn.Int8Linear, qnn.Int8Conv2d)):
        raise ValueError("int8_model is a single int8 layer: wrap it in an nn.Sequential")
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, tuple) or not all(isinstance(t, Tensor) for t in example_inputs):
        raise TypeError("example_inputs must be a tensor or a tuple of tensors")
    if isinstance(opset_version, bool) or not isinstance(opset_version, int) or opset_version < _OPSET:
        raise ValueError(f"opset_version must be an int >= {_OPSET} (per-channel DequantizeLinear); "
                         f"got {opset_version!r}")
    twin, originals = _float_twin(int8_model)
    example_inputs = tuple(t.detach().cpu() for t in example_inputs)
    input_names = ["input"] if len(example_inputs) == 1 else [f"input_{i}" for i in range(len(example_inputs))]
    dynamic_axes = {n: {0: "batch"} for n in input_names}
    dynamic_axes["output"] = {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript exporter is legacy; it is used on purpose (see the module doc).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*will be removed.*", category=DeprecationWarning)
        torch.onnx.export(twin, example_inputs, buffer, dynamo=False, do_constant_folding=False,
                          opset_version=opset_version, input_names=input_names, output_names=["output"],
                          dynamic_axes=dynamic_axes)
    model_proto = onnx.load_from_string(buffer.getvalue())
    _rewrite_weights(model_proto, originals)
    onnx.save(model_proto, path)

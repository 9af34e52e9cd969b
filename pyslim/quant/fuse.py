"""Finding conv -> batch-norm -> activation chains in any model's data flow, for inference-time fusion.

``quant_post_static(optimize_model=True)`` (PaddleSlim's option of that name) uses it to fold every
``BatchNorm2d`` into the convolution that feeds it before calibration, and to run the ``ReLU`` / ``ReLU6`` that
follows a quantized layer inside the int8 kernel's epilogue instead of as a separate pass. Unlike
``pyslim.quant.fuse_conv_bn`` (``nn.Sequential`` neighbours only), the chains are read from a ``torch.fx`` trace,
so custom ``forward`` methods (EfficientNet's MBConv blocks, ResNet blocks) are covered; a model that fx
cannot trace is left unfused (logged).

After conversion, ``find_int8_chains`` finds the int8 layers whose output feeds exactly one other int8 layer, so
that the first can hand on int8 (quantized in its epilogue with the second's scale) instead of float32.

A link is fused only where that changes nothing else: the convolution's output feeds the batch norm alone,
the batch-norm module is called exactly once, and an activation module is replaced only when *every* call of
it (a block may call one ``ReLU6`` module twice) directly follows a fused layer whose output feeds nothing
else.

Example::

    >>> import torch
    >>> from pyslim.quant.fuse import find_fusions
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU6()).eval()
    >>> plan = find_fusions(m)
    >>> plan.conv_bn, plan.activation
    ([('0', '1')], {'0': ('relu6', '2')})
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import fx, nn

from pyslim.quant.qat import _fold_bn_into_conv

__all__ = ["FusionPlan", "find_fusions", "fold_batch_norms", "find_int8_chains", "find_activation_fusions_by_run"]

logger = logging.getLogger("pyslim.quant.fuse")

_LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.GELU)


@dataclass
class FusionPlan:
    """conv_bn: (conv, batch norm) module names to fold. activation: {layer name: (kind, activation module name)}
    with kind 'relu', 'relu6' or 'gelu'; the activation module may be replaced by an identity once every layer that
    names it runs the activation itself."""

    conv_bn: List[Tuple[str, str]] = field(default_factory=list)
    activation: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    traced: bool = False


class _Tracer(fx.Tracer):
    # The given module types (subclasses with their own forward included) stay single call_module nodes, so
    # their names can be matched against the model's modules.
    def __init__(self, leaves: tuple):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, module_qualified_name)


def _activation_kind(m: nn.Module) -> Optional[str]:
    """'relu', 'relu6' or 'gelu' for an activation module the int8 epilogue can run, else None: nn.ReLU, nn.ReLU6,
    nn.Hardtanh(0, 6), the exact nn.GELU(approximate='none') and activation wrappers whose ``act`` is
    torch.nn.functional.gelu (transformers' GELUActivation)."""
    if type(m) is nn.ReLU:
        return "relu"
    if type(m) is nn.ReLU6:
        return "relu6"
    if type(m) is nn.Hardtanh and float(m.min_val) == 0.0 and float(m.max_val) == 6.0:
        return "relu6"
    if type(m) is nn.GELU and m.approximate == "none":
        return "gelu"
    if getattr(m, "act", None) is torch.nn.functional.gelu and not list(m.children()) and not list(m.parameters()):
        return "gelu"
    return None


def find_fusions(model: nn.Module, layer_names: Optional[set] = None) -> FusionPlan:
    """The fusable chains of ``model`` (see the module docstring). ``layer_names``, if given, limits the layers
    (convs / linears, by qualified name) that may take a batch norm or an activation."""
    plan = FusionPlan()
    try:
        graph = _Tracer(_LEAVES).trace(model)
    except Exception as exc:  # fx cannot trace every model (data-dependent control flow, ...)
        logger.warning("optimize_model: torch.fx could not trace %s (%s: %s); no layer fusion",
                       type(model).__name__, type(exc).__name__, exc)
        return plan
    plan.traced = True
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")

    def module_of(node: fx.Node) -> Optional[nn.Module]:
        return modules.get(node.target) if node.op == "call_module" else None

    def only_user(node: fx.Node) -> Optional[fx.Node]:
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    # layer name -> the node whose output is the layer's (after a folded batch norm)
    ends: Dict[str, fx.Node] = {}
    for node in graph.nodes:
        layer = module_of(node)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or calls[node.target] != 1:
            continue
        if layer_names is not None and node.target not in layer_names:
            continue
        end = node
        user = only_user(node)
        bn = module_of(user) if user is not None else None
        if (isinstance(layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and calls[user.target] == 1
                and bn.track_running_stats and bn.running_mean is not None and bn.num_features == layer.out_channels
                and len(user.args) == 1 and not user.kwargs):
            plan.conv_bn.append((node.target, user.target))
            end = user
        ends[node.target] = end

    candidates: Dict[str, List[Tuple[str, str]]] = {}  # activation module -> [(layer, kind)]
    for name, end in ends.items():
        user = only_user(end)
        act = module_of(user) if user is not None else None
        kind = _activation_kind(act) if act is not None else None
        if kind is not None and len(user.args) == 1 and not user.kwargs:
            candidates.setdefault(user.target, []).append((name, kind))
    for act_name, layers in candidates.items():
        if len(layers) == calls[act_name]:  # every call of this activation module follows a fused layer
            for layer, kind in layers:
                plan.activation[layer] = (kind, act_name)
    return plan


def fold_batch_norms(model: nn.Module) -> FusionPlan:
    """``find_fusions(model)``, then, in place, each planned ``BatchNorm2d`` folded into its convolution (exact
    per output channel, as ``pyslim.quant.fuse_conv_bn``) with an ``nn.Identity`` put in its place. Returns the
    plan; its activations are left for the caller to fuse."""
    plan = find_fusions(model)
    for conv_name, bn_name in plan.conv_bn:
        _fold_bn_into_conv(model.get_submodule(conv_name), model.get_submodule(bn_name))
        parent, _, leaf = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    return plan


def find_int8_chains(model: nn.Module) -> List[Tuple[str, str]]:
    """(producer, consumer) pairs of int8 layers (``Int8Conv2d``, ``PaddedInt8Conv2d``, ``Int8Linear``) in a
    converted model where the producer's output reaches only the consumer (through ``nn.Identity`` modules at
    most — the batch norms and activations ``optimize_model`` folded away) and the consumer has a static
    activation scale: the producer can then hand on its output already quantized with the consumer's scale
    (``set_output_quant``), skipping a float tensor and a quantization pass. Each layer must be called once."""
    from pyslim.quant.nn import Int8Conv2d, Int8Linear
    from pyslim.quant.ptq import PaddedInt8Conv2d

    int8_types = (Int8Conv2d, Int8Linear, PaddedInt8Conv2d)

    try:
        graph = _Tracer(int8_types + (nn.Identity,)).trace(model)
    except Exception as exc:
        logger.warning("optimize_model: torch.fx could not trace the int8 %s (%s: %s); layers exchange float32",
                       type(model).__name__, type(exc).__name__, exc)
        return []
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")

    def inner(m: nn.Module) -> nn.Module:
        return m.conv if isinstance(m, PaddedInt8Conv2d) else m

    pairs = []
    for node in graph.nodes:
        producer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(producer, int8_types) or calls[node.target] != 1:
            continue
        cur = node
        while True:
            users = list(cur.users)
            if len(users) != 1 or users[0].op != "call_module" or len(users[0].args) != 1 or users[0].kwargs:
                cur = None
                break
            cur = users[0]
            if not isinstance(modules.get(cur.target), nn.Identity):
                break
        consumer = modules.get(cur.target) if cur is not None else None
        if (isinstance(consumer, int8_types) and calls[cur.target] == 1 and not inner(consumer).dynamic
                and not (isinstance(inner(producer), Int8Linear) and inner(producer).dynamic)):
            pairs.append((node.target, cur.target))
    return pairs


def find_activation_fusions_by_run(model: nn.Module, example_inputs, layer_types=(nn.Linear, nn.Conv2d),
                                   layer_names: Optional[set] = None) -> Dict[str, Tuple[str, str]]:
    """{layer name: (kind, activation module name)} for the layers whose output goes to an activation module
    (ReLU, ReLU6, exact GELU) and nowhere else, found by running ``model`` once on ``example_inputs`` (a tensor,
    a tuple of positional inputs or a dict of keyword inputs) and watching every torch function call: a layer's
    output tensor must appear in exactly one call, the activation's. Works on models fx cannot trace (Hugging
    Face transformers). As with find_fusions, an activation module qualifies only if every call of it does."""
    from torch.overrides import TorchFunctionMode

    outputs: Dict[int, Tuple[str, torch.Tensor]] = {}   # id(output) -> (layer, output kept alive)
    uses: Counter = Counter()                            # id(output) -> torch-function calls that take it
    layer_calls: Counter = Counter()
    act_inputs: Dict[str, List[int]] = {}                # activation module -> ids of its inputs, per call
    modules = dict(model.named_modules())

    def walk(obj, seen):
        if isinstance(obj, torch.Tensor):
            if id(obj) in outputs:
                seen.add(id(obj))
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                walk(o, seen)
        elif isinstance(obj, dict):
            for o in obj.values():
                walk(o, seen)

    class _Uses(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen: set = set()
            walk(args, seen)
            walk(kwargs or {}, seen)
            for i in seen:
                uses[i] += 1
            return func(*args, **(kwargs or {}))

    handles = []
    for name, m in modules.items():
        if isinstance(m, layer_types) and (layer_names is None or name in layer_names):
            def after(mod, args, out, name=name):
                layer_calls[name] += 1
                if isinstance(out, torch.Tensor):
                    outputs[id(out)] = (name, out)
            handles.append(m.register_forward_hook(after))
        elif _activation_kind(m) is not None:
            def before(mod, args, name=name):
                act_inputs.setdefault(name, []).append(id(args[0]) if len(args) == 1 else -1)
            handles.append(m.register_forward_pre_hook(before))
    try:
        with torch.no_grad(), _Uses():
            if isinstance(example_inputs, dict):
                model(**example_inputs)
            elif isinstance(example_inputs, tuple):
                model(*example_inputs)
            else:
                model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    plan: Dict[str, Tuple[str, str]] = {}
    for act_name, inputs in act_inputs.items():
        layers = []
        for i in inputs:
            entry = outputs.get(i)
            if entry is None or uses[i] != 1 or layer_calls[entry[0]] != 1:
                layers = None
                break
            layers.append(entry[0])
        if layers and len(set(layers)) == len(layers):
            kind = _activation_kind(modules[act_name])
            for layer in layers:
                plan[layer] = (kind, act_name)
    return plan

"""Channel-dependency graph of a PyTorch model: which parameter slices must be pruned together.

The graph is read from the model itself. ``torch.fx.symbolic_trace`` runs first, with a tracer that keeps
every convolution / linear / normalisation module (and subclasses of them, e.g. a "same-padding" Conv2d)
as a leaf; when fx cannot trace the model (data-dependent Python control flow on proxies, keyword-only
inputs, ...), ``torch.export`` (non-strict) is tried; when both fail, :class:`TracingError` names both
causes and the model is left untouched.

Coupling follows PaddleSlim's prune walker and Torch-Pruning's DependencyGraph. Starting from the output
channels of one *root* layer (conv / transposed conv / linear), channel ownership is propagated forward
and backward through the traced graph:

* conv -> BatchNorm / activation / pooling / padding / dropout -> next conv's input channels (axis 1);
* element-wise add / sub / mul / div couple all their (non-broadcast) inputs: both branches of a residual
  block are pruned with the *same* indices;
* ``cat`` along the channel axis shifts indices by each input's offset; ``split`` / ``chunk`` along
  another axis pass through; along the channel axis each piece is the window [offset, offset + size) of
  the input (``Group.splits``): ``chunk`` and equal ``split(int)`` must lose the same number per piece
  (``Group.partition``), literal split sizes are rewritten in the model's fx graph (blocked when the
  model is not an ``fx.GraphModule``);
* grouped convs (1 < groups < in_channels) keep ``groups``: every group loses the same number of input
  (or output) channels, chosen per group by the criterion, ``round(per_group * ratio)`` each;
* depthwise convs (``groups == in_channels``) follow their producer: their output channels, filters,
  bias and ``groups`` shrink with the input;
* ``ConvTranspose`` weights are laid out ``(in, out/groups, kh, kw)``: reached through its input the
  rows (axis 0) are pruned, as a root its columns (axis 1);
* ``flatten`` / ``view`` / ``reshape`` -> Linear: each channel becomes a block of ``H*W`` input columns;
* Linear -> Linear, LayerNorm over the last axis, BatchNorm1d;
* per-channel parameters used directly in arithmetic (``x * self.gamma``) are pruned with the channel.

A group is **blocked** (reported, never applied) when the channels reach something whose channel
semantics pyslim does not know: the model output or input, an unknown operation or module, GroupNorm,
an uneven ``chunk``, ``tensor_split``/``unbind``/indexing along the channel axis, a
``view``/``reshape`` with a hard-coded channel size, a softmax over channels, matmul. Pruning such a
group would silently produce a broken or different model, so pyslim refuses it and says why.

BERT-style transformers (HF ``BertModel`` and relatives: a self-attention module with ``query``/``key``/
``value`` Linears and ``num_attention_heads``/``attention_head_size``) get dedicated groups that do not
need tracing: whole attention heads (q/k/v rows and the output projection's columns in head-sized blocks)
and FFN neurons (intermediate rows and output columns).

Example::

    >>> graph = DependencyGraph(model, torch.randn(1, 3, 224, 224))
    >>> group = graph.group("layer1.0.conv1.weight")
    >>> [(m.name, m.axis) for m in group.members]        # every coupled slice
    >>> group.blocked                                      # None, or why it cannot be pruned
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn

__all__ = ["DependencyGraph", "Group", "GroupMember", "SplitSite", "TracingError", "normalize_inputs"]

logger = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.modules.batchnorm._BatchNorm,)
_LEAF_TYPES = _CONV + _CONV_T + (nn.Linear, nn.LayerNorm, nn.GroupNorm, nn.Embedding) + _BN

_PASSTHROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
    nn.ReplicationPad2d, nn.ReplicationPad3d,
)
_POOL_WITH_INDICES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                      nn.AdaptiveMaxPool3d)

# Canonical op names (fx functions, Tensor methods and aten overloads all reduce to these).
_UNARY = {
    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "elu",
    "selu", "celu", "mish", "softplus", "hardtanh", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "feature_dropout", "identity", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "max_pool1d",
    "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d", "interpolate",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d",
    "upsample_linear1d", "upsample_bicubic2d", "upsample_trilinear3d", "contiguous", "clone", "float",
    "half", "double", "bfloat16", "to", "type_as", "abs", "neg", "exp", "clamp", "clip", "clamp_min",
    "clamp_max", "square", "sqrt", "rsqrt", "detach", "sign", "alias", "lift_fresh_copy", "_to_copy",
}
_BINARY = {"add", "sub", "mul", "div", "truediv", "floordiv", "iadd", "isub", "imul", "itruediv", "rsub",
           "radd", "rmul", "maximum", "minimum", "true_divide", "multiply", "subtract", "pow"}
_RESHAPE = {"flatten", "view", "reshape", "_unsafe_view", "unsqueeze", "squeeze"}
_RESHAPE_LITERAL = {"view", "reshape", "_unsafe_view"}
_REDUCE = {"mean", "sum", "amax", "amin"}
_SPLIT = {"split", "chunk", "split_with_sizes", "tensor_split", "unbind"}
_IGNORE = {"size", "dim", "numel", "sym_size", "sym_numel", "sym_stride", "_assert_tensor_metadata",
           "_assert_scalar", "sym_constrain_range_for_size", "getattr"}


class TracingError(RuntimeError):
    """The model could not be traced by torch.fx nor torch.export; the message names both causes."""


@dataclass
class GroupMember:
    """One tensor slice in a coupled group: ``tensor.index_select(axis, ...)`` of ``module.<tensor_name>``.

    ``owner[i]`` is the root channel that position ``i`` along ``axis`` belongs to, or -1 when the position
    is not part of this group (the other inputs of a concat, for instance)."""

    module_name: str
    tensor_name: str
    axis: int
    owner: torch.Tensor
    module: nn.Module = field(repr=False, compare=False)
    groups: int = 1   # > 1: axis 1 of a grouped conv weight, ``owner`` spans all in_channels (groups * axis size)

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self.tensor_name}" if self.module_name else self.tensor_name

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.tensor_name)


@dataclass
class SplitSite:
    """A ``split`` / ``chunk`` along the pruned axis: ``owner`` maps the split input's positions (along
    ``dim``) to root channels (-1: not this group's); ``sizes`` are the original piece sizes. ``kind`` is
    "chunk" (chunk count kept, pieces must stay equal), "int" (equal pieces of a literal size: the size is
    rewritten) or "sizes" (a literal size list: rewritten); ``rewrite`` says whether the model's fx graph
    must be edited."""

    node_name: str
    kind: str
    dim: int
    sizes: List[int]
    owner: torch.Tensor
    rewrite: bool

    def new_sizes(self, keep: torch.Tensor) -> List[int]:
        out, offset = [], 0
        for size in self.sizes:
            out.append(int(keep[offset:offset + size].sum()))
            offset += size
        return out


@dataclass
class Group:
    """A set of tensor slices that must lose the same channels.

    ``root`` is the parameter whose output channels define the ``num_channels`` root channels; ``members``
    holds every coupled slice (the root itself first); ``blocked`` is None or the reason why the group must
    not be pruned; ``bn_after_root`` is the name of the BatchNorm directly consuming the root's output
    (SlimFilterPruner's score), if any; ``depthwise`` maps a depthwise conv's module name to its channel
    multiplier (its ``groups`` follow its input)."""

    root: str
    num_channels: int
    members: List[GroupMember] = field(default_factory=list)
    blocked: Optional[str] = None
    bn_after_root: Optional[str] = None
    depthwise: Dict[str, int] = field(default_factory=dict)
    attention: Dict[str, int] = field(default_factory=dict)   # self-attention module name -> head size
    # root channels split into equal-size sets that must each lose the same number of channels (grouped
    # convs, chunk / equal splits along the channel axis); None when the channels are free
    partition: Optional[List[torch.Tensor]] = None
    splits: List[SplitSite] = field(default_factory=list)  # split / chunk nodes along the channel axis

    def member(self, name: str, axis: Optional[int] = None) -> Optional[GroupMember]:
        for m in self.members:
            if m.name == name and (axis is None or m.axis == axis):
                return m
        return None

    def entries(self) -> List[Tuple[str, int]]:
        """``[(tensor_name, axis), ...]`` of the coupled slices, in discovery order."""
        return [(m.name, m.axis) for m in self.members]

    def root_matrix(self) -> torch.Tensor:
        """The root parameter arranged as (num_channels, -1): row c holds every weight of root channel c
        (a conv filter, a transposed conv's output column, an attention head's rows)."""
        m = self.members[0]
        w = m.tensor.detach().movedim(m.axis, 0)
        order = torch.argsort(m.owner, stable=True)
        return w.index_select(0, order).reshape(self.num_channels, -1)


def normalize_inputs(example_inputs: Any) -> Tuple[tuple, dict]:
    """``example_inputs`` as ``(args, kwargs)``: a tensor, a tuple/list of positional inputs, or a dict of
    keyword inputs (e.g. a tokenizer's output)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict) or hasattr(example_inputs, "keys") and hasattr(example_inputs, "items"):
        return (), dict(example_inputs.items())
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TypeError("example_inputs must be a tensor, a tuple/list of inputs or a dict of keyword inputs; "
                    f"got {type(example_inputs).__name__}")


class _LeafTracer(fx.Tracer):
    """Keeps prunable layers (and user subclasses of them) as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, _LEAF_TYPES + _PASSTHROUGH_MODULES + _POOL_WITH_INDICES + (nn.Flatten,)):
            return True
        return super().is_leaf_module(m, qualname)


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        name = node.target
    elif node.op == "call_function":
        t = node.target
        if isinstance(t, torch._ops.OpOverload):
            name = t._schema.name.split("::")[-1]
        elif isinstance(t, torch._ops.OpOverloadPacket):
            name = t._qualified_op_name.split("::")[-1]
        else:
            name = getattr(t, "__name__", str(t))
    else:
        return node.op
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return name


def _shape(node: Any) -> Optional[Tuple[int, ...]]:
    if not isinstance(node, fx.Node):
        return None
    tm = node.meta.get("tensor_meta")
    if tm is not None and hasattr(tm, "shape"):
        return tuple(int(s) for s in tm.shape)
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        try:
            return tuple(int(s) for s in val.shape)
        except Exception:  # symbolic sizes
            return None
    return None


def _flat_args(node: fx.Node) -> List[Any]:
    out: List[Any] = []
    for a in list(node.args) + list(node.kwargs.values()):
        if isinstance(a, (list, tuple)):
            out.extend(a)
        else:
            out.append(a)
    return out


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


@dataclass
class _Layer:
    """What a call site computes, resolved to the module that owns its parameters."""

    kind: str                # conv, convt, linear, bn, ln, gn, embedding
    module_name: str
    module: nn.Module
    input: Optional[fx.Node]
    groups: int = 1


class _Blocked(Exception):
    pass


class DependencyGraph:
    """Traced channel-dependency graph of ``model`` on ``example_inputs``.

    ``group(param_name)`` returns the :class:`Group` whose root is that parameter (a conv / transposed
    conv / linear weight, or a transformer's query / intermediate weight), ``groups()`` every distinct
    group in module order, ``prunable_parameters()`` the roots whose group is not blocked. The model's
    parameters, buffers and training flags are left as they were; tracing runs the model once in eval
    mode under ``torch.no_grad``.

    Raises :class:`TracingError` when neither torch.fx nor torch.export can trace the model and it has no
    transformer blocks pyslim recognises without tracing.
    """

    def __init__(self, model: nn.Module, example_inputs: Any):
        self.model = model
        self.args, self.kwargs = normalize_inputs(example_inputs)
        self.module_names = {id(m): n for n, m in model.named_modules()}
        self.transformer_groups: Dict[str, Group] = {}
        self._find_transformer_groups()
        self.trace_error: Optional[str] = None
        self.tracer: Optional[str] = None
        self.gm: Optional[fx.GraphModule] = None
        self._layers: Dict[fx.Node, _Layer] = {}
        self._call_sites: Dict[str, List[fx.Node]] = {}
        self._cache: Dict[str, Group] = {}
        self._traced = False
        if not self.transformer_groups:
            self._ensure_traced()   # raises TracingError now, before anything else happens

    def _ensure_traced(self) -> None:
        """Transformer groups need no tracing, so for those models the (slow, brittle) trace runs only when
        a non-transformer parameter is asked for; a failure then leaves the transformer groups usable."""
        if self._traced:
            return
        self._traced = True
        try:
            self.gm, self.tracer = self._trace()
        except TracingError as e:
            if not self.transformer_groups:
                raise
            self.trace_error = str(e)
            logger.info("pyslim.prune: generic graph unavailable (%s); transformer head/FFN groups only", e)
        if self.gm is not None:
            self._index_layers()

    # ------------------------------------------------------------------------------------------- tracing
    def _trace(self) -> Tuple[fx.GraphModule, str]:
        flags = {m: m.training for m in self.model.modules()}
        self.model.eval()
        errors = []
        try:
            if not self.kwargs:
                try:
                    tracer = _LeafTracer()
                    graph = tracer.trace(self.model)
                    gm = fx.GraphModule(tracer.root, graph)
                    from torch.fx.passes.shape_prop import ShapeProp

                    with torch.no_grad():
                        ShapeProp(gm).propagate(*self.args)
                    return gm, "fx"
                except Exception as e:  # fx is brittle on real models: fall through to torch.export
                    errors.append(f"torch.fx: {type(e).__name__}: {_first_line(e)}")
            else:
                errors.append("torch.fx: keyword inputs are traced with torch.export")
            try:
                with torch.no_grad():
                    ep = torch.export.export(self.model, self.args, self.kwargs, strict=False)
                return ep.module(), "export"
            except Exception as e:
                errors.append(f"torch.export: {type(e).__name__}: {_first_line(e)}")
        finally:
            for m, t in flags.items():
                m.training = t
        raise TracingError(f"cannot trace {type(self.model).__name__} for pruning; " + "; ".join(errors))

    def _owner_of(self, node: Any) -> Optional[Tuple[str, nn.Module, str]]:
        """(module name, module, tensor name) of a get_attr node naming a parameter or buffer."""
        if not isinstance(node, fx.Node) or node.op != "get_attr":
            return None
        target = str(node.target)
        module_name, _, tensor_name = target.rpartition(".")
        try:
            module = self.model.get_submodule(module_name) if module_name else self.model
        except AttributeError:
            return None
        if not isinstance(getattr(module, tensor_name, None), torch.Tensor):
            return None
        return module_name, module, tensor_name

    def _index_layers(self) -> None:
        for node in self.gm.graph.nodes:
            layer = self._resolve_layer(node)
            if layer is not None:
                self._layers[node] = layer
                self._call_sites.setdefault(layer.module_name, []).append(node)

    def _resolve_layer(self, node: fx.Node) -> Optional[_Layer]:
        if node.op == "call_module":
            try:
                module = self.gm.get_submodule(node.target)
            except AttributeError:
                return None
            name = self.module_names.get(id(module))
            if name is None:
                return None
            inp = node.args[0] if node.args else None
            return self._layer_for_module(name, module, inp)
        if node.op != "call_function":
            return None
        op = _op_name(node)
        weight_index = {"conv1d": 1, "conv2d": 1, "conv3d": 1, "convolution": 1, "conv_transpose1d": 1,
                        "conv_transpose2d": 1, "conv_transpose3d": 1, "linear": 1, "batch_norm": 1,
                        "layer_norm": 2, "group_norm": 2, "embedding": 0}.get(op)
        if weight_index is None:
            return None
        args = list(node.args)
        cands = [args[weight_index]] if weight_index < len(args) else []
        if op == "batch_norm":
            cands += args[3:4]  # running_mean when affine=False
        for cand in cands:
            owner = self._owner_of(cand)
            if owner is not None:
                name, module, _ = owner
                inp = args[1] if op == "embedding" else args[0]
                layer = self._layer_for_module(name, module, inp)
                if layer is not None:
                    return layer
                return _Layer("unknown", name, module, inp)
        return None

    @staticmethod
    def _layer_for_module(name: str, module: nn.Module, inp: Any) -> Optional[_Layer]:
        inp = inp if isinstance(inp, fx.Node) else None
        if isinstance(module, _CONV):
            return _Layer("conv", name, module, inp, module.groups)
        if isinstance(module, _CONV_T):
            return _Layer("convt", name, module, inp, module.groups)
        if isinstance(module, nn.Linear):
            return _Layer("linear", name, module, inp)
        if isinstance(module, _BN):
            return _Layer("bn", name, module, inp)
        if isinstance(module, nn.LayerNorm):
            return _Layer("ln", name, module, inp)
        if isinstance(module, nn.GroupNorm):
            return _Layer("gn", name, module, inp)
        if isinstance(module, nn.Embedding):
            return _Layer("embedding", name, module, inp)
        return None

    # ---------------------------------------------------------------------------------- transformer path
    def _find_transformer_groups(self) -> None:
        modules = dict(self.model.named_modules())
        for name, mod in modules.items():
            q, k, v = (getattr(mod, a, None) for a in ("query", "key", "value"))
            heads, head_size = getattr(mod, "num_attention_heads", None), getattr(mod, "attention_head_size", None)
            if not all(isinstance(x, nn.Linear) for x in (q, k, v)) or not isinstance(heads, int) \
                    or not isinstance(head_size, int):
                continue
            parent_name = name.rpartition(".")[0]
            parent = modules.get(parent_name)
            out = getattr(getattr(parent, "output", None), "dense", None)
            if parent is None or getattr(parent, "self", None) is not mod or not isinstance(out, nn.Linear):
                continue
            if q.out_features != heads * head_size or out.in_features != heads * head_size:
                continue
            owner = torch.arange(heads).repeat_interleave(head_size)
            prefix = f"{name}." if name else ""
            root = f"{prefix}query.weight"
            group = Group(root=root, num_channels=heads, attention={name: head_size})
            for lin_name in ("query", "key", "value"):
                lin = getattr(mod, lin_name)
                group.members.append(GroupMember(f"{prefix}{lin_name}", "weight", 0, owner, lin))
                if lin.bias is not None:
                    group.members.append(GroupMember(f"{prefix}{lin_name}", "bias", 0, owner, lin))
            group.members.append(GroupMember(f"{parent_name}.output.dense", "weight", 1, owner, out))
            self.transformer_groups[root] = group
            # FFN of the same layer: <layer>.intermediate.dense -> <layer>.output.dense
            layer_name = parent_name.rpartition(".")[0]
            layer = modules.get(layer_name)
            inter = getattr(getattr(layer, "intermediate", None), "dense", None)
            ffn_out = getattr(getattr(layer, "output", None), "dense", None)
            if isinstance(inter, nn.Linear) and isinstance(ffn_out, nn.Linear) \
                    and ffn_out.in_features == inter.out_features:
                n = inter.out_features
                own = torch.arange(n)
                root = f"{layer_name}.intermediate.dense.weight"
                g = Group(root=root, num_channels=n)
                g.members.append(GroupMember(f"{layer_name}.intermediate.dense", "weight", 0, own, inter))
                if inter.bias is not None:
                    g.members.append(GroupMember(f"{layer_name}.intermediate.dense", "bias", 0, own, inter))
                g.members.append(GroupMember(f"{layer_name}.output.dense", "weight", 1, own, ffn_out))
                self.transformer_groups[root] = g

    # ------------------------------------------------------------------------------------------ queries
    def candidate_roots(self) -> List[str]:
        """Names of every weight that can start a group, in module order (blocked ones included)."""
        self._ensure_traced()
        names: List[str] = []
        seen = set()
        for mname, module in self.model.named_modules():
            w = f"{mname}.weight" if mname else "weight"
            if w in self.transformer_groups:
                names.append(w)
            elif mname in self._call_sites and w not in seen and isinstance(module, _CONV + _CONV_T + (nn.Linear,)):
                names.append(w)
            seen.add(w)
        return names

    def group(self, param_name: str) -> Group:
        """The group rooted at ``param_name`` (axis 0 of a conv / linear weight, axis 1 of a transposed
        conv weight). Raises ValueError when the name is not a root candidate."""
        if param_name in self._cache:
            return self._cache[param_name]
        if param_name in self.transformer_groups:
            group = self.transformer_groups[param_name]
        else:
            self._ensure_traced()
            module_name, _, tensor_name = param_name.rpartition(".")
            module = self.model.get_submodule(module_name) if module_name in self._call_sites else None
            if tensor_name != "weight" or not isinstance(module, _CONV + _CONV_T + (nn.Linear,)):
                if self.gm is None:
                    raise ValueError(f"'{param_name}' cannot be pruned: the model could not be traced "
                                     f"({self.trace_error})")
                raise ValueError(f"'{param_name}' is not the weight of a traced conv / transposed conv / linear "
                                 "layer that pyslim can prune")
            group = _Walker(self, module_name).run()
        self._cache[param_name] = group
        return group

    def groups(self, roots: Optional[Iterable[str]] = None) -> List[Group]:
        """Distinct groups, PaddleSlim style: a parameter already pruned on an axis by an earlier group
        does not start a new one."""
        out: List[Group] = []
        taken = set()
        for root in roots if roots is not None else self.candidate_roots():
            g = self.group(root)
            if not g.members:  # a depthwise / grouped conv refused as a root: not a group of its own
                continue
            first = (g.members[0].name, g.members[0].axis)
            if first in taken:
                continue
            taken.update(g.entries())
            out.append(g)
        return out

    def model_node(self, node: fx.Node) -> Optional[fx.Node]:
        """The node of ``self.model``'s own fx graph that ``node`` (of the traced copy) was traced from, when
        the model is an fx.GraphModule traced by fx (its literal arguments can then be rewritten)."""
        if self.tracer != "fx" or not isinstance(self.model, fx.GraphModule):
            return None
        for n in self.model.graph.nodes:
            if n.name == node.name:
                return n if (n.op == node.op and n.target == node.target) else None
        return None

    def prunable_parameters(self) -> List[str]:
        """Roots whose group is not blocked and is not dominated by an earlier group."""
        return [g.root for g in self.groups() if g.blocked is None]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


class _Walker:
    """Propagates channel ownership from one root layer through the traced graph (see module doc)."""

    def __init__(self, graph: DependencyGraph, root_module: str):
        self.g = graph
        self.root_module = root_module
        module = graph.model.get_submodule(root_module)
        self.module = module
        self.state: Dict[Tuple[fx.Node, int], torch.Tensor] = {}
        self.members: Dict[Tuple[str, str, int], GroupMember] = {}
        self.queue: List[Tuple[fx.Node, int, torch.Tensor]] = []
        self.balanced: Dict[Tuple[str, str, int], int] = {}   # member key -> conv groups (equal pruning per group)
        self.split_sites: Dict[fx.Node, SplitSite] = {}
        if isinstance(module, _CONV_T):
            c, self.root_axis = module.out_channels, 1
        else:
            c, self.root_axis = module.weight.shape[0], 0
        self.group = Group(root=f"{root_module}.weight", num_channels=int(c))

    def run(self) -> Group:
        owner = torch.arange(self.group.num_channels)
        sites = self.g._call_sites[self.root_module]
        layer = self.g._layers[sites[0]]
        try:
            if layer.kind == "conv" and layer.groups != 1 and layer.groups == self.module.in_channels:
                raise _Blocked(f"'{self.group.root}' is a depthwise convolution: its channels follow its "
                               "producer; prune the producer instead")
            if layer.kind == "conv" and layer.groups != 1:
                self.balanced[(self.root_module, "weight", 0)] = layer.groups
            if layer.kind == "convt" and layer.groups != 1:
                raise _Blocked(f"'{self.group.root}' is a grouped transposed convolution (groups={layer.groups})")
            if layer.kind not in ("conv", "convt", "linear"):
                raise _Blocked(f"'{self.group.root}' is not a conv / linear weight")
            self._add_member(self.root_module, self.module, "weight", self.root_axis, owner)
            for node in sites:
                self._visit(node, self._out_dim(node, layer), owner)
            while self.queue:
                node, dim, own = self.queue.pop(0)
                self._producer(node, dim, own)
                for user in list(node.users):
                    self._consumer(user, node, dim, own)
            self._finalize_constraints()
        except _Blocked as e:
            self.group.blocked = str(e)
        self.group.members = list(self.members.values())
        # SlimFilterPruner's BatchNorm: the one that directly consumes the root's output
        for node in sites:
            for user in node.users:
                lay = self.g._layers.get(user)
                if lay is not None and lay.kind == "bn" and lay.input is node:
                    self.group.bn_after_root = lay.module_name
        return self.group

    # ----------------------------------------------------------------------------------------- helpers
    def _out_dim(self, node: fx.Node, layer: _Layer) -> int:
        shape = _shape(node)
        if layer.kind == "linear":
            if shape is None:
                raise _Blocked(f"no shape recorded for '{node.name}'")
            return len(shape) - 1
        if shape is not None and len(shape) == self.module.weight.dim() - 1:
            return 0  # unbatched conv input
        return 1

    def _visit(self, node: fx.Node, dim: int, owner: torch.Tensor) -> None:
        shape = _shape(node)
        if shape is None:
            raise _Blocked(f"pruned channels reach '{node.name}' whose shape is unknown")
        dim = dim % len(shape)
        if shape[dim] != owner.numel():
            raise _Blocked(f"channel bookkeeping mismatch at '{node.name}' (dim {dim}: size {shape[dim]}, "
                           f"expected {owner.numel()})")
        key = (node, dim)
        old = self.state.get(key)
        if old is not None:
            merged = _merge_owner(old, owner, node.name)
            if torch.equal(merged, old):
                return
            owner = merged
        self.state[key] = owner
        self.queue.append((node, dim, owner))

    def _add_member(self, module_name: str, module: nn.Module, tensor_name: str, axis: int,
                    owner: torch.Tensor, groups: int = 1) -> None:
        t = getattr(module, tensor_name, None)
        if t is None:
            return
        if t.shape[axis] * groups != owner.numel():
            raise _Blocked(f"'{module_name}.{tensor_name}' axis {axis} has {t.shape[axis]} entries, expected "
                           f"{owner.numel()}")
        key = (module_name, tensor_name, axis)
        old = self.members.get(key)
        if old is not None:
            owner = _merge_owner(old.owner, owner, f"{module_name}.{tensor_name}")
            old.owner = owner
            return
        self.members[key] = GroupMember(module_name, tensor_name, axis, owner, module, groups)

    def _layer_members(self, layer: _Layer, owner: torch.Tensor, names: Sequence[str], axis: int = 0) -> None:
        for n in names:
            self._add_member(layer.module_name, layer.module, n, axis, owner)

    def _all_sites_out(self, layer: _Layer, owner: torch.Tensor) -> None:
        """A layer used at several call sites shares its weight: every site's output is coupled."""
        for site in self.g._call_sites.get(layer.module_name, []):
            self._visit(site, self._site_dim(site, layer), owner)

    def _all_sites_in(self, layer: _Layer, dim: int, owner: torch.Tensor) -> None:
        for site in self.g._call_sites.get(layer.module_name, []):
            lay = self.g._layers[site]
            if lay.input is None:
                raise _Blocked(f"'{layer.module_name}' has a call site without a traced input")
            self._visit(lay.input, dim, owner)

    def _site_dim(self, node: fx.Node, layer: _Layer) -> int:
        shape = _shape(node)
        if shape is None:
            raise _Blocked(f"no shape recorded for '{node.name}'")
        if layer.kind in ("linear", "ln"):
            return len(shape) - 1
        return 1 if len(shape) > 1 else 0

    # ---------------------------------------------------------------------------- reached via an output
    def _producer(self, node: fx.Node, dim: int, owner: torch.Tensor) -> None:
        layer = self.g._layers.get(node)
        shape = _shape(node)
        if layer is not None:
            self._producer_layer(node, layer, dim, owner, shape)
            return
        if node.op == "placeholder":
            raise _Blocked(f"pruned channels reach the model input '{node.name}'")
        if node.op == "get_attr":
            owned = self.g._owner_of(node)
            if owned is None:
                raise _Blocked(f"pruned channels reach the constant '{node.target}'")
            self._add_member(owned[0], owned[1], owned[2], dim, owner)
            return
        if node.op == "call_module":
            module = self.g.gm.get_submodule(node.target)
            if isinstance(module, _PASSTHROUGH_MODULES):
                self._visit(node.args[0], dim, owner)
                return
            if isinstance(module, _POOL_WITH_INDICES) and not getattr(module, "return_indices", False):
                self._visit(node.args[0], dim, owner)
                return
            if isinstance(module, nn.Flatten):
                self._reshape_backward(node, node.args[0], dim, owner, literal=False)
                return
            raise _Blocked(f"pruned channels reach the module '{node.target}' ({type(module).__name__}), whose "
                           "channel semantics pyslim does not know")
        op = _op_name(node)
        if op in _UNARY:
            self._unary_input_check(node, op, dim)
            self._visit(node.args[0], dim, owner)
        elif op in _BINARY:
            self._binary_backward(node, dim, owner, shape)
        elif op == "cat" or op == "concat" or op == "concatenate":
            self._cat_backward(node, dim, owner)
        elif op in _RESHAPE:
            self._reshape_backward(node, node.args[0], dim, owner, literal=op in _RESHAPE_LITERAL)
        elif op in ("permute", "transpose", "t"):
            self._visit(node.args[0], self._permute_inverse(node, op, dim), owner)
        elif op in _REDUCE:
            self._visit(node.args[0], self._reduce_inverse(node, dim), owner)
        elif op == "pad":
            self._pad_check(node, dim)
            self._visit(node.args[0], dim, owner)
        elif op == "getitem":
            self._getitem_backward(node, dim, owner)
        else:
            raise _Blocked(f"pruned channels reach '{node.name}' ({op}), an operation pyslim does not know how "
                           "to prune through")

    def _producer_layer(self, node, layer: _Layer, dim: int, owner: torch.Tensor, shape) -> None:
        name = f"'{layer.module_name}'"
        if layer.kind == "conv":
            if dim != self._site_dim(node, layer):
                raise _Blocked(f"{name}: pruned along a non-channel axis")
            if layer.groups == 1:
                self._layer_members(layer, owner, ("weight", "bias"))
                self._all_sites_out(layer, owner)
            elif layer.groups == layer.module.in_channels:
                mult = layer.module.out_channels // layer.groups
                rows = owner.view(-1, mult)
                if not bool((rows == rows[:, :1]).all()):
                    raise _Blocked(f"depthwise conv {name} with channel multiplier {mult} would be pruned "
                                   "inside one input channel's filters")
                self.group.depthwise[layer.module_name] = mult
                self._layer_members(layer, owner, ("weight", "bias"))
                self._all_sites_out(layer, owner)
                self._all_sites_in(layer, dim, rows[:, 0].clone())
            else:
                # grouped conv output channels: every group loses the same number; the input is not coupled
                self._layer_members(layer, owner, ("weight", "bias"))
                self.balanced[(layer.module_name, "weight", 0)] = layer.groups
                self._all_sites_out(layer, owner)
        elif layer.kind == "convt":
            if layer.groups != 1:
                raise _Blocked(f"grouped transposed convolution {name} (groups={layer.groups})")
            if dim != self._site_dim(node, layer):
                raise _Blocked(f"{name}: pruned along a non-channel axis")
            self._add_member(layer.module_name, layer.module, "weight", 1, owner)
            self._add_member(layer.module_name, layer.module, "bias", 0, owner)
            self._all_sites_out(layer, owner)
        elif layer.kind == "linear":
            if dim != len(shape) - 1:
                raise _Blocked(f"{name}: linear output pruned along a non-feature axis")
            self._layer_members(layer, owner, ("weight", "bias"))
            self._all_sites_out(layer, owner)
        elif layer.kind == "bn":
            if dim != self._site_dim(node, layer):
                raise _Blocked(f"BatchNorm {name} reached along a non-channel axis")
            self._layer_members(layer, owner, ("weight", "bias", "running_mean", "running_var"))
            self._all_sites_out(layer, owner)
            self._all_sites_in(layer, dim, owner)
        elif layer.kind == "ln":
            mod = layer.module
            if dim == len(shape) - 1 and len(mod.normalized_shape) == 1:
                if not mod.elementwise_affine:
                    raise _Blocked(f"LayerNorm {name} without affine parameters")
                self._layer_members(layer, owner, ("weight", "bias"))
                self._all_sites_out(layer, owner)
                self._all_sites_in(layer, dim, owner)
            elif dim < len(shape) - len(mod.normalized_shape):
                self._visit(layer.input, dim, owner)
            else:
                raise _Blocked(f"LayerNorm {name} normalises over the pruned axis with a multi-axis shape")
        elif layer.kind == "gn":
            raise _Blocked(f"GroupNorm {name}: pruning would change its channel groups")
        else:
            raise _Blocked(f"pruned channels reach {name} ({type(layer.module).__name__}), which pyslim does not "
                           "know how to prune")

    # ------------------------------------------------------------------------------ reached via an input
    def _consumer(self, user: fx.Node, node: fx.Node, dim: int, owner: torch.Tensor) -> None:
        if user.op == "output":
            raise _Blocked(f"pruned channels reach the model output (through '{node.name}')")
        layer = self.g._layers.get(user)
        if layer is not None:
            if layer.input is not node or any(a is node for a in _flat_args(user)[1:]):
                raise _Blocked(f"'{node.name}' is used as a parameter of '{layer.module_name}'")
            self._consumer_layer(user, layer, dim, owner)
            return
        if user.op == "call_module":
            if str(user.target).startswith("_guards"):
                return
            module = self.g.gm.get_submodule(user.target)
            if isinstance(module, _PASSTHROUGH_MODULES) or (
                    isinstance(module, _POOL_WITH_INDICES) and not getattr(module, "return_indices", False)):
                if isinstance(module, nn.PReLU):
                    raise _Blocked(f"PReLU '{user.target}'")
                self._visit(user, dim, owner)
                return
            if isinstance(module, nn.Flatten):
                self._reshape_forward(user, node, dim, owner, literal=False)
                return
            raise _Blocked(f"pruned channels reach the module '{user.target}' ({type(module).__name__}), whose "
                           "channel semantics pyslim does not know")
        if user.op != "call_function" and user.op != "call_method":
            raise _Blocked(f"pruned channels reach '{user.name}' ({user.op})")
        op = _op_name(user)
        if op in _IGNORE:
            return
        if op in _UNARY:
            if user.args[0] is not node:
                raise _Blocked(f"'{node.name}' is used as an argument of '{user.name}' ({op})")
            self._unary_input_check(user, op, dim)
            self._visit(user, dim, owner)
        elif op in _BINARY:
            out_shape, in_shape = _shape(user), _shape(node)
            if out_shape is None or in_shape is None:
                raise _Blocked(f"no shape recorded at '{user.name}'")
            out_dim = dim + len(out_shape) - len(in_shape)
            if out_shape[out_dim] != in_shape[dim]:
                raise _Blocked(f"'{node.name}' is broadcast along the pruned axis in '{user.name}'")
            self._visit(user, out_dim, owner)
        elif op in ("cat", "concat", "concatenate"):
            self._cat_forward(user, node, dim, owner)
        elif op in _RESHAPE:
            if user.args[0] is not node:
                raise _Blocked(f"'{node.name}' is used as a shape in '{user.name}'")
            self._reshape_forward(user, node, dim, owner, literal=op in _RESHAPE_LITERAL)
        elif op in ("permute", "transpose", "t"):
            self._visit(user, self._permute_forward(user, op, dim), owner)
        elif op in _REDUCE:
            self._visit(user, self._reduce_forward(user, dim), owner)
        elif op == "pad":
            self._pad_check(user, dim)
            self._visit(user, dim, owner)
        elif op in _SPLIT:
            self._split_forward(user, dim, owner)
        else:
            raise _Blocked(f"pruned channels reach '{user.name}' ({op}), an operation pyslim does not know how to "
                           "prune through")

    def _consumer_layer(self, user: fx.Node, layer: _Layer, dim: int, owner: torch.Tensor) -> None:
        name = f"'{layer.module_name}'"
        in_shape = _shape(layer.input)
        if layer.kind == "conv":
            channel_dim = 1 if len(in_shape) == layer.module.weight.dim() else 0
            if dim != channel_dim:
                raise _Blocked(f"{name} consumes the pruned tensor along a non-channel axis")
            if layer.groups == 1:
                self._add_member(layer.module_name, layer.module, "weight", 1, owner)
                self._all_sites_in(layer, dim, owner)
            elif layer.groups == layer.module.in_channels:
                mult = layer.module.out_channels // layer.groups
                expanded = owner.repeat_interleave(mult)
                self.group.depthwise[layer.module_name] = mult
                self._layer_members(layer, expanded, ("weight", "bias"))
                self._all_sites_in(layer, dim, owner)
                self._all_sites_out(layer, expanded)
            else:
                # grouped conv: weight (out, in/groups, ...); input channel c is column c % (in/groups) of the
                # rows of group c // (in/groups). Every group must lose the same number of input channels.
                self._add_member(layer.module_name, layer.module, "weight", 1, owner, groups=layer.groups)
                self.balanced[(layer.module_name, "weight", 1)] = layer.groups
                self._all_sites_in(layer, dim, owner)
        elif layer.kind == "convt":
            if layer.groups != 1:
                raise _Blocked(f"grouped transposed convolution {name} (groups={layer.groups}) consumes pruned "
                               "channels")
            channel_dim = 1 if len(in_shape) == layer.module.weight.dim() else 0
            if dim != channel_dim:
                raise _Blocked(f"{name} consumes the pruned tensor along a non-channel axis")
            self._add_member(layer.module_name, layer.module, "weight", 0, owner)
            self._all_sites_in(layer, dim, owner)
        elif layer.kind == "linear":
            if dim != len(in_shape) - 1:
                raise _Blocked(f"Linear {name} is applied along an axis other than the pruned one")
            self._add_member(layer.module_name, layer.module, "weight", 1, owner)
            self._all_sites_in(layer, dim, owner)
        elif layer.kind in ("bn", "ln"):
            self._producer_layer(user, layer, dim, owner, _shape(user))
        elif layer.kind == "gn":
            raise _Blocked(f"GroupNorm {name}: pruning would change its channel groups")
        else:
            raise _Blocked(f"pruned channels reach {name} ({type(layer.module).__name__}), which pyslim does not "
                           "know how to prune")

    # -------------------------------------------------------------------------------- op-specific rules
    def _unary_input_check(self, node: fx.Node, op: str, dim: int) -> None:
        if op in ("max_pool1d", "max_pool2d", "max_pool3d") and node.kwargs.get("return_indices"):
            raise _Blocked(f"'{node.name}' returns pooling indices")

    def _binary_backward(self, node: fx.Node, dim: int, owner: torch.Tensor, shape) -> None:
        for a in _flat_args(node):
            if not isinstance(a, fx.Node):
                continue
            s = _shape(a)
            if s is None:
                if a.op == "get_attr" or a.op == "call_function":
                    raise _Blocked(f"operand '{a.name}' of '{node.name}' has no known shape")
                continue
            in_dim = dim - (len(shape) - len(s))
            if in_dim < 0 or s[in_dim] == 1:
                continue  # broadcast along the pruned axis: not coupled
            self._visit(a, in_dim, owner)

    def _cat_dim(self, node: fx.Node) -> int:
        d = _arg(node, 1, "dim", 0)
        return d % len(_shape(node))

    def _cat_forward(self, user: fx.Node, node: fx.Node, dim: int, owner: torch.Tensor) -> None:
        tensors = list(_arg(user, 0, "tensors"))
        cd = self._cat_dim(user)
        if cd != dim:
            self._visit(user, dim, owner)
            return
        full = torch.full((_shape(user)[cd],), -1, dtype=torch.long)
        offset = 0
        for t in tensors:
            size = _shape(t)[cd]
            if t is node:
                full[offset:offset + size] = owner
            offset += size
        self._visit(user, dim, full)

    def _cat_backward(self, node: fx.Node, dim: int, owner: torch.Tensor) -> None:
        tensors = list(_arg(node, 0, "tensors"))
        cd = self._cat_dim(node)
        offset = 0
        for t in tensors:
            size = _shape(t)[cd]
            piece = owner[offset:offset + size] if cd == dim else owner
            if cd == dim:
                offset += size
            if bool((piece >= 0).any()):
                self._visit(t, dim, piece.clone())

    def _reshape_forward(self, user: fx.Node, node: fx.Node, dim: int, owner: torch.Tensor, literal: bool):
        in_shape, out_shape = _shape(node), _shape(user)
        j, k = _merged_position(in_shape, dim, out_shape)
        if j is None:
            raise _Blocked(f"'{user.name}' reshapes the pruned channel axis of '{node.name}' "
                           f"({tuple(in_shape)} -> {tuple(out_shape)})")
        if literal:
            self._literal_check(user, j)
        self._visit(user, j, owner.repeat_interleave(k))

    def _reshape_backward(self, node: fx.Node, src: fx.Node, dim: int, owner: torch.Tensor, literal: bool):
        in_shape, out_shape = _shape(src), _shape(node)
        for d in range(len(in_shape)):
            j, k = _merged_position(in_shape, d, out_shape)
            if j == dim and in_shape[d] > 1:
                rows = owner.view(in_shape[d], k)
                if not bool((rows == rows[:, :1]).all()):
                    raise _Blocked(f"'{node.name}' would be pruned inside one input channel's block")
                if literal:
                    self._literal_check(node, j)
                self._visit(src, d, rows[:, 0].clone())
                return
        raise _Blocked(f"'{node.name}' splits the pruned axis ({tuple(in_shape)} -> {tuple(out_shape)})")

    def _literal_check(self, node: fx.Node, j: int) -> None:
        shape_args = [a for a in list(node.args[1:]) + list(node.kwargs.values())]
        if len(shape_args) == 1 and isinstance(shape_args[0], (list, tuple)):
            shape_args = list(shape_args[0])
        if j < len(shape_args) and isinstance(shape_args[j], int) and shape_args[j] != -1:
            raise _Blocked(f"'{node.name}' hard-codes the size {shape_args[j]} of the pruned axis")

    def _permute_dims(self, node: fx.Node, op: str) -> List[int]:
        n = len(_shape(node))
        if op == "t":
            return [1, 0]
        if op == "transpose":
            a, b = node.args[1] % n, node.args[2] % n
            dims = list(range(n))
            dims[a], dims[b] = dims[b], dims[a]
            return dims
        dims = node.args[1:] if not isinstance(node.args[1], (list, tuple)) else node.args[1]
        return [int(d) % n for d in dims]

    def _permute_forward(self, node: fx.Node, op: str, dim: int) -> int:
        return self._permute_dims(node, op).index(dim)

    def _permute_inverse(self, node: fx.Node, op: str, dim: int) -> int:
        return self._permute_dims(node, op)[dim]

    def _reduced_dims(self, node: fx.Node) -> Tuple[List[int], bool]:
        n = len(_shape(node.args[0]))
        dims = _arg(node, 1, "dim", None)
        if dims is None:
            raise _Blocked(f"'{node.name}' reduces over every axis, including the pruned one")
        dims = [dims] if isinstance(dims, int) else list(dims)
        keep = bool(_arg(node, 2, "keepdim", False))
        return sorted(int(d) % n for d in dims), keep

    def _reduce_forward(self, node: fx.Node, dim: int) -> int:
        dims, keep = self._reduced_dims(node)
        if dim in dims:
            raise _Blocked(f"'{node.name}' reduces over the pruned axis")
        return dim if keep else dim - sum(d < dim for d in dims)

    def _reduce_inverse(self, node: fx.Node, dim: int) -> int:
        dims, keep = self._reduced_dims(node)
        if keep:
            return dim
        kept = [d for d in range(len(_shape(node.args[0]))) if d not in dims]
        return kept[dim]

    def _pad_check(self, node: fx.Node, dim: int) -> None:
        pad = _arg(node, 1, "pad")
        n = len(_shape(node))
        if pad is None or dim >= n - len(pad) // 2:
            raise _Blocked(f"'{node.name}' pads the pruned axis")

    def _split_dim(self, node: fx.Node) -> int:
        return int(_arg(node, 2, "dim", 0)) % len(_shape(node.args[0]))

    def _split_forward(self, user: fx.Node, dim: int, owner: torch.Tensor) -> None:
        along = _op_name(user) == "unbind" or self._split_dim(user) == dim
        site = self._split_site(user, dim) if along else None
        for item in user.users:
            if item.op == "call_function" and item.target is operator.getitem and isinstance(item.args[1], int):
                if site is None:
                    self._visit(item, dim, owner)
                    continue
                a, b = _window(site.sizes, item.args[1])
                piece = owner[a:b]
                if bool((piece >= 0).any()):
                    self._visit(item, dim, piece.clone())
            else:
                raise _Blocked(f"the pieces of '{user.name}' are used as a sequence by '{item.name}'")

    def _split_site(self, node: fx.Node, dim: int) -> SplitSite:
        """Checks a split / chunk along the pruned axis and records it (its sizes change with the pruning)."""
        if node in self.split_sites:
            return self.split_sites[node]
        op = _op_name(node)
        if op not in ("split", "chunk", "split_with_sizes"):
            raise _Blocked(f"'{node.name}' ({op}) splits the tensor along the pruned channel axis; pyslim "
                           "re-balances only split / chunk")
        c = _shape(node.args[0])[dim]
        if len(node.args) > 1:
            arg = node.args[1]
        else:
            arg = next((node.kwargs[k] for k in ("chunks", "split_size_or_sections", "split_size", "split_sizes",
                                                 "sections") if k in node.kwargs), None)
        if op == "chunk":
            if not isinstance(arg, int) or arg < 1 or c % arg != 0:
                raise _Blocked(f"'{node.name}' chunks {c} channels into {arg!r} pieces of unequal size; pyslim "
                               "prunes a chunk only when its pieces are equal")
            kind, sizes = "chunk", [c // arg] * arg
        elif isinstance(arg, int) and not isinstance(arg, bool):
            if arg < 1 or c % arg != 0:
                raise _Blocked(f"'{node.name}' splits {c} channels into pieces of {arg} with a smaller last "
                               "piece; pyslim re-balances only equal pieces")
            kind, sizes = "int", [arg] * (c // arg)
        elif isinstance(arg, (list, tuple)) and all(isinstance(a, int) and not isinstance(a, bool) for a in arg):
            kind, sizes = "sizes", [int(a) for a in arg]
        else:
            raise _Blocked(f"'{node.name}' splits the pruned channel axis with sizes computed at run time "
                           f"({arg!r}); pyslim cannot re-balance them")
        rewrite = kind != "chunk"
        if rewrite and self.g.model_node(node) is None:
            raise _Blocked(f"'{node.name}' splits the pruned channel axis with the literal sizes {arg!r} written "
                           f"in the forward of {type(self.g.model).__name__}; pyslim can rewrite them only in an "
                           "fx.GraphModule (torch.fx.symbolic_trace the model first)")
        site = SplitSite(node.name, kind, dim, sizes, torch.empty(0, dtype=torch.long), rewrite)
        self.split_sites[node] = site
        return site

    def _finalize_constraints(self) -> None:
        """Turns grouped convs and equal splits into ``group.partition`` (or blocks the group)."""
        c = self.group.num_channels
        constraints: List[Tuple[str, List[torch.Tensor], torch.Tensor]] = []
        for key, groups in self.balanced.items():
            m = self.members.get(key)
            if m is None:
                continue
            rows = m.owner.view(groups, -1)
            constraints.append((f"grouped convolution '{key[0]}' (groups={groups})",
                                [r[r >= 0] for r in rows], m.owner))
        for node, site in self.split_sites.items():
            owner = self.state.get((node.args[0], site.dim))
            if owner is None:
                raise _Blocked(f"no channel record at the input of '{node.name}'")
            site.owner = owner.clone()
            self.group.splits.append(site)
            if site.kind in ("chunk", "int"):
                parts = [owner[a:b][owner[a:b] >= 0] for a, b in (_window(site.sizes, i) for i in range(len(site.sizes)))]
                constraints.append((f"'{node.name}' (equal pieces)", parts, owner))
        if not constraints:
            return
        labels = torch.full((c, len(constraints)), -1, dtype=torch.long)
        for j, (desc, parts, owner) in enumerate(constraints):
            valid = owner[owner >= 0]
            if valid.unique().numel() != valid.numel():
                raise _Blocked(f"{desc}: a channel of this group appears at several positions")
            if any(p.numel() == 0 for p in parts):
                raise _Blocked(f"{desc}: the channels of this group do not reach every one of its {len(parts)} "
                               "channel groups, so they cannot be pruned evenly")
            for i, p in enumerate(parts):
                labels[p, j] = i
        uniq, inverse = torch.unique(labels, dim=0, return_inverse=True)
        atoms = [torch.nonzero(inverse == a).reshape(-1) for a in range(uniq.shape[0])]
        if len({a.numel() for a in atoms}) != 1:
            raise _Blocked("the channel groups of " + ", ".join(d for d, _, _ in constraints)
                           + " overlap unevenly; pyslim cannot prune them evenly")
        for j, (desc, parts, _) in enumerate(constraints):
            counts = {int((uniq[:, j] == i).sum()) for i in range(len(parts))}
            if len(counts) != 1:
                raise _Blocked(f"{desc}: its channel groups cannot be pruned evenly together with the others")
        atoms.sort(key=lambda a: int(a.min()))
        self.group.partition = atoms

    def _getitem_backward(self, node: fx.Node, dim: int, owner: torch.Tensor) -> None:
        src = node.args[0]
        if isinstance(src, fx.Node) and _op_name(src) in _SPLIT and _op_name(src) != "unbind":
            if self._split_dim(src) == dim:
                if not isinstance(node.args[1], int):
                    raise _Blocked(f"'{node.name}' indexes the pieces of '{src.name}' with a computed index")
                site = self._split_site(src, dim % len(_shape(src.args[0])))
                full = torch.full((sum(site.sizes),), -1, dtype=torch.long)
                a, b = _window(site.sizes, node.args[1])
                full[a:b] = owner
                self._visit(src.args[0], dim, full)   # the input's consumers revisit the other pieces
                return
            self._visit(src.args[0], dim, owner)
            # the other pieces of the same split are coupled too
            for item in src.users:
                if item is not node:
                    self._visit(item, dim, owner)
            return
        raise _Blocked(f"pruned channels reach the indexing '{node.name}'")


def _window(sizes: Sequence[int], index: int) -> Tuple[int, int]:
    index = index % len(sizes)
    a = sum(sizes[:index])
    return a, a + sizes[index]


def _merge_owner(a: torch.Tensor, b: torch.Tensor, where: str) -> torch.Tensor:
    conflict = (a >= 0) & (b >= 0) & (a != b)
    if bool(conflict.any()):
        raise _Blocked(f"'{where}' is reached with two different channel orders")
    return torch.where(a >= 0, a, b)


def _merged_position(in_shape: Sequence[int], d: int, out_shape: Sequence[int]) -> Tuple[Optional[int], int]:
    """Where input axis ``d`` lands in ``out_shape`` when a reshape only merges axes (d first) or
    inserts / removes size-1 axes: (output axis, positions per input index), or (None, 0)."""
    prefix = math.prod(in_shape[:d])
    c = in_shape[d]
    running = 1
    for j, size in enumerate(out_shape):
        if running == prefix and size % c == 0 and size >= c and (size > 1 or c == 1):
            k = size // c
            # the merged block must be exactly the following input axes
            acc, e = c, d + 1
            while acc < size and e < len(in_shape):
                acc *= in_shape[e]
                e += 1
            if acc == size:
                return j, k
            return None, 0
        running *= size
        if running > prefix:
            break
    return None, 0

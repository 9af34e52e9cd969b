"""Feature/logit distillation driven by module names (PaddleSlim ``merge`` + loss functions, in PyTorch form).

``Distiller(teacher, student, mapping)`` registers forward hooks on the named modules of both networks. A forward
``distiller(x)`` runs the (frozen, eval-mode, no-grad) teacher and then the student, and returns the student output;
``distiller.loss()`` is the weighted sum of the distillation losses over the features captured by that forward.

Mapping entries::

    (teacher_module, student_module, loss, weight)               # loss: 'l2' | 'soft_label' | callable(s, t)
    ((teacher_a, teacher_b), (student_a, student_b), 'fsp', weight)   # or a callable(ta, tb, sa, sb)

The module name ``''`` is the model itself (its output, e.g. the logits). With ``adapters='auto'`` a 1x1 ``Conv2d``
(4-D features) or a ``Linear`` (2-D features) maps the student feature to the teacher's channel count wherever the
two differ (pairwise entries only; 'soft_label' and FSP entries never get one). Channel counts are taken from
``example_input`` when given (one no-grad forward of both models, student in eval mode), otherwise from the modules'
``out_channels`` / ``out_features`` / ``num_features``. Adapters are submodules of the Distiller, so
``distiller.trainable_parameters()`` (student + adapters) is what the optimizer should get.

Under DistributedDataParallel, wrap only the student; adapters live outside DDP, so call
``distiller.all_reduce_adapter_grads()`` after ``backward()`` (a no-op when not distributed).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .losses import fsp_loss, l2_loss, soft_label_loss

__all__ = ["Distiller"]

_PAIRWISE = {"l2": l2_loss, "soft_label": soft_label_loss}


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _resolve(model: nn.Module, name: str, side: str) -> nn.Module:
    modules = dict(_unwrap(model).named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
        hint = f"; close names: {close}" if close else f"; available: {[n for n in modules if n][:20]}"
        raise ValueError(f"unknown {side} module name {name!r}{hint}")
    return modules[name]


def _channels(m: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features"):
        v = getattr(m, attr, None)
        if isinstance(v, int):
            return v
    raise AssertionError


def _has_channels(m: nn.Module) -> bool:
    return any(isinstance(getattr(m, a, None), int) for a in ("out_channels", "out_features", "num_features"))


def _channel_layer(model: nn.Module, name: str) -> nn.Module | None:
    """The layer that sets the channel count of ``name``'s output, without running the model: the last
    conv/linear/norm inside it, else (a parameter-free module such as ReLU) the last such layer registered before it
    (exact for ``nn.Sequential``-like models; pass ``example_input`` otherwise)."""
    root = _unwrap(model)
    target = _resolve(model, name, "model")
    inside = [m for m in target.modules() if _has_channels(m)]
    if inside:
        return inside[-1]
    last = None
    for m in root.modules():
        if m is target:
            return last
        if _has_channels(m):
            last = m
    return None


class _Entry:
    def __init__(self, index: int, t_names: tuple[str, ...], s_names: tuple[str, ...], loss: Any, weight: float):
        self.index = index
        self.t_names = t_names
        self.s_names = s_names
        self.weight = float(weight)
        self.is_fsp = len(t_names) == 2
        if isinstance(loss, str):
            if self.is_fsp:
                if loss != "fsp":
                    raise ValueError(f"mapping entry {index}: layer pairs need loss 'fsp' or a callable, got {loss!r}")
                self.fn: Callable = fsp_loss
            else:
                if loss not in _PAIRWISE:
                    raise ValueError(f"mapping entry {index}: unknown loss {loss!r}; use 'l2', 'soft_label', "
                                     "'fsp' (with layer pairs) or a callable")
                self.fn = _PAIRWISE[loss]
            self.name = loss
        elif callable(loss):
            self.fn = loss
            self.name = getattr(loss, "__name__", type(loss).__name__)
        else:
            raise TypeError(f"mapping entry {index}: loss must be a string or a callable, got {type(loss).__name__}")
        self.wants_adapter = not self.is_fsp and loss != "soft_label"


class Distiller(nn.Module):
    def __init__(self, teacher: nn.Module, student: nn.Module, mapping: Sequence[tuple], adapters: str | None = "auto",
                 example_input: Any = None) -> None:
        super().__init__()
        if adapters not in ("auto", None):
            raise ValueError(f"adapters must be 'auto' or None, got {adapters!r}")
        self.teacher = teacher
        self.student = student
        self.adapters = nn.ModuleDict()
        teacher.requires_grad_(False)
        teacher.eval()
        self._features: dict[tuple[str, str], Tensor] = {}
        self._handles: list[Any] = []
        self._has_forward = False
        self.teacher_output: Any = None

        self._entries: list[_Entry] = []
        for i, item in enumerate(mapping):
            if len(item) != 4:
                raise ValueError(f"mapping entry {i} must be (teacher, student, loss, weight), got {item!r}")
            t, s, loss, weight = item
            t_names = (t,) if isinstance(t, str) else tuple(t)
            s_names = (s,) if isinstance(s, str) else tuple(s)
            if len(t_names) not in (1, 2) or len(t_names) != len(s_names):
                raise ValueError(f"mapping entry {i}: give one module name per side, or a pair per side (FSP)")
            self._entries.append(_Entry(i, t_names, s_names, loss, weight))

        for side, model in (("teacher", teacher), ("student", student)):
            names = {n for e in self._entries for n in (e.t_names if side == "teacher" else e.s_names)}
            for name in sorted(names):
                module = _resolve(model, name, side)
                self._handles.append(module.register_forward_hook(self._make_hook(side, name)))

        if adapters == "auto":
            self._build_adapters(example_input)

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _make_hook(self, side: str, name: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
                output = output[0]
            if not isinstance(output, Tensor):
                raise TypeError(f"{side} module {name!r} returned {type(output).__name__}, not a Tensor")
            self._features[(side, name)] = output
        return hook

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> Distiller:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove_hooks()

    # -- adapters ------------------------------------------------------------------------------------------------
    def _build_adapters(self, example_input: Any) -> None:
        wanted = [e for e in self._entries if e.wants_adapter]
        if not wanted:
            return
        shapes: dict[tuple[str, str], torch.Size] = {}
        if example_input is not None:
            was_training = self.student.training
            self.student.eval()
            with torch.no_grad():
                self._run(example_input)
            self.student.train(was_training)
            shapes = {k: v.shape for k, v in self._features.items()}
            self._features.clear()
            self._has_forward = False
        for e in wanted:
            t_name, s_name = e.t_names[0], e.s_names[0]
            if shapes:
                t_shape, s_shape = shapes[("teacher", t_name)], shapes[("student", s_name)]
                if t_shape == s_shape:
                    continue
                if len(t_shape) not in (2, 4) or len(t_shape) != len(s_shape) or t_shape[2:] != s_shape[2:]:
                    raise ValueError(f"mapping entry {e.index}: teacher {t_name!r} {tuple(t_shape)} and student "
                                     f"{s_name!r} {tuple(s_shape)} differ in more than the channel axis; an adapter "
                                     "can only map channels")
                ndim, c_t, c_s = len(t_shape), t_shape[1], s_shape[1]
            else:
                t_last = _channel_layer(self.teacher, t_name)
                s_last = _channel_layer(self.student, s_name)
                if t_last is None or s_last is None:
                    raise ValueError(f"mapping entry {e.index}: cannot infer the channel counts of {t_name!r} / "
                                     f"{s_name!r}; pass example_input= (or adapters=None)")
                c_t, c_s = _channels(t_last), _channels(s_last)
                if c_t == c_s:
                    continue
                ndim = 4 if isinstance(s_last, (nn.Conv2d, nn.BatchNorm2d)) else 2
            self.adapters[str(e.index)] = (nn.Conv2d(c_s, c_t, 1) if ndim == 4 else nn.Linear(c_s, c_t))

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The student's parameters followed by the adapters' (the teacher is frozen)."""
        yield from self.student.parameters()
        yield from self.adapters.parameters()

    def all_reduce_adapter_grads(self) -> None:
        """Average adapter gradients across ranks (adapters are outside the student's DDP wrapper)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        world = dist.get_world_size()
        for p in self.adapters.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)

    # -- forward / loss ------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        self._features.clear()
        self.teacher.eval()
        with torch.no_grad():
            self.teacher_output = self.teacher(*args, **kwargs)
        out = self.student(*args, **kwargs)
        self._has_forward = True
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._handles:
            raise RuntimeError("hooks were removed; this Distiller can no longer capture features")
        return self._run(*args, **kwargs)

    def features(self, side: str, name: str) -> Tensor:
        """The tensor captured from ``side`` ('teacher'/'student') module ``name`` by the last forward."""
        return self._features[(side, name)]

    def losses(self) -> list[Tensor]:
        """Unweighted per-entry losses of the last forward (adapters applied)."""
        if not self._has_forward:
            raise RuntimeError("call the Distiller on a batch before loss()")
        out = []
        for e in self._entries:
            try:
                t = [self._features[("teacher", n)].detach() for n in e.t_names]
                s = [self._features[("student", n)] for n in e.s_names]
            except KeyError as k:
                raise RuntimeError(f"mapping entry {e.index}: module {k.args[0][1]!r} of the {k.args[0][0]} did not "
                                   "run in the last forward") from None
            if e.is_fsp:
                out.append(e.fn(t[0], t[1], s[0], s[1]))
            else:
                sf = s[0]
                key = str(e.index)
                if key in self.adapters:
                    sf = self.adapters[key](sf)
                out.append(e.fn(sf, t[0]))
        return out

    def loss(self) -> Tensor:
        """Weighted sum of the distillation losses of the last forward."""
        return sum(e.weight * v for e, v in zip(self._entries, self.losses()))  # type: ignore[return-value]


"""Embedding quantization (PaddleSlim ``quant_embedding``): int8 tables, dequantized at lookup.

Every ``nn.Embedding`` becomes a :class:`QuantizedEmbedding` that stores its table as int8 (4x smaller than
float32) and looks rows up and dequantizes them in one native call (``pyslim.ops._embedding``), so the
float table never exists at run time. Two schemes, as in PaddleSlim (spec 1.1.7):

* ``abs_max`` (default). Clipping first: with a user ``threshold``, clip ``W`` to ``[-threshold,
  threshold]``; without one, and only if ``max|W| >= 1``, clip at the 99.99th percentile of ``|W|``
  (``np.percentile``, linear interpolation). Then ``scale = max|W|`` (after clipping) and
  ``q = round_half_to_even(W / scale * 127)`` as int8; lookup gives ``q * scale / 127``.
* ``log``. ``v = round(log2|W| / 0.125) * 0.125`` (``log2`` rounded to a 0.125 grid); the dictionary is
  ``2**v`` for the 128 largest unique ``v`` (ascending); each element's index is that of the dictionary
  value nearest to ``|W|`` (in value; ties to the smaller entry, like ``np.argmin``), and negative elements
  store ``index - 128``, so the sign lives in the int8 code. Lookup gives ``dictionary[c]`` for ``c >= 0``
  and ``-dictionary[c + 128]`` for ``c < 0``. An element below the smallest dictionary magnitude (zeros
  included) decodes to that smallest magnitude, as in PaddleSlim.

``quantize_bits`` in [2, 8] generalises 127 to ``2**(bits-1) - 1`` and 128 to ``2**(bits-1)``; PaddleSlim
uses 8. ``padding_idx`` behaves as in ``nn.Embedding`` at inference: the row is looked up like any other
(its stored zeros decode to exactly 0 with ``abs_max``, to the smallest dictionary magnitude with ``log``).
``max_norm`` (which rewrites rows at lookup) is refused. A table tied to another module (e.g. an output
projection sharing the weight) keeps its float copy there; a warning is logged.

Example::

    >>> import torch
    >>> from pyslim.quant.embedding import quant_embedding
    >>> model = torch.nn.Sequential(torch.nn.Embedding(1000, 64), torch.nn.Linear(64, 2))
    >>> qmodel = quant_embedding(model)                       # abs_max, int8 table
    >>> y = qmodel(torch.randint(0, 1000, (4, 12)))
    >>> qlog = quant_embedding(model, quantize_type="log")
"""

from __future__ import annotations

import copy
import logging
import numbers
from typing import Iterable, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from pyslim.ops._embedding import embedding_lookup_abs_max_op, embedding_lookup_log_op
from pyslim.quant.dynamic import _is_skipped, _set_submodule, _skip_names

__all__ = ["quant_embedding", "QuantizedEmbedding", "quantize_embedding_abs_max", "quantize_embedding_log"]

logger = logging.getLogger("pyslim.quant")

QUANTIZE_TYPES = ("abs_max", "log")
_LOG_GRID = 0.125  # PaddleSlim's log2 grid step


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 2 <= int(bits) <= 8:
        raise ValueError(f"quantize_bits must be an int in [2, 8] (the table is stored as int8); got {bits!r}")
    return int(bits)


def _table_array(weight: Tensor) -> np.ndarray:
    w = weight.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (num_embeddings, embedding_dim); got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("the embedding table contains NaN or Inf; it cannot be quantized")
    return w


def quantize_embedding_abs_max(weight: Tensor, bits: int = 8, threshold: Optional[float] = None
                               ) -> Tuple[Tensor, Tensor]:
    """PaddleSlim's abs_max embedding quantization (clipping rule in the module docstring).

    Returns ``(q, scale)``: the int8 table and the 0-d float32 ``scale = max|W|`` after clipping (0 for an
    all-zero table, whose codes are all 0). Example::

        >>> q, s = quantize_embedding_abs_max(torch.tensor([[0.5, -0.25]]))
        >>> q.tolist(), float(s)
        ([[127, -64]], 0.5)
    """
    bits = _check_bits(bits)
    w = _table_array(weight)
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not (
                np.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a finite number > 0; got {threshold!r}")
        limit = np.float32(threshold)
        w = np.clip(w, -limit, limit)
    elif w.size and float(np.max(np.abs(w))) >= 1.0:
        limit = np.float32(np.percentile(np.abs(w), 99.99))
        w = np.clip(w, -limit, limit)
    scale = np.float32(np.max(np.abs(w))) if w.size else np.float32(0.0)
    bin_ = np.float32(2 ** (bits - 1) - 1)
    if scale > 0:
        q = np.round(w / scale * bin_)  # float32 throughout, half to even (np.round)
    else:
        q = np.zeros_like(w)
    return torch.from_numpy(q.astype(np.int8)), torch.tensor(scale, dtype=torch.float32)


def quantize_embedding_log(weight: Tensor, bits: int = 8) -> Tuple[Tensor, Tensor]:
    """PaddleSlim's log embedding quantization (rule in the module docstring).

    Returns ``(codes, dictionary)``: the int8 codes and the float32 dictionary of ``2**(bits-1)`` ascending
    magnitudes, the largest last (a table with fewer distinct log values gets its dictionary front-padded
    with copies of the smallest, so the largest magnitude is always code ``2**(bits-1) - 1``).
    Example::

        >>> codes, d = quantize_embedding_log(torch.tensor([[0.5, -0.25]]))
        >>> codes.tolist(), d[-2:].tolist()
        ([[127, -2]], [0.25, 0.5])
    """
    bits = _check_bits(bits)
    size = 2 ** (bits - 1)
    w = _table_array(weight)
    if w.size == 0:
        return torch.zeros(w.shape, dtype=torch.int8), torch.ones(size, dtype=torch.float32)
    magnitude = np.abs(w)
    grid = np.float32(_LOG_GRID)
    with np.errstate(divide="ignore"):  # log2(0) = -inf: its grid value is -inf and 2**-inf = 0
        log_grid = np.round(np.log2(magnitude) / grid) * grid
    top = np.unique(log_grid)[-size:]  # ascending
    dictionary = np.power(np.float32(2.0), top).astype(np.float32)
    # Nearest dictionary value to |W|: the two neighbours found by binary search, ties to the lower entry.
    upper = np.searchsorted(dictionary, magnitude, side="left")
    hi = np.minimum(upper, len(dictionary) - 1)
    lo = np.maximum(upper - 1, 0)
    pick_lo = np.abs(magnitude - dictionary[lo]) <= np.abs(magnitude - dictionary[hi])
    pad = size - len(dictionary)  # > 0 only for a table with fewer distinct log values than codes
    index = np.where(pick_lo, lo, hi).astype(np.int16) + pad
    codes = np.where(w < 0, index - size, index).astype(np.int8)
    if pad:
        dictionary = np.concatenate([np.full(pad, dictionary[0], np.float32), dictionary])
    return torch.from_numpy(codes), torch.from_numpy(np.ascontiguousarray(dictionary))


class QuantizedEmbedding(nn.Module):
    """An ``nn.Embedding`` whose table is int8 (abs_max or log, see the module docstring); the lookup and the
    dequantization run natively in one pass. Inference only (no gradient flows into the table).

    Buffers (in ``state_dict``): ``weight_int8`` and either ``scale`` (abs_max, 0-d) or ``dictionary`` (log).
    Example::

        >>> emb = QuantizedEmbedding.from_float(torch.nn.Embedding(100, 16), quantize_type="log")
        >>> emb(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 16])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, weight_int8: Tensor, quantize_type: str = "abs_max",
                 quantize_bits: int = 8, scale: Optional[Tensor] = None, dictionary: Optional[Tensor] = None,
                 padding_idx: Optional[int] = None):
        super().__init__()
        if quantize_type not in QUANTIZE_TYPES:
            raise ValueError(f"quantize_type must be one of {list(QUANTIZE_TYPES)}; got {quantize_type!r}")
        bits = _check_bits(quantize_bits)
        if weight_int8.dtype != torch.int8 or tuple(weight_int8.shape) != (num_embeddings, embedding_dim):
            raise ValueError(f"weight_int8 must be int8 of shape ({num_embeddings}, {embedding_dim}); got "
                             f"{weight_int8.dtype} {tuple(weight_int8.shape)}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.quantize_type, self.quantize_bits, self.padding_idx = quantize_type, bits, padding_idx
        self.register_buffer("weight_int8", weight_int8.contiguous())
        if quantize_type == "abs_max":
            if scale is None or scale.numel() != 1:
                raise ValueError("abs_max needs a one-element scale tensor (max|W| after clipping)")
            self.register_buffer("scale", scale.detach().to(torch.float32).reshape(()).clone())
            self.register_buffer("dictionary", None)
        else:
            if dictionary is None or dictionary.dim() != 1 or dictionary.numel() != 2 ** (bits - 1):
                raise ValueError(f"log needs a 1-D dictionary of 2**(quantize_bits-1) = {2 ** (bits - 1)} values; "
                                 f"got {None if dictionary is None else tuple(dictionary.shape)}")
            self.register_buffer("scale", None)
            self.register_buffer("dictionary", dictionary.detach().to(torch.float32).contiguous())

    @classmethod
    def from_float(cls, embedding: nn.Embedding, quantize_type: str = "abs_max", quantize_bits: int = 8,
                   threshold: Optional[float] = None) -> "QuantizedEmbedding":
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"embedding must be a torch.nn.Embedding; got {type(embedding).__name__}")
        if embedding.max_norm is not None:
            raise ValueError("nn.Embedding with max_norm rewrites rows at lookup and cannot be quantized; "
                             "leave it in float with skip_quant")
        if quantize_type not in QUANTIZE_TYPES:
            raise ValueError(f"quantize_type must be one of {list(QUANTIZE_TYPES)}; got {quantize_type!r}")
        if quantize_type == "log" and threshold is not None:
            raise ValueError("threshold applies to quantize_type='abs_max' only")
        device = embedding.weight.device
        if quantize_type == "abs_max":
            q, scale = quantize_embedding_abs_max(embedding.weight, quantize_bits, threshold)
            return cls(embedding.num_embeddings, embedding.embedding_dim, q.to(device), "abs_max", quantize_bits,
                       scale=scale.to(device), padding_idx=embedding.padding_idx)
        codes, dictionary = quantize_embedding_log(embedding.weight, quantize_bits)
        return cls(embedding.num_embeddings, embedding.embedding_dim, codes.to(device), "log", quantize_bits,
                   dictionary=dictionary.to(device), padding_idx=embedding.padding_idx)

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) or input.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input must be an int64 or int32 tensor of indices; got "
                            f"{getattr(input, 'dtype', type(input).__name__)}")
        if self.quantize_type == "abs_max":
            return embedding_lookup_abs_max_op(self.weight_int8, self.scale, input, self.quantize_bits)
        return embedding_lookup_log_op(self.weight_int8, self.dictionary, input)

    def dequantized_weight(self) -> Tensor:
        """The whole table dequantized to float32 (for inspection; the forward never builds it)."""
        rows = torch.arange(self.num_embeddings, device=self.weight_int8.device)
        return self.forward(rows)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, quantize_type={self.quantize_type!r}, " \
            f"quantize_bits={self.quantize_bits}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


def quant_embedding(model: nn.Module, quantize_type: str = "abs_max", quantize_bits: int = 8,
                    threshold: Optional[float] = None, skip_quant: Iterable[str] = (), inplace: bool = False
                    ) -> nn.Module:
    """Replaces every ``nn.Embedding`` of ``model`` by a :class:`QuantizedEmbedding` (int8 table).

    Args:
        model: the model (or a bare ``nn.Embedding``, which is returned converted).
        quantize_type: ``'abs_max'`` or ``'log'`` (PaddleSlim's two schemes; see the module docstring).
        quantize_bits: 8 in PaddleSlim; [2, 8] accepted (the table is int8 either way).
        threshold: abs_max only: clip ``|W|`` here instead of PaddleSlim's automatic 99.99th percentile.
        skip_quant: module names (as in ``model.named_modules()``) to keep in float, with everything under
            them; modules with ``skip_quant = True`` are kept too.
        inplace: convert ``model`` itself instead of a deep copy.

    Example::

        >>> m = torch.nn.Sequential(torch.nn.Embedding(50, 8))
        >>> type(quant_embedding(m)[0]).__name__
        'QuantizedEmbedding'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if quantize_type not in QUANTIZE_TYPES:
        raise ValueError(f"quantize_type must be one of {list(QUANTIZE_TYPES)}; got {quantize_type!r}")
    _check_bits(quantize_bits)
    if quantize_type == "log" and threshold is not None:
        raise ValueError("threshold applies to quantize_type='abs_max' only")
    skip = _skip_names(model, skip_quant)
    if not inplace:
        model = copy.deepcopy(model)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Embedding) and not _is_skipped(name, m, skip)]
    for name, m in targets:
        sharing = [other for other, mod in model.named_modules()
                   if mod is not m and any(p is m.weight for p in mod.parameters(recurse=False))]
        if sharing:
            logger.warning("embedding %r shares its weight with %s: that float copy stays in memory", name,
                           ", ".join(repr(s) for s in sharing))
        new = QuantizedEmbedding.from_float(m, quantize_type, quantize_bits, threshold)
        if name == "":
            return new
        _set_submodule(model, name, new)
    logger.info("quant_embedding: %d embedding table(s) quantized (%s, %d bits)", len(targets), quantize_type,
                quantize_bits)
    return model

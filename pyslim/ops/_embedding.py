"""Quantized embedding lookups (PaddleSlim ``quant_embedding``) as torch.library custom ops.

The table stays int8; each op gathers the looked-up rows and dequantizes them in one native pass
(``csrc/runtime/embedding.cc``), so the float32 table never exists:

* ``embedding_lookup_abs_max(table, scale, indices, bits=8)``:
  ``out = table[indices] * scale / (2**(bits-1) - 1)`` computed in float32 in that order (Paddle's
  ``dequantize_abs_max``), bit-identical to numpy's ``q.astype(float32) * scale / float32(127)``.
* ``embedding_lookup_log(table, dictionary, indices)``: a code ``c >= 0`` decodes to ``dictionary[c]``, a code
  ``c < 0`` to ``-dictionary[c + len(dictionary)]`` (Paddle's ``dequantize_log``); exact.

``indices`` may have any shape and be int64 or int32; the output has shape ``indices.shape + (D,)``. Every
index must lie in ``[0, num_embeddings)``: a bad one raises ``ValueError`` naming it (never a crash). Like
``nn.Embedding``, nothing special happens at a ``padding_idx`` here: that row is looked up and dequantized
like any other (it only matters for gradients in ``nn.Embedding``; its stored zeros decode to 0 with
``abs_max``). CPU tensors run the native kernels; other devices use the pure-torch reference below.

Example::

    >>> import torch
    >>> from pyslim.ops._embedding import embedding_lookup_abs_max
    >>> table = torch.randint(-127, 128, (10, 4), dtype=torch.int8)
    >>> out = embedding_lookup_abs_max(table, torch.tensor(0.5), torch.tensor([[1, 2], [3, 9]]))
    >>> out.shape
    torch.Size([2, 2, 4])
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from pyslim import _C
from pyslim._native import capsule, get_num_threads

__all__ = ["embedding_lookup_abs_max", "embedding_lookup_log", "embedding_lookup_abs_max_reference",
           "embedding_lookup_log_reference"]


# --------------------------------------------------------------------------------------------------------
# pure-torch references (the executable spec; also the path for non-CPU tensors)
# --------------------------------------------------------------------------------------------------------


def _check_range_torch(indices: Tensor, num_rows: int) -> None:
    if indices.numel() == 0:
        return
    bad = (indices < 0) | (indices >= num_rows)
    if bool(bad.any()):
        pos = int(bad.reshape(-1).nonzero()[0, 0])
        value = int(indices.reshape(-1)[pos])
        raise ValueError(f"indices contains {value} (at flat position {pos}), out of range for an embedding table "
                         f"of {num_rows} rows: every index must lie in [0, {num_rows})")


def embedding_lookup_abs_max_reference(table: Tensor, scale: Tensor, indices: Tensor, bits: int = 8) -> Tensor:
    """``table[indices].float() * scale / (2**(bits-1) - 1)`` in pure torch (float32, same order)."""
    _check_range_torch(indices, table.shape[0])
    rows = table[indices.long()].to(torch.float32)
    max_range = torch.tensor(float(2 ** (bits - 1) - 1), dtype=torch.float32, device=table.device)
    return rows * scale.to(torch.float32).reshape(()) / max_range


def embedding_lookup_log_reference(table: Tensor, dictionary: Tensor, indices: Tensor) -> Tensor:
    """Paddle's ``dequantize_log`` in pure torch: ``c >= 0 -> dict[c]``, ``c < 0 -> -dict[c + len(dict)]``."""
    _check_range_torch(indices, table.shape[0])
    codes = table[indices.long()].to(torch.int64)
    size = dictionary.numel()
    dict_f = dictionary.to(torch.float32)
    valid = (codes >= -size) & (codes < size)
    safe = torch.where(valid, codes, torch.zeros_like(codes))
    pos = dict_f[torch.where(safe >= 0, safe, safe + size)]
    out = torch.where(safe >= 0, pos, -pos)
    return torch.where(valid, out, torch.full_like(out, float("nan")))


# --------------------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------------------


def _out_shape(table: Tensor, indices: Tensor):
    return (*indices.shape, table.shape[1])


@torch.library.custom_op("pyslim::embedding_lookup_abs_max", mutates_args=())
def embedding_lookup_abs_max_op(table: Tensor, scale: Tensor, indices: Tensor, bits: int) -> Tensor:
    if table.device.type != "cpu":
        return embedding_lookup_abs_max_reference(table, scale, indices, bits)
    idx = indices.to(torch.int64).contiguous()
    out = torch.empty(_out_shape(table, idx), dtype=torch.float32)
    _C.embedding_lookup_abs_max(capsule(table.contiguous()), capsule(scale.to(torch.float32).reshape(1)),
                                capsule(idx), capsule(out), bits, get_num_threads())
    return out


@embedding_lookup_abs_max_op.register_fake
def _(table, scale, indices, bits):
    return table.new_empty(_out_shape(table, indices), dtype=torch.float32)


@torch.library.custom_op("pyslim::embedding_lookup_log", mutates_args=())
def embedding_lookup_log_op(table: Tensor, dictionary: Tensor, indices: Tensor) -> Tensor:
    if table.device.type != "cpu":
        return embedding_lookup_log_reference(table, dictionary, indices)
    idx = indices.to(torch.int64).contiguous()
    out = torch.empty(_out_shape(table, idx), dtype=torch.float32)
    _C.embedding_lookup_log(capsule(table.contiguous()), capsule(dictionary.to(torch.float32).contiguous()),
                            capsule(idx), capsule(out), get_num_threads())
    return out


@embedding_lookup_log_op.register_fake
def _(table, dictionary, indices):
    return table.new_empty(_out_shape(table, indices), dtype=torch.float32)


# --------------------------------------------------------------------------------------------------------
# checked entry points
# --------------------------------------------------------------------------------------------------------


def _check_table(table) -> Tensor:
    if not isinstance(table, Tensor) or table.dtype != torch.int8 or table.dim() != 2:
        got = f"{getattr(table, 'dtype', type(table).__name__)} of shape {tuple(getattr(table, 'shape', ()))}"
        raise TypeError(f"table must be a 2-D int8 tensor (num_embeddings, embedding_dim); got {got}")
    return table


def _check_indices(indices, table: Tensor) -> Tensor:
    if not isinstance(indices, Tensor):
        raise TypeError(f"indices must be a torch.Tensor; got {type(indices).__name__}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"indices must be int64 or int32 (like nn.Embedding); got {indices.dtype}")
    if indices.device != table.device:
        raise ValueError(f"indices must be on {table.device} like table; got {indices.device}")
    return indices


def embedding_lookup_abs_max(table: Tensor, scale, indices: Tensor, bits: int = 8) -> Tensor:
    """Looks up int8 rows and dequantizes them: ``table[indices] * scale / (2**(bits-1) - 1)`` (float32).

    ``scale`` is the table's ``max|W|`` (a number or a one-element float tensor). Example::

        >>> t = torch.tensor([[127, -127], [0, 64]], dtype=torch.int8)
        >>> embedding_lookup_abs_max(t, 2.0, torch.tensor([1, 0]))
        tensor([[ 0.0000,  1.0079],
                [ 2.0000, -2.0000]])
    """
    table = _check_table(table)
    indices = _check_indices(indices, table)
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 2 <= int(bits) <= 8:
        raise ValueError(f"bits must be an int in [2, 8] (the table is int8); got {bits!r}")
    if isinstance(scale, Tensor):
        if scale.numel() != 1 or not scale.is_floating_point():
            raise TypeError(f"scale must be a floating tensor with one element; got {scale.dtype} of shape "
                            f"{tuple(scale.shape)}")
        scale_t = scale.to(device=table.device, dtype=torch.float32).reshape(())
    elif isinstance(scale, numbers.Real) and not isinstance(scale, bool):
        scale_t = torch.tensor(float(scale), dtype=torch.float32, device=table.device)
    else:
        raise TypeError(f"scale must be a number or a tensor; got {type(scale).__name__}")
    return embedding_lookup_abs_max_op(table, scale_t, indices, int(bits))


def embedding_lookup_log(table: Tensor, dictionary: Tensor, indices: Tensor) -> Tensor:
    """Looks up int8 log codes and decodes them with ``dictionary`` (float32, 2**(bits-1) magnitudes):
    ``c >= 0 -> dictionary[c]``, ``c < 0 -> -dictionary[c + len(dictionary)]``. Example::

        >>> d = 2.0 ** -torch.arange(128, 0, -1, dtype=torch.float32)      # ascending magnitudes
        >>> embedding_lookup_log(torch.tensor([[127, -1]], dtype=torch.int8), d, torch.tensor([0]))
        tensor([[ 0.5000, -0.5000]])
    """
    table = _check_table(table)
    indices = _check_indices(indices, table)
    if not isinstance(dictionary, Tensor) or dictionary.dtype != torch.float32 or dictionary.dim() != 1:
        raise TypeError("dictionary must be a 1-D float32 tensor; got "
                        f"{getattr(dictionary, 'dtype', type(dictionary).__name__)}")
    n = dictionary.numel()
    if n < 1 or n > 128 or n & (n - 1):
        raise ValueError(f"dictionary must have 2**(bits-1) entries (a power of two in [1, 128]); got {n}")
    if dictionary.device != table.device:
        raise ValueError(f"dictionary must be on {table.device} like table; got {dictionary.device}")
    return embedding_lookup_log_op(table, dictionary, indices)

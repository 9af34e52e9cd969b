"""Embedding quantization (PaddleSlim quant_embedding, spec 1.1.7): abs_max and log math against a plain
numpy implementation of the spec, the clipping rule, the native lookup (bit-exact), errors, opcheck and
torch.compile."""

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import pyslim
from pyslim.ops._embedding import (
    embedding_lookup_abs_max,
    embedding_lookup_abs_max_op,
    embedding_lookup_abs_max_reference,
    embedding_lookup_log,
    embedding_lookup_log_op,
    embedding_lookup_log_reference,
)
from pyslim.quant.embedding import QuantizedEmbedding, quant_embedding, quantize_embedding_abs_max, \
    quantize_embedding_log

# ---------------------------------------------------------------------------------------------------------
# the spec, written out plainly in numpy (brute force where PaddleSlim is brute force)
# ---------------------------------------------------------------------------------------------------------


def spec_abs_max(w: np.ndarray, threshold=None, bits=8):
    w = w.astype(np.float32)
    if threshold is not None:
        w = np.clip(w, -np.float32(threshold), np.float32(threshold))
    elif np.max(np.abs(w)) >= 1.0:
        t = np.float32(np.percentile(np.abs(w), 99.99))
        w = np.clip(w, -t, t)
    scale = np.max(np.abs(w)).astype(np.float32)
    q = np.round(w / scale * np.float32(2 ** (bits - 1) - 1)).astype(np.int8)
    return q, scale


def spec_abs_max_lookup(q: np.ndarray, scale, indices: np.ndarray, bits=8) -> np.ndarray:
    return q[indices].astype(np.float32) * np.float32(scale) / np.float32(2 ** (bits - 1) - 1)


def spec_log(w: np.ndarray, bits=8):
    size = 2 ** (bits - 1)
    w = w.astype(np.float32)
    with np.errstate(divide="ignore"):
        v = np.round(np.log2(np.abs(w)) / 0.125) * 0.125
    top = np.sort(np.unique(v))[-size:]
    dictionary = np.power(2.0, top.astype(np.float64)).astype(np.float32)
    flat = np.abs(w).reshape(-1, 1)
    index = np.argmin(np.abs(flat - dictionary.reshape(1, -1)), axis=1)  # brute-force nearest, first on ties
    codes = np.where(w.reshape(-1) < 0, index - size, index).reshape(w.shape)
    return codes.astype(np.int64), dictionary


def spec_log_lookup(codes: np.ndarray, dictionary: np.ndarray, indices: np.ndarray) -> np.ndarray:
    c = codes[indices].astype(np.int64)
    size = len(dictionary)
    return np.where(c >= 0, dictionary[np.where(c >= 0, c, 0)], -dictionary[np.where(c < 0, c + size, 0)])


def table(rows=300, dim=48, spread=0.05, outliers=True, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, dim, generator=g) * spread
    if outliers:  # a few large values, as real embedding tables have (MiniLM's max is ~20x its std)
        w.view(-1)[torch.randint(0, rows * dim, (6,), generator=g)] = torch.tensor([1.7, -2.3, 1.2, -1.05, 3.0, -4.0])
    return w


# ---------------------------------------------------------------------------------------------------------
# abs_max
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outliers", [False, True], ids=["max_below_1", "max_above_1"])
@pytest.mark.parametrize("bits", [8, 4])
def test_abs_max_matches_spec(outliers, bits):
    w = table(outliers=outliers)
    q, scale = quantize_embedding_abs_max(w, bits)
    q_ref, scale_ref = spec_abs_max(w.numpy(), bits=bits)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert float(scale) == float(scale_ref)
    np.testing.assert_array_equal(q.numpy(), q_ref)


def test_abs_max_clipping_rule():
    # max|W| >= 1 and no threshold: clipped at the 99.99th percentile of |W| (linear interpolation); with
    # 128000 elements the 6 outliers lie above it.
    w = table(rows=2000, dim=64, outliers=True)
    a = np.sort(np.abs(w.numpy()).reshape(-1).astype(np.float64))
    pos = 0.9999 * (len(a) - 1)
    lo = int(np.floor(pos))
    percentile = a[lo] + (a[lo + 1] - a[lo]) * (pos - lo)
    _, scale = quantize_embedding_abs_max(w)
    assert float(scale) == pytest.approx(percentile, rel=1e-6)
    assert float(scale) < 1.0 < float(w.abs().max())

    # max|W| < 1: never clipped, even with a pronounced outlier.
    w2 = table(outliers=False)
    w2[0, 0] = 0.999
    _, scale2 = quantize_embedding_abs_max(w2)
    assert float(scale2) == pytest.approx(0.999)

    # A user threshold replaces the rule, whatever max|W| is.
    _, scale3 = quantize_embedding_abs_max(w, threshold=0.5)
    assert float(scale3) == 0.5
    q4, scale4 = quantize_embedding_abs_max(w2, threshold=10.0)
    assert float(scale4) == pytest.approx(0.999)
    np.testing.assert_array_equal(q4.numpy(), spec_abs_max(w2.numpy(), threshold=10.0)[0])


def test_abs_max_all_zero_table_is_zero():
    q, scale = quantize_embedding_abs_max(torch.zeros(4, 3))
    assert float(scale) == 0.0 and not q.any()
    assert torch.equal(embedding_lookup_abs_max(q, scale, torch.tensor([0, 3])), torch.zeros(2, 3))


@pytest.mark.parametrize("quantize_type", ["abs_max", "log"])
def test_lookup_bit_exact_against_spec(quantize_type, threads):
    w = table(rows=500, dim=37)
    idx = torch.randint(0, 500, (7, 33))
    emb = QuantizedEmbedding.from_float(nn.Embedding.from_pretrained(w), quantize_type)
    out = emb(idx)
    assert out.shape == (7, 33, 37) and out.dtype == torch.float32
    if quantize_type == "abs_max":
        ref = spec_abs_max_lookup(emb.weight_int8.numpy(), float(emb.scale), idx.numpy())
        torch_ref = embedding_lookup_abs_max_reference(emb.weight_int8, emb.scale, idx)
    else:
        ref = spec_log_lookup(emb.weight_int8.numpy(), emb.dictionary.numpy(), idx.numpy())
        torch_ref = embedding_lookup_log_reference(emb.weight_int8, emb.dictionary, idx)
    np.testing.assert_array_equal(out.numpy(), ref)
    assert torch.equal(out, torch_ref)


# ---------------------------------------------------------------------------------------------------------
# log
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 5])
def test_log_matches_spec(bits):
    # magnitudes log-uniform over 2**-20 .. 2**0: about 160 distinct grid values, more than 128
    g = torch.Generator().manual_seed(3)
    w = torch.sign(torch.randn(200, 40, generator=g)) * 2.0 ** (torch.rand(200, 40, generator=g) * -20)
    w.view(-1)[::97] = 0.0  # zeros: log2 = -inf, they decode to the smallest magnitude
    codes, dictionary = quantize_embedding_log(w, bits)
    codes_ref, dict_ref = spec_log(w.numpy(), bits)
    assert len(dict_ref) == 2 ** (bits - 1), "the test table must have enough distinct log values"
    np.testing.assert_allclose(dictionary.numpy(), dict_ref, rtol=2e-7, atol=0)
    np.testing.assert_array_equal(codes.numpy().astype(np.int64), codes_ref)
    # dictionary = 2**v on the 0.125 grid, ascending, the largest one being the grid value of max|W|
    logs = np.log2(dictionary.numpy().astype(np.float64))
    np.testing.assert_allclose(logs * 8, np.round(logs * 8), atol=1e-5)
    assert np.all(np.diff(dictionary.numpy()) > 0)
    assert logs[-1] == pytest.approx(np.round(np.log2(float(w.abs().max())) * 8) / 8, abs=1e-6)
    # the sign lives in the code
    assert torch.equal(codes < 0, w < 0)


def test_log_few_distinct_values():
    w = torch.tensor([[0.5, -0.25, 0.0], [0.5, 0.125, -0.5]])
    codes, dictionary = quantize_embedding_log(w)
    assert dictionary.shape == (128,)
    assert dictionary[-3:].tolist() == [0.125, 0.25, 0.5]
    # decoded exactly where |W| is a power of two; the zero goes to the smallest magnitude (PaddleSlim)
    out = embedding_lookup_log(codes, dictionary, torch.arange(2))
    assert out.tolist() == [[0.5, -0.25, 0.0], [0.5, 0.125, -0.5]]


def test_log_relative_error_bounded():
    # Nearest on a 2**(1/8) grid: relative error <= (2**(1/8) - 1) / 2 ~ 4.5 % above the dictionary's floor.
    w = table(rows=400, dim=64, spread=0.05, outliers=False)
    emb = QuantizedEmbedding.from_float(nn.Embedding.from_pretrained(w), "log")
    deq = emb.dequantized_weight()
    big = w.abs() >= emb.dictionary[0]
    rel = ((deq - w).abs() / w.abs())[big]
    assert float(rel.max()) <= (2 ** 0.125 - 1) / 2 + 1e-6


# ---------------------------------------------------------------------------------------------------------
# the module and quant_embedding
# ---------------------------------------------------------------------------------------------------------


class TinyText(nn.Module):
    def __init__(self):
        super().__init__()
        self.word = nn.Embedding(1000, 32, padding_idx=0)
        self.position = nn.Embedding(16, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, ids):
        pos = torch.arange(ids.shape[-1])
        return self.head(self.word(ids) + self.position(pos))


@pytest.mark.parametrize("quantize_type", ["abs_max", "log"])
def test_quant_embedding_swaps_and_is_4x_smaller(quantize_type):
    model = TinyText()
    with torch.no_grad():
        model.word.weight.mul_(0.05)
    q = quant_embedding(model, quantize_type)
    assert isinstance(model.word, nn.Embedding), "not inplace: the original model is untouched"
    for name in ("word", "position"):
        emb = getattr(q, name)
        assert isinstance(emb, QuantizedEmbedding)
        fp32_bytes = getattr(model, name).weight.numel() * 4
        table_bytes = emb.weight_int8.numel() * emb.weight_int8.element_size()
        assert emb.weight_int8.dtype == torch.int8 and table_bytes * 4 == fp32_bytes
        state = emb.state_dict()
        extra = sum(t.numel() * t.element_size() for k, t in state.items() if k != "weight_int8")
        assert extra <= 128 * 4  # one scale, or the 128-entry dictionary
        assert not list(emb.parameters())
    assert isinstance(q.head, nn.Linear)
    ids = torch.randint(0, 1000, (3, 16))
    with torch.no_grad():
        ref = model(ids)
        out = q(ids)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.05


def test_padding_idx_row_is_looked_up():
    emb = nn.Embedding(10, 8, padding_idx=3)
    for quantize_type in ("abs_max", "log"):
        q = QuantizedEmbedding.from_float(emb, quantize_type)
        assert q.padding_idx == 3
        row = q(torch.tensor([3]))[0]
        if quantize_type == "abs_max":
            assert torch.equal(row, torch.zeros(8))  # nn.Embedding's zero row decodes to exactly 0
        else:
            assert torch.equal(row, q.dictionary[0].expand(8))  # the smallest magnitude, as documented


def test_quant_embedding_skip_quant_and_inplace():
    model = TinyText()
    q = quant_embedding(model, skip_quant=["position"])
    assert isinstance(q.word, QuantizedEmbedding) and isinstance(q.position, nn.Embedding)
    model.position.skip_quant = True
    q2 = quant_embedding(model, inplace=True)
    assert q2 is model and isinstance(model.word, QuantizedEmbedding) and isinstance(model.position, nn.Embedding)
    bare = quant_embedding(nn.Embedding(5, 3))
    assert isinstance(bare, QuantizedEmbedding)


def test_state_dict_round_trip_bit_exact():
    torch.manual_seed(1)
    model = TinyText()
    for quantize_type in ("abs_max", "log"):
        q = quant_embedding(model, quantize_type)
        buf = io.BytesIO()
        torch.save(q.state_dict(), buf)
        buf.seek(0)
        fresh = quant_embedding(TinyText(), quantize_type)  # other random weights
        fresh.load_state_dict(torch.load(buf))
        ids = torch.randint(0, 1000, (2, 16))
        assert torch.equal(fresh(ids), q(ids))


@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=3), dim=st.integers(1, 70),
       rows=st.integers(1, 40), int32=st.booleans(), transpose=st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_lookup_shapes(shape, dim, rows, int32, transpose):
    g = torch.Generator().manual_seed(len(shape) * 1000 + dim * 10 + rows)
    t = torch.randint(-128, 128, (rows, dim), dtype=torch.int8, generator=g)
    idx = torch.randint(0, rows, shape, generator=g)
    if transpose and idx.dim() >= 2:
        idx = idx.transpose(0, 1)  # non-contiguous
    if int32:
        idx = idx.to(torch.int32)
    scale = torch.tensor(0.37)
    out = embedding_lookup_abs_max(t, scale, idx)
    assert out.shape == (*idx.shape, dim)
    ref = spec_abs_max_lookup(t.numpy(), 0.37, idx.long().numpy())
    np.testing.assert_array_equal(out.numpy(), ref)
    d = torch.sort(torch.rand(128, generator=g)).values
    out_log = embedding_lookup_log(t, d, idx)
    np.testing.assert_array_equal(out_log.numpy(), spec_log_lookup(t.numpy(), d.numpy(), idx.long().numpy()))


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [1000, -1, 10 ** 12])
def test_out_of_range_index_raises_naming_it(bad):
    emb = QuantizedEmbedding.from_float(nn.Embedding(1000, 8))
    idx = torch.tensor([[1, 2], [3, bad]])
    with pytest.raises(ValueError, match=rf"indices contains {bad} \(at flat position 3\).*1000 rows"):
        emb(idx)
    t = torch.zeros(1000, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match=str(bad)):
        embedding_lookup_log(t, torch.ones(128), idx)
    with pytest.raises(ValueError, match=str(bad)):
        embedding_lookup_abs_max_reference(t, torch.tensor(1.0), idx)


def test_argument_errors():
    t = torch.zeros(4, 3, dtype=torch.int8)
    with pytest.raises(TypeError, match="table must be a 2-D int8"):
        embedding_lookup_abs_max(t.float(), 1.0, torch.tensor([0]))
    with pytest.raises(TypeError, match="indices must be int64 or int32"):
        embedding_lookup_abs_max(t, 1.0, torch.tensor([0.0]))
    with pytest.raises(ValueError, match="bits must be an int in"):
        embedding_lookup_abs_max(t, 1.0, torch.tensor([0]), bits=9)
    with pytest.raises(ValueError, match="dictionary must have"):
        embedding_lookup_log(t, torch.ones(100), torch.tensor([0]))
    with pytest.raises(ValueError, match="quantize_type must be one of"):
        quant_embedding(TinyText(), "kmeans")
    with pytest.raises(ValueError, match="quantize_bits must be an int in"):
        quant_embedding(TinyText(), quantize_bits=16)
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        quant_embedding(TinyText(), threshold=-1.0)
    with pytest.raises(ValueError, match="threshold applies to quantize_type='abs_max' only"):
        quant_embedding(TinyText(), "log", threshold=1.0)
    with pytest.raises(ValueError, match="not a module of the model"):
        quant_embedding(TinyText(), skip_quant=["wrod"])
    with pytest.raises(ValueError, match="max_norm"):
        quant_embedding(nn.Sequential(nn.Embedding(4, 2, max_norm=1.0)))
    bad = nn.Embedding(4, 2)
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        quant_embedding(bad)
    with pytest.raises(TypeError, match="input must be an int64 or int32"):
        QuantizedEmbedding.from_float(nn.Embedding(4, 2))(torch.tensor([0.5]))


# ---------------------------------------------------------------------------------------------------------
# custom-op contract: opcheck, torch.compile
# ---------------------------------------------------------------------------------------------------------


def test_opcheck():
    t = torch.randint(-128, 128, (50, 12), dtype=torch.int8)
    idx = torch.randint(0, 50, (3, 5))
    torch.library.opcheck(embedding_lookup_abs_max_op, (t, torch.tensor(0.8), idx, 8))
    torch.library.opcheck(embedding_lookup_log_op, (t, torch.sort(torch.rand(128)).values, idx))


@pytest.mark.parametrize("quantize_type", ["abs_max", "log"])
def test_torch_compile_matches_eager(quantize_type):
    model = quant_embedding(TinyText(), quantize_type).eval()
    ids = torch.randint(0, 1000, (4, 16))
    eager = model(ids)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(ids), eager)


def test_threads_agree():
    t = torch.randint(-128, 128, (3000, 96), dtype=torch.int8)
    idx = torch.randint(0, 3000, (64, 40))
    pyslim.set_num_threads(1)
    try:
        one = embedding_lookup_abs_max(t, 0.3, idx)
        pyslim.set_num_threads(2)
        two = embedding_lookup_abs_max(t, 0.3, idx)
    finally:
        pyslim.set_num_threads(None)
    assert torch.equal(one, two)

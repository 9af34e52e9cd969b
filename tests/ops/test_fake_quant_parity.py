"""Every native fake-quant op, on every CPU path, against the pure-torch reference (bit-exact for outputs,
derived tolerances for summed gradients) and against torch's own fake-quant ops."""

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyslim
import pyslim.ops as ops
from pyslim.ops import reference as R

ROUNDS = ["half_to_even", "half_away_from_zero"]
HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_same(a, b):
    """Bitwise equality, NaN == NaN, -0 == +0."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    same = (a == b) | (torch.isnan(a) & torch.isnan(b)) if a.is_floating_point() else a == b
    if not bool(same.all()):
        idx = (~same).nonzero()[:5].tolist()
        raise AssertionError(f"{(~same).sum().item()} mismatches, first at {idx}: "
                             f"{[a[tuple(i)].item() for i in idx]} vs {[b[tuple(i)].item() for i in idx]}")


def sum_tolerance(terms: torch.Tensor, count: int) -> float:
    """Float32 partial sums of at most 4096 terms per lane, then double: |err| <= 4096 * eps * sum|terms|."""
    return min(count, 4096) * 2 ** -23 * float(terms.abs().sum()) + 1e-30


def awkward_values(n: int, scale: float = 1.0) -> torch.Tensor:
    """Normal values plus exact .5 ties at 8 bits, huge, tiny, denormal, +-Inf, NaN, +-scale."""
    base = torch.randn(n) * scale
    specials = torch.tensor([0.0, -0.0, 1e30, -1e30, 1e-30, 1e-42, float("inf"), -float("inf"), float("nan"),
                             scale, -scale, 0.5 * scale / 127, 1.5 * scale / 127, -2.5 * scale / 127])
    k = min(n, specials.numel())
    idx = torch.randperm(n)[:k]
    base[idx] = specials[:k]
    return base


# ------------------------------------------------------------------------------------------------------------
# per-tensor and channel-wise abs_max
# ------------------------------------------------------------------------------------------------------------

SHAPES = [(0,), (1,), (2,), (7,), (17,), (4097,), (3, 5), (64, 257), (2, 3, 5, 7), (16, 4097)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("round_mode", ROUNDS)
def test_abs_max_matches_reference(isa, threads, shape, round_mode):
    x = torch.randn(shape) * 3
    for bits in (2, 4, 8, 16):
        y, s = ops.fake_quant_abs_max(x, bits=bits, round_mode=round_mode, return_scale=True)
        yr, sr = R.fake_quant_abs_max(x, bits, round_mode)
        assert_same(s, sr)
        assert_same(y, yr)


@pytest.mark.parametrize("shape,axis", [((4097, 3), 0), ((3, 4097), 1), ((5, 3, 7), 1), ((2, 3, 5, 7), 3),
                                        ((64, 32, 3, 3), 0), ((1, 1), 0), ((6, 0, 3), 0), ((6, 0, 3), 1)], ids=str)
@pytest.mark.parametrize("round_mode", ROUNDS)
def test_channel_wise_matches_reference(isa, threads, shape, axis, round_mode):
    x = torch.randn(shape)
    for bits in (3, 8, 16):
        y, s = ops.fake_quant_channel_wise_abs_max(x, axis, bits=bits, round_mode=round_mode, return_scale=True)
        yr, sr = R.fake_quant_channel_wise_abs_max(x, axis, bits, round_mode)
        assert_same(s, sr)
        assert_same(y, yr)


def test_channel_wise_negative_axis_and_noncontiguous(isa):
    base = torch.randn(8, 16, 5)
    x = base.transpose(0, 2)  # non-contiguous view
    y, s = ops.fake_quant_channel_wise_abs_max(x, -1, return_scale=True)
    yr, sr = R.fake_quant_channel_wise_abs_max(x.contiguous(), 2)
    assert_same(y, yr)
    assert_same(s, sr)
    sliced = base[:, ::3]
    assert_same(ops.fake_quant_abs_max(sliced), R.fake_quant_abs_max(sliced.contiguous())[0])


@pytest.mark.parametrize("round_mode", ROUNDS)
def test_ties_round_as_named(isa, round_mode):
    # s = 127 makes the grid step exactly 1.0: x = k + 0.5 are exact ties.
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 127.0, 0.49999997])
    y = ops.fake_quant_symmetric(x, torch.tensor(127.0), round_mode=round_mode)
    if round_mode == "half_to_even":
        want = [0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 126.0, -126.0, 127.0, 0.0]
    else:
        want = [1.0, 2.0, 3.0, -1.0, -2.0, -3.0, 127.0, -127.0, 127.0, 0.0]
    assert y.tolist() == want


def test_nan_inf_semantics(isa):
    s = torch.tensor(2.0)
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 1.0])
    y = ops.fake_quant_symmetric(x, s)
    assert math.isnan(y[0]) and y[1:5].tolist() == [2.0, -2.0, 2.0, -2.0]
    assert_same(y, R.fake_quant_symmetric(x, s))
    # A NaN or Inf in x makes the data-derived scale non-finite: every output is NaN, never garbage.
    for bad in (float("nan"), float("inf")):
        z = torch.randn(100)
        z[37] = bad
        out = ops.fake_quant_abs_max(z)
        assert bool(torch.isnan(out).all())


def test_all_zero_tensor_gives_zero(isa):
    y, s = ops.fake_quant_abs_max(torch.zeros(33), return_scale=True)
    assert s.item() == 0.0 and bool((y == 0).all())


@HYP
@given(data=st.data())
def test_symmetric_hypothesis(isa, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=19), label="shape")
    axis = data.draw(st.one_of(st.none(), st.integers(0, len(shape) - 1)), label="axis")
    bits = data.draw(st.integers(2, 16), label="bits")
    round_mode = data.draw(st.sampled_from(ROUNDS), label="round")
    x = awkward_values(int(np.prod(shape)), scale=data.draw(st.sampled_from([1e-3, 1.0, 1e4]))).reshape(shape)
    c = 1 if axis is None else shape[axis]
    scale = torch.rand(c if axis is not None else ()) * 3 + 1e-3
    y = ops.fake_quant_symmetric(x, scale, bits=bits, axis=axis, round_mode=round_mode)
    assert_same(y, R.fake_quant_symmetric(x, scale, axis, bits, round_mode))
    for grad in ("ste", "clipped"):
        g = torch.randn(shape)
        xs = x.clone().requires_grad_()
        ss = scale.clone().requires_grad_()
        ops.fake_quant_symmetric(xs, ss, bits=bits, axis=axis, round_mode=round_mode, grad=grad).backward(g)
        gx, gs = R.fake_quant_symmetric_backward(x, g, scale, axis, bits, round_mode, grad)
        assert_same(xs.grad, gx)
        tol = sum_tolerance(g, x.numel()) + 1e-6  # |c| <= 1
        np.testing.assert_allclose(ss.grad.double().reshape(-1).numpy(), gs.numpy(), atol=tol)


# ------------------------------------------------------------------------------------------------------------
# moving average abs max
# ------------------------------------------------------------------------------------------------------------


def test_moving_average_updates_buffers_in_place_and_freezes_in_eval(isa):
    state, accum, scale = torch.ones(1), torch.ones(1), torch.full((1,), 0.001)
    rs, ra, rsc = state.clone(), accum.clone(), scale.clone()
    for step in range(5):
        x = torch.randn(257, 3) * (step + 1)
        y = ops.fake_quant_moving_average_abs_max(x, state, accum, scale, moving_rate=0.9)
        yr = R.fake_quant_moving_average_abs_max(x, rs, ra, rsc, moving_rate=0.9)
        assert_same(y, yr)
        assert_same(state, rs)
        assert_same(accum, ra)
        assert_same(scale, rsc)
    # PaddleSlim's bias-corrected EMA: closed form after the steps.
    frozen = scale.clone()
    x = torch.randn(100) * 50
    y = ops.fake_quant_moving_average_abs_max(x, state, accum, scale, training=False)
    assert_same(scale, frozen)
    assert_same(y, R.fake_quant_symmetric(x, frozen))


def test_moving_average_matches_closed_form():
    state, accum, scale = torch.ones(1), torch.ones(1), torch.full((1,), 0.001)
    maxes = []
    r = 0.9
    for step in range(4):
        x = torch.randn(50) * (step + 1)
        maxes.append(float(x.abs().max()))
        ops.fake_quant_moving_average_abs_max(x, state, accum, scale, moving_rate=r)
    st_, ac = 1.0, 1.0
    for m in maxes:
        st_, ac = r * st_ + 1, r * ac + m
    assert scale.item() == pytest.approx(ac / st_, rel=1e-6)


# ------------------------------------------------------------------------------------------------------------
# affine (torch form) — a drop-in for torch.fake_quantize_*
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qrange", [(-128, 127), (0, 255), (0, 15), (-32768, 32767)])
def test_affine_per_tensor_matches_torch_forward_and_backward(isa, threads, qrange):
    qmin, qmax = qrange
    x = torch.randn(64, 256, 7) * 4
    x.view(-1)[:7] = torch.tensor([1e30, -1e30, float("inf"), -float("inf"), 0.5, 1.5, -2.5]) * 0.1
    scale, zp = 0.05, (qmin + qmax + 1) // 2
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    ya = ops.fake_quant_affine(xa, torch.tensor(scale), torch.tensor(zp), qmin, qmax)
    yb = torch.fake_quantize_per_tensor_affine(xb, scale, zp, qmin, qmax)
    assert_same(ya, yb)
    g = torch.randn_like(x)
    ya.backward(g)
    yb.backward(g)
    assert_same(xa.grad, xb.grad)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_affine_per_channel_matches_torch_forward_and_backward(isa, threads, axis):
    x = torch.randn(33, 17, 9) * 3
    c = x.shape[axis]
    scale = torch.rand(c) * 0.1 + 0.01
    zp = torch.randint(-20, 20, (c,), dtype=torch.int32)
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    ya = ops.fake_quant_affine(xa, scale, zp, -128, 127, axis=axis)
    yb = torch.fake_quantize_per_channel_affine(xb, scale, zp, axis, -128, 127)
    assert_same(ya, yb)
    g = torch.randn_like(x)
    ya.backward(g)
    yb.backward(g)
    assert_same(xa.grad, xb.grad)


@pytest.mark.parametrize("axis", [None, 1])
def test_affine_learnable_scale_gradient(isa, axis):
    x = awkward_values(31 * 40, 3.0).reshape(31, 40)
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    c = 1 if axis is None else 40
    scale = (torch.rand(c) * 0.05 + 0.01).reshape(() if axis is None else (c,))
    zp = torch.randint(-5, 5, scale.shape, dtype=torch.int32)
    s = scale.clone().requires_grad_()
    g = torch.randn_like(x)
    ops.fake_quant_affine(x, s, zp, -128, 127, axis=axis, grad_factor=0.5).backward(g)
    _, gs, _ = R.fake_quant_affine_backward(x, g, scale, zp, -128, 127, axis=axis)
    np.testing.assert_allclose(s.grad.reshape(-1).double().numpy(), 0.5 * gs.numpy(),
                               atol=sum_tolerance(g * 128, x.numel()), rtol=1e-6)


@HYP
@given(data=st.data())
def test_affine_hypothesis(isa, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=23), label="shape")
    axis = data.draw(st.one_of(st.none(), st.integers(0, len(shape) - 1)), label="axis")
    qmin, qmax = data.draw(st.sampled_from([(-128, 127), (0, 255), (-8, 7), (-32768, 32767)]), label="range")
    round_mode = data.draw(st.sampled_from(ROUNDS), label="round")
    x = awkward_values(int(np.prod(shape)), 5.0).reshape(shape)
    c = () if axis is None else (shape[axis],)
    scale = torch.rand(c) * 0.2 + 1e-3
    zp = torch.randint(qmin, qmax + 1, c, dtype=torch.int32)
    assert_same(ops.fake_quant_affine(x, scale, zp, qmin, qmax, axis=axis, round_mode=round_mode),
                R.fake_quant_affine(x, scale, zp, qmin, qmax, axis, round_mode))
    dtype = torch.int8 if -128 <= qmin and qmax <= 127 else torch.int16
    q = ops.quantize(x, scale, zp, axis=axis, dtype=dtype, quant_min=qmin, quant_max=qmax, round_mode=round_mode)
    assert_same(q, R.quantize(x, scale, zp, qmin, qmax, axis, dtype, round_mode))
    assert_same(ops.dequantize(q, scale, zp, axis=axis), R.dequantize(q, scale, zp, axis))


# ------------------------------------------------------------------------------------------------------------
# PACT
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 17, 4097, 100_003])
def test_pact_forward_backward(isa, threads, n):
    x = torch.randn(n) * 8
    alpha = torch.tensor(5.0)
    xa = x.clone().requires_grad_()
    a = alpha.clone().requires_grad_()
    y = ops.pact(xa, a)
    assert_same(y, R.pact(x, alpha))
    g = torch.randn(n)
    y.backward(g)
    gx, ga = R.pact_backward(x, g, alpha)
    assert_same(xa.grad, gx)
    assert a.grad.item() == pytest.approx(ga.item(), abs=sum_tolerance(g, n))
    # The clip part of dalpha is exactly sum(g * (1[x > a] - 1[x < -a])); the rest is the quantization term.
    clip_term = float((g * ((x > 5.0).float() - (x < -5.0).float())).sum())
    assert abs(a.grad.item() - clip_term) <= float(g.abs().sum()) * 0.5 / 127 + 1e-4


def test_pact_gradient_masks_strictly():
    x = torch.tensor([-6.0, -5.0, -1.0, 0.0, 4.99, 5.0, 6.0], requires_grad=True)
    ops.pact(x, torch.tensor(5.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------------------------
# quantize / dequantize
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_quantize_dequantize_roundtrip(isa, threads, dtype, axis):
    x = torch.randn(129, 65)
    c = () if axis is None else (x.shape[axis],)
    info = torch.iinfo(dtype)
    amax = R.abs_max(x, axis)
    scale = (amax / info.max).reshape(c)
    q = ops.quantize(x, scale, axis=axis, dtype=dtype)
    zp = torch.zeros(c, dtype=torch.int32)
    assert_same(q, R.quantize(x, scale, zp, info.min, info.max, axis, dtype))
    y = ops.dequantize(q, scale, axis=axis)
    assert_same(y, R.dequantize(q, scale, zp, axis))
    bshape = [1] * 2
    if axis is not None:
        bshape[axis] = -1
    # half a step, plus the float rounding of x * (1/s) and of (q - zp) * s (two ulps of |x|)
    bound = scale.reshape(bshape) * 0.5 + 2 * 2 ** -23 * x.abs()
    assert bool(((y - x).abs() <= bound * (1 + 2 ** -20)).all())


def test_quantize_nan_maps_to_zero_point():
    q = ops.quantize(torch.tensor([float("nan"), 1.0]), 0.5, zero_point=3, quant_min=-128, quant_max=127)
    assert q.tolist() == [3, 5]


def test_dequantize_gradcheck_in_scale():
    q = torch.randint(-128, 128, (6, 5), dtype=torch.int8)
    zp = torch.randint(-3, 3, (5,), dtype=torch.int32)
    scale = (torch.rand(5) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: ops.dequantize(q, s, zp, axis=1), (scale,), eps=1e-2, atol=1e-2,
                                    rtol=1e-3)


# ------------------------------------------------------------------------------------------------------------
# The clipped gradient saved as a bit mask in the forward (x requires grad, the parameters do not)
# ------------------------------------------------------------------------------------------------------------


def _backward_name(y):
    return type(y.grad_fn).__name__


def assert_same_bits(a, b):
    """Bit patterns equal: the masked backward copies kept gradients bit for bit and writes +0 elsewhere."""
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    assert torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def awkward_grads(shape):
    g = torch.randn(shape)
    flat = g.view(-1)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-42])
    flat[: min(flat.numel(), 5)] = specials[: min(flat.numel(), 5)]
    return g


MASK_SHAPES = [((0,), None), ((1,), None), ((7,), None), ((9,), None), ((65,), None), ((4097,), None),
               ((3, 5, 7), 1), ((9000, 7), 1), ((4, 33, 2), 1), ((3, 11, 2731), 1), ((33, 17, 9), 0),
               ((5, 4097), 1)]


@pytest.mark.parametrize("shape,axis", MASK_SHAPES, ids=str)
@pytest.mark.parametrize("round_mode", ROUNDS)
def test_affine_masked_backward_equals_x_based(isa, threads, shape, axis, round_mode):
    from pyslim.ops import _fake_quant as F

    n = int(np.prod(shape))
    x = awkward_values(n, 4.0).reshape(shape)
    c = () if axis is None else (shape[axis],)
    scale = torch.rand(c) * 0.05 + 0.01
    zp = torch.randint(-10, 10, c, dtype=torch.int32)
    xa = x.clone().requires_grad_()
    y = ops.fake_quant_affine(xa, scale, zp, -128, 127, axis=axis, round_mode=round_mode)
    assert "masked" in _backward_name(y)
    assert_same(y, R.fake_quant_affine(x, scale, zp, -128, 127, axis, round_mode))
    # the saved bits are the reference's, padding clear
    y2, bits = F.fake_quant_affine_masked_op(x, scale, zp, axis, -128, 127, F.ROUND_MODES[round_mode])
    _, want_bits = R.fake_quant_affine_mask(x, scale, zp, -128, 127, axis, round_mode)
    assert bits.dtype == torch.uint8 and bits.shape == ((n + 7) // 8,)
    assert torch.equal(bits, want_bits)
    g = awkward_grads(shape)
    y.backward(g)
    want, _, _ = F.fake_quant_affine_backward_op(x, g, scale, zp, axis, -128, 127, F.ROUND_MODES[round_mode], 1,
                                                 False)
    assert_same_bits(xa.grad, want)
    assert_same_bits(xa.grad, R.apply_grad_mask(g, want_bits))


@pytest.mark.parametrize("shape,axis", [((64, 9, 7), None), ((64, 9, 7), 1), ((64, 9, 7), 2), ((4097,), None)],
                         ids=str)
@pytest.mark.parametrize("round_mode", ROUNDS)
def test_affine_masked_backward_matches_torch(isa, threads, shape, axis, round_mode):
    x = torch.randn(shape) * 3
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    if axis is None:
        ya = ops.fake_quant_affine(xa, torch.tensor(0.05), torch.tensor(3), -128, 127)
        yb = torch.fake_quantize_per_tensor_affine(xb, 0.05, 3, -128, 127)
    else:
        c = shape[axis]
        scale = torch.rand(c) * 0.1 + 0.01
        zp = torch.randint(-20, 20, (c,), dtype=torch.int32)
        ya = ops.fake_quant_affine(xa, scale, zp, -128, 127, axis=axis)
        yb = torch.fake_quantize_per_channel_affine(xb, scale, zp, axis, -128, 127)
    assert "masked" in _backward_name(ya)
    assert_same(ya, yb)
    g = torch.randn(shape)
    ya.backward(g)
    yb.backward(g)
    assert_same(xa.grad, xb.grad)  # torch multiplies by the mask: -0 where we write +0, as the x-based path does


@pytest.mark.parametrize("shape,axis", MASK_SHAPES, ids=str)
@pytest.mark.parametrize("grad_mode", ["clipped", "clipped_strict"])
def test_symmetric_masked_backward_equals_x_based(isa, threads, shape, axis, grad_mode):
    from pyslim.ops import _fake_quant as F

    n = int(np.prod(shape))
    x = awkward_values(n, 2.0).reshape(shape)
    c = () if axis is None else (shape[axis],)
    scale = torch.rand(c) * 3 + 0.1
    if n:  # values exactly on the clip boundary, where inclusive and strict differ
        x.view(-1)[-1] = float(scale.reshape(-1)[-1 % scale.numel()]) if axis is None else x.view(-1)[-1]
    gm = F.GRAD_MODES[grad_mode]
    y, bits = F.fake_quant_symmetric_masked_op(x, scale, axis, 8, 1, gm)
    yr, want_bits = R.fake_quant_symmetric_mask(x, scale, axis, 8, "half_away_from_zero", grad_mode)
    assert_same(y, yr)
    assert torch.equal(bits, want_bits)
    xa = x.clone().requires_grad_()
    if grad_mode == "clipped":
        out = ops.fake_quant_symmetric(xa, scale, axis=axis, grad="clipped")
    else:  # PACT with a fixed alpha: the strict mask, saved as bits
        if axis is not None:
            return
        out = ops.pact(xa, scale)
    assert "masked" in _backward_name(out)
    g = awkward_grads(shape)
    out.backward(g)
    want, _ = F.fake_quant_symmetric_backward_op(x, g, scale, axis, 8, 1, gm, False)
    assert_same_bits(xa.grad, want)


@pytest.mark.parametrize("shape,axis", [((4097,), None), ((5, 3, 7), 1), ((9000, 7), 1), ((64, 32, 3, 3), 0)],
                         ids=str)
def test_abs_max_and_moving_average_masked(isa, threads, shape, axis):
    from pyslim.ops import _fake_quant as F

    x = torch.randn(shape) * 3
    xa = x.clone().requires_grad_()
    if axis is None:
        y, s = ops.fake_quant_abs_max(xa, grad="clipped", return_scale=True)
        yr, sr = R.fake_quant_abs_max(x)
    else:
        y, s = ops.fake_quant_channel_wise_abs_max(xa, axis, grad="clipped", return_scale=True)
        yr, sr = R.fake_quant_channel_wise_abs_max(x, axis)
    assert "masked" in _backward_name(y) and not s.requires_grad
    assert_same(y, yr)
    assert_same(s, sr)
    g = awkward_grads(shape)
    y.backward(g)
    want, _ = F.fake_quant_symmetric_backward_op(x, g, sr, axis, 8, 1, 1, False)
    assert_same_bits(xa.grad, want)
    # moving average (per tensor): the scale buffer is detached, so the mask path applies
    state, accum, scale = torch.ones(1), torch.ones(1), torch.full((1,), 0.001)
    xb = x.clone().requires_grad_()
    y = ops.fake_quant_moving_average_abs_max(xb, state, accum, scale, grad="clipped")
    assert "masked" in _backward_name(y)
    y.backward(g)
    want, _ = F.fake_quant_symmetric_backward_op(x, g, scale, None, 8, 1, 1, False)
    assert_same_bits(xb.grad, want)


def test_mask_path_only_when_it_suffices():
    x = torch.randn(40, 3, requires_grad=True)
    s = torch.tensor(0.05, requires_grad=True)
    # a learnable scale needs x for its LSQ gradient: the x-based op
    y = ops.fake_quant_affine(x, s, torch.tensor(0), -128, 127)
    assert "masked" not in _backward_name(y)
    y.sum().backward()
    assert s.grad is not None
    alpha = torch.tensor(2.0, requires_grad=True)
    assert "masked" not in _backward_name(ops.pact(x, alpha))  # PACT's dalpha needs x
    assert "masked" not in _backward_name(ops.fake_quant_symmetric(x, alpha, grad="clipped"))
    # ste needs no mask at all; no grad needed: no mask
    assert "masked" not in _backward_name(ops.fake_quant_affine(x, 0.05, 0, -128, 127, grad="ste"))
    with torch.no_grad():
        assert ops.fake_quant_affine(x, 0.05, 0, -128, 127).grad_fn is None


def test_masked_op_refuses_parameter_gradients():
    from pyslim.ops import _fake_quant as F

    x = torch.randn(10, requires_grad=True)
    s = torch.tensor(0.1, requires_grad=True)
    y, _ = F.fake_quant_affine_masked_op(x, s, torch.tensor(0, dtype=torch.int32), None, -128, 127, 0)
    with pytest.raises(RuntimeError, match="no parameter gradients"):
        y.sum().backward()


def test_masked_noncontiguous_input_and_grad(isa):
    from pyslim.ops import _fake_quant as F

    base = torch.randn(8, 16, 5) * 3
    x = base.transpose(0, 2).requires_grad_()  # non-contiguous leaf of shape (5, 16, 8)
    scale, zp = torch.rand(16) * 0.05 + 0.01, torch.zeros(16, dtype=torch.int32)
    y = ops.fake_quant_affine(x, scale, zp, -128, 127, axis=1)
    assert "masked" in _backward_name(y)
    g = torch.randn(8, 16, 5).transpose(0, 2)  # non-contiguous gradient
    y.backward(g)
    want, _, _ = F.fake_quant_affine_backward_op(x.detach().contiguous(), g.contiguous(), scale, zp, 1, -128, 127, 0,
                                                 1, False)
    assert_same_bits(x.grad, want)


def test_pack_unpack_mask_bits_roundtrip():
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    bits = R.pack_mask_bits(keep)
    assert bits.tolist() == [13, 1]
    assert torch.equal(R.unpack_mask_bits(bits, keep.shape), keep)
    k2 = torch.rand(3, 5, 7) > 0.5
    assert torch.equal(R.unpack_mask_bits(R.pack_mask_bits(k2), k2.shape), k2)
    assert R.pack_mask_bits(torch.zeros(0, dtype=torch.bool)).numel() == 0

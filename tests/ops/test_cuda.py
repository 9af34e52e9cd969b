"""CUDA kernels against the CPU reference (bit-exact outputs, derived tolerances for summed gradients).

Runs only where torch sees a GPU and pyslim was built with PYSLIM_ENABLE_CUDA=ON (bench/cuda_check.sh
does both on a lent GPU machine); skipped elsewhere.
"""

import pytest
import torch

import pyslim
import pyslim.ops as ops
from pyslim.ops import reference as R

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and pyslim.native_info()["cuda_built"]),
                       reason="needs a GPU and a CUDA build of pyslim"),
]

LAYOUTS = [((0,), None), ((1,), None), ((4099,), None), ((64, 9), 0), ((7, 3), 1), ((1000, 2), 1),
           ((4, 7, 31), 1), ((3, 5, 32), 1), ((2, 3, 100003), 1), ((1, 300), 1), ((256, 64, 3, 3), 0)]


def same(a, b):
    a, b = a.cpu(), b.cpu()
    ok = (a == b) | (torch.isnan(a) & torch.isnan(b)) if a.is_floating_point() else (a == b)
    assert bool(ok.all()), f"{(~ok).sum().item()} mismatches"


def values(shape):
    x = torch.randn(shape) * 3
    flat = x.view(-1)
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e30, 1e-42, 0.5, -2.5])
    k = min(flat.numel(), specials.numel())
    flat[:k] = specials[:k]
    return x


@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=str)
@pytest.mark.parametrize("round_mode", ["half_to_even", "half_away_from_zero"])
def test_cuda_symmetric_affine_quantize(shape, axis, round_mode):
    x = values(shape)
    c = () if axis is None else (shape[axis],)
    scale = torch.rand(c) + 0.05
    zp = torch.randint(-5, 5, c, dtype=torch.int32)
    xd, sd, zd = x.cuda(), scale.cuda(), zp.cuda()
    same(ops.fake_quant_symmetric(xd, sd, axis=axis, round_mode=round_mode),
         R.fake_quant_symmetric(x, scale, axis, 8, round_mode))
    same(ops.fake_quant_affine(xd, sd, zd, -128, 127, axis=axis, round_mode=round_mode),
         R.fake_quant_affine(x, scale, zp, -128, 127, axis, round_mode))
    q = ops.quantize(xd, sd, zd, axis=axis, round_mode=round_mode)
    same(q, R.quantize(x, scale, zp, -128, 127, axis, torch.int8, round_mode))
    same(ops.dequantize(q, sd, zd, axis=axis), R.dequantize(q.cpu(), scale, zp, axis))
    finite = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    if axis is None:
        y, s = ops.fake_quant_abs_max(finite.cuda(), return_scale=True)
        yr, sr = R.fake_quant_abs_max(finite)
    else:
        y, s = ops.fake_quant_channel_wise_abs_max(finite.cuda(), axis, return_scale=True)
        yr, sr = R.fake_quant_channel_wise_abs_max(finite, axis)
    same(s, sr)
    same(y, yr)


@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=str)
def test_cuda_backward_and_scale_gradients(shape, axis):
    x = values(shape)
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    c = () if axis is None else (shape[axis],)
    scale = torch.rand(c) + 0.05
    g = torch.randn(shape)
    xd = x.cuda().requires_grad_()
    sd = scale.cuda().requires_grad_()
    ops.fake_quant_symmetric(xd, sd, axis=axis, grad="clipped").backward(g.cuda())
    gx, gs = R.fake_quant_symmetric_backward(x, g, scale, axis, 8, "half_away_from_zero", "clipped")
    same(xd.grad, gx)
    tol = 2 ** -40 * float(g.abs().sum()) + 1e-6
    assert torch.allclose(sd.grad.double().cpu().reshape(-1), gs, atol=tol, rtol=1e-6)


def test_cuda_moving_average_and_pact():
    x = torch.randn(1000, 37) * 4
    bufs = [torch.ones(1), torch.ones(1), torch.full((1,), 0.001)]
    dbufs = [b.cuda() for b in bufs]
    for _ in range(3):
        y = ops.fake_quant_moving_average_abs_max(x.cuda(), *dbufs)
        yr = R.fake_quant_moving_average_abs_max(x, *bufs)
        same(y, yr)
        for a, b in zip(dbufs, bufs):
            same(a, b)
    alpha = torch.tensor(3.0)
    xd = x.cuda().requires_grad_()
    ad = alpha.cuda().requires_grad_()
    ops.pact(xd, ad).sum().backward()
    gx, ga = R.pact_backward(x, torch.ones_like(x), alpha)
    same(xd.grad, gx)
    assert abs(ad.grad.item() - ga.item()) <= 1e-4 * max(1.0, abs(ga.item()))


def test_cuda_matches_torch_fake_quantize():
    x = torch.randn(64, 256, 14, 14, device="cuda") * 3
    same(ops.fake_quant_affine(x, torch.tensor(0.02, device="cuda"), torch.tensor(0, device="cuda"), -128, 127),
         torch.fake_quantize_per_tensor_affine(x, 0.02, 0, -128, 127))
    s = torch.rand(256, device="cuda") * 0.05 + 0.01
    z = torch.zeros(256, dtype=torch.int32, device="cuda")
    same(ops.fake_quant_affine(x, s, z, -128, 127, axis=1), torch.fake_quantize_per_channel_affine(x, s, z, 1, -128,
                                                                                                  127))


@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=str)
@pytest.mark.parametrize("round_mode", ["half_to_even", "half_away_from_zero"])
def test_cuda_masked_forward_and_backward(shape, axis, round_mode):
    from pyslim.ops import _fake_quant as F

    x = values(shape)
    c = () if axis is None else (shape[axis],)
    scale = torch.rand(c) * 0.05 + 0.01
    zp = torch.randint(-5, 5, c, dtype=torch.int32)
    rm = F.ROUND_MODES[round_mode]
    y, bits = F.fake_quant_affine_masked_op(x.cuda(), scale.cuda(), zp.cuda(), axis, -128, 127, rm)
    yr, bits_r = R.fake_quant_affine_mask(x, scale, zp, -128, 127, axis, round_mode)
    same(y, yr)
    same(bits, bits_r)  # padding bits clear too
    s2 = torch.rand(c) * 3 + 0.1
    for grad_mode in ("clipped", "clipped_strict"):
        y, bits = F.fake_quant_symmetric_masked_op(x.cuda(), s2.cuda(), axis, 8, rm, F.GRAD_MODES[grad_mode])
        yr, bits_r = R.fake_quant_symmetric_mask(x, s2, axis, 8, round_mode, grad_mode)
        same(y, yr)
        same(bits, bits_r)
    g = torch.randn(shape)
    xd = x.cuda().requires_grad_()
    out = ops.fake_quant_affine(xd, scale.cuda(), zp.cuda(), -128, 127, axis=axis, round_mode=round_mode)
    assert "masked" in type(out.grad_fn).__name__
    out.backward(g.cuda())
    want, _, _ = F.fake_quant_affine_backward_op(x, g, scale, zp, axis, -128, 127, rm, 1, False)
    assert torch.equal(xd.grad.cpu().view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 4096, 4096), (3, 17, 65), (17, 4097, 15), (65, 63, 4097),
                                   (128, 256, 512), (0, 5, 7)])
def test_cuda_int8_matmul_exact(m, n, k):
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    for a in (torch.randint(-128, 128, (m, k), dtype=torch.int8), torch.randint(0, 256, (m, k), dtype=torch.uint8)):
        got = ops.int8_matmul(a.cuda(), w.cuda())
        assert got.is_cuda and got.dtype == torch.int32
        same(got, R.gemm_int32(a, w))
    extremes = torch.full((max(m, 1), k), -128, dtype=torch.int8)
    same(ops.int8_matmul(extremes.cuda(), w.cuda()), R.gemm_int32(extremes, w))


def test_cuda_int8_matmul_matches_torch_int_mm_and_refuses_mixed_devices():
    a = torch.randint(-128, 128, (32, 256), dtype=torch.int8, device="cuda")
    w = torch.randint(-128, 128, (64, 256), dtype=torch.int8, device="cuda")
    same(ops.int8_matmul(a, w), torch._int_mm(a, w.t().contiguous()))
    with pytest.raises(ValueError, match="a and w must be on one device"):
        ops.int8_matmul(a, w.cpu())

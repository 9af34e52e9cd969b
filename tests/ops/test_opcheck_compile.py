"""torch.library.opcheck for every op, and the ops under torch.compile."""

import pytest
import torch

import pyslim.ops as ops
from pyslim.ops import _fake_quant as F


def _samples():
    x = torch.randn(6, 5, 4)
    s5 = torch.rand(5) + 0.1
    zp5 = torch.randint(-3, 3, (5,), dtype=torch.int32)
    g = torch.randn(6, 5, 4)
    xr = x.clone().requires_grad_()
    return [
        (F.fake_quant_abs_max_op, (x, None, 8, 1, 0)),
        (F.fake_quant_abs_max_op, (xr, 1, 4, 0, 1)),
        (F.fake_quant_symmetric_op, (xr, s5.clone().requires_grad_(), 1, 8, 1, 1, 1.0)),
        (F.fake_quant_symmetric_op, (x, torch.tensor(2.0), None, 8, 0, 2, 1.0)),
        (F.fake_quant_symmetric_backward_op, (x, g, s5, 1, 8, 1, 1, True)),
        (F.moving_average_abs_max_update_op, (x, torch.ones(1), torch.ones(1), torch.full((1,), 0.001), 0.9)),
        (F.fake_quant_affine_op, (xr, s5.clone().requires_grad_(), zp5, 1, -128, 127, 0, 1, 1.0)),
        (F.fake_quant_affine_op, (x, torch.tensor(0.1), torch.tensor(0, dtype=torch.int32), None, 0, 255, 0, 0, 1.0)),
        (F.fake_quant_affine_backward_op, (x, g, s5, zp5, 1, -128, 127, 0, 1, True)),
        (F.quantize_op, (x, s5, zp5, 1, -128, 127, 8, 0)),
        (F.quantize_op, (x, torch.tensor(0.01), torch.tensor(0, dtype=torch.int32), None, -32768, 32767, 16, 1)),
        (F.dequantize_op, (torch.randint(-128, 127, (6, 5), dtype=torch.int8), s5.clone().requires_grad_(), zp5, 1)),
        # forwards that save the clipped gradient as bits, and the backward that reads them
        (F.fake_quant_affine_masked_op, (xr, s5, zp5, 1, -128, 127, 0)),
        (F.fake_quant_affine_masked_op, (x[:, :3, 1:], torch.tensor(0.1), torch.tensor(2, dtype=torch.int32), None, 0,
                                         255, 1)),
        (F.fake_quant_symmetric_masked_op, (xr, s5, 1, 8, 1, 1)),
        (F.fake_quant_symmetric_masked_op, (torch.randn(13, requires_grad=True), torch.tensor(1.5), None, 4, 0, 2)),
        (F.fake_quant_abs_max_masked_op, (xr, None, 8, 1, 1)),
        (F.fake_quant_abs_max_masked_op, (xr, 2, 8, 0, 1)),
        (F.apply_grad_mask_op, (g, torch.randint(0, 256, (15,), dtype=torch.uint8))),
        (F.apply_grad_mask_op, (torch.randn(9), torch.randint(0, 256, (2,), dtype=torch.uint8))),
    ]


@pytest.mark.parametrize("index", range(len(_samples())))
def test_opcheck(index):
    op, args = _samples()[index]
    torch.library.opcheck(op, args)


def _model_step(x, w, alpha):
    w_q = ops.fake_quant_channel_wise_abs_max(w, axis=0)
    a = ops.pact(x, alpha)
    y = torch.nn.functional.linear(a, w_q)
    return ops.fake_quant_abs_max(y)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_matches_eager(backend):
    torch._dynamo.reset()
    x = torch.randn(8, 16)
    w = torch.randn(4, 16, requires_grad=True)
    alpha = torch.tensor(2.0, requires_grad=True)
    eager = _model_step(x, w, alpha)
    eager.sum().backward()
    gw, ga = w.grad.clone(), alpha.grad.clone()
    w.grad = None
    alpha.grad = None
    compiled = torch.compile(_model_step, backend=backend, fullgraph=True)
    out = compiled(x, w, alpha)
    out.sum().backward()
    assert torch.equal(out, eager)
    assert torch.equal(w.grad, gw)
    assert torch.allclose(alpha.grad, ga, rtol=1e-6, atol=1e-6)


def test_moving_average_under_compile_updates_buffers():
    torch._dynamo.reset()
    state, accum, scale = torch.ones(1), torch.ones(1), torch.full((1,), 0.001)

    def f(x):
        return ops.fake_quant_moving_average_abs_max(x, state, accum, scale)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    x = torch.randn(32) * 3
    compiled(x)
    assert state.item() == pytest.approx(1.9)
    assert accum.item() == pytest.approx(0.9 + x.abs().max().item())


def _masked_step(x, w, s):
    # x and w require grad, the scales do not: every fake quant saves its clipped gradient as bits
    w_q = ops.fake_quant_channel_wise_abs_max(w, axis=0, grad="clipped")
    a = ops.fake_quant_affine(x, s, torch.tensor(0), -128, 127)
    h = torch.nn.functional.linear(a, w_q)
    return ops.fake_quant_symmetric(h, torch.tensor(4.0), grad="clipped")


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_masked_gradients_match_eager(backend):
    torch._dynamo.reset()
    x = (torch.randn(8, 16) * 3).requires_grad_()
    w = torch.randn(4, 16, requires_grad=True)
    s = torch.tensor(0.02)
    eager = _masked_step(x, w, s)
    assert "masked" in type(eager.grad_fn).__name__
    g = torch.randn_like(eager)
    eager.backward(g)
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = None
    w.grad = None
    compiled = torch.compile(_masked_step, backend=backend, fullgraph=True)
    out = compiled(x, w, s)
    out.backward(g)
    assert torch.equal(out, eager)
    assert torch.equal(x.grad, gx)
    assert torch.equal(w.grad, gw)

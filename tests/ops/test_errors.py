"""Bad input gets a clear TypeError/ValueError naming the argument, never a crash or silent garbage."""

import pytest
import torch

import pyslim.ops as ops
from pyslim import _C
from pyslim._native import capsule


def test_wrong_dtype_names_x():
    with pytest.raises(TypeError, match=r"x must be float32; got torch.float64"):
        ops.fake_quant_abs_max(torch.randn(4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        ops.fake_quant_abs_max([1.0, 2.0])
    with pytest.raises(TypeError, match=r"q must be int8 or int16"):
        ops.dequantize(torch.randn(3), 1.0)
    with pytest.raises(TypeError, match=r"dtype must be torch.int8 or torch.int16"):
        ops.quantize(torch.randn(3), 1.0, dtype=torch.int32)


@pytest.mark.parametrize("bits", [1, 17, 0, 8.5, True])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=r"bits must be an int in \[2, 16\]"):
        ops.fake_quant_abs_max(torch.randn(4), bits=bits)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale_values(scale):
    with pytest.raises(ValueError, match=r"scale must be finite and > 0"):
        ops.fake_quant_symmetric(torch.randn(4), torch.tensor(scale))
    with pytest.raises(ValueError, match=r"scale must be finite and > 0"):
        ops.fake_quant_affine(torch.randn(4), torch.tensor(scale), torch.tensor(0), -128, 127)
    with pytest.raises(ValueError, match=r"alpha must be finite and > 0"):
        ops.pact(torch.randn(4), torch.tensor(scale))


def test_scale_of_wrong_length():
    with pytest.raises(ValueError, match=r"scale must be 1-D with 5 elements \(x.shape\[1\]\); got shape \(4,\)"):
        ops.fake_quant_symmetric(torch.randn(3, 5), torch.ones(4), axis=1)
    with pytest.raises(ValueError, match=r"scale must have one element for per-tensor"):
        ops.fake_quant_symmetric(torch.randn(3, 5), torch.ones(2))
    with pytest.raises(ValueError, match=r"zero_point must be 1-D with 3 elements"):
        ops.fake_quant_affine(torch.randn(3, 5), torch.ones(3), torch.zeros(2, dtype=torch.int32), -128, 127, axis=0)


def test_bad_axis_round_grad_and_ranges():
    with pytest.raises(ValueError, match=r"axis must be in \[-2, 2\)"):
        ops.fake_quant_channel_wise_abs_max(torch.randn(3, 5), axis=2)
    with pytest.raises(ValueError, match=r"round_mode must be one of"):
        ops.fake_quant_abs_max(torch.randn(3), round_mode="nearest")
    with pytest.raises(ValueError, match=r"grad must be one of"):
        ops.fake_quant_abs_max(torch.randn(3), grad="lsq")
    with pytest.raises(ValueError, match=r"quant_min must be < quant_max"):
        ops.fake_quant_affine(torch.randn(3), 1.0, 0, 5, 5)
    with pytest.raises(ValueError, match=r"zero_point must lie in \[quant_min, quant_max\]"):
        ops.fake_quant_affine(torch.randn(3), 1.0, 300, -128, 127)
    with pytest.raises(ValueError, match=r"quant_min/quant_max must satisfy -128 <= quant_min < quant_max <= 127"):
        ops.quantize(torch.randn(3), 1.0, quant_min=0, quant_max=255)
    with pytest.raises(ValueError, match=r"zero_point must hold integer values"):
        ops.fake_quant_affine(torch.randn(3), 1.0, torch.tensor(0.5), -128, 127)


def test_moving_average_buffers_validated():
    x = torch.randn(8)
    with pytest.raises(TypeError, match=r"state must be a float32 tensor with one element"):
        ops.fake_quant_moving_average_abs_max(x, torch.ones(2), torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match=r"moving_rate must be in \[0, 1\)"):
        ops.fake_quant_moving_average_abs_max(x, torch.ones(1), torch.ones(1), torch.ones(1), moving_rate=1.0)
    with pytest.raises(ValueError, match=r"scale must be on meta like x"):
        ops.fake_quant_moving_average_abs_max(x.to("meta"), torch.ones(1, device="meta"),
                                              torch.ones(1, device="meta"), torch.ones(1))
    # A buffer that is a view into a larger tensor is updated where it lives, not in a silent copy.
    big = torch.ones(3)
    ops.fake_quant_moving_average_abs_max(x, big[0:1], big[1:2], big[2:3])
    assert big[0].item() == pytest.approx(1.9) and big[2].item() == pytest.approx(big[1].item() / 1.9)


def test_native_binding_validates_before_touching_memory():
    """The binding is the last line of defence: it re-checks what the Python layer already checked."""
    x = torch.randn(4, 6)
    y = torch.empty(4, 6)
    with pytest.raises(TypeError, match=r"x must be float32; got int8"):
        _C.fake_quant_symmetric(capsule(x.to(torch.int8)), capsule(y), capsule(torch.ones(())), None, 8, 0, 1, 0)
    with pytest.raises(ValueError, match=r"out must have the shape of x \(4, 6\); got \(4, 5\)"):
        _C.fake_quant_symmetric(capsule(x), capsule(torch.empty(4, 5)), capsule(torch.ones(())), None, 8, 0, 1, 0)
    with pytest.raises(ValueError, match=r"x must be contiguous"):
        _C.fake_quant_symmetric(capsule(x.t()), capsule(torch.empty(6, 4)), capsule(torch.ones(())), None, 8, 0, 1, 0)
    with pytest.raises(ValueError, match=r"scale must have 6 element\(s\)"):
        _C.fake_quant_symmetric(capsule(x), capsule(y), capsule(torch.ones(5)), 1, 8, 0, 1, 0)
    with pytest.raises(ValueError, match=r"axis must be in \[0, 2\)"):
        _C.fake_quant_symmetric(capsule(x), capsule(y), capsule(torch.ones(5)), 2, 8, 0, 1, 0)
    with pytest.raises(ValueError, match=r"scale must be finite and > 0; scale\[2\] = -1"):
        _C.fake_quant_symmetric(capsule(x), capsule(y), capsule(torch.tensor([1.0, 1.0, -1.0, 1.0])), 0, 8, 0, 1, 0)
    with pytest.raises(ValueError, match=r"bits must be in \[2, 16\]"):
        _C.fake_quant_symmetric(capsule(x), capsule(y), capsule(torch.ones(())), None, 17, 0, 1, 0)
    with pytest.raises(ValueError, match=r"threads must be >= 1"):
        _C.fake_quant_symmetric(capsule(x), capsule(y), capsule(torch.ones(())), None, 8, 0, 0, 0)
    with pytest.raises(ValueError, match=r"out partially overlaps x"):
        buf = torch.randn(30)
        _C.fake_quant_symmetric(capsule(buf[:24].view(4, 6)), capsule(buf[1:25].view(4, 6)), capsule(torch.ones(())),
                                None, 8, 0, 1, 0)
    with pytest.raises(TypeError, match=r"incompatible function arguments"):
        _C.fake_quant_symmetric(x, capsule(y), capsule(torch.ones(())), None, 8, 0, 1, 0)


def test_in_place_output_is_allowed_and_correct():
    x = torch.randn(100)
    want = ops.fake_quant_symmetric(x, torch.tensor(1.0))
    _C.fake_quant_symmetric(capsule(x), capsule(x), capsule(torch.tensor(1.0)), None, 8, 1, 1, 0)
    assert torch.equal(x, want)


def test_noncontiguous_input_is_read_correctly_not_written():
    base = torch.randn(10, 10)
    view = base[:, ::2]
    before = base.clone()
    y = ops.fake_quant_abs_max(view)
    assert torch.equal(base, before)
    assert torch.equal(y, ops.fake_quant_abs_max(view.contiguous()))


def test_cuda_tensor_without_cuda_build_is_a_clear_error():
    if _C.native_info()["cuda_built"] or not torch.cuda.is_available():
        pytest.skip("needs a CUDA tensor and a CPU-only pyslim build")
    with pytest.raises(ValueError, match=r"no CUDA kernels"):
        ops.fake_quant_abs_max(torch.randn(4, device="cuda"))

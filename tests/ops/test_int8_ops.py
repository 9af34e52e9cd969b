"""Native int8 GEMM / convolution ops on every CPU path against exact integer references."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import pyslim
import pyslim.ops as ops
from pyslim.ops import _int8 as I
from pyslim.ops import reference as R

DIMS = [1, 2, 3, 15, 17, 63, 65]
HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def int8(*shape, lo=-128, hi=128):
    return torch.randint(lo, hi, shape, dtype=torch.int8)


def epilogue_tolerance(y: torch.Tensor, bias=None) -> torch.Tensor:
    """float(acc) rounding, the scale product and the multiply: 3 roundings of |y|; +1 of |y| + |bias|."""
    eps = 2.0 ** -23
    tol = 4 * eps * y.abs()
    if bias is not None:
        tol = tol + eps * bias.abs()
    return tol + 1e-30


@pytest.mark.parametrize("m", DIMS)
@pytest.mark.parametrize("n,k", [(1, 1), (17, 3), (64, 63), (65, 65), (15, 4097), (4097, 17)])
def test_gemm_int32_exact(isa, m, n, k):
    w = int8(n, k)
    packed, col_sums = ops.pack_int8_weight(w)
    assert torch.equal(col_sums, w.to(torch.int32).sum(dim=1))
    for a in (int8(m, k), torch.randint(0, 256, (m, k), dtype=torch.uint8)):
        got = ops.gemm_int8(a, packed, n)
        assert torch.equal(got, R.gemm_int32(a, w)), (isa, m, n, k, a.dtype)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 17, 65), (17, 4097, 15), (65, 63, 4097), (0, 5, 7)])
def test_int8_matmul_exact(isa, m, n, k):
    """The one-call form (packs w itself on the CPU; the CUDA kernel on a GPU, see tests/ops/test_cuda.py)."""
    w = int8(n, k)
    for a in (int8(m, k), torch.randint(0, 256, (m, k), dtype=torch.uint8)):
        got = ops.int8_matmul(a, w)
        assert got.dtype == torch.int32 and torch.equal(got, R.gemm_int32(a, w)), (isa, m, n, k, a.dtype)
    # Non-contiguous operands are read through a copy (a transposed view of a (K, M) tensor).
    at = int8(k, m).t()
    assert torch.equal(ops.int8_matmul(at, w), R.gemm_int32(at.contiguous(), w))


def test_gemm_saturation_hazard_extremes(isa):
    """u8 255 x s8 -128 pairs overflow int16 (the vpmaddubsw hazard): results must stay exact."""
    for k in (2, 64, 1031):
        w = torch.full((33, k), -128, dtype=torch.int8)
        w[1::2] = 127
        packed, _ = ops.pack_int8_weight(w)
        a = torch.full((5, k), 255, dtype=torch.uint8)
        assert torch.equal(ops.gemm_int8(a, packed, 33), R.gemm_int32(a, w))
        a8 = torch.full((5, k), -128, dtype=torch.int8)
        assert torch.equal(ops.gemm_int8(a8, packed, 33), R.gemm_int32(a8, w))


@HYP
@given(m=st.sampled_from(DIMS + [128]), n=st.integers(1, 80), k=st.integers(1, 300), signed=st.booleans())
def test_gemm_hypothesis(isa, m, n, k, signed):
    w = int8(n, k)
    packed, _ = ops.pack_int8_weight(w)
    a = int8(m, k) if signed else torch.randint(0, 256, (m, k), dtype=torch.uint8)
    assert torch.equal(ops.gemm_int8(a, packed, n), R.gemm_int32(a, w))


def test_gelu_epilogue_is_within_its_bound_of_torch_gelu(isa):
    # An identity weight makes the epilogue's input exactly (a - zp) * scale for every uint8 a: the GELU of
    # every representable activation, against float64 torch GELU; bound 2e-7 * |y| (kernels.h kGelu).
    k = 256
    w = torch.eye(k, dtype=torch.int8)
    packed, col_sums = ops.pack_int8_weight(w)
    a = torch.arange(256, dtype=torch.uint8).repeat(k, 1).t().contiguous()  # row r: r everywhere
    for scale in (0.05, 0.01, 0.3):
        y = ops.gemm_int8(a, packed, k, torch.float32, scale, 128, col_sums, torch.ones(k), None, "gelu")
        x = (a.double() - 128) * torch.tensor(scale, dtype=torch.float32).double()  # the kernel's float scale
        ref = torch.nn.functional.gelu(x)
        assert float(((y.double() - ref).abs() - 2e-7 * x.abs() - 1e-30).max()) <= 0.0


@pytest.mark.parametrize("m,n,k", [(1, 1000, 1280), (37, 70, 129), (300, 96, 16), (5, 1100, 64), (129, 24, 7)])
@pytest.mark.parametrize("out", ["float32", "int8", "uint8"])
def test_linear_static_float_input_is_quantize_then_gemm(isa, threads, m, n, k, out):
    """The static Linear's fused input quantization gives exactly quantize + gemm_int8: the same int8 rows, so the
    same int32 sums and bit-identical outputs, NaN and out-of-range inputs included; for one column block (each
    row block quantized in its task) and for several (one quantize pass first), float and requantized outputs."""
    w = int8(n, k)
    packed, col_sums = ops.pack_int8_weight(w)
    wscale, bias = torch.rand(n) * 0.01 + 1e-3, torch.randn(n)
    x = torch.randn(m, k) * 3
    x.view(-1)[::37] = float("nan")
    x.view(-1)[3::41] = -1e6
    x_scale, x_zp = 0.021, -5
    out_dtype = I.OUT_DTYPES[getattr(torch, out)]
    args = (packed, col_sums, wscale, bias, n, out_dtype, 1, 0.05, 3 if out == "uint8" else -3)
    want = I.gemm_int8_op(ops.quantize(x, x_scale, x_zp, dtype=torch.int8), x_scale, x_zp, *args)
    got = I.linear_int8_static_op(x, x_scale, x_zp, *args)
    assert got.dtype == want.dtype and torch.equal(got, want)
    caps = tuple(None if t is None else pyslim._native.capsule(t) for t in (packed, col_sums, wscale, bias))
    assert torch.equal(I.gemm_int8_cached(x.view(m, 1, k), x_scale, x_zp, caps, *args[4:]), want.view(m, 1, n))


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "gelu"])
def test_gemm_float_and_requantized_epilogues(isa, threads, activation):
    m, n, k = 37, 70, 129
    w = int8(n, k)
    packed, col_sums = ops.pack_int8_weight(w)
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8)
    a_scale, a_zp = 0.02, 131
    wscale = torch.rand(n) * 0.01 + 1e-3
    bias = torch.randn(n)
    y = ops.gemm_int8(a, packed, n, torch.float32, a_scale, a_zp, col_sums, wscale, bias, activation)
    ref = R.gemm_epilogue(R.gemm_int32(a, w), a_scale, a_zp, wscale, col_sums, bias, activation)
    tol = epilogue_tolerance(ref, bias)
    if activation == "gelu":
        # the float epilogue's roundings of the pre-activation z (the GELU's slope is at most 1.13), plus the
        # kernel's GELU bound 2e-7 * |z| (kernels.h kGelu)
        z = R.gemm_epilogue(R.gemm_int32(a, w), a_scale, a_zp, wscale, col_sums, bias, None)
        tol = 2 * epilogue_tolerance(z, bias) + 2e-7 * z.abs()
    assert bool(((y - ref).abs() <= tol).all())
    for out_dtype, out_zp in ((torch.int8, -3), (torch.uint8, 128)):
        q = ops.gemm_int8(a, packed, n, out_dtype, a_scale, a_zp, col_sums, wscale, bias, activation, 0.05, out_zp)
        lo, hi = (-128, 127) if out_dtype == torch.int8 else (0, 255)
        qref = torch.clamp(torch.round(ref / 0.05) + out_zp, lo, hi)
        assert int((q.to(torch.int32) - qref.to(torch.int32)).abs().max()) <= 1


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_linear_dynamic_matches_reference(isa, threads, per_row, symmetric):
    x = torch.randn(3, 11, 96) * 2 + 0.5
    w = int8(40, 96, lo=-127)
    wscale = torch.rand(40) * 0.02 + 1e-3
    bias = torch.randn(40)
    packed, col_sums = ops.pack_int8_weight(w)
    y = ops.linear_int8_dynamic(x, packed, col_sums, wscale, 40, bias, per_row, symmetric)
    ref = R.linear_int8_dynamic(x, w, wscale, bias, per_row, symmetric)
    assert y.shape == (3, 11, 40)
    assert bool(((y - ref).abs() <= epilogue_tolerance(ref, bias)).all())


CONVS = [
    # (in_c, out_c, kernel, stride, padding, dilation, groups, H, W)
    (16, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, 9, 7),
    (8, 8, (3, 3), (2, 2), (1, 1), (1, 1), 8, 11, 10),        # depthwise, stride 2
    (17, 17, (5, 5), (1, 1), (2, 2), (2, 2), 17, 12, 12),     # depthwise, dilated
    (144, 144, (3, 3), (1, 1), (1, 1), (1, 1), 144, 6, 6),    # MobileNet-like depthwise
    (12, 24, (3, 1), (1, 2), (1, 0), (1, 1), 4, 8, 9),        # grouped, asymmetric kernel/stride
    (64, 256, (1, 1), (1, 1), (0, 0), (1, 1), 1, 7, 7),       # 1x1 as a GEMM
    (3, 5, (1, 1), (2, 2), (0, 0), (1, 1), 1, 9, 9),          # 1x1 strided (im2col path)
    (3, 7, (7, 7), (2, 2), (3, 3), (1, 1), 1, 15, 15),        # stem-like
]


LARGE_CONVS = [
    # Many pixels: several pixel blocks per call, a partial last block, padding on every side.
    (16, 24, (3, 3), (1, 1), (1, 1), (1, 1), 1, 29, 31),
    (64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, 20, 19),     # K = 576: one K block, A read in place
    (6, 10, (3, 3), (2, 1), (1, 1), (1, 2), 2, 25, 23),      # grouped, dilated along W
    (24, 24, (3, 3), (1, 1), (1, 1), (1, 1), 24, 30, 17),    # depthwise, several row tasks
    (32, 80, (1, 1), (1, 1), (0, 0), (1, 1), 1, 21, 23),     # 1x1: a GEMM of 8 row blocks, one column block
    # Stride-1 single-group convolutions with KW * C % 4 == 0 take the implicit-GEMM path where a path has one
    # (avx512vnni): dilated rows, an even and a one-row kernel, more than one 64-column panel, no padding,
    # and kernel rows too long for one K block (256 * 3 bytes), which are split into chunks.
    (8, 70, (3, 5), (1, 1), (0, 2), (2, 1), 1, 13, 11),
    (4, 8, (2, 2), (1, 1), (0, 0), (1, 1), 1, 7, 6),
    (12, 130, (1, 3), (1, 1), (0, 1), (1, 1), 1, 5, 9),
    (256, 40, (3, 3), (1, 1), (1, 1), (1, 1), 1, 9, 8),
    # ... and with strides: the A rows of an output row are sw pixels apart, output rows sh padded rows apart.
    (16, 40, (3, 3), (2, 2), (1, 1), (1, 1), 1, 17, 19),
    (32, 24, (1, 1), (2, 2), (0, 0), (1, 1), 1, 15, 14),     # 1x1 stride 2 (ResNet's downsampling shortcut)
    (8, 70, (3, 5), (2, 3), (1, 2), (2, 1), 1, 19, 23),      # strides 2 and 3, dilated rows
    (4, 8, (7, 7), (2, 2), (3, 3), (1, 1), 1, 23, 22),       # 7x7 stride 2, 4 channels
    # Groups of a few channels take the bundled grouped kernel where a path has one (avx512vnni): 16 / cout_g
    # groups per vector (a group of 32 in two), cin_g of 4 to 32 (the reorder in place when both exceed one), strides, dilation,
    # a channel count that is not a multiple of 64, and rows of 12-pixel tiles and shared remainders.
    (64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 16, 13, 11),    # cin_g 4, cout_g 4: 4 groups a vector
    (128, 128, (3, 3), (2, 2), (1, 1), (1, 1), 16, 15, 14),  # cin_g 8, cout_g 8: 2 groups, reordered; stride 2
    (64, 32, (3, 3), (1, 1), (2, 2), (2, 2), 4, 12, 9),      # cin_g 16, cout_g 8: dilated
    (48, 48, (3, 3), (1, 2), (1, 1), (1, 1), 3, 10, 13),     # cin_g 16, cout_g 16: 1 group; 48 channels
    (32, 16, (1, 3), (1, 1), (0, 1), (1, 1), 8, 7, 30),      # cin_g 4, cout_g 2: 8 groups; 30 columns
    (64, 32, (3, 3), (2, 1), (0, 1), (1, 1), 2, 9, 12),      # cin_g 32, cout_g 16
    (64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 2, 8, 26),      # cout_g 32: two vectors a group
    (48, 32, (3, 3), (1, 1), (1, 1), (1, 1), 2, 7, 15),      # cin_g 24 (6 quads), cout_g 16
]


def conv_weights(cout, cin_g, kernel, groups, depthwise):
    """int8 weight, scales, bias, and the operands the conv ops take: (packed, dw_weight, col_sums)."""
    w = int8(cout, cin_g, *kernel, lo=-127)
    wscale = torch.rand(cout) * 0.02 + 1e-3
    bias = torch.randn(cout)
    if depthwise:
        return w, wscale, bias, None, w[:, 0].permute(1, 2, 0).contiguous(), w.sum(dim=(1, 2, 3), dtype=torch.int32)
    packed, col_sums = ops.pack_int8_weight(w.permute(0, 2, 3, 1).reshape(cout, -1).contiguous(), groups)
    return w, wscale, bias, packed, None, col_sums


# The small shapes with a negative zero point, the large ones with a positive one.
@pytest.mark.parametrize("cfg,x_zp", [(c, -7) for c in CONVS] + [(c, 5) for c in LARGE_CONVS], ids=str)
def test_conv_matches_exact_reference(isa, threads, cfg, x_zp):
    cin, cout, kernel, stride, padding, dilation, groups, h, w_ = cfg
    x = torch.randint(-128, 128, (2, h, w_, cin), dtype=torch.int8)
    x_scale = 0.03
    depthwise = groups == cin == cout and groups > 1
    w, wscale, bias, packed, dw, col_sums = conv_weights(cout, cin // groups, kernel, groups, depthwise)
    y = I.conv2d_int8_op(x, x_scale, x_zp, packed, dw, col_sums, wscale, bias, cout, kernel[0], kernel[1],
                         list(stride), list(padding), list(dilation), groups, 0)
    ref = R.conv2d_int8(x, x_scale, x_zp, w, wscale, bias, stride, padding, dilation, groups)
    assert y.shape == ref.shape
    assert bool(((y - ref).abs() <= epilogue_tolerance(ref, bias) + 1e-6).all())


@pytest.mark.parametrize("cfg", CONVS + LARGE_CONVS, ids=str)
def test_conv_float_input_is_quantize_then_conv(isa, threads, cfg):
    # The fused input quantization must give exactly the quantize op's int8 tensor: the outputs are then
    # bit-identical (the same int32 accumulators through the same epilogue), NaN and out-of-range values included.
    cin, cout, kernel, stride, padding, dilation, groups, h, w_ = cfg
    x = torch.randn(2, h, w_, cin) * 3
    x.view(-1)[::97] = float("nan")
    x.view(-1)[5::89] = 1e6
    x_scale, x_zp = 0.021, -3
    depthwise = groups == cin == cout and groups > 1
    _, wscale, bias, packed, dw, col_sums = conv_weights(cout, cin // groups, kernel, groups, depthwise)
    args = (packed, dw, col_sums, wscale, bias, cout, kernel[0], kernel[1], list(stride), list(padding),
            list(dilation), groups, 1)
    want = I.conv2d_int8_op(ops.quantize(x, x_scale, x_zp, dtype=torch.int8), x_scale, x_zp, *args)
    got_op = I.conv2d_int8_float_input_op(x, x_scale, x_zp, *args)
    got_direct = I.conv2d_int8_float_input(x, x_scale, x_zp, *args)
    assert torch.equal(got_op, want)
    assert torch.equal(got_direct, want)


@pytest.mark.parametrize("nthreads", [2, 3])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("c,h,w_", [(144, 13, 57), (16, 13, 20)])
def test_depthwise_float_input_tasks_quantize_their_own_rows(isa, nthreads, stride, dilation, c, h, w_):
    """With several threads each depthwise task quantizes the input rows it reads (its halo too): tasks that
    start inside an image (57 x 144 int32 is 32 KiB a row: tasks of a few rows) or span two images (narrow
    rows: one task per thread over 3 images) must still give the quantize op's values."""
    pyslim.set_num_threads(nthreads)
    try:
        x = torch.randn(3, h, w_, c) * 3
        x.view(-1)[::101] = float("nan")
        x_scale, x_zp = 0.02, 4
        _, wscale, bias, packed, dw, col_sums = conv_weights(c, 1, (3, 3), c, True)
        args = (packed, dw, col_sums, wscale, bias, c, 3, 3, [stride, stride], [1, 1], [dilation, dilation], c, 2)
        want = I.conv2d_int8_op(ops.quantize(x, x_scale, x_zp, dtype=torch.int8), x_scale, x_zp, *args)
        assert torch.equal(I.conv2d_int8_float_input_op(x, x_scale, x_zp, *args), want)
    finally:
        pyslim.set_num_threads(None)


def test_direct_calls_match_the_ops_and_step_aside_when_needed():
    w = int8(24, 40)
    packed, col_sums = ops.pack_int8_weight(w)
    wscale, bias = torch.rand(24) + 0.1, torch.randn(24)
    x = torch.randn(5, 40)
    args = (packed, col_sums, wscale, bias, 24, True, False, 0)
    assert I.direct_call_ok(x, packed)
    assert torch.equal(I.linear_int8_dynamic(x, *args), I.linear_int8_dynamic_op(x, *args))
    assert not I.direct_call_ok(x.clone().requires_grad_(), packed)
    from torch.overrides import TorchFunctionMode

    with TorchFunctionMode():
        assert not I.direct_call_ok(x, packed)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fx = torch.empty(5, 40)
        assert not I.direct_call_ok(fx, packed)


def test_packed_weights_refuse_another_path():
    usable = pyslim.native_info()["usable_isas"]
    if len(usable) < 2:
        pytest.skip("needs two CPU paths")
    before = pyslim.active_isa()
    w = int8(8, 16)
    try:
        pyslim.force_isa(usable[-1])
        packed, _ = ops.pack_int8_weight(w)
        pyslim.force_isa("reference")
        with pytest.raises(ValueError, match=f"packed for the '{usable[-1]}' path but the active path is"):
            ops.gemm_int8(int8(2, 16), packed, 8)
    finally:
        pyslim.force_isa(before)


def test_int8_op_errors():
    w = int8(8, 16)
    packed, col_sums = ops.pack_int8_weight(w)
    with pytest.raises(ValueError, match=r"a must be 2-D \(M, 16\)"):
        ops.gemm_int8(int8(2, 15), packed, 8)
    with pytest.raises(TypeError, match=r"a must be int8 or uint8"):
        ops.gemm_int8(torch.randn(2, 16), packed, 8)
    with pytest.raises(ValueError, match=r"col_sums and weight_scale are required"):
        ops.gemm_int8(int8(2, 16), packed, 8, torch.float32)
    with pytest.raises(TypeError, match=r"packed must be a 1-D uint8 tensor"):
        ops.gemm_int8(int8(2, 16), packed.to(torch.int8), 8)
    with pytest.raises(ValueError, match=r"packed does not hold pyslim packed weights"):
        ops.gemm_int8(int8(2, 16), torch.zeros_like(packed), 8)
    with pytest.raises(TypeError, match=r"weight must be a 2-D int8 tensor"):
        ops.pack_int8_weight(torch.randn(8, 16))
    with pytest.raises(ValueError, match=r"n divisible by groups"):
        ops.pack_int8_weight(w, groups=3)
    with pytest.raises(ValueError, match=r"weight_scale must have 8 element"):
        ops.linear_int8_dynamic(torch.randn(2, 16), packed, col_sums, torch.ones(7), 8)
    with pytest.raises(TypeError, match=r"a must be float32; got int8"):  # the float-input GEMM's native entry
        I.linear_int8_static_op(int8(2, 16), 0.1, 0, packed, col_sums, torch.ones(8), None, 8, 1, 0, 1.0, 0)
    with pytest.raises(ValueError, match=r"a_zero_point must lie in the range of int8"):
        I.linear_int8_static_op(torch.randn(2, 16), 0.1, 200, packed, col_sums, torch.ones(8), None, 8, 1, 0, 1.0, 0)
    with pytest.raises(ValueError, match=r"a_scale must be > 0"):
        I.linear_int8_static_op(torch.randn(2, 16), 0.0, 0, packed, col_sums, torch.ones(8), None, 8, 1, 0, 1.0, 0)
    with pytest.raises(TypeError, match=r"a must be a 2-D int8/uint8 tensor"):
        ops.int8_matmul(torch.randn(2, 16), w)
    with pytest.raises(TypeError, match=r"w must be a 2-D int8 tensor"):
        ops.int8_matmul(int8(2, 16), w.to(torch.uint8))
    with pytest.raises(ValueError, match=r"w must be \(N, K\) with a's K = 15"):
        ops.int8_matmul(int8(2, 15), w)
    with pytest.raises(ValueError, match=r"at least one row and one column"):
        ops.int8_matmul(int8(2, 0), int8(3, 0))
    with pytest.raises(ValueError, match=r"a and w must be on one device"):
        ops.int8_matmul(int8(2, 16), w.to("meta"))
    cpacked, ccols = ops.pack_int8_weight(int8(6, 36), 1)  # a requantized conv output: its zero point's range
    with pytest.raises(ValueError, match=r"out_zero_point must lie in the range of out's dtype; got 200"):
        I.conv2d_int8_op(int8(1, 5, 5, 4), 0.1, 0, cpacked, None, ccols, torch.ones(6), None, 6, 3, 3, [1, 1], [1, 1],
                         [1, 1], 1, 0, I.OUT_DTYPES[torch.int8], 0.05, 200)
    from pyslim import _C
    from pyslim._native import capsule
    with pytest.raises(ValueError, match=r"a must be a CUDA tensor; got a CPU tensor"):  # the native entry itself
        _C.int8_matmul_cuda(capsule(int8(2, 16)), capsule(w), capsule(torch.empty(2, 8, dtype=torch.int32)), 0)


def test_int8_ops_opcheck():
    w = int8(8, 16)
    packed, col_sums = ops.pack_int8_weight(w)
    torch.library.opcheck(I.pack_int8_weight_op, (w, 1))
    torch.library.opcheck(I.linear_int8_dynamic_op, (torch.randn(3, 16), packed, col_sums, torch.rand(8) + 0.1,
                                                     torch.randn(8), 8, True, False, 1))
    torch.library.opcheck(I.gemm_int8_op, (int8(3, 16), 0.1, 2, packed, col_sums, torch.rand(8) + 0.1, None, 8, 1, 0,
                                           1.0, 0))
    torch.library.opcheck(I.int8_matmul_op, (int8(3, 16), w))
    torch.library.opcheck(I.linear_int8_static_op, (torch.randn(3, 16), 0.1, 2, packed, col_sums, torch.rand(8) + 0.1,
                                                    None, 8, 1, 0, 1.0, 0))
    x = int8(1, 5, 5, 4)
    cpacked, ccols = ops.pack_int8_weight(int8(6, 36), 1)
    torch.library.opcheck(I.conv2d_int8_op, (x, 0.1, 0, cpacked, None, ccols, torch.rand(6) + 0.1, None, 6, 3, 3,
                                             [1, 1], [1, 1], [1, 1], 1, 0))
    torch.library.opcheck(I.conv2d_int8_float_input_op, (torch.randn(1, 5, 5, 4), 0.1, 0, cpacked, None, ccols,
                                                         torch.rand(6) + 0.1, None, 6, 3, 3, [1, 1], [1, 1], [1, 1],
                                                         1, 0))


def check_drawn_conv(data, cin, cout, groups, max_kernel, max_size, with_bias):
    """Draws a geometry (kernel up to max_kernel, stride, padding, dilation, an input of up to max_size pixels a
    side that holds the dilated kernel), a signed or unsigned input with its zero point and int8 weights, and
    checks ops.conv2d_int8 against the exact reference up to the float epilogue's rounding."""
    kh, kw = data.draw(st.integers(1, max_kernel)), data.draw(st.integers(1, max_kernel))
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    padding = (data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2)))
    dilation = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    # the padded input must hold the dilated kernel
    h = data.draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), max_size), label="h")
    w_ = data.draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), max_size), label="w")
    signed = data.draw(st.booleans(), label="signed")
    x = torch.randint(-128, 128, (2, h, w_, cin), dtype=torch.int8) if signed else \
        torch.randint(0, 256, (2, h, w_, cin), dtype=torch.uint8)
    zp = data.draw(st.integers(-128, 127) if signed else st.integers(0, 255), label="zp")
    w = int8(cout, cin // groups, kh, kw, lo=-127)
    wscale = torch.rand(cout) * 0.02 + 1e-3
    bias = torch.randn(cout) if with_bias else None
    y = ops.conv2d_int8(x, 0.02, zp, w, wscale, bias, stride, padding, dilation, groups)
    ref = R.conv2d_int8(x, 0.02, zp, w, wscale, bias, stride, padding, dilation, groups)
    assert y.shape == ref.shape
    assert bool(((y - ref).abs() <= epilogue_tolerance(ref, bias) + 1e-6).all())


@HYP
@given(data=st.data())
def test_conv_hypothesis(isa, data):
    groups = data.draw(st.sampled_from([1, 2, 3]), label="groups")
    cin = groups * data.draw(st.integers(1, 5), label="cin_g")
    depthwise = data.draw(st.booleans(), label="depthwise")
    cout = cin if depthwise else groups * data.draw(st.integers(1, 6), label="cout_g")
    groups = cin if depthwise else groups
    check_drawn_conv(data, cin, cout, groups, max_kernel=4, max_size=9, with_bias=False)


@HYP
@given(data=st.data())
def test_grouped_conv_hypothesis(isa, data):
    # Groups of the sizes the bundled grouped kernel takes (and a few it declines), any geometry.
    groups = data.draw(st.sampled_from([2, 4, 8, 16]), label="groups")
    cin_g = data.draw(st.sampled_from([4, 8, 12, 16, 32]), label="cin_g")
    cout_g = data.draw(st.sampled_from([2, 4, 8, 16, 32, 3]), label="cout_g")
    check_drawn_conv(data, groups * cin_g, groups * cout_g, groups, max_kernel=3, max_size=11, with_bias=True)

"""pyslim.ops.fpgm_scores (native FPGM distance sums) against the float64 torch reference, on every CPU path
this machine supports, with 1 and 2 threads. The kernels' bound (kernels.h) is 5.4e-7 relative per score;
the tests assert the contract, 1e-6."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyslim
import pyslim.ops as ops
from pyslim import _C
from pyslim._native import capsule
from pyslim.ops._fpgm import fpgm_scores_op
from pyslim.prune import criteria

RTOL = 1e-6
SIZES = [1, 2, 3, 17, 64, 65, 577]


def _check(w: torch.Tensor, got: torch.Tensor):
    ref = criteria.fpgm_scores_reference(w.reshape(w.shape[0], -1))
    assert got.dtype == torch.float64 and got.shape == (w.shape[0],)
    torch.testing.assert_close(got, ref, rtol=RTOL, atol=0.0)


@pytest.mark.parametrize("C", SIZES)
@pytest.mark.parametrize("K", [1, 3, 17, 64, 65, 577])
def test_matches_float64_reference_every_isa(isa, threads, C, K):
    if C * C * K > 20_000_000:
        K = 65  # keep the float64 reference quick for the largest C
    w = torch.randn(C, K)
    _check(w, ops.fpgm_scores(w))


def test_several_tiles_and_threads(isa, threads):
    # K = 4608 gives 12-row tiles in the driver: 50 rows make an uneven triangle of tiles split across tasks.
    w = torch.randn(50, 4608)
    _check(w, ops.fpgm_scores(w))


def test_near_duplicate_rows_and_scaled_weights(isa):
    base = torch.randn(1, 300)
    w = base + 1e-3 * torch.randn(40, 300)  # every distance is small next to the values: cancellation-prone
    _check(w, ops.fpgm_scores(w))
    for scale in (2.0 ** -60, 2.0 ** -25, 2.0 ** 25, 2.0 ** 50):  # rescaled exactly inside the driver
        _check(w * scale, ops.fpgm_scores(w * scale))


def test_conv_weight_is_read_as_channels_by_rest(threads):
    w = torch.randn(32, 16, 3, 3)
    _check(w, ops.fpgm_scores(w))
    # non-contiguous input (a transposed view) gives the same scores as its contiguous copy
    t = torch.randn(40, 24).t()
    torch.testing.assert_close(ops.fpgm_scores(t), ops.fpgm_scores(t.contiguous()), rtol=0, atol=0)


def test_small_exact_cases():
    line = torch.tensor([[0.0], [1.0], [3.0]])
    assert ops.fpgm_scores(line).tolist() == [4.0, 3.0, 5.0]
    assert ops.fpgm_scores(torch.randn(1, 9)).tolist() == [0.0]
    assert ops.fpgm_scores(torch.ones(5, 33)).tolist() == [0.0] * 5
    assert ops.fpgm_scores(torch.empty(0, 4)).shape == (0,)
    assert ops.fpgm_scores(torch.empty(3, 0)).tolist() == [0.0] * 3


def test_half_precision_is_widened_exactly():
    w = torch.randn(20, 50).to(torch.bfloat16)
    _check(w.float(), ops.fpgm_scores(w))


def test_nan_propagates():
    w = torch.randn(6, 10)
    w[2, 3] = float("nan")
    assert torch.isnan(ops.fpgm_scores(w)).all()


def test_criteria_uses_native_for_float32_and_float64_stays_exact():
    w = torch.randn(30, 70)
    torch.testing.assert_close(criteria.fpgm_scores(w), ops.fpgm_scores(w), rtol=0, atol=0)
    w64 = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(criteria.fpgm_scores(w64), criteria.fpgm_scores_reference(w64), rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(C=st.integers(0, 40), K=st.integers(0, 70), seed=st.integers(0, 2 ** 31 - 1),
       exponent=st.integers(-30, 30))
def test_property_awkward_shapes_and_magnitudes(C, K, seed, exponent):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, K, generator=g) * (2.0 ** exponent)
    got = ops.fpgm_scores(w)
    if C == 0:
        assert got.shape == (0,)
        return
    _check(w, got)


def test_opcheck_and_compile():
    w = torch.randn(9, 13)
    torch.library.opcheck(fpgm_scores_op, (w,))
    compiled = torch.compile(lambda x: ops.fpgm_scores(x) * 2.0, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(w), ops.fpgm_scores(w) * 2.0)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match=r"weight must be a torch.Tensor"):
        ops.fpgm_scores([[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"weight must be float32 .*got torch.float64"):
        ops.fpgm_scores(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"weight must be float32 .*got torch.int32"):
        ops.fpgm_scores(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"weight must have at least 1 dimension"):
        ops.fpgm_scores(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"weight_2d must be a 2-D tensor"):
        criteria.fpgm_scores(torch.randn(3, 4, 5))


def test_binding_validates_before_any_kernel_runs():
    w = torch.randn(4, 6)
    out = torch.empty(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"weight must be 2-D"):
        _C.fpgm_scores(capsule(torch.randn(4, 2, 3)), capsule(out), 1)
    with pytest.raises((TypeError, ValueError), match=r"weight"):
        _C.fpgm_scores(capsule(w.double()), capsule(out), 1)
    with pytest.raises((TypeError, ValueError), match=r"weight"):
        _C.fpgm_scores(capsule(torch.randn(6, 4).t()), capsule(out), 1)
    with pytest.raises((TypeError, ValueError), match=r"out"):
        _C.fpgm_scores(capsule(w), capsule(torch.empty(4, dtype=torch.float32)), 1)
    with pytest.raises(ValueError, match=r"out must have shape \(4,\)"):
        _C.fpgm_scores(capsule(w), capsule(torch.empty(5, dtype=torch.float64)), 1)
    with pytest.raises(ValueError, match=r"threads must be >= 1; got 0"):
        _C.fpgm_scores(capsule(w), capsule(out), 0)


def test_isa_fixture_paths_are_all_exercised():
    assert "reference" in pyslim.native_info()["usable_isas"]

"""Calibration observers and native statistics against straightforward numpy implementations of the spec
(docs: /work/shared/spec/paddleslim-reference.md §1.1.5)."""

import math

import numpy as np
import pytest
import torch

from pyslim.ops import _calibration as C
from pyslim.quant.observers import (AbsMaxObserver, AvgObserver, EMDObserver, HistObserver, KLObserver, MSEObserver,
                                    make_observer, search_ratios)

ALGOS = ["abs_max", "avg", "hist", "KL", "mse", "emd"]


# ------------------------------------------------------------------------------------------------------
# numpy references (written from the spec text, independently of the native code)
# ------------------------------------------------------------------------------------------------------


def np_abs_range(batches):
    a = [np.abs(b.numpy().astype(np.float64)) for b in batches]
    return min(float(x.min()) for x in a), max(float(x.max()) for x in a)


def np_hist(batches, bins=2048):
    lo, hi = np_abs_range(batches)
    if lo == hi:  # pyslim's documented rule for a degenerate range
        lo, hi = 0.0, (hi if hi > 0 else 1.0)
    h = np.zeros(bins)
    for b in batches:
        h += np.histogram(np.abs(b.numpy()).astype(np.float64), bins=bins, range=(lo, hi))[0]
    edges = np.linspace(lo, hi, bins + 1)
    return h, edges[1] - edges[0]


def np_hist_threshold(batches, percent=0.9999, bins=2048):
    h, width = np_hist(batches, bins)
    h = h / h.sum()
    total = 0.0
    for i in range(bins):
        total += h[i]
        if total >= percent:
            return (i + 1 - 0.5) * width
    return (bins - 0.5) * width


def np_kl_curve(hist, bits=8):
    """KL per candidate i (NaN when skipped), Paddle's cal_kl_threshold as the spec describes it."""
    hist = np.asarray(hist, dtype=np.float64)
    bins = len(hist)
    levels = 2 ** (bits - 1) - 1
    start = int((bins - 1) * 0.5)
    p_sum = hist.sum()
    curve = np.full(bins, np.nan)
    for i in range(start, bins):
        if hist[i - 1] == 0:
            continue
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        merged = i // levels
        q = np.zeros(i)
        for b in range(levels):
            lo_j = b * merged
            hi_j = i if b == levels - 1 else lo_j + merged
            nonzero = p[lo_j:hi_j] != 0
            if nonzero.any():
                q[lo_j:hi_j][nonzero] = hist[lo_j:hi_j].sum() / nonzero.sum()
        q_sum = q.sum()
        m = p != 0
        curve[i] = (np.sum(p[m] * np.log(q_sum * p[m])) - np.sum(p[m] * np.log(p_sum * q[m]))) / p_sum
    return curve, start


def np_kl_threshold(hist, width, bits=8):
    curve, start = np_kl_curve(hist, bits)
    if np.all(np.isnan(curve)):
        s = start
        while s > 0 and hist[s] == 0:
            s -= 1
        return (s + 0.5) * width, curve
    return (int(np.nanargmin(curve)) + 0.5) * width, curve


def np_search(batches, emd=False, bits=8):
    levels = 2 ** (bits - 1) - 1
    best, best_s = math.inf, 0.0
    for b in batches:
        x = b.numpy().astype(np.float64).ravel()
        amax = float(np.abs(x).max()) or 1e-8
        for k in search_ratios():
            s = k * amax
            xh = np.clip(np.round(x / s * levels), -levels - 1, levels) / levels * s
            loss = (abs(x.mean() - xh.mean()) + abs(x.std() - xh.std())) if emd else float(((x - xh) ** 2).mean())
            if loss <= best:
                best, best_s = loss, s
    return best_s, best


def observe(obs, batches):
    for b in batches:
        assert obs(b) is b  # statistics only: the input comes back unchanged
    if obs.needs_two_passes:
        obs.begin_histogram()
        for b in batches:
            obs(b)
    return obs.threshold()


def np_reference(algo, batches, percent=0.9999):
    if algo == "abs_max":
        return max(float(np.abs(b.numpy()).max()) for b in batches)
    if algo == "avg":
        return float(np.mean([np.abs(b.numpy().reshape(b.shape[0], -1)).max(1).astype(np.float64).mean()
                              for b in batches]))
    if algo == "hist":
        return np_hist_threshold(batches, percent)
    if algo == "KL":
        h, w = np_hist(batches)
        return np_kl_threshold(h, w)[0]
    return np_search(batches, emd=algo == "emd")[0]


def datasets():
    g = torch.Generator().manual_seed(0)
    relu = [torch.relu(torch.randn(16, 8, 6, 6, generator=g)) for _ in range(3)]
    gauss = [torch.randn(32, 64, generator=g) * (1 + i) for i in range(4)]
    outlier = [torch.randn(4, 1000, generator=g) * 0.01 for _ in range(2)]
    outlier[1][2, 17] = 50.0
    heavy = [torch.distributions.StudentT(2.0).sample((8, 512)) for _ in range(3)]
    return {
        "relu": relu,
        "gauss_multi_batch": gauss,
        "single_outlier": outlier,
        "heavy_tail": heavy,
        "all_zero": [torch.zeros(4, 10), torch.zeros(2, 10)],
        "constant": [torch.full((3, 7), 2.5), torch.full((5, 7), -2.5)],
    }


# ------------------------------------------------------------------------------------------------------
# native statistics
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 65536, 200_003])
@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_abs_histogram_matches_numpy_exactly(n, dtype):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * 3
    if n > 10:
        x[:5] = torch.tensor([4.0, -4.0, 0.5, 10.0, -0.25])  # on the upper edge, beyond it, on interior edges
    lo, hi, bins = 0.25, 4.0, 2048
    out = torch.zeros(bins, dtype=dtype)
    C.abs_histogram(x, bins, lo, hi, out=out)
    C.abs_histogram(x, bins, lo, hi, out=out)  # accumulates
    ref = np.histogram(np.abs(x.numpy()).astype(np.float64), bins=bins, range=(lo, hi))[0]
    np.testing.assert_array_equal(out.numpy(), 2 * ref)


@pytest.mark.parametrize("bins", [1, 2, 3, 100, 2048])
def test_abs_histogram_bins_and_edges(bins):
    # values exactly on every edge: numpy's edge correction decides the bin
    lo, hi = 0.1, 0.7
    edges = np.linspace(lo, hi, bins + 1)
    x = torch.from_numpy(np.concatenate([edges, -edges, [0.0, 1.0, np.inf, -np.inf]]).astype(np.float32))
    out = C.abs_histogram(x, bins, lo, hi)
    ref = np.histogram(np.abs(x.numpy()).astype(np.float64), bins=bins, range=(lo, hi))[0]
    np.testing.assert_array_equal(out.numpy(), ref)


def test_abs_histogram_is_thread_independent():
    import pyslim

    x = torch.randn(300_001)
    pyslim.set_num_threads(1)
    try:
        a = C.abs_histogram(x, 2048, 0.0, 5.0)
    finally:
        pyslim.set_num_threads(None)
    pyslim.set_num_threads(2)
    try:
        b = C.abs_histogram(x, 2048, 0.0, 5.0)
    finally:
        pyslim.set_num_threads(None)
    assert torch.equal(a, b)


def test_abs_histogram_nan_raises_and_leaves_buffer():
    out = torch.zeros(16, dtype=torch.float64)
    x = torch.randn(100_000)
    x[54321] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        C.abs_histogram(x, 16, 0.0, 1.0, out=out)
    assert float(out.abs().sum()) == 0.0


def test_abs_histogram_argument_errors():
    with pytest.raises(ValueError, match="lo < hi"):
        C.abs_histogram(torch.randn(4), 8, 1.0, 1.0)
    with pytest.raises(ValueError, match="out must be"):
        C.abs_histogram(torch.randn(4), 8, 0.0, 1.0, out=torch.zeros(8, dtype=torch.float32))
    with pytest.raises(ValueError, match="bins"):
        C.abs_histogram(torch.randn(4), 0, 0.0, 1.0)
    with pytest.raises(TypeError, match="x must be"):
        C.abs_histogram([1.0], 8, 0.0, 1.0)


def kl_histograms():
    rng = np.random.default_rng(0)
    yield "gauss", np.histogram(np.abs(rng.normal(size=200_000)), 2048)[0]
    yield "exponential", np.histogram(rng.exponential(size=100_000), 2048)[0]
    yield "relu_sparse", np.histogram(np.maximum(rng.normal(size=5_000), 0), 2048)[0]
    h = np.zeros(2048)
    h[:40] = rng.integers(1, 1000, 40)
    h[2047] = 1  # one outlier: no candidate qualifies, the fallback decides
    yield "single_outlier", h
    h = np.zeros(2048)
    h[[3, 1500, 1800, 2047]] = [100, 5, 1, 2]
    yield "few_bins", h
    yield "small_bins_300", np.histogram(rng.normal(size=50_000), 300)[0]


@pytest.mark.parametrize("name,hist", list(kl_histograms()), ids=[n for n, _ in kl_histograms()])
def test_kl_threshold_matches_numpy_reference(name, hist):
    hist = np.asarray(hist, dtype=np.float64)
    width = 0.01
    ref_t, ref_curve = np_kl_threshold(hist, width)
    curve, _ = C.kl_curve(torch.from_numpy(hist))
    curve = curve.numpy()
    assert np.array_equal(np.isnan(curve), np.isnan(ref_curve)), "skipped candidates differ"
    ok = ~np.isnan(ref_curve)
    np.testing.assert_allclose(curve[ok], ref_curve[ok], rtol=1e-9, atol=1e-12)
    t = C.kl_threshold(torch.from_numpy(hist), width)
    if t != ref_t:  # only acceptable for a tie within rounding
        i, j = int(t / width - 0.5), int(ref_t / width - 0.5)
        assert abs(ref_curve[i] - ref_curve[j]) <= 1e-12 * max(1.0, abs(ref_curve[j])), (t, ref_t)
    if name == "single_outlier":
        assert t == pytest.approx((39 + 0.5) * width)  # the last non-empty bin below the midpoint


def test_kl_threshold_argument_errors():
    with pytest.raises(ValueError, match="every merged bucket"):
        C.kl_threshold(torch.ones(200), 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        C.kl_threshold(-torch.ones(2048), 0.1)
    with pytest.raises(ValueError, match="bin_width"):
        C.kl_threshold(torch.ones(2048), 0.0)


def test_quant_error_sweep_matches_numpy():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(70_001, generator=g) * 2 + 0.5
    scales = [0.5, 1.3, 4.0, 9.0]
    table, mean, std = C.quant_error_sweep(x, scales)
    xd = x.numpy().astype(np.float64)
    assert mean == pytest.approx(xd.mean(), rel=1e-12)
    assert std == pytest.approx(xd.std(), rel=1e-12)
    for row, s in zip(table.tolist(), scales):
        xh = np.clip(np.round(xd / s * 127), -128, 127) / 127 * s
        assert row[0] == pytest.approx(((xd - xh) ** 2).mean(), rel=1e-10)
        assert row[1] == pytest.approx(xh.mean(), rel=1e-10, abs=1e-13)
        assert row[2] == pytest.approx(xh.std(), rel=1e-10)
    bad = x.clone()
    bad[5] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        C.quant_error_sweep(bad, scales)


def test_search_ratios_reproduce_paddles_float_loop():
    r = search_ratios()
    assert len(r) == 35 and r[0] == 0.3 and r[-1] == pytest.approx(0.98)


# ------------------------------------------------------------------------------------------------------
# observers
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("data", list(datasets()))
def test_observer_matches_numpy_reference(algo, data):
    batches = datasets()[data]
    got = observe(make_observer(algo, name="layer"), batches)
    want = np_reference(algo, batches)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (got, want)


def test_observer_specific_values():
    # hist on a constant: range [0, 2.5], all mass in the last bin -> (2047 + 0.5) * 2.5 / 2048
    assert observe(HistObserver(), [torch.full((4, 4), 2.5)]) == pytest.approx(2047.5 * 2.5 / 2048)
    # mse on a constant: every candidate clips to s, the largest k (0.98) is best
    assert observe(MSEObserver(), [torch.full((4, 4), 2.0)]) == pytest.approx(0.98 * 2.0)
    # abs_max and avg on known values
    x = torch.tensor([[1.0, -3.0], [0.5, 0.25]])
    assert observe(AbsMaxObserver(), [x, x / 10]) == 3.0
    assert observe(AvgObserver(), [x, x * 2]) == pytest.approx(((3 + 0.5) / 2 + (6 + 1) / 2) / 2)
    # the left-edge quirk: |x| in [10, 11] gives a threshold near 1, not near 11
    t = observe(HistObserver(hist_percent=1.0), [10 + torch.rand(1000)])
    assert 0.9 < t < 1.01


@pytest.mark.parametrize("algo", ALGOS)
def test_clipped_range_is_the_signed_range_inside_the_threshold(algo):
    batches = [torch.tensor([-0.5, 0.0, 2.0, 1.0]), torch.tensor([-0.25, 3.0])]
    obs = make_observer(algo)
    t = observe(obs, batches)
    assert float(obs.min_value) == -0.5 and float(obs.max_value) == 3.0
    assert obs.clipped_range() == (max(-0.5, -t), min(3.0, t))
    relu = make_observer(algo)  # never below zero: [0, threshold]
    t = observe(relu, [torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.5, 4.0])])
    assert relu.clipped_range() == (0.0, min(4.0, t))
    positive = make_observer(algo)  # a range that excludes 0 is widened to contain it
    t = observe(positive, [torch.tensor([1.0, 2.0, 3.0])])
    assert positive.clipped_range()[0] == 0.0


@pytest.mark.parametrize("algo", ALGOS)
def test_nan_raises_value_error_naming_the_layer(algo):
    obs = make_observer(algo, name="features.3")
    x = torch.randn(4, 8)
    x[1, 2] = float("nan")
    if obs.needs_two_passes:
        with pytest.raises(ValueError, match=r"features\.3.*NaN"):
            obs(x)
        obs(torch.randn(4, 8))
        obs.begin_histogram()
    with pytest.raises(ValueError, match=r"features\.3.*NaN"):
        obs(x)


@pytest.mark.parametrize("algo", ALGOS)
def test_threshold_without_data_raises(algo):
    with pytest.raises(RuntimeError, match="no data"):
        make_observer(algo, name="fc").threshold()


@pytest.mark.parametrize("algo", ["hist", "KL"])
def test_two_pass_observer_needs_the_histogram_pass(algo):
    obs = make_observer(algo)
    obs(torch.randn(10))
    with pytest.raises(RuntimeError, match="two passes"):
        obs.threshold()


@pytest.mark.parametrize("algo", ALGOS)
def test_state_dict_round_trip(algo):
    batches = datasets()["gauss_multi_batch"]
    a = make_observer(algo, name="a")
    want = observe(a, batches)
    b = make_observer(algo, name="b")
    b.load_state_dict(a.state_dict())
    assert b.threshold() == want
    assert set(a.state_dict()) >= {"count"}
    # continuing to observe after a reload carries the statistics on
    if not a.needs_two_passes:
        a(batches[0] * 3)
        b(batches[0] * 3)
        assert a.threshold() == b.threshold()


def test_make_observer_names_and_errors():
    assert isinstance(make_observer("kl"), KLObserver) and isinstance(make_observer("KL"), KLObserver)
    assert isinstance(make_observer("EMD"), EMDObserver)
    assert make_observer("hist").needs_two_passes and not make_observer("mse").needs_two_passes
    with pytest.raises(ValueError, match="algo must be one of"):
        make_observer("percentile")
    with pytest.raises(ValueError, match="hist_percent"):
        make_observer("hist", hist_percent=1.5)


def test_empty_tensors_are_ignored():
    obs = AbsMaxObserver()
    obs(torch.empty(0, 3))
    with pytest.raises(RuntimeError, match="no data"):
        obs.threshold()


def test_sync_in_a_single_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        batches = datasets()["relu"]
        for algo in ALGOS:
            obs = make_observer(algo)
            for b in batches:
                obs(b)
            obs.sync()
            if obs.needs_two_passes:
                obs.begin_histogram()
                for b in batches:
                    obs(b)
                obs.sync()
            assert obs.threshold() == pytest.approx(np_reference(algo, batches), rel=1e-12)
            assert float(obs.min_value) == min(float(b.min()) for b in batches)
            assert float(obs.max_value) == max(float(b.max()) for b in batches)
    finally:
        dist.destroy_process_group()

"""The benchmark harness itself: interleaved timing and the printed tables (the timings are not asserted)."""

from pyslim import _bench


def test_interleaved_medians_runs_every_function_in_rounds():
    calls = []
    fns = {name: (lambda name: lambda: calls.append(name))(name) for name in ("a", "b", "c")}
    med = _bench._interleaved_medians(fns, repeats=3, burst=2, min_time=0.0)
    assert set(med) == {"a", "b", "c"} and all(v >= 0 for v in med.values())
    # one warm-up call each, then rounds of two calls per function in order
    assert calls[:3] == ["a", "b", "c"]
    assert calls[3:9] == ["a", "a", "b", "b", "c", "c"]
    assert len(calls) == 3 + 3 * 2 * 3


def test_tables_align_their_columns():
    rows = [dict(threads=1, shape="(64,576)", pyslim_ms=0.04, cdist_ms=0.07, speedup=1.75, pyslim_rel_err=1e-9,
                 cdist_rel_err=9e-6),
            dict(threads=2, shape="(2048,4608)", pyslim_ms=106.5, cdist_ms=186.4, speedup=1.75,
                 pyslim_rel_err=1.7e-10, cdist_rel_err=3.7e-7)]
    lines = _bench.format_fpgm_table(rows).splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert "1.75x" in lines[2] and "106.500" in lines[3]
    int8 = _bench.format_int8_table([dict(threads=1, shape="s", op="o", baseline="b", pyslim_ms=1.0, baseline_ms=2.0,
                                          speedup=2.0, pyslim_GOPS=10.0)]).splitlines()
    assert len({len(line) for line in int8}) == 1 and "2.00x" in int8[2]


def test_conv_rows_time_every_baseline_of_a_strided_and_a_grouped_case():
    cases = {"a": dict(batch=1, cin=8, cout=16, k=3, groups=1, hw=9, stride=2),
             "b": dict(batch=1, cin=32, cout=32, k=3, groups=8, hw=6)}
    rows = _bench._conv_rows(cases, threads=1, repeats=1)
    assert [r["shape"] for r in rows] == ["a"] * 4 + ["b"] * 4
    assert rows[0]["baseline"] == "fp32 F.conv2d channels_last"
    assert {r["baseline"] for r in rows[1:4]} == {f"torch.ao quantized Conv2d [{e}]" for e in _bench.TORCH_AO_ENGINES}
    # 5 x 5 outputs of a 3x3 stride-2 convolution over 9 x 9 (padding 1), 16 channels, 8 inputs each
    assert abs(rows[0]["pyslim_GOPS"] * rows[0]["pyslim_ms"] * 1e6 - 2 * 25 * 16 * 8 * 9) < 1e-3
    assert all(r["pyslim_ms"] > 0 for r in rows)
    assert "conv vs best torch.ao engine" in _bench.int8_summary(rows)

"""Side-by-side benchmark of pyslim's fake-quant kernels against what a PyTorch user would otherwise run.

One run measures everything on the same machine, in the same process: pyslim's ops, torch's
``fake_quantize_per_tensor_affine`` / ``fake_quantize_per_channel_affine`` (forward, and forward+backward),
a pure-PyTorch PACT (clip by relu + round with straight-through, as users write it), and a plain copy of
the same tensor (the bandwidth ceiling). Times are medians of repeated runs; ratios are baseline time
divided by pyslim time (higher is better for pyslim). Run it as ``pyslim bench`` or ``python bench/compare.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch
import logging

import torch.nn.functional as F

import pyslim
import pyslim.ops as ops

logger = logging.getLogger("pyslim.bench")

SHAPES = {
    "act-64x256x56x56": ((64, 256, 56, 56), None),
    "weight-512x512x3x3-axis0": ((512, 512, 3, 3), 0),
    "seq-8x128x768": ((8, 128, 768), None),
}


def _median_time(fn: Callable[[], object], repeats: int, min_time: float = 0.2) -> float:
    fn()  # warm-up (allocations, first-touch)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_time and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved_medians(fns: Dict[str, Callable[[], object]], repeats: int, burst: int = 5,
                         min_time: float = 0.2) -> Dict[str, float]:
    """Median time of each function, measured in interleaved rounds: every round runs each function `burst`
    times back to back (so caches and threads are warm for all but the first call) and records each call.

    Timing one function's runs, then the next one's, lets a transient slowdown of this shared 2-core VM (a
    neighbour, the host, another thread pool still spinning) fall on one side of a comparison only; in rounds,
    it falls on every side alike.
    """
    for fn in fns.values():
        fn()  # warm-up (allocations, first touch, packing)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or (time.perf_counter() - start < min_time * len(fns) and rounds < 100):
        for name, fn in fns.items():
            for _ in range(burst):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(v) for name, v in times.items()}


def _pact_torch(x: torch.Tensor, alpha: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """PACT as a user writes it in PyTorch: PaddleSlim's relu form, then round with straight-through."""
    y = x - F.relu(x - alpha) + F.relu(-alpha - x)
    bin_count = 2 ** (bits - 1) - 1
    q = torch.round(y * bin_count / alpha) * alpha / bin_count
    return y + (q - y).detach()


def _fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, g: torch.Tensor,
             params: Optional[List[torch.Tensor]] = None):
    leaf = x.detach().requires_grad_()

    def run():
        leaf.grad = None
        for p in params or []:
            p.grad = None
        fn(leaf).backward(g)

    return run


def run_benchmarks(threads_list: List[int], repeats: int, shapes: Dict[str, tuple]) -> List[dict]:
    rows = []
    saved_threads = torch.get_num_threads()
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            pyslim.set_num_threads(None)  # follow torch
            for name, (shape, axis) in shapes.items():
                x = torch.randn(shape) * 2
                g = torch.randn(shape)
                nbytes = x.numel() * 4
                # The "same-run copy of the tensor": x.clone(), which allocates its output like every op measured.
                t_copy = _median_time(lambda: x.clone(), repeats)
                copy_bw = 2 * nbytes / t_copy
                if axis is None:
                    scale_t, zp_t = torch.tensor(0.02), torch.tensor(0, dtype=torch.int32)

                    def ours(v):
                        return ops.fake_quant_affine(v, scale_t, zp_t, -128, 127)

                    def theirs(v):
                        return torch.fake_quantize_per_tensor_affine(v, 0.02, 0, -128, 127)

                    torch_name = "torch.fake_quantize_per_tensor_affine"
                else:
                    c = shape[axis]
                    scale_t = torch.rand(c) * 0.02 + 0.01
                    zp_t = torch.zeros(c, dtype=torch.int32)

                    def ours(v):
                        return ops.fake_quant_affine(v, scale_t, zp_t, -128, 127, axis=axis)

                    def theirs(v):
                        return torch.fake_quantize_per_channel_affine(v, scale_t, zp_t, axis, -128, 127)

                    torch_name = "torch.fake_quantize_per_channel_affine"

                def add(op, baseline, t_ours, t_base, bytes_moved):
                    rows.append({
                        "threads": threads, "shape": name, "op": op, "baseline": baseline,
                        "pyslim_ms": t_ours * 1e3, "baseline_ms": t_base * 1e3, "speedup": t_base / t_ours,
                        "pyslim_GBps": bytes_moved / t_ours / 1e9, "copy_GBps": copy_bw / 1e9,
                        "fraction_of_copy_bw": (bytes_moved / t_ours) / copy_bw,
                    })

                # forward: read x, write y
                add("fake_quant_affine fwd", torch_name, _median_time(lambda: ours(x), repeats),
                    _median_time(lambda: theirs(x), repeats), 2 * nbytes)
                # forward + backward with the clipped gradient: the forward reads x and writes y plus a 1-bit
                # mask, the backward reads the mask and g and writes grad_x (16.25 bytes per element)
                add("fake_quant_affine fwd+bwd", torch_name, _median_time(_fwd_bwd(ours, x, g), repeats),
                    _median_time(_fwd_bwd(theirs, x, g), repeats), 4.0625 * nbytes)
                # abs-max variants (scale reduced natively in the same call): read x twice, write y
                if axis is None:
                    t_absmax = _median_time(lambda: ops.fake_quant_abs_max(x), repeats)
                    add("fake_quant_abs_max fwd (incl. scale)", "x.clone()", t_absmax, t_copy, 3 * nbytes)
                else:
                    t_absmax = _median_time(lambda: ops.fake_quant_channel_wise_abs_max(x, axis), repeats)
                    add("fake_quant_channel_wise_abs_max fwd (incl. scale)", "x.clone()", t_absmax, t_copy,
                        3 * nbytes)
                # PACT, forward + backward, vs the pure-PyTorch version (its backward needs x for d(alpha):
                # read x, write y; read x and g, write grad_x)
                alpha_ours = torch.tensor(3.0, requires_grad=True)
                alpha_torch = torch.tensor(3.0, requires_grad=True)
                add("pact fwd+bwd", "pure-PyTorch PACT",
                    _median_time(_fwd_bwd(lambda v: ops.pact(v, alpha_ours), x, g, [alpha_ours]), repeats),
                    _median_time(_fwd_bwd(lambda v: _pact_torch(v, alpha_torch), x, g, [alpha_torch]), repeats),
                    5 * nbytes)
                del x, g
    finally:
        torch.set_num_threads(saved_threads)
    return rows


GEMM_SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (128, 4096, 4096), (512, 1024, 1024), (3136, 64, 576)]
CONV_CASES = {
    "conv3x3 64->64 (1,64,56,56)": dict(batch=1, cin=64, cout=64, k=3, groups=1, hw=56),
    "conv3x3 64->64 (8,64,56,56)": dict(batch=8, cin=64, cout=64, k=3, groups=1, hw=56),
    "dw3x3 144 (1,144,56,56)": dict(batch=1, cin=144, cout=144, k=3, groups=144, hw=56),
    "conv1x1 64->256 (1,64,56,56)": dict(batch=1, cin=64, cout=256, k=1, groups=1, hw=56),
}
# Layer shapes of the CNNs people ship (`pyslim bench --suite cnn`): ResNet-50's and MobileNet / EfficientNet's
# stems, ResNet-50's 3x3 layers of every stage and its strided ones, ResNeXt-50 (32x4d) grouped layers, and
# strided / 5x5 depthwise layers; batch 1.
CNN_CASES = {
    "stem 7x7/2 3->64 (1,3,224,224)": dict(batch=1, cin=3, cout=64, k=7, groups=1, hw=224, stride=2),
    "stem 3x3/2 3->32 (1,3,224,224)": dict(batch=1, cin=3, cout=32, k=3, groups=1, hw=224, stride=2),
    "3x3 128 (1,128,28,28)": dict(batch=1, cin=128, cout=128, k=3, groups=1, hw=28),
    "3x3 256 (1,256,14,14)": dict(batch=1, cin=256, cout=256, k=3, groups=1, hw=14),
    "3x3 512 (1,512,7,7)": dict(batch=1, cin=512, cout=512, k=3, groups=1, hw=7),
    "3x3/2 128 (1,128,56,56)": dict(batch=1, cin=128, cout=128, k=3, groups=1, hw=56, stride=2),
    "1x1/2 256->512 (1,256,56,56)": dict(batch=1, cin=256, cout=512, k=1, groups=1, hw=56, stride=2),
    "3x3 g32 256 (1,256,28,28)": dict(batch=1, cin=256, cout=256, k=3, groups=32, hw=28),
    "3x3 g32 1024 (1,1024,7,7)": dict(batch=1, cin=1024, cout=1024, k=3, groups=32, hw=7),
    "dw3x3/2 96 (1,96,112,112)": dict(batch=1, cin=96, cout=96, k=3, groups=96, hw=112, stride=2),
    "dw5x5 240 (1,240,14,14)": dict(batch=1, cin=240, cout=240, k=5, groups=240, hw=14),
}
TORCH_AO_ENGINES = ("fbgemm", "x86", "onednn")


def _on_engine(engine: str, fn, x):
    """Runs a torch.ao module with its engine selected (the engines' modules are timed in interleaved rounds)."""
    torch.backends.quantized.engine = engine
    return fn(x)


def _torch_ao_dynamic_linear(linear, engine):
    import torch.ao.nn.quantized.dynamic as nnqd

    torch.backends.quantized.engine = engine
    return nnqd.Linear.from_float(_with_qconfig(linear, engine))


def _with_qconfig(module, engine):
    import copy

    m = copy.deepcopy(module)
    m.qconfig = torch.ao.quantization.default_dynamic_qconfig
    return m


def _torch_ao_conv(conv, engine, x_scale, x_zp):
    import torch.ao.nn.quantized as nnq

    torch.backends.quantized.engine = engine
    w = conv.weight.detach()
    w_scale = (w.abs().amax(dim=(1, 2, 3)) / 127).clamp(min=1e-8)
    qw = torch.quantize_per_channel(w, w_scale, torch.zeros_like(w_scale, dtype=torch.long), 0, torch.qint8)
    q = nnq.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                   conv.groups, conv.bias is not None)
    q.set_weight_bias(qw, conv.bias.detach() if conv.bias is not None else None)
    q.scale, q.zero_point = 0.05, 128

    def run(x):
        xq = torch.quantize_per_tensor(x, x_scale, x_zp, torch.quint8)
        return q(xq).dequantize()

    return run


def _each_thread_count(threads_list: List[int]):
    """Yields each thread count with torch and pyslim set to it (warnings of the deprecated torch.ao modules
    silenced); restores torch's thread count and quantized engine when done."""
    import warnings

    warnings.filterwarnings("ignore")
    saved_engine = torch.backends.quantized.engine
    saved_threads = torch.get_num_threads()
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            pyslim.set_num_threads(None)
            yield threads
    finally:
        torch.set_num_threads(saved_threads)
        torch.backends.quantized.engine = saved_engine


def run_int8_benchmarks(threads_list: List[int], repeats: int) -> List[dict]:
    """int8 GEMM and convolution vs fp32 torch, torch.ao's quantized engines and torch._int_mm."""
    from pyslim.quant import nn as qnn

    rows = []
    for threads in _each_thread_count(threads_list):
        for m, n, k in GEMM_SHAPES:
            lin = torch.nn.Linear(k, n).eval()
            x = torch.randn(m, k)
            ops_count = 2 * m * n * k
            ours = qnn.Int8Linear.from_float(lin)
            fns = {"ours": lambda: ours(x),
                   "fp32 F.linear": lambda: torch.nn.functional.linear(x, lin.weight, lin.bias)}
            for eng in TORCH_AO_ENGINES:
                try:
                    q = _torch_ao_dynamic_linear(lin, eng)
                    q(x)
                    fns[f"torch.ao dynamic Linear [{eng}]"] = (lambda q, eng: lambda: _on_engine(eng, q, x))(q, eng)
                except Exception as exc:  # an engine missing from this torch build
                    logger.info("torch.ao engine %s failed: %s", eng, exc)
            # raw int8 x int8 -> int32 against torch._int_mm
            a8 = torch.randint(-128, 128, (m, k), dtype=torch.int8)
            w8t = ours.weight_int8.t().contiguous()
            ours._ensure_packed()
            fns["raw"] = lambda: ops.gemm_int8(a8, ours._packed, n)
            try:
                torch._int_mm(a8, w8t)
                fns["torch._int_mm"] = lambda: torch._int_mm(a8, w8t)
            except RuntimeError:
                pass
            med = _interleaved_medians(fns, repeats)
            t_ours, t_raw = med.pop("ours"), med.pop("raw")
            t_int_mm = med.pop("torch._int_mm", float("nan"))
            base = {name: med.get(name, float("nan")) for name in
                    ["fp32 F.linear"] + [f"torch.ao dynamic Linear [{eng}]" for eng in TORCH_AO_ENGINES]}
            for name, t in base.items():
                rows.append(_int8_row(threads, f"linear M={m} N={n} K={k}", "Int8Linear (dynamic)", name,
                                      t_ours, t, ops_count))
            rows.append(_int8_row(threads, f"linear M={m} N={n} K={k}", "gemm_int8 int32", "torch._int_mm",
                                  t_raw, t_int_mm, ops_count))
        rows += _conv_rows(CONV_CASES, threads, repeats)
    return rows


def _conv_rows(cases: Dict[str, dict], threads: int, repeats: int) -> List[dict]:
    """Int8Conv2d (static activation scale, float in and out) against fp32 torch in channels_last and torch.ao's
    quantized Conv2d on each engine (quantize and dequantize included), at the current thread count."""
    from pyslim.quant import nn as qnn

    rows = []
    for name, c in cases.items():
        stride = c.get("stride", 1)
        conv = torch.nn.Conv2d(c["cin"], c["cout"], c["k"], stride=stride, padding=c["k"] // 2,
                               groups=c["groups"]).eval()
        x = torch.randn(c["batch"], c["cin"], c["hw"], c["hw"]).contiguous(memory_format=torch.channels_last)
        conv_cl = conv.to(memory_format=torch.channels_last)
        out_hw = (c["hw"] + 2 * (c["k"] // 2) - c["k"]) // stride + 1
        ops_count = 2 * c["batch"] * out_hw * out_hw * c["cout"] * (c["cin"] // c["groups"]) * c["k"] ** 2
        x_scale, x_zp = float(x.abs().max()) / 127, 128
        ours = qnn.Int8Conv2d.from_float(conv, activation=(x_scale, 0))
        fns = {"ours": lambda: ours(x), "fp32 F.conv2d channels_last": lambda: conv_cl(x)}
        for eng in TORCH_AO_ENGINES:
            try:
                run = _torch_ao_conv(conv, eng, x_scale, x_zp)
                run(x)
                fns[f"torch.ao quantized Conv2d [{eng}]"] = (lambda run, eng: lambda: _on_engine(eng, run, x))(
                    run, eng)
            except Exception as exc:
                logger.info("torch.ao engine %s failed: %s", eng, exc)
        med = _interleaved_medians(fns, repeats)
        t_ours = med.pop("ours")
        base = {name: med.get(name, float("nan")) for name in
                ["fp32 F.conv2d channels_last"] + [f"torch.ao quantized Conv2d [{eng}]" for eng in TORCH_AO_ENGINES]}
        for bname, t in base.items():
            rows.append(_int8_row(threads, name, "Int8Conv2d (static act.)", bname, t_ours, t, ops_count))
    return rows


def run_cnn_benchmarks(threads_list: List[int], repeats: int) -> List[dict]:
    """CNN layer shapes (CNN_CASES): Int8Conv2d vs fp32 torch and torch.ao's quantized Conv2d engines."""
    return [row for threads in _each_thread_count(threads_list) for row in _conv_rows(CNN_CASES, threads, repeats)]


def _int8_row(threads, shape, op, baseline, t_ours, t_base, ops_count) -> dict:
    return {"threads": threads, "shape": shape, "op": op, "baseline": baseline, "pyslim_ms": t_ours * 1e3,
            "baseline_ms": t_base * 1e3, "speedup": t_base / t_ours, "pyslim_GOPS": ops_count / t_ours / 1e9}


def _format_rows(rows: List[dict], columns) -> str:
    """A fixed-width table; columns are (header, format spec such as '<26' or '>10', cell(row) -> str)."""
    head = "  ".join(f"{h:{spec}}" for h, spec, _ in columns)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append("  ".join(f"{cell(r):{spec}}" for _, spec, cell in columns))
    return "\n".join(lines)


def _common_columns(shape_width: int):
    return [("thr", ">3", lambda r: str(r["threads"])), ("shape", f"<{shape_width}", lambda r: r["shape"])]


def format_table(rows: List[dict]) -> str:
    return _format_rows(rows, _common_columns(26) + [
        ("op", "<48", lambda r: r["op"]), ("baseline", "<40", lambda r: r["baseline"]),
        ("pyslim ms", ">10", lambda r: f"{r['pyslim_ms']:.3f}"), ("base ms", ">10", lambda r: f"{r['baseline_ms']:.3f}"),
        ("speedup", ">8", lambda r: f"{r['speedup']:.2f}x"), ("GB/s", ">7", lambda r: f"{r['pyslim_GBps']:.2f}"),
        ("%copy", ">6", lambda r: f"{100 * r['fraction_of_copy_bw']:.0f}%")])


def format_int8_table(rows: List[dict]) -> str:
    return _format_rows(rows, _common_columns(30) + [
        ("op", "<24", lambda r: r["op"]), ("baseline", "<36", lambda r: r["baseline"]),
        ("pyslim ms", ">10", lambda r: f"{r['pyslim_ms']:.3f}"), ("base ms", ">10", lambda r: f"{r['baseline_ms']:.3f}"),
        ("speedup", ">8", lambda r: f"{r['speedup']:.2f}x"), ("GOPS", ">7", lambda r: f"{r['pyslim_GOPS']:.1f}")])


def format_fpgm_table(rows: List[dict]) -> str:
    return _format_rows(rows, _common_columns(18) + [
        ("pyslim ms", ">10", lambda r: f"{r['pyslim_ms']:.3f}"), ("cdist ms", ">10", lambda r: f"{r['cdist_ms']:.3f}"),
        ("speedup", ">8", lambda r: f"{r['speedup']:.2f}x"),
        ("pyslim rel err", ">15", lambda r: f"{r['pyslim_rel_err']:.2e}"),
        ("cdist rel err", ">14", lambda r: f"{r['cdist_rel_err']:.2e}")])


def int8_summary(rows: List[dict]) -> str:
    """Geometric mean over the GEMM shapes of the speedup against the best torch.ao engine, per thread count."""
    import math

    out = []
    for threads in sorted({r["threads"] for r in rows}):
        for kind, prefix in (("linear", "torch.ao dynamic Linear"), ("conv", "torch.ao quantized Conv2d")):
            by_shape: Dict[str, List[dict]] = {}
            for r in rows:
                if r["threads"] == threads and r["baseline"].startswith(prefix):
                    by_shape.setdefault(r["shape"], []).append(r)
            ratios = []
            for shape_rows in by_shape.values():
                best = min(r["baseline_ms"] for r in shape_rows if r["baseline_ms"] == r["baseline_ms"])
                ratios.append(best / shape_rows[0]["pyslim_ms"])
            if ratios:
                gm = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
                out.append(f"{threads} thread(s): {kind} vs best torch.ao engine, geometric mean {gm:.2f}x "
                           f"(per shape: {', '.join(f'{v:.2f}x' for v in ratios)})")
    return "\n".join(out)


FPGM_SHAPES = ((64, 576), (256, 2304), (512, 4608), (2048, 4608))


def run_fpgm_benchmarks(threads_list: List[int], repeats: int) -> List[dict]:
    """FPGM scores: pyslim.ops.fpgm_scores vs torch.cdist(W, W).sum(1) on the same float32 weights at the same
    thread count, interleaved call by call; with each side's worst relative error against float64."""
    from pyslim.prune.criteria import fpgm_scores_reference

    def torch_fpgm(w):
        return torch.cdist(w, w).sum(1)

    rows = []
    saved = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    try:
        for c, k in FPGM_SHAPES:
            w = torch.randn(c, k, generator=gen)
            ref = fpgm_scores_reference(w)
            err_p = float(((ops.fpgm_scores(w) - ref).abs() / ref.abs()).max())
            err_t = float(((torch_fpgm(w).double() - ref).abs() / ref.abs()).max())
            for threads in threads_list:
                torch.set_num_threads(threads)
                pyslim.set_num_threads(None)
                rounds = max(repeats, min(100, int(2e9 / (c * c * k))))
                med = _interleaved_medians({"ours": lambda: ops.fpgm_scores(w), "cdist": lambda: torch_fpgm(w)},
                                           rounds, burst=1)
                rows.append({"threads": threads, "shape": f"({c},{k})", "pyslim_ms": med["ours"] * 1e3,
                             "cdist_ms": med["cdist"] * 1e3, "speedup": med["cdist"] / med["ours"],
                             "pyslim_rel_err": err_p, "cdist_rel_err": err_t})
    finally:
        torch.set_num_threads(saved)
    return rows


def reuse_freed_memory() -> bool:
    """Makes glibc keep freed memory for reuse instead of unmapping it (M_MMAP_MAX=0, M_TRIM_THRESHOLD=max).

    Without it every large tensor is a fresh mmap whose pages each fault on first touch; on the development
    machine that cost ~1.6 us per 4 KiB page and dominated every large-tensor timing, for torch and pyslim
    alike. A caching allocator (as torch uses on CUDA) behaves like this setting. Returns False off glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pyslim bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median reported)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of: " + ", ".join(SHAPES))
    parser.add_argument("--suite", choices=("all", "fakequant", "int8", "cnn", "fpgm"), default="all",
                        help="fake-quant kernels, int8 GEMM/conv, int8 conv on CNN layer shapes (ResNet, ResNeXt, "
                             "MobileNet stems), FPGM scores vs torch.cdist, or all (default)")
    parser.add_argument("--malloc", choices=("reuse", "default"), default="reuse",
                        help="reuse: glibc keeps freed memory (no page fault per fresh buffer; see "
                             "reuse_freed_memory); default: leave the allocator alone")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH ('-' for stdout)")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t]
    wanted = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in wanted if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    malloc_mode = "reuse" if args.malloc == "reuse" and reuse_freed_memory() else "default"
    info = pyslim.native_info()
    info["malloc"] = malloc_mode
    rows = run_benchmarks(threads, args.repeats, {k: SHAPES[k] for k in wanted}) if args.suite in ("all", "fakequant") \
        else []
    int8_rows = run_int8_benchmarks(threads, args.repeats) if args.suite in ("all", "int8") else []
    cnn_rows = run_cnn_benchmarks(threads, args.repeats) if args.suite in ("all", "cnn") else []
    fpgm_rows = run_fpgm_benchmarks(threads, args.repeats) if args.suite in ("all", "fpgm") else []
    result = {"native_info": info, "torch": torch.__version__, "rows": rows, "int8_rows": int8_rows,
              "cnn_rows": cnn_rows, "fpgm_rows": fpgm_rows}
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    print(f"pyslim {info['version']} | active ISA {info['active_isa']} | torch {torch.__version__} | "
          f"malloc {malloc_mode}")
    if rows:
        print(format_table(rows))
    if int8_rows:
        print()
        print(format_int8_table(int8_rows))
        print(int8_summary(int8_rows))
    if cnn_rows:
        print()
        print(format_int8_table(cnn_rows))
        print(int8_summary(cnn_rows))
    if fpgm_rows:
        print()
        print(format_fpgm_table(fpgm_rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0

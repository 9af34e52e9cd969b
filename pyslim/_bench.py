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
import torch.nn.functional as F

import pyslim
import pyslim.ops as ops

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
                dst = torch.empty_like(x)
                t_copy = _median_time(lambda: dst.copy_(x), repeats)
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
                # forward + backward: fwd traffic + read x, read g, write grad_x
                add("fake_quant_affine fwd+bwd", torch_name, _median_time(_fwd_bwd(ours, x, g), repeats),
                    _median_time(_fwd_bwd(theirs, x, g), repeats), 5 * nbytes)
                # abs-max variants (scale reduced natively in the same call): read x twice, write y
                if axis is None:
                    t_absmax = _median_time(lambda: ops.fake_quant_abs_max(x), repeats)
                    add("fake_quant_abs_max fwd (incl. scale)", "copy", t_absmax, t_copy, 3 * nbytes)
                else:
                    t_absmax = _median_time(lambda: ops.fake_quant_channel_wise_abs_max(x, axis), repeats)
                    add("fake_quant_channel_wise_abs_max fwd (incl. scale)", "copy", t_absmax, t_copy, 3 * nbytes)
                # PACT, forward + backward, vs the pure-PyTorch version
                alpha_ours = torch.tensor(3.0, requires_grad=True)
                alpha_torch = torch.tensor(3.0, requires_grad=True)
                add("pact fwd+bwd", "pure-PyTorch PACT",
                    _median_time(_fwd_bwd(lambda v: ops.pact(v, alpha_ours), x, g, [alpha_ours]), repeats),
                    _median_time(_fwd_bwd(lambda v: _pact_torch(v, alpha_torch), x, g, [alpha_torch]), repeats),
                    5 * nbytes)
                del x, g, dst
    finally:
        torch.set_num_threads(saved_threads)
    return rows


def format_table(rows: List[dict]) -> str:
    head = (f"{'thr':>3}  {'shape':<26} {'op':<48} {'baseline':<40} {'pyslim ms':>10} {'base ms':>10} "
            f"{'speedup':>8} {'GB/s':>7} {'%copy':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['threads']:>3}  {r['shape']:<26} {r['op']:<48} {r['baseline']:<40} "
                     f"{r['pyslim_ms']:>10.3f} {r['baseline_ms']:>10.3f} {r['speedup']:>7.2f}x "
                     f"{r['pyslim_GBps']:>7.2f} {100 * r['fraction_of_copy_bw']:>5.0f}%")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pyslim bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median reported)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of: " + ", ".join(SHAPES))
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH ('-' for stdout)")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t]
    wanted = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in wanted if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    info = pyslim.native_info()
    rows = run_benchmarks(threads, args.repeats, {k: SHAPES[k] for k in wanted})
    if args.json == "-":
        print(json.dumps({"native_info": info, "torch": torch.__version__, "rows": rows}, indent=2))
        return 0
    print(f"pyslim {info['version']} | active ISA {info['active_isa']} | torch {torch.__version__}")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"native_info": info, "torch": torch.__version__, "rows": rows}, f, indent=2)
    return 0

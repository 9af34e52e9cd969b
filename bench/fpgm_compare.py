"""Side-by-side FPGM scores: pyslim.ops.fpgm_scores vs torch.cdist(W, W).sum(1), one run, medians.

Both run on the same float32 weights at the same thread count (torch.set_num_threads and
pyslim.set_num_threads), interleaved call by call so that machine noise hits both alike. Also reports the
worst relative error of each against the float64 reference (torch.cdist's float32 matrix-product form is
not accurate to 1e-6; pyslim's kernel is).

Usage: python bench/fpgm_compare.py [--repeats N] [--threads 1 2] [--shapes 64x576 256x2304 ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import pyslim
import pyslim.ops as ops
from pyslim.prune.criteria import fpgm_scores_reference

DEFAULT_SHAPES = ["64x576", "256x2304", "512x4608", "2048x4608"]


def _time(fn, w) -> float:
    t0 = time.perf_counter()
    fn(w)
    return time.perf_counter() - t0


def _torch_fpgm(w):
    return torch.cdist(w, w).sum(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=0, help="timed calls per side (default: by size)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES)
    args = ap.parse_args()

    info = pyslim.native_info()
    print(f"pyslim {info.get('version', '?')}, active ISA {info['active_isa']}, torch {torch.__version__}")
    header = f"{'shape (C, K)':>14} {'thr':>3} {'pyslim ms':>10} {'torch ms':>10} {'speedup':>8} " \
             f"{'pyslim rel err':>15} {'torch rel err':>14}"
    print(header)
    print("-" * len(header))
    torch.manual_seed(0)
    for shape in args.shapes:
        C, K = (int(v) for v in shape.split("x"))
        w = torch.randn(C, K)
        ref = fpgm_scores_reference(w)
        err_p = float(((ops.fpgm_scores(w) - ref).abs() / ref.abs()).max())
        err_t = float(((_torch_fpgm(w).double() - ref).abs() / ref.abs()).max())
        work = C * C * K
        repeats = args.repeats or max(5, min(201, int(2e9 / work)))
        for t in args.threads:
            torch.set_num_threads(t)
            pyslim.set_num_threads(t)
            for _ in range(2):  # warm-up (thread pools, caches)
                ops.fpgm_scores(w)
                _torch_fpgm(w)
            tp, tt = [], []
            for _ in range(repeats):
                tp.append(_time(ops.fpgm_scores, w))
                tt.append(_time(_torch_fpgm, w))
            mp, mt = statistics.median(tp) * 1e3, statistics.median(tt) * 1e3
            print(f"{C:>6} x {K:<6} {t:>3} {mp:>10.3f} {mt:>10.3f} {mt / mp:>7.2f}x {err_p:>15.2e} {err_t:>14.2e}",
                  flush=True)
    pyslim.set_num_threads(None)


if __name__ == "__main__":
    main()

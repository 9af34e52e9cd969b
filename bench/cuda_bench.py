#!/usr/bin/env python3
"""CUDA side by side: pyslim's CUDA fake-quant vs torch's CUDA fake_quantize_* and a device copy, and pyslim's CUDA
int8 GEMM vs torch._int_mm (checked equal first), timed with CUDA events (median of repeated runs). Run by
bench/cuda_check.sh on a lent GPU machine."""

import statistics

import torch

import pyslim.ops as ops


def timed(fn, repeats=50):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def fwd_bwd(fn, x, g):
    leaf = x.detach().requires_grad_()

    def run():
        leaf.grad = None
        fn(leaf).backward(g)

    return run


def main():
    print(f"{'shape':<24} {'op':<28} {'pyslim ms':>10} {'torch ms':>10} {'speedup':>8} {'%copy bw':>9}")
    for shape, axis in (((64, 256, 56, 56), None), ((512, 512, 3, 3), 0), ((8, 128, 768), None)):
        x = torch.randn(shape, device="cuda")
        g = torch.randn(shape, device="cuda")
        dst = torch.empty_like(x)
        t_copy = timed(lambda: dst.copy_(x))
        if axis is None:
            s, z = torch.tensor(0.02, device="cuda"), torch.tensor(0, dtype=torch.int32, device="cuda")
            ours = lambda v: ops.fake_quant_affine(v, s, z, -128, 127)  # noqa: E731
            theirs = lambda v: torch.fake_quantize_per_tensor_affine(v, 0.02, 0, -128, 127)  # noqa: E731
        else:
            s = torch.rand(shape[axis], device="cuda") * 0.02 + 0.01
            z = torch.zeros(shape[axis], dtype=torch.int32, device="cuda")
            ours = lambda v: ops.fake_quant_affine(v, s, z, -128, 127, axis=axis)  # noqa: E731
            theirs = lambda v: torch.fake_quantize_per_channel_affine(v, s, z, axis, -128, 127)  # noqa: E731
        for name, a, b, traffic in (("fake_quant_affine fwd", lambda: ours(x), lambda: theirs(x), 1.0),
                                    ("fake_quant_affine fwd+bwd", fwd_bwd(ours, x, g), fwd_bwd(theirs, x, g), 2.5)):
            ta, tb = timed(a), timed(b)
            print(f"{str(shape):<24} {name:<28} {ta:>10.4f} {tb:>10.4f} {tb / ta:>7.2f}x {100 * traffic * t_copy / ta:>8.0f}%")
        alpha = torch.tensor(3.0, device="cuda", requires_grad=True)
        ta = timed(fwd_bwd(lambda v: ops.pact(v, alpha), x, g))
        print(f"{str(shape):<24} {'pact fwd+bwd':<28} {ta:>10.4f} {'':>10} {'':>8} {100 * 2.5 * t_copy / ta:>8.0f}%")
    gemm()


GEMM_SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (128, 4096, 4096), (512, 1024, 1024), (3136, 64, 576),
               (4096, 4096, 4096)]


def gemm():
    """int8 x int8 -> int32 on the GPU: ops.int8_matmul (W as a Linear weight, N x K) against torch._int_mm
    (B as K x N row-major), the same products; torch._int_mm refuses some shapes (its M, N, K constraints)."""
    print(f"\n{'GEMM (M, N, K)':<24} {'pyslim ms':>10} {'_int_mm ms':>11} {'speedup':>8} {'pyslim TOPS':>12} {'equal':>6}")
    for m, n, k in GEMM_SHAPES:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
        wt = w.t().contiguous()
        ours = ops.int8_matmul(a, w)
        ta = timed(lambda: ops.int8_matmul(a, w))
        try:
            theirs = torch._int_mm(a, wt)
            equal = bool(torch.equal(ours, theirs))
            tb = timed(lambda: torch._int_mm(a, wt))
            rest = f"{tb:>11.4f} {tb / ta:>7.2f}x"
        except RuntimeError as exc:  # shapes torch._int_mm does not take
            equal = bool(torch.equal(ours.cpu(), a.cpu().int() @ w.cpu().int().t()))
            rest = f"{'n/a':>11} {'':>8}"
            print(f"  torch._int_mm refused {(m, n, k)}: {str(exc).splitlines()[0][:100]}")
        print(f"{str((m, n, k)):<24} {ta:>10.4f} {rest} {2 * m * n * k / ta / 1e9:>12.1f} {str(equal):>6}")


if __name__ == "__main__":
    main()

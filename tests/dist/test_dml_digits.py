"""End to end on real data (scikit-learn digits, fixed 75/25 split), means over 3 seeds:
(a) soft-label distillation (T=4) of a tiny MLP beats the same student trained alone with the same budget;
(b) DML of two students beats the same two students trained independently;
(c) FSP distillation runs end to end and its loss decreases."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyslim.datasets import load_digits
from pyslim.dist import DML, Distiller, SoftLabelLoss

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n = int(0.75 * len(x))
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and friendly to a busy 2-core machine
    yield
    torch.set_num_threads(before)


def mlp(hidden):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def batches(x, y, seed, epochs, bs=64):
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        p = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            yield x[p[i:i + bs]], y[p[i:i + bs]]


def train_alone(model, x, y, seed, epochs, lr):
    opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9)
    model.train()
    for xb, yb in batches(x, y, seed, epochs):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def teacher(digits):
    xtr, ytr, xte, yte = digits
    torch.manual_seed(100)
    t = mlp(128)
    opt = torch.optim.Adam(t.parameters(), 1e-2)
    for xb, yb in batches(xtr, ytr, 100, 15):
        opt.zero_grad()
        F.cross_entropy(t(xb), yb).backward()
        opt.step()
    assert accuracy(t, xte, yte) > 0.95
    return t


def test_soft_label_distillation_beats_student_alone(digits, teacher):
    xtr, ytr, xte, yte = digits
    hidden, epochs, lr, temp = 8, 3, 0.02, 4.0  # tiny student, short budget: alone it is far from saturated
    alone, distilled = [], []
    for seed in SEEDS:
        torch.manual_seed(seed)
        alone.append(accuracy(train_alone(mlp(hidden), xtr, ytr, seed, epochs, lr), xte, yte))
        torch.manual_seed(seed)
        student = mlp(hidden)
        d = Distiller(teacher, student, [("", "", SoftLabelLoss(temp, temp), temp * temp)])
        opt = torch.optim.SGD(d.trainable_parameters(), lr, momentum=0.9)
        d.train()
        for xb, yb in batches(xtr, ytr, seed, epochs):
            opt.zero_grad()
            (F.cross_entropy(d(xb), yb) + d.loss()).backward()
            opt.step()
        d.remove_hooks()
        distilled.append(accuracy(student, xte, yte))
    mean_alone, mean_distilled = sum(alone) / 3, sum(distilled) / 3
    print(f"soft-label T=4: alone {alone} mean {mean_alone:.4f}; distilled {distilled} mean {mean_distilled:.4f}")
    assert mean_distilled > mean_alone + 0.1


def test_dml_beats_independent(digits):
    xtr, ytr, xte, yte = digits
    hidden, epochs, lr = 256, 40, 0.1
    indep, mutual = [], []
    for seed in SEEDS:
        torch.manual_seed(seed)
        inits = [mlp(hidden), mlp(hidden)]
        copies = [mlp(hidden), mlp(hidden)]
        for c, m in zip(copies, inits):
            c.load_state_dict(m.state_dict())
        indep.append(sum(accuracy(train_alone(m, xtr, ytr, seed, epochs, lr), xte, yte) for m in copies) / 2)
        dml = DML(inits, [torch.optim.SGD(m.parameters(), lr, momentum=0.9) for m in inits])
        dml.train()
        for xb, yb in batches(xtr, ytr, seed, epochs):
            losses = dml.step(xb, yb)
        assert len(losses) == 2
        mutual.append(sum(accuracy(m, xte, yte) for m in inits) / 2)
    mean_indep, mean_dml = sum(indep) / 3, sum(mutual) / 3
    print(f"DML: independent {indep} mean {mean_indep:.4f}; DML {mutual} mean {mean_dml:.4f}")
    assert mean_dml > mean_indep


def cnn(width):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(width * 16, 10))


def test_fsp_distillation_loss_decreases(digits):
    """The FSP paper's two stages: match the teacher's FSP matrices alone, then train on the labels."""
    xtr, ytr, xte, yte = digits
    torch.manual_seed(7)
    teacher = train_alone(cnn(8), xtr, ytr, 7, 3, 0.05)
    torch.manual_seed(8)
    student = cnn(8)
    d = Distiller(teacher, student, [(("1", "3"), ("1", "3"), "fsp", 1.0)])
    opt = torch.optim.Adam(d.trainable_parameters(), 1e-3)
    d.train()
    per_epoch = []
    for epoch in range(3):
        total, n = 0.0, 0
        for xb, _ in batches(xtr, ytr, epoch, 1):
            opt.zero_grad()
            d(xb)
            fsp = d.loss()
            fsp.backward()
            opt.step()
            total, n = total + fsp.item(), n + 1
        per_epoch.append(total / n)
    d.remove_hooks()
    train_alone(student, xtr, ytr, 9, 3, 0.05)
    print(f"FSP loss per epoch {per_epoch}, student acc after stage 2 {accuracy(student, xte, yte):.4f}")
    assert per_epoch[2] < per_epoch[1] < per_epoch[0]
    assert per_epoch[-1] < 0.95 * per_epoch[0]
    assert accuracy(student, xte, yte) > 0.85  # measured 0.909: the FSP-initialised features are usable

"""Shared real-data fixtures for the quantization tests: a small CNN trained once per session on MNIST."""

import time

import pytest
import torch
from torch import nn

from pyslim.datasets import load_mnist


class MnistCNN(nn.Module):
    """~100k parameters: conv-bn-relu x2 with pooling, then two Linear layers (flatten -> Linear)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 1, lr: float = 2e-3, batch: int = 128,
          seed: int = 0, optimizer=None) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def mnist():
    """(x_train, y_train, x_test, y_test) as float32 / int64 tensors."""
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    return x_train, y_train, x_test, y_test


@pytest.fixture(scope="session")
def mnist_fp32(mnist):
    """A MnistCNN trained one epoch (about 98 % test accuracy), with its fp32 test accuracy. Callers must
    deep-copy the model before changing it."""
    x_train, y_train, x_test, y_test = mnist
    torch.manual_seed(0)
    start = time.time()
    model = train(MnistCNN(), x_train, y_train, epochs=1)
    acc = accuracy(model, x_test, y_test)
    print(f"[mnist fixture] fp32 accuracy {acc:.2f}% after {time.time() - start:.0f}s")
    return model, acc

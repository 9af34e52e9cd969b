"""Deep Mutual Learning (PaddleSlim ``paddleslim.dist.DML``, spec section 1.4.2).

Each model i minimises ``CE(z_i, y) + 1/(N-1) * sum_{j != i} kl_div(log_softmax(z_i), softmax(z_j), 'batchmean')``.

Peers: PaddleSlim does **not** detach the peer distribution ``softmax(z_j)`` (spec 1.4.2); ``detach_peers=False``
(the default) keeps that: the KL term of model i's loss also sends gradient into every peer j. ``step`` computes all
logits once, back-propagates the sum of the per-model losses once (so model i's gradient is d loss_i / d theta_i plus
the peer-path gradients d loss_j / d theta_i, j != i) and then steps every optimizer. With ``detach_peers=True`` each
model receives only the gradient of its own loss (the form of the DML paper). Whether PaddleSlim's DMLOptimizers
clears the peer-path gradient between its per-model steps was not verified; if it does, ``detach_peers=True`` is the
numerically matching choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DML", "dml_loss"]


def dml_loss(logits: Sequence[Tensor], i: int, labels: Tensor, detach_peers: bool = False) -> Tensor:
    """Model i's DML loss given all models' logits."""
    z_i = logits[i]
    ce = F.cross_entropy(z_i, labels)
    peers = [z for j, z in enumerate(logits) if j != i]
    if not peers:
        return ce
    log_p = F.log_softmax(z_i, dim=1)
    kl = sum(F.kl_div(log_p, F.softmax(z.detach() if detach_peers else z, dim=1), reduction="batchmean")
             for z in peers)
    return ce + kl / len(peers)


class DML:
    def __init__(self, models: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer],
                 detach_peers: bool = False) -> None:
        if len(models) != len(optimizers):
            raise ValueError(f"got {len(models)} models but {len(optimizers)} optimizers")
        if len(models) < 2:
            raise ValueError("DML needs at least two models")
        self.models = list(models)
        self.optimizers = list(optimizers)
        self.detach_peers = detach_peers

    def train(self, mode: bool = True) -> DML:
        for m in self.models:
            m.train(mode)
        return self

    def eval(self) -> DML:
        return self.train(False)

    def step(self, x: Tensor, y: Tensor) -> list[float]:
        """One forward of every model, one backward of the summed losses, then every optimizer steps."""
        logits = [m(x) for m in self.models]
        losses = [dml_loss(logits, i, y, self.detach_peers) for i in range(len(self.models))]
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        for o in self.optimizers:
            o.step()
        return [float(v.detach()) for v in losses]

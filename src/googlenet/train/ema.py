"""Exponential moving average of the weights (Polyak averaging), used for evaluation."""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """An averaged copy of `model`: avg <- avg + (1 - d) * (weights - avg) after each step.

    d = min(decay, (1 + n) / (10 + n)) after n updates, so a short run averages over
    its recent steps instead of clinging to the random initialisation. Batch-norm
    statistics are averaged like the weights; integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def _pairs(self, model: nn.Module):
        mine = self.module.state_dict()
        theirs = model.state_dict()
        floats = [(mine[k], theirs[k]) for k in mine if mine[k].is_floating_point()]
        others = [(mine[k], theirs[k]) for k in mine if not mine[k].is_floating_point()]
        return floats, others

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        floats, others = self._pairs(model)
        torch._foreach_lerp_([a for a, _ in floats], [b.detach() for _, b in floats], 1.0 - d)
        for a, b in others:
            a.copy_(b)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

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
        self._pairs_for: tuple[int, tuple] | None = None  # (id(model), tensor lists), built once

    def _pairs(self, model: nn.Module) -> tuple:
        """(averaged floats, model floats, averaged others, model others), matched by name.

        Built on the first update and kept: state_dict() tensors share storage with the
        modules, and rebuilding two state_dicts every step costs ~1,500 Python calls
        (a GPU step is only a few milliseconds).
        """
        if self._pairs_for is None or self._pairs_for[0] != id(model):
            mine = self.module.state_dict(keep_vars=True)
            theirs = model.state_dict(keep_vars=True)
            floats = [k for k in mine if mine[k].is_floating_point()]
            others = [k for k in mine if not mine[k].is_floating_point()]
            lists = ([mine[k].detach() for k in floats], [theirs[k].detach() for k in floats],
                     [mine[k].detach() for k in others], [theirs[k].detach() for k in others])
            self._pairs_for = (id(model), lists)
        return self._pairs_for[1]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine, theirs, mine_other, theirs_other = self._pairs(model)
        torch._foreach_lerp_(mine, theirs, 1.0 - d)
        if mine_other:
            torch._foreach_copy_(mine_other, theirs_other)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

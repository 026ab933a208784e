"""Backprop: the denominator of every ratio bpfree reports.

Ordinary end-to-end backpropagation (Rumelhart, Hinton & Williams 1986) on the identical model the
BP-free rule trains ("BP twin"), with the same optimizer, data and budget.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..rule import LearningRule, register


@register
class Backprop(LearningRule):
    """End-to-end backprop of the cross-entropy loss through every block."""

    name = "bp"
    family = "backprop"
    locality = "global"
    paper = "https://doi.org/10.1038/323533a0"
    search_space = {"lr": ("log", 1e-4, 1e-2)}

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        assert self.model is not None
        loss = F.cross_entropy(self.model(x), y, label_smoothing=self.label_smoothing)
        loss.backward()
        return {"loss": loss}

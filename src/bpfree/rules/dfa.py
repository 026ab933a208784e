"""Direct Feedback Alignment (Nøkland 2016, https://arxiv.org/abs/1609.01596).

The output error ``e = softmax(a_L) − y*`` (the gradient of the cross-entropy w.r.t. the logits)
is sent to every hidden layer through a *fixed random* matrix ``B_k`` (paper eq. 3):
``δa_k = (B_k e) ⊙ f'(a_k)``, ``ΔW_k ∝ −δa_k h_{k−1}ᵀ``. The head learns from ``e`` directly.

Implementation: every block runs on a detached input; calling ``backward`` on
``Σ_k ⟨h_k, e B_k⟩`` makes autograd apply ``⊙ f'(a_k)`` and form ``δa_k h_{k−1}ᵀ`` *inside* each
block (conv blocks included), so no gradient ever crosses a block and no weight is transported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import block_output_shapes
from ..rule import LearningRule, Task, register


@register
class DFA(LearningRule):
    name = "dfa"
    family = "feedback-alignment"
    locality = "block"
    paper = "https://arxiv.org/abs/1609.01596"
    search_space = {"lr": ("log", 1e-5, 1e-2)}

    def __init__(self, feedback: str = "gaussian", feedback_scale: float = 1.0) -> None:
        super().__init__()
        if feedback not in ("gaussian", "uniform"):
            raise ValueError(f"feedback must be 'gaussian' or 'uniform', got {feedback!r}")
        if feedback_scale <= 0:
            raise ValueError(f"feedback_scale must be > 0, got {feedback_scale}")
        self.feedback = feedback
        self.feedback_scale = feedback_scale

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        shapes = block_output_shapes(model, task.in_shape)[:-1]
        C = task.num_classes
        for k, shape in enumerate(shapes):
            d = math.prod(shape)
            if self.feedback == "gaussian":
                B = torch.randn(C, d, generator=generator) / math.sqrt(C)
            else:  # Nøkland's uniform initialisation
                B = (torch.rand(C, d, generator=generator) * 2 - 1) / math.sqrt(C)
            self.register_buffer(f"B{k}", B * self.feedback_scale)  # (C, d_k), fixed

    def feedback_matrix(self, k: int) -> Tensor:
        return getattr(self, f"B{k}")

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        *blocks, head = self.blocks
        hs = []
        h = x
        for block in blocks:
            h = block(h.detach())  # the error arrives through B_k, never through block k+1
            hs.append(h)
        logits = head(h.detach())
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():  # e = ∂L/∂a_L for mean cross-entropy: (softmax − onehot) / B
            e = torch.softmax(logits, 1)
            e[torch.arange(len(y), device=y.device), y] -= 1
            e /= len(y)
        surrogate = loss
        for k, h_k in enumerate(hs):
            proj = (e @ self.feedback_matrix(k)).view_as(h_k)  # (B, d_k): B_k e per sample
            surrogate = surrogate + (h_k * proj).sum()
        surrogate.backward()
        return {"loss": loss}

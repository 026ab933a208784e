"""Feedback alignment (Lillicrap et al. 2016, https://doi.org/10.1038/ncomms13276) and sign
symmetry (Liao, Leibo & Poggio 2016, https://arxiv.org/abs/1510.05067).

Backprop sends the error down through the transposed forward weights, ``δh_{l-1} = W_lᵀ δa_l``.
Feedback alignment replaces ``W_lᵀ`` by a *fixed random* matrix (Lillicrap et al., Fig. 1):

    e      = ∂L/∂a_L = softmax(a_L) − y*                     (cross-entropy, per sample)
    δa_l   = δh_l ⊙ f'(a_l)                                   (local: the layer's own derivative)
    δh_l-1 = B_lᵀ δa_l                                        (B_l fixed, shape of W_l: no transport)
    ΔW_l   ∝ −δa_l h_{l-1}ᵀ,   Δb_l ∝ −δa_l

The forward weights come to *align* with the B's, after which the updates are useful. Sign
symmetry keeps only the signs of the forward weights, ``B_l = sign(W_l)``, re-read every step.

Locality ("block"): the error does travel down the whole chain, but only through the fixed B's,
never through autograd and never through ``W``: each layer's update is an outer product of its own
input and of a signal delivered to it by the feedback pathway. bpfree writes the chain as explicit
matmuls under ``no_grad`` (MLP blocks), so no autograd gradient can cross a block; with
``B_l = W_l`` the rule *is* backprop (``tests/test_rules_feedback.py`` checks it to float precision).

Defaults: B_l drawn like nn.Linear's own init (uniform ±1/√fan_in), or Gaussian with the same
variance; the trainer's optimizer (Adam) applies the update, as for every rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..rule import LearningRule, Task, register
from ._dense import act_grad, dense_layers, forward, set_grad, softmax_error


@register
class FeedbackAlignment(LearningRule):
    name = "fa"
    family = "feedback-alignment"
    locality = "block"
    paper = "https://doi.org/10.1038/ncomms13276"
    search_space = {"lr": ("log", 1e-5, 1e-2)}

    def __init__(self, feedback: str = "uniform", feedback_scale: float = 1.0) -> None:
        super().__init__()
        if feedback not in ("uniform", "gaussian"):
            raise ValueError(f"feedback must be 'uniform' or 'gaussian', got {feedback!r}")
        if feedback_scale <= 0:
            raise ValueError(f"feedback_scale must be > 0, got {feedback_scale}")
        self.feedback = feedback
        self.feedback_scale = feedback_scale

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        self._layers = dense_layers(model, self.name)
        for l, layer in enumerate(self._layers[1:], start=1):  # layer 0 sends nothing further down
            self._make_feedback(l, layer.linear.weight, generator)

    def _make_feedback(self, l: int, W: Tensor, generator: torch.Generator) -> None:
        fan_in = W.shape[1]
        if self.feedback == "uniform":  # same law as nn.Linear's default weight init
            B = (torch.rand(W.shape, generator=generator) * 2 - 1) / math.sqrt(fan_in)
        else:
            B = torch.randn(W.shape, generator=generator) / math.sqrt(3 * fan_in)
        self.register_buffer(f"B{l}", B * self.feedback_scale)  # (d_l, d_{l-1}), fixed

    def feedback_matrix(self, l: int) -> Tensor:
        """The matrix that stands in for ``W_l`` on the way down, shape of ``W_l``."""
        return getattr(self, f"B{l}")

    @torch.no_grad()
    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        layers = self._layers
        ins, pre, outs = forward(layers, x)
        logits = outs[-1]
        g = softmax_error(logits, y)  # (B, C) = ∂L/∂h_L (the head has no activation)
        for l in range(len(layers) - 1, -1, -1):
            delta = act_grad(layers[l].act, pre[l], outs[l], g)  # δa_l = δh_l ⊙ f'(a_l)
            set_grad(layers[l].linear, delta, ins[l])  # ∂W_l = δa_l h_{l-1}ᵀ
            if l > 0:
                g = delta @ self.feedback_matrix(l)  # δh_{l-1} = B_lᵀ δa_l, never W_lᵀ
        return {"loss": F.cross_entropy(logits, y)}


@register
class SignSymmetry(FeedbackAlignment):
    """Feedback through ``B_l = sign(W_l)``, tracked every step (Liao, Leibo & Poggio 2016)."""

    name = "sign-symmetry"
    paper = "https://arxiv.org/abs/1510.05067"

    def __init__(self) -> None:
        super().__init__()

    def _make_feedback(self, l: int, W: Tensor, generator: torch.Generator) -> None:
        pass  # no stored matrix: the signs are read from the current forward weights

    def feedback_matrix(self, l: int) -> Tensor:
        # only the sign is transported (one bit per synapse), magnitudes stay unknown to it
        return torch.sign(self._layers[l].linear.weight)

"""Target projection: DRTP (Frenkel, Lefebvre & Bol 2021) and tpSGD (Lomnitz et al. 2023).

**drtp** — Direct Random Target Projection, Front. Neurosci. 15:629892,
https://doi.org/10.3389/fnins.2021.629892 (arXiv 1909.01311). In classification the one-hot
target ``y*`` is a proxy for the *sign* of the output error ``e = ŷ − y*`` (for the true class
``e_c ≤ 0``, elsewhere ``e_j ≥ 0``), so a fixed random projection of the target can stand in for
DFA's projected error (paper §2.3). Hidden layer ``k`` is taught with (paper eq. 6–7)

    δy_k = (B_kᵀ y*) ⊙ f'(a_k),      ΔW_k = −η δy_k y_{k−1}ᵀ,     Δb_k = −η δy_k

and the output layer with its own local error of the loss (sigmoid output + binary cross-entropy
in the paper: ``δy_L = σ(a_L) − y*``). Every quantity is known *during the forward pass*: no
weight transport, no update locking, no backward chain. Paper defaults (authors' code): tanh
hidden layers, sigmoid output with BCE loss, feedback ``B_k`` He/Kaiming-uniform, batch 100,
lr 1e-4; bpfree keeps the loss/activations and uses the trainer's optimizer (Adam).
MNIST anchor: ≈ 95 % with fully-connected nets (paper Table 2). DRTP's fixed-sign push keeps
improving slowly at a constant lr, and a decaying lr stops it early (mlp:500,500 tanh, Adam 1e-3:
cosine over 8 epochs 94.1 %, constant 94.9 % at 12, 95.0 % at 16 epochs);
``benchmarks/feedback_rules.py`` trains it 30 epochs at a constant lr.

**tpsgd** — Target Projection SGD, "Learning with Local Gradients at the Edge", AAAI 2023,
https://arxiv.org/abs/2208.08503. Generalises DRTP to *any* loss: layer ``l`` minimises its own
``J_l = ℓ(h_l, P_l y*)`` against a fixed random projection ``P_l y*`` of the label (default ``ℓ`` =
squared error ``‖P_l y* − h_l‖²``; also L1 / smooth-L1), the output layer ``ℓ(h_L, y*)`` (CE here).
With MSE the update is the delta rule ``ΔW_l ∝ (P_l y* − h_l) ⊙ f'(a_l) h_{l−1}ᵀ`` (paper eq. for
J_l with ℓ₂; ℓ₁ gives ``sign(P_l y* − h_l) ⊙ f'(a_l)``). The size of ``P_l`` is the one free
constant: bpfree draws ``P_l ~ U(−s, s)`` with ``s = feedback_scale = 2``, so about half of the
targets lie beyond a tanh unit's reach. Then the residual ``P_l y* − h_l`` never vanishes and keeps
the sign of ``P_l y*`` there — exactly DRTP's fixed-sign push ``B_l y* ⊙ f'(a_l)``, which tpSGD
generalises — instead of every unit regressing onto one of ten reachable class prototypes, a
collapse that caps the MLP near a linear classifier (mlp:500,500 tanh, MNIST, 8 epochs Adam:
s = 0.3 → 88.8 %, 1 → 91.9 %, 2 → 93.9 %; on rnn:128, 12 epochs, s = 2 gives 95.6 % vs 96.9 % at
s = 1, BP 97.1 %: pass ``feedback_scale=1`` there for the last point and a half). tpSGD also
trains recurrent layers: on sequence blocks (``models.rnn``) the target is applied to the final
hidden state (or to every step with ``seq_target="all"``) and autograd runs through time *inside*
the recurrent block only.

Both rules run every block on a *detached* input; their local losses live on disconnected graphs,
so one ``backward()`` computes all layer updates and no gradient crosses a block (audited).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import block_output_shapes
from ..rule import LearningRule, Task, register


def _is_sequence(block: nn.Module) -> bool:
    return bool(getattr(block, "sequence_output", False))


class _TargetProjection(LearningRule):
    """Shared machinery: fixed projections of the one-hot target, one per hidden block."""

    family = "target-projection"
    locality = "block"
    search_space = {"lr": ("log", 1e-5, 1e-2)}
    _feedback_init = "kaiming"

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        shapes = block_output_shapes(model, task.in_shape)[:-1]
        C = task.num_classes
        for k, (block, shape) in enumerate(zip(list(model.children())[:-1], shapes)):
            d = shape[-1] if _is_sequence(block) else math.prod(shape)
            if self._feedback_init == "kaiming":  # He-uniform over the C inputs of the projection
                bound = math.sqrt(6.0 / C)
            else:  # "unit": U(−1, 1)·feedback_scale (tpSGD's default scale 2: see the docstring)
                bound = 1.0
            P = (torch.rand(C, d, generator=generator) * 2 - 1) * bound * self.feedback_scale
            self.register_buffer(f"B{k}", P)  # (C, d_k), fixed

    def projection(self, k: int) -> Tensor:
        return getattr(self, f"B{k}")

    def _hidden_term(self, h: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def _head_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        *blocks, head = self.blocks
        onehot = F.one_hot(y, self.task.num_classes).to(x.dtype)  # y*: (B, C)
        h = x
        total = x.new_zeros(())
        for k, block in enumerate(blocks):
            h = block(h.detach())  # layer k learns from y* alone, never from layer k+1
            if _is_sequence(block) and self.seq_target == "last":
                out = h[:, -1]  # (B, H): the state that has seen the whole sequence
            else:
                out = h.flatten(1) if not _is_sequence(block) else h
            target = (onehot @ self.projection(k))  # (B, d_k) = (B_k y*) per sample
            if out.dim() == 3:  # every time step taught with the same target
                target = target.unsqueeze(1).expand_as(out)
            total = total + self._hidden_term(out, target)
        loss = self._head_loss(head(h.detach()), y)  # the output layer's own local error
        (total + loss).backward()
        return {"loss": loss, "hidden_loss": total.detach()}


@register
class DRTP(_TargetProjection):
    name = "drtp"
    paper = "https://doi.org/10.3389/fnins.2021.629892"
    native_model = "mlp:500,500,act=tanh"
    smoke_model = "mlp:64,64,act=tanh"  # the paper's tanh: DRTP's linear target term is unbounded for ReLU
    smoke = {"epochs": 15, "lr": 3e-3}

    def __init__(self, output_loss: str = "bce", feedback_scale: float = 1.0) -> None:
        super().__init__()
        if output_loss not in ("bce", "ce", "mse"):
            raise ValueError(f"output_loss must be 'bce', 'ce' or 'mse', got {output_loss!r}")
        if feedback_scale <= 0:
            raise ValueError(f"feedback_scale must be > 0, got {feedback_scale}")
        self.output_loss = output_loss
        self.feedback_scale = feedback_scale
        self.seq_target = "last"

    def _hidden_term(self, h: Tensor, target: Tensor) -> Tensor:
        # ∂/∂h of ⟨h, B y*⟩/B is exactly DRTP's δy_k = B_kᵀ y* (autograd adds ⊙ f'(a_k) in-block)
        return (h * target).sum() / len(h)

    def _head_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        if self.output_loss == "bce":  # sigmoid outputs, BCE summed over classes (paper)
            return F.binary_cross_entropy_with_logits(logits, onehot, reduction="sum") / len(y)
        if self.output_loss == "mse":
            return F.mse_loss(logits, onehot, reduction="sum") / len(y)
        return F.cross_entropy(logits, y)


@register
class TPSGD(_TargetProjection):
    name = "tpsgd"
    paper = "https://arxiv.org/abs/2208.08503"
    native_model = "mlp:500,500,act=tanh"
    _feedback_init = "unit"
    _LOSSES = {
        "mse": lambda h, t: F.mse_loss(h, t, reduction="sum"),
        "l1": lambda h, t: F.l1_loss(h, t, reduction="sum"),
        "smooth_l1": lambda h, t: F.smooth_l1_loss(h, t, reduction="sum"),
    }

    def __init__(self, loss: str = "mse", output_loss: str = "ce", feedback_scale: float = 2.0,
                 seq_target: str = "last") -> None:
        super().__init__()
        if loss not in self._LOSSES:
            raise ValueError(f"loss must be one of {sorted(self._LOSSES)}, got {loss!r}")
        if output_loss not in ("ce", "mse"):
            raise ValueError(f"output_loss must be 'ce' or 'mse', got {output_loss!r}")
        if feedback_scale <= 0:
            raise ValueError(f"feedback_scale must be > 0, got {feedback_scale}")
        if seq_target not in ("last", "all"):
            raise ValueError(f"seq_target must be 'last' or 'all', got {seq_target!r}")
        self.loss, self.output_loss = loss, output_loss
        self.feedback_scale, self.seq_target = feedback_scale, seq_target

    def _hidden_term(self, h: Tensor, target: Tensor) -> Tensor:
        return self._LOSSES[self.loss](h, target) / len(h)  # J_l = ℓ(h_l, P_l y*), per sample

    def _head_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.output_loss == "mse":
            onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
            return F.mse_loss(logits, onehot, reduction="sum") / len(y)
        return F.cross_entropy(logits, y)

"""Cascaded Forward, CaFo (Zhao et al. 2023, https://arxiv.org/abs/2303.09728).

The network is a cascade of blocks ``h_k = B_k(h_{k−1})`` (CaFo's block is Conv3×3+ReLU+MaxPool+BN,
``convnet:32,128,512,bn_after_pool=true``). Every block owns a linear *predictor*
``z_k = W_k vec(h_k)`` trained on its own, from the *detached* block output, with one of the
paper's three losses:

- ``ce``:        L_k = −log softmax(z_k)_y
- ``mse``:       L_k = ‖z_k − onehot(y)‖² / C
- ``sparsemax``: L_k = −z_{k,y} + ½ Σ_{j∈S(z_k)} (z_{k,j}² − τ(z_k)²) + ½
  (Martins & Astudillo 2016, https://arxiv.org/abs/1602.02068, eq. 18; ∂L/∂z = sparsemax(z) − y)

Prediction (CaFo §3): the sum over blocks of the predictors' outputs, each mapped to a
distribution by its loss (softmax for ``ce``, sparsemax for ``sparsemax``, raw for ``mse``).

Blocks are never trained by the predictors' losses:

- ``cafo-rand``: blocks keep their random initialisation; only the predictors learn. The blocks
  run under ``no_grad`` so a step costs one forward pass plus C×d predictor products.
- ``cafo-dfa``: for the first ``dfa_epochs`` epochs the blocks (with the model's head as output
  layer) are trained by Direct Feedback Alignment (Nøkland 2016; see ``dfa.py``), then frozen and
  the predictors train. The phase is chosen in ``on_epoch_start`` (no second loop).

The model's head is the last block's predictor (as MF uses it as M_L), so CaFo predicts with the
same network as its BP twin plus L−1 linear predictors. BatchNorm running statistics keep
tracking while blocks are frozen (they are statistics, not learned weights).

Defaults: CE loss; Adam, lr 1e-3, batch 128 (the Beyond-Backpropagation re-implementation's
CaFo config); ``dfa_epochs = 5`` for cafo-dfa (that config's MNIST value; 15 for F-MNIST).
The paper trains each predictor for many epochs full-batch; bpfree trains all predictors
together mini-batched (they are independent, so this is the same objective).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import block_output_shapes
from ..rule import LearningRule, Task, register


def sparsemax(z: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection of ``z`` onto the simplex (Martins & Astudillo 2016, Alg. 1)."""
    zs, _ = torch.sort(z, dim=dim, descending=True)
    k = torch.arange(1, z.size(dim) + 1, device=z.device, dtype=z.dtype)
    k = k.view([-1 if d == (dim % z.dim()) else 1 for d in range(z.dim())])
    cum = zs.cumsum(dim)
    support = (1 + k * zs > cum).to(z.dtype)  # j in S(z)
    k_z = support.sum(dim, keepdim=True)  # |S(z)|
    tau = (cum.gather(dim, k_z.long() - 1) - 1) / k_z  # τ(z), eq. 4
    return torch.clamp(z - tau, min=0)


def sparsemax_loss(z: Tensor, y: Tensor) -> Tensor:
    """Mean sparsemax loss (Martins & Astudillo 2016, eq. 18); its gradient is sparsemax(z) − δ_y."""
    with torch.no_grad():
        mask = (sparsemax(z) > 0).to(z.dtype)  # S(z): piecewise constant, no gradient
    k_z = mask.sum(1, keepdim=True)
    tau = ((z * mask).sum(1, keepdim=True) - 1) / k_z  # τ(z) on the fixed support
    sq = 0.5 * (mask * (z.pow(2) - tau.pow(2))).sum(1)
    return (sq - z.gather(1, y[:, None]).squeeze(1) + 0.5).mean()


@register
class CaFoRand(LearningRule):
    name = "cafo-rand"
    family = "local-loss"
    locality = "block"
    head_is_local = True  # the head is the last block's predictor
    paper = "https://arxiv.org/abs/2303.09728"
    native_model = "convnet:32,128,512,bn_after_pool=true"
    small_model = "convnet:4,8,bn_after_pool=true"
    small_in_shape = (1, 8, 8)
    smoke_model = "convnet:16,32,bn_after_pool=true"
    smoke = {"epochs": 12, "lr": 3e-3}
    search_space = {"lr": ("log", 1e-4, 1e-2), "loss": ("cat", ["ce", "mse", "sparsemax"])}

    def __init__(self, loss: str = "ce", dfa_epochs: int = 0, feedback_scale: float = 1.0) -> None:
        super().__init__()
        if loss not in ("ce", "mse", "sparsemax"):
            raise ValueError(f"loss must be 'ce', 'mse' or 'sparsemax', got {loss!r}")
        if dfa_epochs < 0:
            raise ValueError(f"dfa_epochs must be >= 0, got {dfa_epochs}")
        if feedback_scale <= 0:
            raise ValueError(f"feedback_scale must be > 0, got {feedback_scale}")
        self.loss, self.dfa_epochs, self.feedback_scale = loss, dfa_epochs, feedback_scale
        self.phase = "dfa" if dfa_epochs > 0 else "predictors"

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        shapes = block_output_shapes(model, task.in_shape)[:-1]
        C = task.num_classes
        self.predictors = nn.ModuleList()
        for shape in shapes[:-1]:  # W_k for every block but the last (whose predictor is the head)
            d = math.prod(shape)
            lin = nn.Linear(d, C)
            bound = 1.0 / math.sqrt(d)
            with torch.no_grad():
                lin.weight.uniform_(-bound, bound, generator=generator)
                lin.bias.zero_()
            self.predictors.append(lin)
        if self.dfa_epochs > 0:  # fixed random feedback B_k (C, d_k) for the DFA phase
            for k, shape in enumerate(shapes):
                B = torch.randn(C, math.prod(shape), generator=generator) / math.sqrt(C)
                self.register_buffer(f"B{k}", B * self.feedback_scale)

    def on_epoch_start(self, epoch: int) -> None:
        self.phase = "dfa" if epoch < self.dfa_epochs else "predictors"

    # ---- losses --------------------------------------------------------------------------------
    def _loss(self, z: Tensor, y: Tensor) -> Tensor:
        if self.loss == "ce":
            return F.cross_entropy(z, y)
        if self.loss == "mse":
            return F.mse_loss(z, F.one_hot(y, z.size(1)).to(z.dtype))
        return sparsemax_loss(z, y)

    def _output(self, z: Tensor) -> Tensor:
        if self.loss == "ce":
            return torch.softmax(z, 1)
        if self.loss == "sparsemax":
            return sparsemax(z, 1)
        return z

    def _scores(self, hs: list[Tensor]) -> list[Tensor]:
        """z_k for every block: the rule's predictors, then the head on the last block."""
        *_, head = self.blocks
        zs = [p(h.flatten(1)) for p, h in zip(self.predictors, hs[:-1])]
        return zs + [head(hs[-1])]

    # ---- training ------------------------------------------------------------------------------
    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.phase == "dfa":
            return self._dfa_step(x, y)
        with torch.no_grad():  # frozen blocks: no graph, no gradient, a forward pass only
            hs, h = [], x
            for block in self.blocks[:-1]:
                h = block(h)
                hs.append(h)
        losses = [self._loss(z, y) for z in self._scores(hs)]  # independent per-block losses
        total = torch.stack(losses).sum()
        total.backward()  # reaches only the predictors (inputs carry no graph)
        return {"loss": losses[-1], "loss_sum": total}

    def _dfa_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Nøkland 2016 eq. 3: δh_k = B_k e, e = softmax(head) − onehot; the head learns from e."""
        *blocks, head = self.blocks
        hs, h = [], x
        for block in blocks:
            h = block(h.detach())  # the error arrives through B_k, never through block k+1
            hs.append(h)
        logits = head(h.detach())
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():
            e = torch.softmax(logits, 1)
            e[torch.arange(len(y), device=y.device), y] -= 1
            e /= len(y)
        surrogate = loss
        for k, h_k in enumerate(hs):
            surrogate = surrogate + (h_k * (e @ getattr(self, f"B{k}")).view_as(h_k)).sum()
        surrogate.backward()
        return {"loss": loss}

    # ---- inference -----------------------------------------------------------------------------
    def _predict(self, x: Tensor) -> Tensor:
        hs, h = [], x
        for block in self.blocks[:-1]:
            h = block(h)
            hs.append(h)
        return torch.stack([self._output(z) for z in self._scores(hs)]).sum(0)  # Σ_k predictor_k


@register
class CaFoDFA(CaFoRand):
    """CaFo with DFA-pretrained blocks: ``dfa_epochs`` of DFA, then frozen blocks + predictors."""

    name = "cafo-dfa"
    smoke = {"epochs": 12, "lr": 3e-3, "rule_options": {"dfa_epochs": 4}}

    def __init__(self, loss: str = "ce", dfa_epochs: int = 5, feedback_scale: float = 1.0) -> None:
        super().__init__(loss=loss, dfa_epochs=dfa_epochs, feedback_scale=feedback_scale)

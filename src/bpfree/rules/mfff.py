"""Model-free forward-forward training of physical networks (Momeni, Rahmani, Malléjac, del Hougne
& Fleury, "Backpropagation-free training of deep physical neural networks", Science 382, 1297
(2023), https://doi.org/10.1126/science.adi8474; preprint arXiv 2305.13174 "model-free
forward-forward training"; the method is called PhyLL, physical local learning).

The network alternates *physical* layers (black boxes: fixed, noisy, non-differentiable — see
:class:`bpfree.models.physical.PhysicalLayer`) and *digital* trainable linear layers. Block l:

    y_l = Phys_l(norm(h_{l−1}))          measured output of the physical layer (no model of it)
    z_l = W_l y_l + b_l,  h_l = relu(z_l)   digital part, the only trainable parameters
    G_l = Σ_j h_{l,j}²                      goodness of the layer (Hinton's FF)

Each block gets a local forward-forward loss on its goodness for positive data (the image with its
true label written into the first C inputs) and negative data (a wrong label):

    softplus:  L_l = softplus(θ d_l − G_pos) + softplus(G_neg − θ d_l)          (FF eq. 1)
    symba:     L_l = softplus(−α (G_pos − G_neg) / d_l)                        (default)

Because the loss is computed on the *digital* output and ``z_l`` is linear in ``W_l``, its gradient
needs only the measured ``y_l``; bpfree writes it in closed form (no autograd anywhere, locality
``"none"``):

    δ_l = ∂L/∂G · 2 h_l ⊙ 1[z_l > 0]    (B, w)
    ∂L/∂W_l = δ_lᵀ y_l,   ∂L/∂b_l = Σ_b δ_l

The physical layers are never differentiated, modelled or probed by perturbation: training uses
two forward measurements per sample (positive and negative). The head is a digital softmax readout
on the last block's activities for a neutral label (1/C in every label slot), trained with its own
closed-form cross-entropy gradient ``(softmax − onehot)ᵀ h_L``; ``predict_mode="goodness"`` instead
predicts by trying every label and summing goodness over blocks (FF §3.3), as in the paper.

Defaults: symba loss with α = 4 (Lee & Song 2023), label scale 1, Adam (the paper trains the
digital weights with Adam). Recipe (:attr:`recommended_train`, ``benchmarks/estimators_es.py``):
Adam lr 3e-3 decayed by a cosine over 15 epochs; on MNIST through two simulated physical layers
(``physical:500,500``) that reaches 97.02 % test (bp on the ideal differentiable twin, same
schedule, lr 1e-3: 98.23 %). At constant lr 1e-3 the same model was at 90.5 % after 2 epochs:
symba at lr 1e-3 learns slowly (88.3 % after one epoch vs 90.1 % at 3e-3), and the softplus loss
with θ = 1 fails here (86.0 %, readout; 11.5 %, goodness).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ff import LabelledInputs
from ..rule import LearningRule, Task, register

_DERIV = {nn.ReLU: lambda z, h: (z > 0).to(h.dtype),
          nn.Tanh: lambda z, h: 1 - h * h,
          nn.Sigmoid: lambda z, h: h * (1 - h)}


@register
class ModelFreeForwardForward(LabelledInputs, LearningRule):
    name = "mfff"
    family = "physical"
    locality = "none"
    paper = "https://doi.org/10.1126/science.adi8474"
    native_model = "physical:1000,1000"
    small_model = "physical:32,32"
    smoke_model = "physical:256,256"
    smoke = {"epochs": 15, "lr": 3e-3}
    recommended_train = {"lr": 3e-3, "epochs": 15, "lr_schedule": "cosine"}
    search_space = {"lr": ("log", 1e-4, 1e-2), "alpha": ("float", 1.0, 10.0)}

    def __init__(self, loss: str = "symba", theta: float = 1.0, alpha: float = 4.0,
                 label_scale: float = 1.0, predict_mode: str = "readout") -> None:
        super().__init__()
        if loss not in ("softplus", "symba"):
            raise ValueError(f"loss must be 'softplus' or 'symba', got {loss!r}")
        if predict_mode not in ("readout", "goodness"):
            raise ValueError(f"predict_mode must be 'readout' or 'goodness', got {predict_mode!r}")
        if theta <= 0 or alpha <= 0 or label_scale <= 0:
            raise ValueError("theta, alpha and label_scale must be > 0")
        self.loss, self.theta, self.alpha = loss, theta, alpha
        self.label_scale, self.predict_mode = label_scale, predict_mode

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        if math.prod(task.in_shape) < task.num_classes:
            raise ValueError(f"mfff writes the label into the first {task.num_classes} inputs")
        self._digital: list[tuple[nn.Linear, nn.Module]] = []
        *blocks, head = list(model.children())
        for k, block in enumerate(blocks):
            mods = list(block.modules())[1:] if isinstance(block, nn.Sequential) else [block]
            lins = [m for m in mods if isinstance(m, nn.Linear)]
            acts = [m for m in mods if type(m) in _DERIV]
            if len(lins) != 1 or len(acts) != 1 or mods[-1] is not acts[0]:
                raise ValueError(f"mfff needs blocks ending in one digital Linear + relu/tanh/"
                                 f"sigmoid (a `physical:` model); block {k} is {block}")
            self._digital.append((lins[0], acts[0]))
        heads = [m for m in head.modules() if isinstance(m, nn.Linear)]
        if len(heads) != 1:
            raise ValueError("mfff needs a single Linear head (the digital readout)")
        self._head = heads[0]

    # ---- forward measurements ---------------------------------------------------------------
    def measure(self, x: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per block: (physical measurement y, digital pre-activation z, activity h)."""
        out, h = [], x
        *blocks, _ = self.blocks
        for block, (lin, act) in zip(blocks, self._digital):
            y = h
            for mod in block:  # everything before the digital Linear is upstream of it
                if mod is lin:
                    break
                y = mod(y)
            z = lin(y)
            h = act(z)
            out.append((y, z, h))
        return out

    # ---- training: closed-form local gradients ------------------------------------------------
    def _dL_dG(self, g_pos: Tensor, g_neg: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor]:
        B = len(g_pos)
        if self.loss == "symba":
            delta = (g_pos - g_neg) / d
            loss = F.softplus(-self.alpha * delta).mean()
            gp = -self.alpha / d * torch.sigmoid(-self.alpha * delta) / B
            return loss, gp, -gp
        th = self.theta * d
        loss = (F.softplus(th - g_pos) + F.softplus(g_neg - th)).mean()
        return loss, -torch.sigmoid(th - g_pos) / B, torch.sigmoid(g_neg - th) / B

    @torch.no_grad()  # model-free: forward measurements and closed-form local gradients only
    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        B = len(y)
        z_in = torch.cat([self.embed(x, y), self.embed(x, self.wrong_labels(y))])  # (2B, ...)
        total = x.new_zeros(())
        for (yv, z, h), (lin, act) in zip(self.measure(z_in), self._digital):
            g = h.pow(2).sum(1)  # (2B,) goodness
            loss, dgp, dgn = self._dL_dG(g[:B], g[B:], h.shape[1])
            dG = torch.cat([dgp, dgn])  # (2B,)
            delta = dG[:, None] * 2 * h * _DERIV[type(act)](z, h)  # (2B, w)
            lin.weight.grad = delta.t() @ yv  # (w, p): needs only the measurement y
            if lin.bias is not None:
                lin.bias.grad = delta.sum(0)
            total = total + loss
        out = {"loss": total}
        # digital readout on the last block's activities with a neutral label
        h_L = self.measure(self.embed(x, None))[-1][2]  # (B, w)
        logits = self._head(h_L)
        p = logits.softmax(1)
        e = (p - F.one_hot(y, p.shape[1]).to(p.dtype)) / B  # ∂CE/∂logits
        self._head.weight.grad = e.t() @ h_L
        if self._head.bias is not None:
            self._head.bias.grad = e.sum(0)
        out["readout_loss"] = F.cross_entropy(logits, y)
        return out

    # ---- inference --------------------------------------------------------------------------
    def _predict(self, x: Tensor) -> Tensor:
        assert self.task is not None
        if self.predict_mode == "readout":
            return self._head(self.measure(self.embed(x, None))[-1][2])
        B, C = len(x), self.task.num_classes
        labels = torch.arange(C, device=x.device).repeat_interleave(B)
        hs = self.measure(self.embed(x.repeat(C, *([1] * (x.dim() - 1))), labels))
        used = hs[1:] if len(hs) > 1 else hs
        g = torch.stack([h.pow(2).sum(1) for _, _, h in used]).sum(0)
        return g.view(C, B).t()

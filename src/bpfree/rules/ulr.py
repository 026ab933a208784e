"""Unified likelihood ratio (ULR): gradients from loss *values* only, no derivative of the model.

Jiang, Zhang, Xu, Yu & Peng, "One Forward is Enough for Neural Network Training via Likelihood
Ratio Method" (ICLR 2024; arXiv title "Training Neural Networks without Backpropagation: A Deeper
Dive into the Likelihood Ratio Method"), https://arxiv.org/abs/2305.08960.

Gaussian noise ``ε_l = σ ξ_l``, ``ξ_l ~ N(0, I)``, is added to the output of every linear layer,
``z_l = W_l x_{l−1} + b_l + ε_l``. Because ``z_l`` has density ``φ_σ(z_l − W_l x_{l−1} − b_l)``,
the likelihood-ratio (score-function) identity gives, for the smoothed loss ``E_ε[L]``,

    ∇_{W_l} E[L] = E[ L · (ε_l / σ²) x_{l−1}ᵀ ],    ∇_{b_l} E[L] = E[ L · ε_l / σ² ]     (ULR)

which needs the loss values of noisy forward passes and nothing else — no chain rule, no
forward-mode derivative: the model may be a black box between the noise sites. Each sample of
the batch is copied ``copies`` times (all copies form one batched forward pass) and the estimates
are averaged. Variance reduction (paper §"variance reduction"):

- *antithetic variables* (``antithetic=True``): every ξ is paired with −ξ, and
  ``(L(+ξ) − L(−ξ)) / 2`` replaces ``L`` (the symmetric difference also cancels the constant
  part of L, acting as a baseline);
- *layer-wise noise injection* (``layerwise=True``): the copies for layer l perturb layer l only,
  so noise injected elsewhere adds no variance to layer l's estimate; with the layers before l
  noise-free, those copies start from the clean ``z_l`` (cost: the layers above l only).
  ``layerwise=False`` injects noise into all layers in one pass and uses the clean-loss baseline
  ``L − L_clean`` when not antithetic.

Defaults (``sigma=0.1``, ``copies=8``, antithetic, layer-wise) are chosen for MNIST MLPs on this
budget; the paper's experiments use larger numbers of copies. Every layer, head included, is
trained by its own ULR estimate. Supported models: chains of ``nn.Linear`` layers and
parameter-free modules (bpfree's ``mlp``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..rule import ConfigError, LearningRule, Task, register


def _chain(model: nn.Module) -> list[nn.Module]:
    """The model as a flat list of leaf modules (nested ``nn.Sequential``s unrolled)."""
    out: list[nn.Module] = []
    for m in model.children():
        if isinstance(m, nn.Sequential):
            out += _chain(m)
        elif any(True for _ in m.children()):
            raise ConfigError(f"ulr needs a chain of nn.Sequential blocks, got {type(m).__name__}")
        elif any(True for _ in m.parameters()) and not isinstance(m, nn.Linear):
            raise ConfigError(f"ulr supports trainable nn.Linear layers only, got {m}")
        else:
            out.append(m)
    return out


@register
class LikelihoodRatio(LearningRule):
    name = "ulr"
    family = "perturbation"
    locality = "none"
    paper = "https://arxiv.org/abs/2305.08960"
    native_model = "mlp:512"
    smoke_model = "mlp:64"
    smoke = {"epochs": 10, "lr": 3e-3}
    search_space = {"lr": ("log", 1e-4, 1e-2), "sigma": ("log", 1e-2, 1.0),
                    "copies": ("int", 1, 32)}

    def __init__(self, sigma: float = 0.1, copies: int = 8, antithetic: bool = True,
                 layerwise: bool = True) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.sigma, self.copies = sigma, copies
        self.antithetic, self.layerwise = antithetic, layerwise

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        self._mods = _chain(model)
        self._lin_idx = [i for i, m in enumerate(self._mods) if isinstance(m, nn.Linear)]

    def _run(self, h: Tensor, start: int, noise: dict[int, Tensor] | None = None,
             inputs: dict[int, Tensor] | None = None, outputs: dict[int, Tensor] | None = None
             ) -> Tensor:
        """Forward from module ``start``; add ``noise[i]`` after linear i; record x_i and z_i."""
        for i in range(start, len(self._mods)):
            if inputs is not None and i in self._lin_idx:
                inputs[i] = h
            h = self._mods[i](h)
            if noise is not None and i in noise:
                h = h + noise[i]
            if outputs is not None and i in self._lin_idx:
                outputs[i] = h
        return h

    def _noise(self, B: int, d: int, device: torch.device) -> tuple[Tensor, int]:
        """ξ for R copies, stacked with −ξ when antithetic: (S·R·B, d) and the sign count S."""
        xi = self.randn(self.copies, B, d, device=device)  # (R, B, d)
        if self.antithetic:
            return torch.cat([xi, -xi]), 2
        return xi, 1

    def _coeff(self, losses: Tensor, base: Tensor, S: int) -> Tensor:
        """Per-copy weight of ξ: (L⁺ − L⁻)/2 (antithetic) or L − L_clean. (R, B)"""
        if S == 2:
            lp, lm = losses.chunk(2)
            return (lp - lm) / 2
        return losses - base

    def _set(self, i: int, gz: Tensor, x: Tensor) -> None:
        m = self._mods[i]
        x = x.reshape(gz.shape[0], -1)
        gw = gz.t() @ x  # (out, in): Σ_n ĝ(z_n) x_nᵀ
        m.weight.grad = gw if m.weight.grad is None else m.weight.grad + gw
        if m.bias is not None:
            gb = gz.sum(0)
            m.bias.grad = gb if m.bias.grad is None else m.bias.grad + gb

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        B, R, s = len(y), self.copies, self.sigma
        with torch.no_grad():  # loss values only
            xs: dict[int, Tensor] = {}
            zs: dict[int, Tensor] = {}
            clean = F.cross_entropy(self._run(x, 0, inputs=xs, outputs=zs), y, reduction="none")
            if self.layerwise:
                for i in self._lin_idx:  # copies for layer i: noise at layer i only
                    z = zs[i]
                    xi, S = self._noise(B, z.shape[1], z.device)  # (S·R, B, d)
                    zn = (z[None] + s * xi).reshape(S * R * B, -1)
                    logits = self._run(zn, i + 1)
                    L = F.cross_entropy(logits, y.repeat(S * R), reduction="none").view(S * R, B)
                    c = self._coeff(L, clean[None], S)  # (R, B)
                    gz = (c[..., None] * xi[:R]).mean(0) / (s * B)  # E[L ξ/σ] / B: (B, d)
                    self._set(i, gz, xs[i])
            else:  # all layers noisy in one batched pass; each layer scores its own noise
                noise, xis = {}, {}
                for i in self._lin_idx:
                    xis[i], S = self._noise(B, self._mods[i].out_features, x.device)  # (S·R, B, d)
                    noise[i] = s * xis[i].reshape(S * R * B, -1)
                xin: dict[int, Tensor] = {}
                xr = x.repeat(S * R, *([1] * (x.dim() - 1)))
                logits = self._run(xr, 0, noise=noise, inputs=xin)
                L = F.cross_entropy(logits, y.repeat(S * R), reduction="none").view(S * R, B)
                c = L - clean[None]  # baseline b = clean loss (independent of ξ: still unbiased)
                for i in self._lin_idx:  # copy r's own input x_{r,n}: Σ c ξ xᵀ / (S R σ B)
                    gz = (c[..., None] * xis[i]).reshape(S * R * B, -1) / (s * S * R * B)
                    self._set(i, gz, xin[i])
        return {"loss": clean.mean()}

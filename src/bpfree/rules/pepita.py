"""PEPITA (Dellaferrera & Kreiman, ICML 2022, https://arxiv.org/abs/2201.11665), with the
weight-mirroring variant of "Forward Learning with Top-Down Feedback" (Srinivasan et al.,
ICLR 2024, https://arxiv.org/abs/2302.05440).

Two forward passes replace the backward pass (paper Algorithm 1):

    pass 1 (standard):   h_0 = x,   h_l = σ(W_l h_{l−1}),   e = softmax(h_L) − y*      (B, C)
    pass 2 (modulated):  h'_0 = x − F e  (F fixed random, d_in × C),   h'_l = σ(W_l h'_{l−1})
    hidden layers:       ΔW_l = (h_l − h'_l) · (h'_{l−1})ᵀ            l = 1 … L−1
    output layer:        ΔW_L = e · (h'_{L−1})ᵀ
    W_l ← W_l − η ΔW_l   (SGD with momentum)

The error only ever travels *forward*, through the input. Srinivasan et al. show the rule is an
"adaptive feedback alignment": ``h_1 − h'_1 ≈ f'(a_1) ⊙ W_1 F e``, i.e. the first layer is taught
through the feedback matrix ``W_1 F`` that co-evolves with ``W_1``.

``mirror=True`` is their weight-mirroring (WM) variant: ``F = B_1 B_2 ⋯ B_L`` with one matrix per
layer (``B_l`` shaped like ``W_lᵀ``); after every update each layer is driven by centred noise
``ξ`` and ``B_l`` moves toward ``W_lᵀ`` by ``ΔB_l = η_wm (ξᵀ σ(W_l ξ)/(nσ_ξ²) − λ_wm B_l)``
(Akrout et al. 2019's mirroring; ICLR 2024 eq. 7). bpfree keeps ``‖F‖_F`` at its initial value so
mirroring changes F's direction, not the size of the input perturbation (a documented choice).

Implementation: explicit matmuls under ``no_grad``; no autograd graph is built, so the locality is
``"none"`` (audited: no backward pass reaches the model). The first layer of pass 2 uses
linearity, ``W_1 (x − F e) = W_1 x − (W_1 F) e``, which costs a (d_1 × C) product instead of a
second full first-layer matmul — identical numbers, a third fewer FLOPs than a naive pass 2
(``W_1 F`` rides in the pass-1 GEMM as C extra rows, +C/B of its cost: the one extra the rule has
over backprop's two big GEMMs). Dropout: one keep mask per step shared by both passes, drawn as
16-bit integers (see :meth:`PEPITA._masks`), with the inverted-dropout factor folded into scalars.

Dropout belongs to the network: the native model ``mlp:1024,bias=false,dropout=0.1`` carries
:class:`bpfree.models.Dropout` layers, which the BP twin applies through autograd and PEPITA
applies itself (same mask generator, same rate), so the two are compared on the same network.
The ``dropout`` option (default: the model's rate) adds dropout to a model without it.

Paper defaults (Table 6 / authors' code for MNIST, 1×1024 ReLU, no biases): F uniform in
``±0.05·√(6/d_in)``, SGD with momentum 0.9, lr 0.01, batch 64, lr × 0.1 at epochs 60 and 90
(100 epochs), dropout 10 % (in the native model; same mask in both passes), He-uniform weights
(the rule re-draws the model's weights as U(±√(6/fan_in)) at bind; ``init="default"`` keeps nn.Linear's init). **The paper requires
its own optimizer and schedule**: train it with :attr:`recommended_train` (SGD 0.9, lr 0.01,
batch 64, ``lr_schedule="step-60-90"``: the Trainer's lr × 0.1 at 60 % and 90 % of the epochs,
i.e. epochs 60 and 90 of 100, applied to the BP twin alike; ``val_fraction=0``: like the paper,
train on all 60k training images). ``decay_epochs``/``decay_factor``
(default off) instead scale the rule's own update at given epochs, for optimizers without the
schedule. Anchor: MNIST 98.0 % (BP 98.6 %).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import keep_mask, keep_prob
from ..rule import ConfigError, LearningRule, Task, register
from ._dense import dense_layers


@register
class PEPITA(LearningRule):
    name = "pepita"
    family = "forward-only"
    locality = "none"
    paper = "https://arxiv.org/abs/2201.11665"
    native_model = "mlp:1024,bias=false,dropout=0.1"
    smoke_model = "mlp:256"
    smoke = {"epochs": 12, "lr": 0.01, "optimizer": "sgd", "momentum": 0.9, "batch_size": 64}
    #: train options the paper uses; benchmarks pass them to both PEPITA and its BP twin
    recommended_train: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
                                                   "batch_size": 64, "lr_schedule": "step-60-90",
                                                   "val_fraction": 0.0}
    search_space = {"lr": ("log", 1e-3, 1e-1), "feedback_scale": ("log", 0.01, 0.5)}

    def __init__(self, feedback_scale: float = 0.05, dropout: float | None = None,
                 decay_epochs: str = "", decay_factor: float = 0.1, init: str = "he_uniform",
                 mirror: bool = False, wm_lr: float = 0.01, wm_decay: float = 0.1,
                 wm_noise: float = 0.1) -> None:
        super().__init__()
        if feedback_scale <= 0:
            raise ValueError(f"feedback_scale must be > 0, got {feedback_scale}")
        if dropout is not None and not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        try:
            milestones = [int(t) for t in decay_epochs.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"decay_epochs must be comma-separated integers, got {decay_epochs!r}") from None
        if not 0 < decay_factor <= 1:
            raise ValueError(f"decay_factor must be in (0, 1], got {decay_factor}")
        if init not in ("default", "he_uniform"):
            raise ValueError(f"init must be 'default' or 'he_uniform', got {init!r}")
        if wm_lr <= 0 or wm_decay < 0 or wm_noise <= 0:
            raise ValueError("wm_lr and wm_noise must be > 0 and wm_decay >= 0")
        self.feedback_scale, self.dropout = feedback_scale, dropout
        self.decay_epochs, self.decay_factor, self.init = decay_epochs, decay_factor, init
        self.mirror, self.wm_lr, self.wm_decay, self.wm_noise = mirror, wm_lr, wm_decay, wm_noise
        self._milestones = milestones
        self._scale = 1.0
        self._p = dropout or 0.0  # the drop rate in use (the model's, unless the option says)

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        self._layers = dense_layers(model, self.name, allow_dropout=True)
        rates = {layer.dropout for layer in self._layers[:-1]}
        if len(rates) > 1 or self._layers[-1].dropout > 0:
            raise ConfigError(f"pepita applies one dropout rate to every hidden layer and none to "
                              f"the head; the model has {[l.dropout for l in self._layers]}")
        model_p = rates.pop() if rates else 0.0
        if self.dropout is not None and model_p > 0 and self.dropout != model_p:
            raise ConfigError(f"pepita: dropout={self.dropout} but the model's blocks already have "
                              f"Dropout(p={model_p}); drop one of the two (the model's is used).")
        self._p = model_p if model_p > 0 else (self.dropout or 0.0)
        d_in, C = self._layers[0].linear.in_features, task.num_classes
        if self.init == "he_uniform":  # paper: U(±√(6/fan_in)), biases zero
            with torch.no_grad():
                for layer in self._layers:
                    lim = math.sqrt(6.0 / layer.linear.in_features)
                    layer.linear.weight.uniform_(-lim, lim, generator=generator)
                    if layer.linear.bias is not None:
                        layer.linear.bias.zero_()
        lim = self.feedback_scale * math.sqrt(6.0 / d_in)
        F0 = (torch.rand(d_in, C, generator=generator) * 2 - 1) * lim  # (d_in, C), fixed
        self.register_buffer("F", F0)
        if self.mirror:
            self.register_buffer("F_norm", F0.norm())
            for l, layer in enumerate(self._layers):  # B_l ~ W_lᵀ-shaped, N(0, 1/d_{l-1})
                W = layer.linear.weight
                self.register_buffer(f"B{l}", torch.randn(W.shape[1], W.shape[0], generator=generator)
                                     / math.sqrt(W.shape[1]))
            self._refresh_F()

    def on_epoch_start(self, epoch: int) -> None:
        self._scale = self.decay_factor ** sum(epoch >= m for m in self._milestones)

    # ---- the rule ----------------------------------------------------------------------------
    def _masks(self, x: Tensor) -> list[Tensor | None]:
        """One dropout *keep* mask per hidden layer (0/1 floats), shared by both passes.

        All masks come from one :func:`bpfree.models.keep_mask` call (16-bit integer lanes, the
        same masks as the model's :class:`bpfree.models.Dropout`; ``bernoulli_`` or ``rand``
        would cost 0.3x of a bp step on CPU). The inverted-dropout factor 1/P(keep) is folded
        into scalars downstream (:meth:`_step`), never applied as a pass over the mask.
        """
        hidden = self._layers[:-1]
        if self._p == 0:
            return [None] * len(hidden)
        sizes = [len(x) * l.linear.out_features for l in hidden]
        keep = keep_mask(sum(sizes), self._p, dtype=x.dtype, device=x.device,
                         generator=self._device_generator(x.device))
        return [m.view(len(x), -1) for m in keep.split(sizes)]

    @property
    def _keep_prob(self) -> float:  # the exact P(keep) of the 16-bit threshold
        return keep_prob(self._p)

    def _minus_one(self, like: Tensor) -> Tensor:
        c = self.__dict__.get("_m1")
        if c is None or c.device != like.device or c.dtype != like.dtype:
            c = self.__dict__["_m1"] = torch.full((1, 1), -1.0, dtype=like.dtype, device=like.device)
        return c

    @staticmethod
    def _act(layer, a: Tensor, mask: Tensor | None) -> Tensor:
        h = a if layer.act is None else layer.act(a)
        if mask is None:
            return h
        # un-scaled (1/P(keep) is folded downstream); in place unless h aliases a (kept for pass 2)
        return h * mask if h is a else h.mul_(mask)

    @staticmethod
    def _linear(layer, h: Tensor, s: float) -> Tensor:
        """``W (s·h) + b`` with the input scale folded into the (narrower) output."""
        lin = layer.linear
        if s == 1.0:
            return lin(h)
        if lin.bias is not None:
            return torch.addmm(lin.bias, h, lin.weight.t(), alpha=s)
        return (h @ lin.weight.t()).mul_(s)

    @staticmethod
    def _write_grad(linear: nn.Linear, delta: Tensor, inp: Tensor, s: float, s_in: float) -> None:
        """``∂W = s·s_in·δᵀ h_{l−1}``, ``∂b = s·Σ δ``: the scale rides in the GEMM (beta=0 ignores
        W); ``s_in``, the dropout factor the unscaled input owes, is not the bias's to pay."""
        linear.weight.grad = torch.addmm(linear.weight, delta.t(), inp, beta=0, alpha=s * s_in)
        if linear.bias is not None:
            linear.bias.grad = delta.sum(0).mul_(s)

    @torch.no_grad()
    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        layers, n, L = self._layers, len(x), len(self._layers) - 1
        masks = self._masks(x)
        q = 1.0 / self._keep_prob if self._p > 0 else 1.0  # inverted-dropout factor
        x = x.flatten(1)
        # pass 1: standard forward. W_1 F (for pass 2) rides along in the first GEMM:
        # [x; Fᵀ] W_1ᵀ, one GEMM instead of two
        Ft = self.F.t()  # (C, d_in)
        both = torch.cat([x, Ft]) @ layers[0].linear.weight.t()  # (B + C, d_1)
        a1, FtW1t = both[:n], both[n:]  # (B, d_1) = W_1 x;  (C, d_1) = (W_1 F)ᵀ
        if layers[0].linear.bias is not None:
            a1 = a1 + layers[0].linear.bias
        hs, h = [], x  # hs: masked hidden outputs, *without* the 1/P(keep) factor
        for l in range(L):
            a = a1 if l == 0 else self._linear(layers[l], h, q)
            h = self._act(layers[l], a, masks[l])
            hs.append(h)
        logits = self._linear(layers[L], h, q) if L > 0 else a1
        logp = torch.log_softmax(logits, 1)
        e = logp.exp().scatter_add_(1, y[:, None], self._minus_one(logp).expand(n, 1))  # (B, C):
        # e = softmax(h_L) − y*, the one-hot subtracted in place (no (B, C) one-hot built)
        # pass 2: modulated input x' = x − F e; W_1 x' = a_1 − (W_1 F) e by linearity
        x_mod = torch.addmm(x, e, Ft, alpha=-1)  # (B, d_in)
        h_prev, s_in = x_mod, 1.0  # s_in: the dropout factor owed by h_prev (1 for the input)
        lr_scale = self._scale / n  # batch mean (and the rule's own optional decay)
        for l, layer in enumerate(layers):
            if l == L:  # ΔW_L = e h'_{L−1}ᵀ
                self._write_grad(layer.linear, e, h_prev, lr_scale, s_in)
                break
            a_mod = torch.addmm(a1, e, FtW1t, alpha=-1) if l == 0 else self._linear(layer, h_prev, s_in)
            h_mod = self._act(layer, a_mod, masks[l])
            # ΔW_l = (h_l − h'_l) h'_{l−1}ᵀ; both factors owe their dropout scale, paid here once
            delta = hs[l].sub_(h_mod)  # h_l is spent (logits are computed): reuse its buffer
            self._write_grad(layer.linear, delta, h_prev, lr_scale * q, s_in)
            h_prev, s_in = h_mod, q
        if self.mirror:
            self._mirror_step(x.device)
        return {"loss": F.nll_loss(logp, y)}

    # ---- weight mirroring (ICLR 2024 variant) --------------------------------------------------
    def _mirror_step(self, device: torch.device) -> None:
        gen, n = self._device_generator(device), 64
        for l, layer in enumerate(self._layers):
            W = layer.linear.weight
            xi = torch.randn(n, W.shape[1], device=device, generator=gen) * self.wm_noise
            xi -= xi.mean()
            out = xi @ W.t()  # mirroring measures W alone (biases off): ξᵀ σ(W ξ) ∝ Wᵀ
            if l < len(self._layers) - 1 and layer.act is not None:
                out = layer.act(out)
            B = getattr(self, f"B{l}")
            B.add_(xi.t() @ out / (n * self.wm_noise ** 2) - self.wm_decay * B, alpha=self.wm_lr)
        self._refresh_F()

    def _refresh_F(self) -> None:
        prod = self.B0
        for l in range(1, len(self._layers)):
            prod = prod @ getattr(self, f"B{l}")  # (d_in, C) = B_1 ⋯ B_L
        self.F.copy_(prod * (self.F_norm / prod.norm().clamp_min(1e-12)))

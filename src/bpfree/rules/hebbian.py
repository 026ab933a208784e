"""Soft winner-take-all Hebbian learning, SoftHebb (Moraitis et al. 2022,
https://arxiv.org/abs/2107.05747; Journé et al., ICLR 2023, "Hebbian deep learning without
feedback", https://arxiv.org/abs/2209.11883), with a supervised linear readout.

Every hidden block's ``Linear`` is a soft-WTA layer trained without labels and without any loss:
with its input ``x̂ = x/‖x‖`` (the previous block's detached output), ``u = W x̂``,

    y_k = softmax(u / τ)_k                                         (soft competition, Moraitis eq. 5)
    Δw_k = η · ỹ_k · (x̂ − u_k w_k)                                 (SoftHebb plasticity, eq. 7)

where ``ỹ_k = y_k`` for the winner and ``−y_k`` for the others when ``anti_hebbian`` (Journé et al.
§3: soft anti-Hebbian plasticity). The Oja-like decay ``−u_k w_k`` keeps ‖w_k‖ → 1.
The update is summed over the batch (η per sample, ``hebb_lr``) and, with ``update="direct"``
(default), *applied by the rule itself* ``W ← W + ηΔW`` inside ``step`` (the Hebbian weights get
no ``.grad``, so the shared optimizer leaves them alone); only the readout uses the shared
optimizer (``uses_optimizer = True``). ``update="optimizer"`` instead writes ``.grad = −ΔW/B`` for
the shared optimizer; with Adam's per-weight normalisation this amplifies the tiny anti-Hebbian
terms of losing neurons and the features collapse (digits: 25 % vs 88 % without anti-Hebbian),
so it is not the default. No autograd touches a Hebbian layer.

The model's head is a linear readout trained with cross-entropy on the *detached* features of the
last block (its gradient stays in the head), as in both papers' evaluation protocol.

``modulation="surprise"`` is a neuro-modulated (three-factor) variant: each sample's Hebbian
update is scaled by a top-down, label-dependent signal ``m_n = 1 − p_readout(y_n | x_n)`` (the
readout's surprise), so the layer adapts most to the inputs the readout gets wrong.

Stabilisers (bpfree's, documented deviations): neurons start on the unit sphere; the input is
centred by a running mean μ (``center``; with a biased Linear the rule sets ``b = −Wμ`` so the model
computes the same ``W(x − μ)``), without which one neuron aligned with the shared background of
all images wins every input; each neuron's step is capped, ``η_k = η / max(1, η Σ_n |y_nk u_nk|)``,
so the Oja decay cannot overshoot (the uncapped rule diverges at η ≥ 0.05 with batch 128);
``init="data"`` seeds the neurons with the first inputs (k-means style).

Defaults: one hidden layer of 2000 units (Moraitis et al.'s MNIST network, ``mlp:2000``),
τ = 0.02, η = 0.2, anti-Hebbian on; the readout trains at the same time as the Hebbian layer.
Status: on MNIST these features are not yet better than the random initial ones for the
linear readout (see the benchmark); the ≥ 96 % target is not reached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import last_linear
from ..rule import LearningRule, Task, register


@register
class SoftHebb(LearningRule):
    name = "hebbian"
    family = "hebbian"
    locality = "block"  # Hebbian layers: no autograd at all; the readout: local CE
    paper = "https://arxiv.org/abs/2209.11883"
    native_model = "mlp:2000"
    search_space = {"lr": ("log", 1e-4, 1e-2), "temperature": ("log", 0.005, 0.5)}

    def __init__(self, temperature: float = 0.02, anti_hebbian: bool = True,
                 modulation: str = "none", hebb_lr: float = 0.2, update: str = "direct",
                 center: bool = True, center_momentum: float = 0.01,
                 init: str = "random") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if hebb_lr <= 0:
            raise ValueError(f"hebb_lr must be > 0, got {hebb_lr}")
        if update not in ("direct", "optimizer"):
            raise ValueError(f"update must be 'direct' or 'optimizer', got {update!r}")
        if not 0 < center_momentum <= 1:
            raise ValueError(f"center_momentum must be in (0, 1], got {center_momentum}")
        self.hebb_lr, self.update = hebb_lr, update
        self.center, self.center_momentum = center, center_momentum
        if init not in ("data", "random"):
            raise ValueError(f"init must be 'data' or 'random', got {init!r}")
        self.init = init
        if modulation not in ("none", "surprise"):
            raise ValueError(f"modulation must be 'none' or 'surprise', got {modulation!r}")
        self.temperature, self.anti_hebbian, self.modulation = temperature, anti_hebbian, modulation

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        self._hebb = [last_linear(b) for b in list(model.children())[:-1]]
        with torch.no_grad():  # start every neuron on the unit sphere, where the rule keeps it:
            for k, lin in enumerate(self._hebb):  # u_k is a cosine: no neuron wins by its norm
                lin.weight.copy_(F.normalize(lin.weight, dim=1))
                if lin.bias is not None:
                    lin.bias.zero_()
                self.register_buffer(f"mu{k}", torch.zeros(lin.in_features))  # input mean
        self.register_buffer("seen", torch.zeros(()))  # steps seen, for the running mean
        self.register_buffer("filled", torch.zeros(len(self._hebb), dtype=torch.long))

    def hebbian_update(self, W: Tensor, x: Tensor, m: Tensor | None) -> Tensor:
        """Batch-summed SoftHebb Δw/η for one layer: x (B, d_in) normalised, returns (d_out, d_in)."""
        u = x @ W.t()  # (B, K)
        y = torch.softmax(u / self.temperature, 1)  # soft WTA, (B, K)
        if self.anti_hebbian:  # winner Hebbian, every other neuron anti-Hebbian
            win = F.one_hot(u.argmax(1), u.size(1)).to(y.dtype)
            y = y * (2 * win - 1)
        if m is not None:
            y = y * m[:, None]  # top-down neuromodulation, one factor per sample
        # Σ_n y_nk (x_n − u_nk w_k) = (yᵀ x)_k − (Σ_n y_nk u_nk) w_k
        decay = (y * u).sum(0)  # (K,)
        return y.t() @ x - decay[:, None] * W

    def _rates(self, W: Tensor, x: Tensor, m: Tensor | None) -> Tensor:
        """η_k = η / max(1, η Σ_n |y_nk u_nk|), (K,)."""
        u = x @ W.t()
        y = torch.softmax(u / self.temperature, 1)
        if m is not None:
            y = y * m[:, None]
        load = (y * u).abs().sum(0)
        return self.hebb_lr / torch.clamp(self.hebb_lr * load, min=1.0)

    def _fill(self, k: int, lin: nn.Linear, xin: Tensor) -> None:
        """Data initialisation: the first inputs seen become the neurons' starting weights (as
        k-means seeds its centres), so no neuron starts far from the data and stays dead."""
        start = int(self.filled[k])
        n = min(len(xin), lin.out_features - start)
        lin.weight[start:start + n] = xin[:n]
        self.filled[k] += n

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        *blocks, head = self.blocks
        with torch.no_grad():
            feats, h = [], x
            for k, block in enumerate(blocks):
                flat = h.flatten(1)
                if self.center:  # x̂ = (x − μ)/‖x − μ‖: remove what every input shares
                    mu = getattr(self, f"mu{k}")
                    rate = torch.clamp(1 / (self.seen + 1), min=self.center_momentum)
                    mu.lerp_(flat.mean(0), rate)  # running mean (exact over the first steps)
                    flat = flat - mu
                feats.append(F.normalize(flat, dim=1))  # x̂: the Hebbian layer's input
                h = block(h)
            self.seen += 1
        logits = head(h)  # features carry no graph: CE trains only the readout
        loss = F.cross_entropy(logits, y)
        loss.backward()
        with torch.no_grad():
            m = None
            if self.modulation == "surprise":
                m = 1 - torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)  # (B,)
            for k, (lin, xin) in enumerate(zip(self._hebb, feats)):
                if self.init == "data" and int(self.filled[k]) < lin.out_features:
                    self._fill(k, lin, xin)
                dW = self.hebbian_update(lin.weight, xin, m)
                if self.update == "direct":
                    # per-neuron rate η_k = η / max(1, η Σ_n |y_nk u_nk|): the Oja decay of a
                    # neuron that wins much of the batch can never overshoot (stability)
                    lin.weight.add_(dW * self._rates(lin.weight, xin, m)[:, None])
                else:
                    lin.weight.grad = -dW / len(x)  # optimizer's descent step = Hebbian ascent
                if self.center and lin.bias is not None:  # the model computes W(x − μ) too
                    lin.bias.copy_(-(lin.weight @ getattr(self, f"mu{k}")))
        return {"loss": loss}

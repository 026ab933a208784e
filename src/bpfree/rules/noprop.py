"""NoProp (Li, Teh & Pascanu 2025, https://arxiv.org/abs/2503.24322): blocks that learn, each on
its own, to denoise a noised label embedding; inference runs the blocks from Gaussian noise.

**NoProp-DT** (``noprop``, model ``noprop:T=10``). Latents ``z_0 .. z_T``, class embeddings
``u_y`` = rows of ``W_Embed``, fixed variational posterior ``q(z_t | y) = N(√ᾱ_t u_y, (1 − ᾱ_t) I)``
(cosine schedule, ``ᾱ_t`` increasing in ``t``), ``SNR(t) = ᾱ_t / (1 − ᾱ_t)``. The ELBO-derived loss
(paper eq. 8 / Algorithm 1) is

    L = E_q[−log p̂_θout(y | z_T)] + D_KL(q(z_0|y) ‖ N(0, I))
        + (η/2) Σ_{t=1..T} (SNR(t) − SNR(t−1)) ‖û_θt(z_{t−1}, x) − u_y‖²,   z_{t−1} ~ q(z_{t−1}|y)

with ``û_θt = softmax(block_t(z_{t−1}, x)) W_Embed``. Algorithm 1 samples one ``t`` per update and
scales its term by ``T``; bpfree trains all T blocks on every batch (their own fresh ``z_{t−1}``),
which is the same objective in expectation and one optimizer step per batch.

**Locality.** Block ``t``'s input ``z_{t−1}`` is a *sample* from q (built from a detached
``W_Embed``), never the output of block ``t−1``: no gradient can pass from one block to another,
and each block's loss is back-propagated on its own (``backward`` per block, so only one block's
graph is alive at a time: this is where NoProp's memory saving comes from). The shared output unit
(the ``head``: classifier ``θ_out`` and ``W_Embed``) is trained jointly, as in the paper: by the
classifier and KL terms on ``z_T ~ q(z_T|y)`` (a sample the head builds from its own ``W_Embed``)
and, as in Algorithm 1 ("update θ_t, θ_out and W_Embed"), ``W_Embed`` also receives each block
loss's gradient through the target ``u_y`` and the read-out ``softmax(·) W_Embed`` — never through
a block's network. ``embed=onehot`` in the model spec fixes ``W_Embed`` (no shared learned state
between blocks at all).

**``embed_update="head"``** (option; default ``"all"``, Algorithm 1): the denoising losses treat
``W_Embed`` as a constant, so only the output unit's CE + KL train it. Why it exists: every
denoising term is lowered by pulling the class embeddings together (identical rows make
``‖û − u_y‖`` zero), and with T = 10 on the cosine schedule the last block's weight
``(η/2)(SNR(T) − SNR(T−1))`` is ≈ 320 against the CE's 1. On Fashion-MNIST (T = 10, cosine lr,
10 epochs) the closest two rows of ``W_Embed`` went from 1.2 apart to 0.03 within epoch 5 and
validation accuracy fell from 82 % to 71 % (MLP branch; the conv branch fell from 87 % to 81 %);
with ``"head"`` the rows spread apart (CE alone) and accuracy rises every epoch. It also leaves the
blocks no learned state in common (each block then trains on a fixed target, as with one-hot). The audit probes each block's first input (``z``): for the BP twin on the
same model it sees gradient crossing every step of the chain; for NoProp there is nothing to cross.

**NoProp-CT** (``noprop-ct``, model ``noprop:kind=ct``): one time-conditioned block,
``t ~ U[0, 1]``, loss ``CE + KL + (η/2) SNR'(t) ‖û_θ(z_t, x, t) − u_y‖²`` with a fixed
log-SNR-linear schedule (the paper learns it). **NoProp-FM** (``noprop-fm``, model
``noprop:kind=fm``): flow matching, ``z_t = t u_y + (1 − t) z_0``, loss
``η ‖v_θ(z_t, x, t) − (u_y − z_0)‖² + CE(head(u_y))``; inference integrates the ODE in T Euler
steps. For CT and FM each training example is a single denoising step of one network: no
back-propagation through time.

Defaults (paper, MNIST, NoProp-DT): T = 10, η = 0.1, AdamW, lr 1e-3, weight decay 1e-3, batch 128,
100 epochs (pass ``optimizer="adamw", weight_decay=1e-3`` to the Trainer; see
``benchmarks/noprop.py``). CT/FM use η = 1 (not verified against the paper's table).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.noprop import NoPropNet
from ..rule import ConfigError, LearningRule, Task, register


class _NoPropBase(LearningRule):
    family = "denoising"
    locality = "block"
    paper = "https://arxiv.org/abs/2503.24322"
    kind: ClassVar[str] = "dt"
    native_model = "noprop:T=10"
    small_model = "noprop:8,T=3,width=16,dropout=0"
    small_in_shape = (1, 8, 8)
    smoke_model = "noprop:T=3,cnn=false,width=32,dropout=0"
    smoke: ClassVar[dict[str, Any]] = {"epochs": 12, "lr": 3e-3}
    search_space = {"lr": ("log", 1e-4, 1e-2), "eta": ("log", 1e-2, 10.0)}

    def __init__(self, eta: float = 0.1, embed_update: str = "all") -> None:
        super().__init__()
        if not eta > 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        if embed_update not in ("all", "head"):
            raise ValueError(f"embed_update must be 'all' (every loss term trains W_Embed, paper "
                             f"Algorithm 1) or 'head' (only the output unit's CE + KL do), got "
                             f"{embed_update!r}")
        self.eta, self.embed_update = eta, embed_update

    #: warn when the closest two class embeddings come closer than this fraction of their
    #: distance at the first epoch (the collapse ``embed_update="head"`` prevents)
    COLLAPSE_FRACTION: ClassVar[float] = 0.1

    def on_epoch_start(self, epoch: int) -> None:
        W = self.net.head.W_embed
        if not isinstance(W, nn.Parameter) or len(W) < 2:
            return  # one-hot (fixed) embeddings cannot collapse
        with torch.no_grad():
            dist = torch.cdist(W, W) + torch.diag(torch.full((len(W),), float("inf"),
                                                             device=W.device))
            closest = float(dist.min())  # once per epoch, a C x C matrix
        first = self.__dict__.setdefault("_closest_at_start", closest)
        if closest < self.COLLAPSE_FRACTION * first and not self.__dict__.get("_warned"):
            self._warned = True
            warnings.warn(
                f"{self.name}: the class embeddings are collapsing (the closest two rows of "
                f"W_Embed are {closest:.3g} apart, {first:.3g} at the start); "
                + ("the denoising losses pull them together: pass embed_update='head' so only "
                   "the output unit trains W_Embed, or a fixed embed=onehot model"
                   if self.embed_update == "all" else
                   "try a fixed embed=onehot model or a smaller learning rate"),
                RuntimeWarning, stacklevel=2)

    def _embedding(self) -> Tensor:
        """W_Embed as the denoising losses see it: detached with ``embed_update="head"``."""
        W = self.net.head.W_embed
        return W.detach() if self.embed_update == "head" else W

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        if not isinstance(model, NoPropNet) or model.kind != self.kind:
            got = getattr(model, "kind", type(model).__name__)
            raise ConfigError(f"rule {self.name!r} needs a NoProp model of kind {self.kind!r} "
                              f"(e.g. {self.native_model!r}), got {got!r}")

    @property
    def net(self) -> NoPropNet:
        assert isinstance(self.model, NoPropNet)
        return self.model

    def _output_unit_loss(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """CE of the classifier on z_T ~ q(z_T|y) + KL(q(z_0|y) ‖ N(0, I)); trains the head only."""
        net = self.net
        W = net.head.W_embed
        ab_T, ab_0 = net.alpha_bar[-1], net.alpha_bar[0]
        d = W.shape[1]
        noise = (1 - ab_T).sqrt() * self.randn(len(y), d, device=W.device)
        ce = F.cross_entropy(net.head(y=y, noise=noise, signal=ab_T.sqrt()), y)
        # KL(N(√ᾱ_0 u, (1−ᾱ_0) I) ‖ N(0, I)) = ½ [ᾱ_0‖u‖² − d (ᾱ_0 + log(1 − ᾱ_0))]
        kl = 0.5 * (ab_0 * W[y].pow(2).sum(1) - d * (ab_0 + torch.log1p(-ab_0))).mean()
        return ce, kl

    def _predict(self, x: Tensor) -> Tensor:
        return self.net(x)  # the inference chain from z_0 ~ N(0, I) (eq. 3)


@register
class NoPropDT(_NoPropBase):
    """NoProp-DT: T independently trained denoising blocks (see the module docstring)."""

    name = "noprop"
    kind = "dt"

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        net = self.net
        ab = net.alpha_bar  # (T+1,)
        snr = ab / (1 - ab)
        W = self._embedding()  # (C, d)
        d = W.shape[1]
        denoise = x.new_zeros(())
        for t, block in enumerate(net.denoisers, start=1):
            u_y = W[y]  # (B, d) target; re-indexed per block: each block's graph is freed alone
            eps = self.randn(len(y), d, device=x.device)
            z = ab[t - 1].sqrt() * u_y.detach() + (1 - ab[t - 1]).sqrt() * eps  # ~ q(z_{t−1}|y)
            u_hat = net.u_hat(block(z, x), W)  # (B, d) = softmax(logits) W_Embed
            w = 0.5 * self.eta * (snr[t] - snr[t - 1])  # eq. 8's SNR-difference weight
            loss_t = w * (u_hat - u_y).pow(2).sum(1).mean()
            loss_t.backward()  # block t's own loss; its graph is freed before block t+1 runs
            denoise = denoise + loss_t.detach()
        ce, kl = self._output_unit_loss(y)
        (ce + kl).backward()  # the output unit (θ_out, W_Embed)
        return {"loss": ce + kl + denoise, "ce": ce, "denoise": denoise}


class _ContinuousTime(_NoPropBase):
    """CT and FM: one time-conditioned network, trained at a random t ~ U(0, 1) per example."""

    smoke: ClassVar[dict[str, Any]] = {"epochs": 20, "lr": 3e-3}

    def __init__(self, eta: float = 1.0, embed_update: str = "all") -> None:
        super().__init__(eta=eta, embed_update=embed_update)


@register
class NoPropCT(_ContinuousTime):
    """NoProp-CT: one time-conditioned denoiser trained at a random t per example."""

    name = "noprop-ct"
    kind = "ct"
    native_model = "noprop:kind=ct,T=40"
    small_model = "noprop:8,kind=ct,T=3,width=16,dropout=0"
    smoke_model = "noprop:kind=ct,T=20,cnn=false,width=64,dropout=0"

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        net = self.net
        W = self._embedding()
        B, d = len(y), W.shape[1]
        t = torch.rand(B, generator=self._device_generator(x.device), device=x.device)
        ab = net.schedule(t)[:, None]  # (B, 1)
        u_y = W[y]
        z = ab.sqrt() * u_y.detach() + (1 - ab).sqrt() * self.randn(B, d, device=x.device)
        u_hat = net.u_hat(net.denoisers[0](z, x, t), W)
        dsnr = (net.GAMMA_MAX - net.GAMMA_MIN) * torch.exp(net.gamma(t))  # SNR'(t) = γ' e^γ
        denoise = (0.5 * self.eta * dsnr * (u_hat - u_y).pow(2).sum(1)).mean()
        ce, kl = self._output_unit_loss(y)
        (denoise + ce + kl).backward()
        return {"loss": denoise + ce + kl, "ce": ce, "denoise": denoise}


@register
class NoPropFM(_ContinuousTime):
    """NoProp-FM: flow matching of the label embedding, one time-conditioned network."""

    name = "noprop-fm"
    kind = "fm"
    native_model = "noprop:kind=fm,T=40"
    small_model = "noprop:8,kind=fm,T=3,width=16,dropout=0"
    smoke_model = "noprop:kind=fm,T=20,cnn=false,width=64,dropout=0"

    def __init__(self, eta: float = 1.0) -> None:  # W_Embed learns from the classifier only
        super().__init__(eta=eta, embed_update="head")

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        net = self.net
        W = net.head.W_embed
        B, d = len(y), W.shape[1]
        t = torch.rand(B, generator=self._device_generator(x.device), device=x.device)
        u_y = W[y].detach()  # the velocity target is data; W_Embed learns from the classifier
        z0 = self.randn(B, d, device=x.device)
        z = t[:, None] * u_y + (1 - t[:, None]) * z0  # z_t on the straight path z_0 -> u_y
        v = net.denoisers[0](z, x, t)  # (B, d)
        fm = self.eta * (v - (u_y - z0)).pow(2).sum(1).mean()
        ce = F.cross_entropy(net.head(y=y, noise=torch.zeros_like(z0)), y)  # p̂(y | z_1 = u_y)
        (fm + ce).backward()
        return {"loss": fm + ce, "ce": ce, "denoise": fm}


"""NoProp's denoising-block network (Li, Teh & Pascanu 2025, https://arxiv.org/abs/2503.24322).

``noprop:T=10`` builds ``T`` denoising blocks ``û_θt(z_{t-1}, x)`` and a head (the classifier
``p̂_θout(y | z_T)`` plus the class-embedding matrix ``W_Embed``, rows ``u_y``). Each block is a
whole small network (paper Fig. 6 / Appendix): an image branch (conv 32-64-128 3×3 + ReLU +
max-pool 2×2 + dropout, flatten, FC + BN; an MLP for flat features or ``cnn=false``), a label
branch on ``z`` (FC+BN+ReLU, FC+BN, skip connection, ReLU), and a combiner
(FC+BN+ReLU ×2, FC to class logits). The block's prediction of the clean label embedding is the
softmax-weighted mix of class embeddings, ``û = softmax(logits) W_Embed``.

``model(x)`` is the *inference* process, the same for NoProp and for its BP twin (which trains
this very chain end to end with cross-entropy): ``z_0 ~ N(0, I)`` and (paper eq. 3)

    z_t = a_t û_θt(z_{t-1}, x) + b_t z_{t-1} + √c_t ε_t,   logits = head(z_T)
    a_t = √ᾱ_t (1 − α_{t−1}) / (1 − ᾱ_{t−1}),  b_t = √α_{t−1} (1 − ᾱ_t) / (1 − ᾱ_{t−1}),
    c_t = (1 − ᾱ_t)(1 − α_{t−1}) / (1 − ᾱ_{t−1}),  α_{t−1} = ᾱ_{t−1} / ᾱ_t,

with ``ᾱ_t`` increasing in ``t`` (``z_T`` is nearly the label, ``z_0`` nearly pure noise).
``kind=ct`` / ``kind=fm`` build one time-conditioned block (sinusoidal time embedding, 64 units)
shared over continuous time, integrated in ``T`` steps at inference. In eval mode the noise comes
from a fixed-seed generator, so ``predict`` is a deterministic function of the weights.

Spec: ``noprop:32,64,128,T=10,width=256`` (positional widths = image-branch conv channels, or MLP
widths for flat inputs), options ``kind``, ``embed`` (learned|onehot), ``embed_dim`` (0 = classes),
``width``, ``cnn``, ``dropout``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..rule import ConfigError
from . import register_model

__all__ = ["NoPropNet", "Denoiser", "NoPropHead", "cosine_alpha_bar", "noprop"]

KINDS = ("dt", "ct", "fm")


def cosine_alpha_bar(t: Tensor, s: float = 0.008) -> Tensor:
    """ᾱ(t) for t ∈ [0, 1], increasing: the cosine schedule (Nichol & Dhariwal) run backwards."""
    return torch.cos(0.5 * math.pi * (1.0 - t + s) / (1.0 + s)).pow(2).clamp(0.0, 1.0)


def time_embedding(t: Tensor, dim: int = 64) -> Tensor:
    """Sinusoidal embedding of t ∈ [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    ang = 1000.0 * t[:, None] * freqs[None]  # (B, half)
    return torch.cat([ang.sin(), ang.cos()], 1)


class Denoiser(nn.Module):
    """One block û_θt: ``(z, x[, t]) -> (B, out_dim)``. ``z`` is the first argument on purpose:
    the locality audit probes a block's first input, which in training is a sample from q."""

    def __init__(self, in_shape: tuple[int, ...], widths: list[int], d: int, out_dim: int,
                 width: int, cnn: bool, dropout: float, time_dim: int = 0) -> None:
        super().__init__()
        img: list[nn.Module] = []
        if cnn and len(in_shape) == 3:
            c, h, w = in_shape
            for ch in widths or [32, 64, 128]:
                img += [nn.Conv2d(c, ch, 3, padding=1), nn.ReLU()]
                if h >= 2 and w >= 2:
                    img.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                if dropout > 0:
                    img.append(nn.Dropout(dropout))
                c = ch
            d_img = c * h * w
            img.append(nn.Flatten())
        else:
            d_img = math.prod(in_shape)
            img.append(nn.Flatten())
            for w_ in widths or []:
                img += [nn.Linear(d_img, w_), nn.ReLU()]
                d_img = w_
        img += [nn.Linear(d_img, width), nn.BatchNorm1d(width)]
        self.image = nn.Sequential(*img)
        self.z1 = nn.Sequential(nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU())
        self.z2 = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width))
        self.time = (nn.Sequential(nn.Linear(time_dim, width), nn.ReLU()) if time_dim else None)
        self.time_dim = time_dim
        n_in = (3 if time_dim else 2) * width
        self.combine = nn.Sequential(
            nn.Linear(n_in, width), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Linear(width, width // 2), nn.BatchNorm1d(width // 2), nn.ReLU(),
            nn.Linear(width // 2, out_dim))

    def forward(self, z: Tensor, x: Tensor, t: Tensor | None = None, *,
                hx: Tensor | None = None) -> Tensor:
        """``hx``: ``self.image(x)`` when the caller already has it (CT/FM inference runs one
        block T times on the same ``x``: its image features are computed once, not T times)."""
        if hx is None:
            hx = self.image(x)  # (B, W)
        h1 = self.z1(z)
        hz = F.relu(self.z2(h1) + h1)  # skip connection in the label branch
        parts = [hx, hz]
        if self.time is not None:
            assert t is not None, "a time-conditioned block needs t"
            parts.append(self.time(time_embedding(t, self.time_dim)))
        return self.combine(torch.cat(parts, 1))  # (B, out_dim)


class NoPropHead(nn.Module):
    """The output unit: classifier p̂_θout(y|z_T) = softmax(Linear(z_T)) and W_Embed (C, d).

    ``head(z)`` classifies ``z``; ``head(y=y, noise=ε, signal=√ᾱ_T)`` classifies a sample
    ``z_T = √ᾱ_T u_y + ε`` from q(z_T|y) built from its own W_Embed (NoProp's training input).
    """

    def __init__(self, num_classes: int, d: int, embed: str) -> None:
        super().__init__()
        self.classifier = nn.Linear(d, num_classes)
        if embed == "onehot":
            self.register_buffer("W_embed", torch.eye(num_classes, d))
        else:  # learned, initialised with orthonormal rows (like one-hot, rotated)
            W = torch.empty(num_classes, d)
            nn.init.orthogonal_(W)
            self.W_embed = nn.Parameter(W)
        with torch.no_grad():  # start as the prototype read-out logits_c = u_c·z (bpfree's init;
            self.classifier.weight.copy_(self.W_embed)  # the paper leaves it open): the head
            self.classifier.bias.zero_()  # then classifies clean embeddings from step 0

    def forward(self, z: Tensor | None = None, *, y: Tensor | None = None,
                noise: Tensor | None = None, signal: float = 1.0) -> Tensor:
        if z is None:
            assert y is not None and noise is not None
            z = signal * self.W_embed[y] + noise  # (B, d) ~ q(z_T | y)
        return self.classifier(z)


class NoPropNet(nn.Sequential):
    """``block0 .. block{K-1}`` denoisers and a ``head``; ``forward`` runs the inference chain."""

    def __init__(self, blocks: list[Denoiser], head: NoPropHead, kind: str, T: int,
                 eval_seed: int = 0) -> None:
        mods: "OrderedDict[str, nn.Module]" = OrderedDict(
            (f"block{i}", b) for i, b in enumerate(blocks))
        mods["head"] = head
        super().__init__(mods)
        self.kind, self.T, self.eval_seed = kind, T, eval_seed
        grid = torch.linspace(0.0, 1.0, T + 1)  # t_k = k / T
        self.register_buffer("alpha_bar", self.schedule(grid))  # (T+1,) ᾱ_0 ≈ 0 .. ᾱ_T ≈ 1

    #: CT's fixed log-SNR range: γ(t) = γ_min + (γ_max − γ_min) t (the paper learns γ)
    GAMMA_MIN, GAMMA_MAX = -4.0, 4.0

    def schedule(self, t: Tensor) -> Tensor:
        """ᾱ(t), t ∈ [0, 1]: cosine for DT (paper); for CT ``ᾱ = sigmoid(γ(t))`` with a fixed,
        log-SNR-linear γ (the paper learns γ; on digits ±4 trains more reliably than ±6)."""
        if self.kind == "ct":
            return torch.sigmoid(self.gamma(t))
        return cosine_alpha_bar(t)

    def gamma(self, t: Tensor) -> Tensor:
        """log SNR(t) of the CT schedule."""
        return self.GAMMA_MIN + (self.GAMMA_MAX - self.GAMMA_MIN) * t

    @property
    def denoisers(self) -> list[Denoiser]:
        return list(self.children())[:-1]

    def u_hat(self, logits: Tensor, W: Tensor | None = None) -> Tensor:
        """û = softmax(logits) W_Embed: (B, C) -> (B, d); ``W`` replaces W_Embed (e.g. detached)."""
        return torch.softmax(logits, 1) @ (self.head.W_embed if W is None else W)

    def step_coeffs(self, ab_prev: Tensor, ab: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a_t, b_t, c_t) of eq. 3 from ᾱ_{t−1} and ᾱ_t."""
        alpha = ab_prev / ab  # α_{t−1}
        a = ab.sqrt() * (1 - alpha) / (1 - ab_prev)
        b = alpha.sqrt() * (1 - ab) / (1 - ab_prev)
        c = (1 - ab) * (1 - alpha) / (1 - ab_prev)
        return a, b, c

    def forward(self, x: Tensor) -> Tensor:
        head, d = self.head, self.head.W_embed.shape[1]
        gen = None
        if not self.training:  # deterministic predictions (state-dict round trips, evaluation)
            gen = torch.Generator(device=x.device).manual_seed(self.eval_seed)

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=gen, device=x.device)

        B = x.shape[0]
        z = randn(B, d)  # z_0 ~ N(0, I)
        blocks = self.denoisers
        # CT/FM: one block sees the same x at every step, so its image features are computed once
        hx = None if self.kind == "dt" else blocks[0].image(x)
        for k in range(1, self.T + 1):
            if self.kind == "fm":  # Euler step of dz/dt = v_θ(z_t, x, t)
                t = torch.full((B,), (k - 1) / self.T, device=x.device)
                z = z + blocks[0](z, x, t, hx=hx) / self.T
                continue
            ab_prev, ab = self.alpha_bar[k - 1], self.alpha_bar[k]
            if self.kind == "dt":
                logits = blocks[k - 1](z, x)
            else:  # ct: one block, conditioned on the current time
                logits = blocks[0](z, x, torch.full((B,), (k - 1) / self.T, device=x.device), hx=hx)
            a, b, c = self.step_coeffs(ab_prev, ab)
            z = a * self.u_hat(logits) + b * z + c.sqrt() * randn(B, d)
        return head(z)


@register_model("noprop")
def noprop(in_shape: tuple[int, ...], widths: list[int], num_classes: int, T: int = 10,
           kind: str = "dt", embed: str = "learned", embed_dim: int = 0, width: int = 256,
           cnn: bool = True, dropout: float = 0.2, eval_seed: int = 0) -> NoPropNet:
    """NoProp's network: ``noprop:T=10`` (DT), ``noprop:kind=ct,T=40``, ``noprop:kind=fm,T=40``."""
    if kind not in KINDS:
        raise ConfigError(f"noprop model: kind must be one of {KINDS}, got {kind!r}")
    if embed not in ("learned", "onehot"):
        raise ConfigError(f"noprop model: embed must be 'learned' or 'onehot', got {embed!r}")
    if T < 1 or width < 2 or not 0 <= dropout < 1 or embed_dim < 0:
        raise ConfigError(f"noprop model: bad T={T}, width={width}, dropout={dropout} "
                          f"or embed_dim={embed_dim}")
    d = embed_dim or num_classes
    if embed == "onehot" and d < num_classes:
        raise ConfigError(f"noprop model: one-hot embeddings need embed_dim >= {num_classes}")
    n_blocks = T if kind == "dt" else 1
    out = d if kind == "fm" else num_classes  # FM predicts a velocity in embedding space
    tdim = 0 if kind == "dt" else 64
    blocks = [Denoiser(in_shape, widths, d, out, width, cnn, dropout, tdim)
              for _ in range(n_blocks)]
    return NoPropNet(blocks, NoPropHead(num_classes, d, embed), kind, T, eval_seed)

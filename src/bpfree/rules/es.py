"""Evolution strategies: OpenAI-ES and EGGROLL. No backward pass at all (locality ``"none"``).

**es** — OpenAI-ES (Salimans, Ho, Chen, Sidor & Sutskever 2017, https://arxiv.org/abs/1703.03864).
The loss ``L(θ)`` is smoothed by Gaussian noise, ``J(θ) = E_ε L(θ + σε)``, whose gradient is
estimated from loss values only (paper Algorithm 1/2, eq. for ``∇_θ E F(θ+σε)``):

    ĝ = 1/(Nσ) Σ_{i=1..N} F_i ε_i,     ε_i ~ N(0, I),  F_i = shaped fitness of θ + σε_i

with *mirrored sampling* (antithetic pairs ``ε, −ε``, §2.1 of the paper) and *fitness shaping*
by centered ranks in ``[−½, ½]`` (§2.1, "rank transformation"). Fitness is ``−CE`` on the batch,
so ``.grad = −ĝ`` and the Trainer's Adam *descends* the loss (the paper also uses Adam).
The whole population is evaluated as one batched pass: ``torch.func.vmap`` over
``functional_call`` with the stacked parameters ``θ + σε_i`` (shape ``(N, *p.shape)``), no Python
loop over members. Cost: ``N`` copies of every weight (``O(N·D)`` memory).

**eggroll** — EGGROLL (Sarkar et al. 2025, "Evolution Strategies at the Hyperscale",
https://arxiv.org/abs/2511.16652). Each weight matrix ``W ∈ R^{m×n}`` of member ``i`` is perturbed by
a rank-``r`` matrix ``E_i = A_i B_iᵀ/√r`` (``A_i ∈ R^{m×r}``, ``B_i ∈ R^{n×r}`` Gaussian; the ``1/√r``
keeps ``Var(E_ij) = 1``), and ``E_i`` is never formed: with ``x`` a row batch,

    x (W + σE_i)ᵀ = x Wᵀ + σ/√r (x B_i) A_iᵀ        (the paper's ``xμ + σ(xB)Aᵀ``, transposed for
                                                     torch's ``(out, in)`` weight layout)

so a forward costs ``O(r(m+n))`` extra per row and the noise takes ``r(m+n)`` numbers per layer and
member, not ``mn``. The base product ``x Wᵀ`` is one ordinary matmul over the whole population ×
batch; the low-rank terms are two batched matmuls. Vectors (biases) get ordinary Gaussian noise.
The update (paper eq. for the EGGROLL estimator)

    ĝ_W = 1/(Nσ√r) Σ_i F_i A_i B_iᵀ = 1/(Nσ√r) (A · diag(F)) Bᵀ

is *one* matmul of the stacked factors ``(m × N r) @ (N r × n)``: the per-member updates are
low-rank but their sum is full-rank. Mirrored pairs (members 2j, 2j+1) share ``(A_j, B_j)`` with
opposite sign.

Data: ``share_batch=True`` (default) evaluates every member on the same mini-batch (common random
numbers: the members' fitness differences then come from their perturbations only); with
``share_batch=False`` the batch is split into ``N`` equal slices, one per member, as in the
paper's throughput experiments where each member processes its own sequence.

Defaults: ``σ = 0.02`` (OpenAI-ES MuJoCo experiments), centered-rank shaping, antithetic pairs,
Adam (both papers). EGGROLL uses ``rank = 1`` (the paper's main setting) and the same ``σ``: a
rank-1 perturbation of an ``m×n`` matrix has the same per-entry variance as full-rank noise, and on
MNIST (mlp:128, N = 512, one epoch) σ = 0.02 beat 0.005, 0.01, 0.05 and 0.1 (91.3 % vs 90.7, 91.0,
89.3, 85.7): with ``‖x‖² ≈ 784`` a larger σ moves the pre-activations ``σ(x·b)a`` by O(1) and the
estimate leaves the linear regime. A decaying step (cosine) lets the noisy estimate settle: with
:attr:`EGGROLL.recommended_train` (Adam lr 3e-3, cosine over 12 epochs) eggroll reaches 95.07 % on
MNIST mlp:128 (bp, same schedule, lr 1e-3: 97.93 %; constant lr 3e-3 and σ = 0.05 gave 91.47 %
after 2 epochs). Population sizes are bpfree's choices for CPU budgets (the
papers use 10³–10⁶ members).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..rule import LearningRule, Task, register


def centered_ranks(f: Tensor) -> Tensor:
    """Fitness shaping (Salimans et al. 2017 §2.1): ranks of ``f`` mapped linearly to ``[−½, ½]``."""
    n = f.numel()
    ranks = torch.empty_like(f)
    ranks[f.argsort()] = torch.arange(n, dtype=f.dtype, device=f.device)
    return ranks / max(n - 1, 1) - 0.5


def shape_fitness(fitness: Tensor, shaping: str) -> Tensor:
    """``"centered_rank"`` (robust, scale-free) or ``"none"`` (raw fitness minus its mean)."""
    if shaping == "centered_rank":
        return centered_ranks(fitness)
    return fitness - fitness.mean()


class _EvolutionRule(LearningRule):
    """Shared options and validation for the ES family."""

    family = "evolution"
    locality = "none"
    smoke = {"epochs": 15, "lr": 1e-2}
    search_space = {"lr": ("log", 1e-3, 5e-2), "sigma": ("log", 1e-3, 2e-1)}

    def _check(self, population: int, sigma: float, fitness_shaping: str) -> None:
        if population < 2 or population % 2:
            raise ValueError(f"population must be an even number >= 2 (antithetic pairs), "
                             f"got {population}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if fitness_shaping not in ("centered_rank", "none"):
            raise ValueError(f"fitness_shaping must be 'centered_rank' or 'none', "
                             f"got {fitness_shaping!r}")

    def _trained(self) -> Iterator[tuple[str, nn.Parameter]]:
        assert self.model is not None
        return ((n, p) for n, p in self.model.named_parameters() if p.requires_grad)


@register
class OpenAIES(_EvolutionRule):
    """OpenAI-ES: antithetic Gaussian perturbations of all parameters (see module docstring)."""

    name = "es"
    paper = "https://arxiv.org/abs/1703.03864"
    native_model = "mlp:64"

    def __init__(self, population: int = 256, sigma: float = 0.02,
                 fitness_shaping: str = "centered_rank") -> None:
        super().__init__()
        self._check(population, sigma, fitness_shaping)
        self.population, self.sigma, self.fitness_shaping = population, sigma, fitness_shaping

    def estimate(self, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """One ES gradient estimate of the batch loss, per parameter name; and the losses ``(N,)``."""
        assert self.model is not None
        named = dict(self._trained())
        theta = torch.cat([p.detach().reshape(-1) for p in named.values()])  # (D,)
        half, sigma = self.population // 2, self.sigma
        eps = self.randn(half, theta.numel(), device=theta.device)  # (N/2, D)
        pop = torch.cat([theta + sigma * eps, theta - sigma * eps])  # (N, D): mirrored pairs
        stacked, off = {}, 0
        for n, p in named.items():  # views (N, *p.shape) into the population
            stacked[n] = pop[:, off:off + p.numel()].view(-1, *p.shape)
            off += p.numel()

        def member_loss(params: dict[str, Tensor]) -> Tensor:
            return F.cross_entropy(functional_call(self.model, params, (x,)), y)

        losses = vmap(member_loss)(stacked)  # (N,): one batched pass, no loop over members
        u = shape_fitness(-losses, self.fitness_shaping)  # fitness = −loss
        # ĝ = 1/(Nσ) Σ_i u_i ε_i = 1/(Nσ) Σ_pairs (u⁺ − u⁻) ε  ; .grad = −ĝ (we descend the loss)
        grad = -((u[:half] - u[half:]) @ eps) / (self.population * sigma)  # (D,)
        out, off = {}, 0
        for n, p in named.items():
            out[n] = grad[off:off + p.numel()].view_as(p)
            off += p.numel()
        return out, losses

    @torch.no_grad()  # fitness evaluations only: autograd never sees the model
    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        grads, losses = self.estimate(x, y)
        for n, p in self._trained():
            p.grad = grads[n]
        return {"loss": losses.mean(), "loss_best": losses.min()}


# ---- EGGROLL ---------------------------------------------------------------------------------
_ELEMENTWISE_OK = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.Identity, nn.Flatten,
                   nn.Dropout, nn.ELU, nn.SiLU, nn.Softplus)


@register
class EGGROLL(_EvolutionRule):
    """EGGROLL: low-rank ES evaluated as one batched population forward (see module docstring)."""

    name = "eggroll"
    paper = "https://arxiv.org/abs/2511.16652"
    native_model = "mlp:256"
    # MNIST mlp:128, N = 512, σ = 0.02, batch 100 (benchmarks/estimators_es.py)
    recommended_train = {"lr": 3e-3, "epochs": 12, "lr_schedule": "cosine", "batch_size": 100}

    def __init__(self, population: int = 512, sigma: float = 0.02, rank: int = 1,
                 fitness_shaping: str = "centered_rank", share_batch: bool = True) -> None:
        super().__init__()
        self._check(population, sigma, fitness_shaping)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.population, self.sigma, self.rank = population, sigma, rank
        self.fitness_shaping, self.share_batch = fitness_shaping, share_batch

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        self._layers = [m for m in model.modules() if not list(m.children())]  # forward order
        for m in self._layers:
            own = list(m.parameters(recurse=False))
            if own and not isinstance(m, nn.Linear):
                raise ValueError(f"eggroll perturbs nn.Linear layers; the model has a "
                                 f"{type(m).__name__} with parameters (use es for other layers)")
            if not own and not isinstance(m, _ELEMENTWISE_OK):
                raise ValueError(f"eggroll cannot batch a population through "
                                 f"{type(m).__name__}; supported: Linear and elementwise layers")

    # -- noise ----------------------------------------------------------------------------------
    def sample(self, device: torch.device) -> list[dict[str, Tensor]]:
        """Per Linear layer: ``A (H, m, r)``, ``B (H, n, r)``, bias noise ``(H, m)``; H = N/2 pairs."""
        H, r = self.population // 2, self.rank
        noise = []
        for m in self._layers:
            if isinstance(m, nn.Linear):
                out_f, in_f = m.weight.shape
                z = {"A": self.randn(H, out_f, r, device=device),
                     "B": self.randn(H, in_f, r, device=device)}
                if m.bias is not None:
                    z["b"] = self.randn(H, out_f, device=device)
                noise.append(z)
        return noise

    # -- the batched population forward -----------------------------------------------------------
    def _linear(self, h: Tensor, lin: nn.Linear, z: dict[str, Tensor], shared: bool) -> Tensor:
        """``x Wᵀ + b + σ/√r (x B_i) A_iᵀ + σ ε_b`` for every member, without forming ``A_i B_iᵀ``.

        Members are laid out ``(H, 2)``: member ``2j`` uses ``+(A_j, B_j, ε_b,j)``, member
        ``2j+1`` the mirrored ``−``. The bias noise rides along as an extra rank-1 column
        (``x̃ = [xB, √r]``, ``Ã = [A, ε_b]``), so the whole perturbation is one fused
        ``baddbmm`` onto the base product.
        """
        A, Bf = z["A"], z["B"]  # (H, m, r), (H, n, r)
        H, m, r = A.shape
        s = self.sigma / math.sqrt(r)
        if shared:  # h: (B, n), the same rows for every member
            Bsz, n = h.shape
            base = F.linear(h, lin.weight, lin.bias)  # (B, m): computed once for all members
            xb = (h @ Bf.permute(1, 0, 2).reshape(n, H * r)).view(Bsz, H, r).transpose(0, 1)
            xb = torch.stack([xb, -xb], 1)  # (H, 2, B, r): mirrored pairs (small)
            base = base.repeat(2, 1)  # (2B, m), broadcast over H by baddbmm
        else:  # h: (N, B, n), member i's own rows
            N, Bsz, n = h.shape
            base = F.linear(h, lin.weight, lin.bias).view(H, 2 * Bsz, m)  # one matmul for all
            xb = torch.bmm(h.view(H, 2 * Bsz, n), Bf).view(H, 2, Bsz, r)  # (H, 2, B, r)
            xb[:, 1].neg_()  # the mirrored member: −(x B) (r numbers per row)
        if "b" in z:
            ones = torch.full((H, 2, Bsz, 1), math.sqrt(r), dtype=h.dtype, device=h.device)
            ones[:, 1].neg_()
            xb = torch.cat([xb, ones], -1)  # (H, 2, B, r+1)
            A = torch.cat([A, z["b"].unsqueeze(-1)], -1)  # (H, m, r+1)
        out = torch.baddbmm(base, xb.reshape(H, 2 * Bsz, -1), A.transpose(1, 2), alpha=s)
        return out.view(2 * H, Bsz, m)  # (N, B, m)

    def population_forward(self, x: Tensor, noise: list[dict[str, Tensor]],
                           shared: bool = True) -> Tensor:
        """Logits ``(N, B, C)``; ``x`` is ``(B, ...)`` shared or ``(N, B, ...)`` one slice per member."""
        h, k, pop = x, 0, not shared  # pop: h already carries the population dimension
        for mod in self._layers:
            if isinstance(mod, nn.Linear):
                h = self._linear(h, mod, noise[k], shared=not pop)
                k, pop = k + 1, True
            elif pop:  # elementwise / flatten on (N·B, ...)
                N, Bsz = h.shape[:2]
                h = mod(h.reshape(N * Bsz, *h.shape[2:]))
                h = h.view(N, Bsz, *h.shape[1:])
            else:
                h = mod(h)
        return h

    def fitness_losses(self, x: Tensor, y: Tensor, noise: list[dict[str, Tensor]]) -> Tensor:
        N = self.population
        if self.share_batch:
            logits = self.population_forward(x, noise)  # (N, B, C)
            yy = y.expand(N, -1)
        else:
            if len(x) % N:
                raise ValueError(f"share_batch=False splits the batch among the {N} members: "
                                 f"batch size {len(x)} must be a multiple of the population")
            logits = self.population_forward(x.view(N, -1, *x.shape[1:]), noise, shared=False)
            yy = y.view(N, -1)
        C = logits.shape[-1]
        ce = F.cross_entropy(logits.reshape(-1, C), yy.reshape(-1), reduction="none")
        return ce.view(N, -1).mean(1)  # (N,)

    def estimate(self, x: Tensor, y: Tensor) -> tuple[list[dict[str, Tensor]], Tensor]:
        """Gradient estimates per Linear layer (``{"weight", "bias"}``) and the losses ``(N,)``."""
        noise = self.sample(x.device)
        losses = self.fitness_losses(x, y, noise)
        u = shape_fitness(-losses, self.fitness_shaping)  # fitness = −loss
        H, N, sigma, r = self.population // 2, self.population, self.sigma, self.rank
        d = u[0::2] - u[1::2]  # (H,): mirrored pairs (members 2j, 2j+1), u⁺ − u⁻
        grads = []
        for z in noise:
            A, Bf = z["A"], z["B"]
            m, n = A.shape[1], Bf.shape[1]
            Ad = (A * d.view(H, 1, 1)).permute(1, 0, 2).reshape(m, H * r)  # (m, H·r)
            g = {"weight": -(Ad @ Bf.permute(1, 0, 2).reshape(n, H * r).t())
                 / (N * sigma * math.sqrt(r))}  # one (m × Hr)(Hr × n) matmul
            if "b" in z:
                g["bias"] = -(d @ z["b"]) / (N * sigma)
            grads.append(g)
        return grads, losses

    @torch.no_grad()  # fitness evaluations only: autograd never sees the model
    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        grads, losses = self.estimate(x, y)
        lins = [m for m in self._layers if isinstance(m, nn.Linear)]
        for lin, g in zip(lins, grads):
            lin.weight.grad = g["weight"]
            if lin.bias is not None:
                lin.bias.grad = g["bias"]
        return {"loss": losses.mean(), "loss_best": losses.min()}

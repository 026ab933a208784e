"""Forward gradients: weight-perturbed (``fg``) and activity-perturbed with local losses (``fg-local``).

No rule here runs a backward pass: every directional derivative comes from one forward-mode pass
(``torch.func.jvp``, which pushes tangents forward alongside the primal values), and every weight
gradient is formed from it by a product with the perturbation (and, for ``fg-local``, an explicit
outer product with the layer's input). Both are unbiased estimators of the true gradient
(``tests/test_estimators.py`` checks this against autograd).

**fg** — Baydin, Pearlmutter, Syme, Wood & Torr 2022, "Gradients without Backpropagation",
https://arxiv.org/abs/2202.08587, Algorithm 1: sample ``v ~ N(0, I)`` over *all* parameters θ,
compute the directional derivative ``d = ∇L(θ)·v`` with one jvp, and use the forward gradient
``g(θ) = d v`` (eq. 2 of Ren et al. 2023, ``E[g] = ∇L`` since ``E[v vᵀ] = I``). ``num_directions``
> 1 averages K independent estimates (variance / K).

**fg-local** — Ren, Kornblith, Liao & Hinton, ICLR 2023, "Scaling Forward Gradient With Local
Losses", https://arxiv.org/abs/2210.03310 ("LG-FG-A": local greedy, activity-perturbed):

- *activity perturbation* (eq. 3): each sample n gets its own perturbation ``u_n`` of a linear
  layer's output ``z = W x + b``; the jvp gives ``d_n = ∇_{z_n} L_n · u_n`` and
  ``ĝ(W) = (1/B) Σ_n (d_n u_n) x_nᵀ`` — an outer product with the layer input, no backward pass;
- *block-wise local losses* (§4.1): every block's input is detached and the block has its own
  linear classifier head (the model's head for the last block, rule-owned ones before it);
- *group-wise local losses* (§4.3, eqs. 4-5): when a block's channels are split into G groups that
  never mix (``localmixer:…,groups=G``), G replicated copies of the loss are built, copy g seeing
  group g live and the others behind a stop-gradient. Their values are equal, but each group's
  perturbation now has its own directional derivative ``d_{n,g}``, so the estimator's dimension
  per loss falls from C to C/G (Table 1: variance ∝ fan-out q);
- *per-layer perturbation* (``perturb="layer"``, default): each linear layer inside a block gets its
  own directional derivative (its perturbation alone, evaluated in one batched jvp over copies of
  the block input); ``perturb="block"`` perturbs all layers of a block at once (one scalar each).
- the heads themselves are one linear layer on the loss, so their gradient is the exact local delta
  rule ``(softmax − onehot) hᵀ / B`` (``head_grad="exact"``), or a forward gradient of the logits
  (``head_grad="forward"``).

Table 3 anchors (MNIST): LG-FG-A on M/1/16 2.55 % test error (BP 2.41 %), FG-W 8.56 %; defaults
here are the paper's MNIST network (``localmixer:512,groups=16``) and one direction per step. The
paper trains with SGD + momentum 0.9 and a warm-up + cosine learning-rate decay; bpfree uses the
Trainer's shared optimizer (Adam) with the cosine decay (:attr:`recommended_train`). The decay is
what the estimator needs: its noise sets an accuracy floor at a constant step (Adam lr 2e-3,
constant: 95.5 % after 15 epochs, oscillating), and the cosine over 20 epochs reaches 97.05 %
(``benchmarks/estimators_fg.py``). Also checked, on 3 cosine epochs: the paper's block-0 form
(no residual, a final ReLU) instead of bpfree's residual block gives 94.2 % vs 95.1 %, and two
directions per step 95.5 % at 1.5× the step time.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap

from ..models import block_output_shapes
from ..models.localmixer import GroupLinear, LocalNorm
from ..rule import ConfigError, LearningRule, Task, register

_LINEAR = (nn.Linear, GroupLinear)


@register
class ForwardGradient(LearningRule):
    name = "fg"
    family = "perturbation"
    locality = "none"
    paper = "https://arxiv.org/abs/2202.08587"
    native_model = "mlp:1024,1024"  # Baydin et al. §5: MNIST MLP with two 1024-unit layers
    # weight perturbation's variance grows with the parameter count (Ren et al. Table 1): the
    # digits smoke test uses a linear model, where it clears 80 % within ~10 s
    smoke_model = "mlp:"
    smoke = {"epochs": 30, "lr": 1e-2, "batch_size": 32}
    search_space = {"lr": ("log", 1e-5, 1e-2), "num_directions": ("int", 1, 8)}

    _CHUNK = 32  # directions per batched (vmap) jvp; bounds the tangent memory to 32 × params

    def __init__(self, num_directions: int = 1) -> None:
        super().__init__()
        if num_directions < 1:
            raise ValueError(f"num_directions must be >= 1, got {num_directions}")
        self.num_directions = num_directions

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        assert self.model is not None
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        theta = {n: p.detach() for n, p in named}

        def loss_fn(params: dict[str, Tensor]) -> Tensor:
            return F.cross_entropy(functional_call(self.model, params, (x,)), y)

        def dir_deriv(v: dict[str, Tensor]) -> Tensor:
            return jvp(loss_fn, (theta,), (v,))[1]  # ∇L·v from one forward-mode pass

        grads = {n: torch.zeros_like(p) for n, p in theta.items()}
        with torch.no_grad():  # forward mode only: no autograd graph is recorded
            loss, done = None, 0
            while done < self.num_directions:  # directions in chunks, each one batched pass
                k = min(self._CHUNK, self.num_directions - done)
                v = {n: self.randn(k, *p.shape, device=p.device) for n, p in theta.items()}
                if k == 1:  # the jvp also returns the primal loss
                    loss, d = jvp(loss_fn, (theta,), ({n: t[0] for n, t in v.items()},))
                    d = d[None]
                else:
                    d = vmap(dir_deriv)(v)  # (k,): one batched forward-mode pass
                for n in grads:  # g = (∇L·v) v, summed over the chunk
                    grads[n] += torch.tensordot(d, v[n], dims=1)
                done += k
            if loss is None:
                loss = loss_fn(theta)
        for n, p in named:
            p.grad = grads[n] / self.num_directions
        return {"loss": loss}


def _head_parts(head: nn.Module) -> tuple[Callable[[Tensor], Tensor], nn.Linear]:
    """Split a head into its parameter-free prefix and its final Linear."""
    mods = list(head) if isinstance(head, nn.Sequential) else [head]
    lin = mods[-1]
    if not isinstance(lin, nn.Linear) or any(p.requires_grad for m in mods[:-1]
                                             for p in m.parameters()):
        raise ConfigError("fg-local needs heads that end in an nn.Linear after parameter-free "
                          f"layers, got {head}")
    pre = nn.Sequential(*mods[:-1])
    return pre, lin


@register
class LocalForwardGradient(LearningRule):
    name = "fg-local"
    family = "perturbation"
    locality = "none"
    paper = "https://arxiv.org/abs/2210.03310"
    native_model = "localmixer:512,groups=16"  # Ren et al. Table 2 M/1/16 (MNIST)
    small_model = "localmixer:32,32,groups=4"
    smoke_model = "localmixer:64,groups=8"
    smoke = {"epochs": 5, "lr": 3e-3}
    recommended_train = {"lr": 2e-3, "epochs": 20, "lr_schedule": "cosine", "batch_size": 128}
    search_space = {"lr": ("log", 1e-4, 1e-2), "num_directions": ("int", 1, 4)}

    def __init__(self, num_directions: int = 1, perturb: str = "layer",
                 head_grad: str = "exact") -> None:
        super().__init__()
        if num_directions < 1:
            raise ValueError(f"num_directions must be >= 1, got {num_directions}")
        if perturb not in ("layer", "block"):
            raise ValueError(f"perturb must be 'layer' or 'block', got {perturb!r}")
        if head_grad not in ("exact", "forward"):
            raise ValueError(f"head_grad must be 'exact' or 'forward', got {head_grad!r}")
        self.num_directions, self.perturb, self.head_grad = num_directions, perturb, head_grad

    # ---- binding: per-block layers, groups and local heads ---------------------------------
    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        *blocks, head = list(model.children())
        shapes = block_output_shapes(model, task.in_shape)[:-1]
        self._layers: list[list[nn.Module]] = []
        self._groups: list[int] = []
        for k, block in enumerate(blocks):
            lins = [m for m in block.modules() if isinstance(m, _LINEAR)]
            others = [m for m in block.modules() if not isinstance(m, _LINEAR)
                      and any(True for _ in m.parameters(recurse=False))]
            if not lins or others:
                raise ConfigError(f"fg-local: block {k} must hold Linear/GroupLinear layers and "
                                  f"parameter-free ops only, got {block}")
            G = int(getattr(block, "groups", 1))
            d = math.prod(shapes[k])
            if any(m.out_features % G for m in lins) or d % G:
                raise ConfigError(f"fg-local: block {k} widths are not divisible by {G} groups")
            self._layers.append(lins)
            self._groups.append(G)
        self.heads = nn.ModuleList()  # local classifier of every block but the last
        for k in range(len(blocks) - 1):
            d, G = math.prod(shapes[k]), self._groups[k]
            lin = nn.Linear(d, task.num_classes)
            bound = 1.0 / math.sqrt(d)
            with torch.no_grad():
                lin.weight.uniform_(-bound, bound, generator=generator)
                lin.bias.zero_()
            self.heads.append(nn.Sequential(LocalNorm(G), lin) if G > 1 else lin)

    def _head(self, k: int) -> nn.Module:
        return self.heads[k] if k < len(self.heads) else self.blocks[-1]

    # ---- the local losses -------------------------------------------------------------------
    @staticmethod
    def _group_losses(out: Tensor, y: Tensor, head: nn.Module, G: int) -> Tensor:
        """(B, G) per-sample losses; copy g sees group g live, the rest stop-gradient (eqs. 4-5)."""
        B = out.shape[0]
        o = out.reshape(B, -1)
        if G == 1:
            return F.cross_entropy(head(o), y, reduction="none")[:, None]
        pre, lin = _head_parts(head)
        if all(isinstance(m, (nn.Flatten, nn.Identity)) or
               (isinstance(m, LocalNorm) and m.groups % G == 0) for m in pre):
            # the head's prefix acts on each group alone, so the stop-gradient copies can be
            # made at the Linear: logits_g = W·sg(n) + W_g (n_g − sg(n_g)); equal values, and
            # the tangent of copy g is W_g ṅ_g only (G× cheaper than replicating the prefix)
            n = pre(o)  # (B, C)
            nd = n.detach()
            K = lin.out_features
            delta = torch.einsum("bgc,kgc->bgk", (n - nd).reshape(B, G, -1),
                                 lin.weight.reshape(K, G, -1))  # (B, G, K): zero primal
            logits = lin(nd)[:, None, :] + delta
        else:
            og = o.reshape(B, 1, G, -1)
            live = torch.eye(G, dtype=torch.bool, device=o.device)[None, :, :, None]
            rep = torch.where(live, og, og.detach()).reshape(B * G, -1)  # (B·G, C)
            logits = head(rep)
        return F.cross_entropy(logits.reshape(B * G, -1), y.repeat_interleave(G),
                               reduction="none").reshape(B, G)

    # ---- the step ---------------------------------------------------------------------------
    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        *blocks, _ = self.blocks
        h = x
        with torch.no_grad():  # forward mode + explicit outer products only
            for k, block in enumerate(blocks):
                h_in = h.detach()  # block k's loss must not reach block k-1
                out = self._block_update(k, block, h_in, y)
                loss = self._head_update(self._head(k), out, y)
                h = out
        return {"loss": loss}

    def _block_update(self, k: int, block: nn.Module, h_in: Tensor, y: Tensor) -> Tensor:
        lins, G, head = self._layers[k], self._groups[k], self._head(k)
        B, K = h_in.shape[0], self.num_directions
        inputs: dict[nn.Module, Tensor] = {}
        eps: dict[nn.Module, Tensor] = {}
        hooks = [m.register_forward_hook(lambda m, a, z: z + eps[m] if m in eps else z)
                 for m in lins]
        try:
            caps = [m.register_forward_hook(lambda m, a, z: inputs.__setitem__(m, a[0]))
                    for m in lins]
            out = block(h_in)  # clean pass: every layer's input x_l and the block output
            for c in caps:
                c.remove()
            # R copies of the batch: one per (direction, layer) in "layer" mode, else per direction
            L = len(lins) if self.perturb == "layer" else 1
            R = K * L
            xr = h_in.repeat(R, *([1] * (h_in.dim() - 1)))  # (R·B, ...)
            us, tangents = {}, {}
            for i, m in enumerate(lins):
                u = self.randn(R, B, m.out_features, device=h_in.device)  # (R, B, d_l)
                if L > 1:  # copy (j, i) perturbs layer i only
                    mask = torch.zeros(K, L, 1, 1, device=u.device)
                    mask[:, i] = 1.0
                    u = u * mask.reshape(R, 1, 1)
                us[m] = u
                tangents[m] = u.reshape(R * B, -1)
            primals = {m: torch.zeros_like(t) for m, t in tangents.items()}

            def losses(e: dict[nn.Module, Tensor]) -> Tensor:
                eps.clear()
                eps.update(e)
                return self._group_losses(block(xr), y.repeat(R), head, G)  # (R·B, G)

            _, d = jvp(losses, (primals,), (tangents,))  # d[r·B+n, g] = ∇_{z} L_{n,g} · u
        finally:
            eps.clear()
            for hk in hooks:
                hk.remove()
        d = d.reshape(R, B, G)
        for m in lins:
            u = us[m].reshape(R, B, G, -1)
            gz = (d[..., None] * u).reshape(R, B, -1).sum(0) / (B * K)  # (B, d_l): ĝ(z)/B
            self._linear_grad(m, gz, inputs[m])
        return out

    @staticmethod
    def _linear_grad(m: nn.Module, gz: Tensor, x: Tensor) -> None:
        """Weight gradient from the activity gradient: an outer product with the layer input."""
        x = x.reshape(x.shape[0], -1)
        if isinstance(m, GroupLinear):
            Gm = m.groups
            gw = torch.einsum("bgo,bgi->goi", gz.reshape(-1, Gm, m.out_features // Gm),
                              x.reshape(-1, Gm, m.in_features // Gm))
        else:
            gw = gz.t() @ x  # (out, in) = Σ_n ĝ(z_n) x_nᵀ
        m.weight.grad = gw if m.weight.grad is None else m.weight.grad + gw
        if m.bias is not None:
            gb = gz.sum(0)
            m.bias.grad = gb if m.bias.grad is None else m.bias.grad + gb

    def _head_update(self, head: nn.Module, out: Tensor, y: Tensor) -> Tensor:
        pre, lin = _head_parts(head)
        hin = pre(out.reshape(out.shape[0], -1))  # (B, C)
        logits = lin(hin)
        loss = F.cross_entropy(logits, y)
        B = len(y)
        if self.head_grad == "exact":  # local delta rule: ∂L/∂logits = (softmax − onehot) / B
            e = torch.softmax(logits, 1)
            e[torch.arange(B, device=y.device), y] -= 1
        else:  # forward gradient of the logits: (∇L_n·u_n) u_n
            u = self.randn(*logits.shape, device=logits.device)
            _, dn = jvp(lambda z: F.cross_entropy(z, y, reduction="none"), (logits,), (u,))
            e = dn[:, None] * u
        e = e / B
        lin.weight.grad = e.t() @ hin
        if lin.bias is not None:
            lin.bias.grad = e.sum(0)
        return loss

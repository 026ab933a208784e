"""Block-local learning with auxiliary networks: DGL, AugLocal and MAN.

The model's blocks are split into K gradient-isolated modules. By default one module = one block
(the stem or one residual block of :mod:`bpfree.models.resnet`), AugLocal's and MAN's setting;
``n_modules=K`` groups the blocks into K contiguous modules instead (DGL's and InfoPro's K = 2, 4,
8, 16 splits; the first modules, which hold the largest activations, get the fewer blocks).
``split="memory"`` places the K-1 boundaries where the largest module's saved activations, its
auxiliary net's included, are smallest (measured by one dummy forward; a minimax DP over the
boundaries): on ``resnet:8,width=16`` DGL's K=2 split moves from blocks (4, 5) to (3, 6) and its
saved-activation peak from 0.68 to 0.60 × BP's.
Module k receives its input *detached*, computes ``h_k = f_k(h_{k-1}.detach())`` and is trained
only by the cross-entropy of its own auxiliary network ``a_k``:

    L_k = CE(a_k(f_k(h_{k-1}.detach())), y),     θ_k, ψ_k ← ∇_{θ_k, ψ_k} L_k only   (DGL §3, greedy objective)

The last module's "auxiliary network" is the model's own head, so the network that predicts is
exactly the BP twin and nothing rule-owned is used at test time. All modules are trained on the
same batch in one step ("simultaneous" DGL, Belilovsky et al. Alg. 1; the Trainer's optimizer
applies every module's gradient). The three rules differ only in ``a_k``:

- **dgl** (Belilovsky, Eickenberg, Oyallon, ICML 2020, https://arxiv.org/abs/1901.08164):
  a small CNN: ``aux_convs`` × (1x1 conv + BN + ReLU, same width), adaptive average pooling to
  2x2, then an MLP of ``aux_mlp`` Linear layers (hidden width 4C = the pooled size), as in the
  paper's CIFAR auxiliary problem (2x2 spatial averaging + MLP).
- **auglocal** (Ma, Wu, Si, Tan, ICLR 2024, https://arxiv.org/abs/2402.17318): ``a_k`` is built
  from a *uniform subset of the layers after k* of the primary network (same layer types and
  output shapes, their own freshly initialised weights), followed by a copy of the classifier
  (GAP + Linear). Its depth shrinks linearly with k ("pyramidal depth"):
  ``d_k = round(d_min + (d - d_min)·(K-2-k)/(K-2))`` for the K-1 hidden modules, capped by the
  number of layers after k; layer i of ``a_k`` mirrors primary layer ``j + round(i·(L-1-j)/d_k)``,
  i = 1..d_k, where j is module k's last layer and L the number of layers (so the last one is
  always the primary network's last block; with one block per module j = k and L = K).
- **man** (Su et al., ECCV 2024, https://arxiv.org/abs/2407.05623): ``a_k`` starts with a
  momentum copy of the *next* block, ``θ̃_{k+1} ← m·θ̃_{k+1} + (1-m)·θ_{k+1}`` after every step
  (not trained by gradient; the gradient only flows *through* it into module k), corrected by a
  "learnable bias" that closes the feature gap between the EMA copy and module k's features,
  followed by the DGL auxiliary head (the DGL+MAN pairing; the paper's CIFAR runs pair MAN with
  InfoPro's reconstruction + CE loss instead). Both follow the authors' code
  (``resnetInfoPro_MAN.py``): ``y = LB(x) + EMA(x)`` where EMA copies the block right after
  module k and LB is a freshly initialised, trainable block of the same architecture
  (``bias="block"``, ``ema="block"``). ``bias="channel"`` (one learnable value per channel added
  to the EMA copy's output) and ``ema="module"`` (copy the whole next module when modules group
  several blocks) are bpfree's earlier reading of the paper's text; records made before these
  options existed ran them and are named so (``man[bias=channel,ema=module]``).

Memory: module k's backward runs right after its forward and its graph is freed before module
k+1 runs, so the peak holds one module's (+ its auxiliary net's) activations instead of the whole
network's, which is where the 40-45 % GPU-memory savings reported by AugLocal/MAN come from.

Defaults: Adam via the Trainer (papers: SGD + momentum, cosine schedule, 400 CIFAR epochs). DGL's
auxiliary MLP depth 3 and 2x2 pooling follow the DGL paper's CIFAR setup; AugLocal's d = 3 and
d_min = 1 are scaled down from the paper's deeper auxiliary nets on ResNet-32/110 (it studies
d = 2..6); MAN's m = 0.995 is the authors' released setting (``--momentum 0.995`` in their
README, CIFAR and ImageNet).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import block_output_shapes
from ..models.resnet import BasicBlock
from ..rule import ConfigError, LearningRule, Task, register

_RESNET = "resnet:4,width=8"


def dgl_head(shape: tuple[int, ...], num_classes: int, convs: int, mlp: int) -> nn.Sequential:
    """DGL's auxiliary classifier: [1x1 conv+BN+ReLU]×convs, avg-pool to 2x2, MLP (mlp Linears)."""
    mods: list[nn.Module] = []
    if len(shape) == 3:
        c = shape[0]
        for _ in range(convs):
            mods += [nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        mods.append(nn.AdaptiveAvgPool2d(2))
        d = 4 * c
    else:
        d = math.prod(shape)
    mods.append(nn.Flatten())
    for _ in range(mlp - 1):
        mods += [nn.Linear(d, d), nn.ReLU()]
    mods.append(nn.Linear(d, num_classes))
    return nn.Sequential(*mods)


def split_modules(n_blocks: int, n_modules: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` block ranges of ``n_modules`` modules over ``n_blocks`` blocks.

    Sizes differ by at most one; the later modules take the extra blocks, because the first
    modules hold the largest activations and a module's activations are what its backward keeps.
    """
    if not 1 <= n_modules <= n_blocks:
        raise ValueError(f"need 1 <= n_modules <= n_blocks, got {n_modules}, {n_blocks}")
    small, extra = divmod(n_blocks, n_modules)
    sizes = [small] * (n_modules - extra) + [small + 1] * extra
    ends = [sum(sizes[:i + 1]) for i in range(n_modules)]
    return [(e - s, e) for s, e in zip(sizes, ends)]


def _saved_storages(fn, *args) -> tuple[object, dict[int, int]]:
    """Run ``fn(*args)`` and return its result and the tensors autograd saved for backward, as
    ``{storage address: bytes}`` (a storage saved twice counts once)."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, seen


def _param_storages(*modules: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for m in modules
            for t in [*m.parameters(), *m.buffers()]}


def minimax_split(n_blocks: int, n_modules: int, cost) -> list[tuple[int, int]]:
    """Contiguous split of ``n_blocks`` blocks into ``n_modules`` modules minimising the largest
    ``cost(k, start, end)`` (module k = blocks ``[start, end)``), by dynamic programming over
    (module, end). Ties go to the earlier boundaries (smaller first modules, a larger last one
    trained end to end through the model's own head)."""
    if not 1 <= n_modules <= n_blocks:
        raise ValueError(f"need 1 <= n_modules <= n_blocks, got {n_modules}, {n_blocks}")
    inf = float("inf")
    best: dict[tuple[int, int], tuple[float, int]] = {}  # (k, end) -> (minimax cost, start)
    for e in range(1, n_blocks - n_modules + 2):
        best[0, e] = (cost(0, 0, e), 0)
    for k in range(1, n_modules):
        for e in range(k + 1, n_blocks - n_modules + k + 2):
            cands = [(max(best[k - 1, s][0], cost(k, s, e)), s) for s in range(k, e)
                     if (k - 1, s) in best]
            best[k, e] = min(cands, default=(inf, 0))
    bounds, e = [], n_blocks
    for k in range(n_modules - 1, -1, -1):
        s = best[k, e][1]
        bounds.append((s, e))
        e = s
    return bounds[::-1]


class _AuxLocal(LearningRule):
    """Shared machinery: detach between modules, one backward per module, head = last aux."""

    family = "local-aux"
    locality = "block"
    head_is_local = True  # the head is the last module's auxiliary classifier
    native_model = "resnet:8,width=16"
    small_model = _RESNET
    small_in_shape = (1, 8, 8)
    smoke_model = "resnet:3,width=8"
    smoke = {"epochs": 5, "lr": 3e-3, "threads": 1}  # 1 thread: 15x faster on the shared CPU
    search_space = {"lr": ("log", 1e-4, 1e-2)}

    n_modules: int = 0
    split: str = "even"

    def _check_modules(self, n_modules: int, split: str = "even") -> None:
        if n_modules < 0 or n_modules == 1:
            raise ValueError(f"n_modules must be 0 (one module per block) or >= 2, got {n_modules}")
        if split not in ("even", "memory"):
            raise ValueError(f"split must be 'even' (modules of equal block counts) or 'memory' "
                             f"(modules of balanced saved-activation memory), got {split!r}")
        self.n_modules, self.split = n_modules, split

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        shapes = block_output_shapes(model, task.in_shape)[:-1]  # (C, H, W) of every block
        if len(shapes) < 2:
            raise ConfigError(f"rule {self.name!r} needs a model with >= 2 blocks + head")
        if self.n_modules > len(shapes):
            raise ConfigError(f"n_modules={self.n_modules} but the model has only {len(shapes)} "
                              f"blocks before its head; use n_modules <= {len(shapes)} (0: one "
                              f"module per block)")
        n_mod = self.n_modules or len(shapes)
        self.bounds = split_modules(len(shapes), n_mod)
        if self.split == "memory" and n_mod < len(shapes):
            self.bounds = self._memory_split(len(shapes), n_mod, task)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):  # init from the run's seed, global RNG untouched
            torch.manual_seed(seed)
            self.aux = nn.ModuleList(self._make_aux(k, shapes, task)
                                     for k in range(len(self.bounds) - 1))

    def _memory_split(self, n_blocks: int, n_modules: int, task: Task) -> list[tuple[int, int]]:
        """``split="memory"``: the split whose largest module holds the least saved activation
        memory, its auxiliary net included (what one module's backward keeps alive; the peak of a
        local step is the largest module's). Measured, not modelled: one dummy training-mode
        forward of a copy of the model (2 samples, the real tensors' dtype and device) records the
        storages every block saves for backward; each candidate auxiliary net is built and run on
        the block output it would see. The chosen split and its per-module bytes per sample are
        kept in ``self.module_bytes``; ``self.bp_bytes`` is the whole network's, BP's."""
        blocks = nn.ModuleList(copy.deepcopy(list(self.blocks)))  # real BN statistics untouched
        dev = next(blocks.parameters()).device
        params = _param_storages(blocks)
        saved: list[dict[int, int]] = []
        outs: list[Tensor] = []
        with torch.random.fork_rng(devices=[]):
            h = torch.zeros(2, *task.in_shape, device=dev)
            for block in blocks:
                h, st = _saved_storages(block, h)
                saved.append({p: b for p, b in st.items() if p not in params})
                outs.append(h)
            aux_saved: dict[tuple[int, int], dict[int, int]] = {}
            bounds = self.bounds

            def aux_bytes(k: int, e: int) -> dict[int, int]:
                if (k, e) not in aux_saved:  # aux of module k ending before block e
                    self.bounds = [(0, 1)] * n_modules
                    self.bounds[k], self.bounds[k + 1] = (e - 1, e), (e, e + 1)
                    aux = self._make_aux(k, [tuple(o.shape[1:]) for o in outs[:-1]], task)
                    aux = aux.to(dev).train()
                    _, st = _saved_storages(aux, outs[e - 1])
                    skip = _param_storages(aux)
                    aux_saved[k, e] = {p: b for p, b in st.items() if p not in skip}
                return aux_saved[k, e]

            def cost(k: int, s: int, e: int) -> float:
                union: dict[int, int] = {}
                for j in range(s, e):
                    union.update(saved[j])
                union.update(saved[-1] if k == n_modules - 1 else aux_bytes(k, e))
                return sum(union.values())

            try:
                best = minimax_split(n_blocks, n_modules, cost)
                self.module_bytes = [cost(k, s, e) / 2 for k, (s, e) in enumerate(best)]
            finally:
                self.bounds = bounds
        total: dict[int, int] = {}
        for st in saved:
            total.update(st)
        self.bp_bytes = sum(total.values()) / 2
        return best

    def joint_blocks(self) -> set[int]:
        return {j for start, end in getattr(self, "bounds", []) for j in range(start + 1, end)}

    def _make_aux(self, k: int, shapes: list[tuple[int, ...]], task: Task) -> nn.Module:
        """Module k's auxiliary net; module k ends with block ``self.bounds[k][1] - 1``."""
        raise NotImplementedError

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        *blocks, head = self.blocks
        h = x
        total = x.new_zeros(())
        loss = total
        last = len(self.bounds) - 1
        for k, (start, end) in enumerate(self.bounds):
            out = h.detach()  # module k's loss must not reach module k-1
            for block in blocks[start:end]:
                out = block(out)
            logits = head(out) if k == last else self.aux[k](out)  # (B, C)
            loss = F.cross_entropy(logits, y)
            loss.backward()  # now, so module k's graph is freed before module k+1 runs
            total = total + loss.detach()
            h = out.detach()
        self._after_step()
        return {"loss": loss, "loss_sum": total}

    def _after_step(self) -> None:
        """Hook for rules with non-gradient state (MAN's momentum copies)."""


@register
class DGL(_AuxLocal):
    """Decoupled Greedy Learning: every module has a small CNN auxiliary classifier."""

    name = "dgl"
    paper = "https://arxiv.org/abs/1901.08164"

    def __init__(self, aux_convs: int = 1, aux_mlp: int = 3, n_modules: int = 0,
                 split: str = "even") -> None:
        super().__init__()
        if aux_convs < 0:
            raise ValueError(f"aux_convs must be >= 0, got {aux_convs}")
        if aux_mlp < 1:
            raise ValueError(f"aux_mlp (Linear layers in the auxiliary MLP) must be >= 1, got {aux_mlp}")
        self.aux_convs, self.aux_mlp = aux_convs, aux_mlp
        self._check_modules(n_modules, split)

    def _make_aux(self, k: int, shapes: list[tuple[int, ...]], task: Task) -> nn.Module:
        return dgl_head(shapes[self.bounds[k][1] - 1], task.num_classes, self.aux_convs, self.aux_mlp)


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with freshly initialised weights (same types and shapes)."""
    m = copy.deepcopy(module)
    for sub in m.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    return m


def _mirror(block: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> nn.Module:
    """A freshly initialised layer of ``block``'s type and output shape, fed ``in_shape``."""
    if isinstance(block, BasicBlock):
        stride = 2 if len(out_shape) == 3 and out_shape[1] < in_shape[1] else 1
        return BasicBlock(in_shape[0], out_shape[0], stride)
    return _fresh_copy(block)  # generic block: same type, fresh weights


@register
class AugLocal(_AuxLocal):
    """AugLocal: auxiliary nets from a uniform subset of later layers, pyramidal depth."""

    name = "auglocal"
    paper = "https://arxiv.org/abs/2402.17318"

    def __init__(self, aux_depth: int = 3, min_depth: int = 1, n_modules: int = 0,
                 split: str = "even") -> None:
        super().__init__()
        if not 1 <= min_depth <= aux_depth:
            raise ValueError(f"need 1 <= min_depth <= aux_depth, got min_depth={min_depth}, "
                             f"aux_depth={aux_depth}")
        self.aux_depth, self.min_depth = aux_depth, min_depth
        self._check_modules(n_modules, split)

    def depth(self, k: int, n_modules: int, n_layers: int | None = None,
              last: int | None = None) -> int:
        """Pyramidal depth d_k of module k's auxiliary net (k = 0..K-2 of K modules), capped by the
        number of layers after module k's last layer ``last`` (default: one layer per module)."""
        n_layers = n_modules if n_layers is None else n_layers
        last = k if last is None else last
        frac = (n_modules - 2 - k) / (n_modules - 2) if n_modules > 2 else 1.0
        d = round(self.min_depth + (self.aux_depth - self.min_depth) * frac)
        return max(1, min(d, n_layers - 1 - last))

    def selected(self, k: int, n_modules: int, n_layers: int | None = None,
                 last: int | None = None) -> list[int]:
        """Indices of the primary layers module k's auxiliary net mirrors: uniform over the layers
        after module k's last layer, ending at the network's last layer."""
        n_layers = n_modules if n_layers is None else n_layers
        last = k if last is None else last
        d, later = self.depth(k, n_modules, n_layers, last), n_layers - 1 - last
        return [last + round(i * later / d) for i in range(1, d + 1)]

    def _make_aux(self, k: int, shapes: list[tuple[int, ...]], task: Task) -> nn.Module:
        blocks = self.blocks[:-1]
        last = self.bounds[k][1] - 1
        mods, cur = [], shapes[last]
        cur_in = cur
        for j in self.selected(k, len(self.bounds), len(blocks), last):
            mods.append(_mirror(blocks[j], cur, shapes[j]))
            cur = shapes[j]
        head = _fresh_copy(self.blocks[-1])  # the classifier's type, fresh weights
        aux = nn.Sequential(*mods, head)
        with torch.no_grad():  # fail at bind time, with a clear message, if shapes do not chain
            try:
                aux.eval()(torch.zeros(2, *cur_in))
            except RuntimeError as exc:
                raise ConfigError(f"auglocal cannot mirror the layers after block {k} of this "
                                  f"model ({exc}); use a resnet model") from None
        return aux.train()


class _MomentumInput(nn.Module):
    """MAN's auxiliary input: the momentum copy θ̃_{k+1} of the next block applied to module k's
    output, plus the learnable bias: ``θ̃(x) + LB(x)`` (LB a trainable module of the same
    architecture, ``bias="block"``) or ``θ̃(x) + b`` (one value per channel, ``bias="channel"``)."""

    def __init__(self, ema: nn.Module, bias: str, out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.ema = ema
        self.bias = bias
        if bias == "block":
            self.lb = _fresh_copy(ema)
            for p in self.lb.parameters():
                p.requires_grad_(True)
        else:
            self.b = nn.Parameter(torch.zeros(out_shape[0], *([1] * (len(out_shape) - 1))))

    def forward(self, x: Tensor) -> Tensor:
        z = self.ema(x)
        return z + self.lb(x) if self.bias == "block" else z + self.b


@register
class MAN(_AuxLocal):
    """Momentum Auxiliary Network: EMA copy of the next block + learnable bias + DGL head."""

    name = "man"
    paper = "https://arxiv.org/abs/2407.05623"

    #: records made before these options existed ran a per-channel bias and, with grouped
    #: modules, an EMA copy of the whole next module
    legacy_options = {"bias": "channel", "ema": "module"}

    def __init__(self, momentum: float = 0.995, aux_convs: int = 1, aux_mlp: int = 3,
                 n_modules: int = 0, bias: str = "block", ema: str = "block",
                 split: str = "even") -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if aux_convs < 0 or aux_mlp < 1:
            raise ValueError(f"need aux_convs >= 0 and aux_mlp >= 1, got {aux_convs}, {aux_mlp}")
        if bias not in ("block", "channel"):
            raise ValueError(f"bias must be 'block' (a learnable copy of the next block, the "
                             f"authors' code) or 'channel' (one learnable value per channel), "
                             f"got {bias!r}")
        if ema not in ("block", "module"):
            raise ValueError(f"ema must be 'block' (copy the block after the module, the authors' "
                             f"code) or 'module' (copy the whole next module), got {ema!r}")
        self.momentum, self.aux_convs, self.aux_mlp = momentum, aux_convs, aux_mlp
        self.bias, self.ema = bias, ema
        self._check_modules(n_modules, split)
        if split == "memory" and ema == "module":
            raise ValueError("split='memory' costs each module's momentum copy as the one block "
                             "after it; use ema='block' (the authors' code) with it")

    def _next_module(self, k: int) -> list[nn.Module]:
        """The blocks module k's momentum copy follows: the first block after module k (the
        authors' ``EMA_Net[i]`` = the layer after local module i), or with ``ema="module"`` the
        whole next module; the same thing when every module is one block."""
        start, end = self.bounds[k + 1]
        return list(self.blocks[start:start + 1 if self.ema == "block" else end])

    def _make_aux(self, k: int, shapes: list[tuple[int, ...]], task: Task) -> nn.Module:
        nxt = self._next_module(k)
        # θ̃_{k+1} starts equal to θ_{k+1}; a single block stays unwrapped (one block per module)
        ema = copy.deepcopy(nxt[0] if len(nxt) == 1 else nn.Sequential(*nxt))
        for p in ema.parameters():
            p.requires_grad_(False)  # updated by EMA only; gradients pass *through* it
        out_shape = shapes[self.bounds[k + 1][0] + len(nxt) - 1]
        return nn.Sequential(_MomentumInput(ema, self.bias, out_shape),
                             dgl_head(out_shape, task.num_classes, self.aux_convs, self.aux_mlp))

    @torch.no_grad()
    def _after_step(self) -> None:
        # θ̃ ← m θ̃ + (1-m) θ (MAN §3), every module's copy in one fused call
        torch._foreach_lerp_(self._ema_dst, self._ema_src, 1.0 - self.momentum)

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        super()._bind(model, task, generator)
        dst, src = [], []
        for k, aux in enumerate(self.aux):  # pair each copy's tensors with the ones it follows
            ema = list(aux[0].ema.parameters())
            nxt = [p for b in self._next_module(k) for p in b.parameters()]
            if len(ema) != len(nxt):
                raise RuntimeError(f"man: module {k}'s momentum copy has {len(ema)} tensors, "
                                   f"the blocks it follows {len(nxt)}")
            dst += ema
            src += nxt
        self._ema_dst, self._ema_src = dst, src

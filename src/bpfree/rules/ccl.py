"""Counter-Current Learning, CCL (Kao & Hariharan, NeurIPS 2024, https://arxiv.org/abs/2409.19841).

Two networks run in opposite directions. The forward network f (the model) maps the input up,
``a_0 = x``, ``a_i = f_i(SG(a_{i−1}))``, ``i = 1..L`` (``a_L`` = logits). A mirrored *feedback*
network g (rule-owned; built from the model's block shapes) maps the target down,
``b_L = onehot(y)``, ``b_{i−1} = g_i(SG(b_i))`` with ``g_i: shape_i → shape_{i−1}`` (activation
as the forward layer at that depth, none on ``g_1`` whose output lives in input space). SG =
stop-gradient: *every* layer input is detached in both networks, so no gradient crosses a layer
(§3, Fig. 1b). Each depth pairs a forward and a feedback activation and trains both layers that
produced them: f_i learns from the feedback network's b_i, g_{i+1} from the forward activity a_i.

**Mirrors** ("the feedback network mirrors the forward network's architecture", Fig. 1a): a
``Linear(d_{i−1}→d_i)`` block mirrors to ``Linear(d_i→d_{i−1})``; a conv block
``Conv(k)[+BN]+act[+MaxPool]`` mirrors to ``Upsample(nearest, to shape_{i−1}) + Conv(c_i→c_{i−1},
k, same padding)`` — upsampling undoes the pooling, as in the paper's CNN code (upsample + conv
rather than a transposed conv). So ``mlp:…`` and ``convnet:…`` models (and a user's Sequential of
such blocks) are supported.

**Pair losses** (classification, the C class one-hots run through g: ``b_i ∈ R^{C×d_i}``):

- ``similarity="dot"`` (the paper's MLP loss)::
      L_i = κ / d_i · mean_{n,c} (⟨a_i(x_n), b_i(c)⟩ − [y_n = c])²
- ``similarity="cosine"`` (the paper's CNN loss; â, b̂ = L2-normalised rows)::
      L_i = κ/256 · mean_{n,c} (⟨â_n, b̂_c⟩ − [y_n = c])²
            + λ · (mean (â âᵀ − I_B)² + mean (b̂ b̂ᵀ − I_C)²)
  κ/256 is the paper's ``loss_scale_C`` (0.5 on MNIST at κ = 128), λ its ``loss_scale_ssl``.
- ``"auto"`` (default): cosine when the model has a conv block, dot otherwise.
- top pair: ``L_L = CE(a_L, y)``.

**Autoencoder mode** (``mode="autoencoder"``: the paper's autoencoder experiment and its conv-AE
code): unsupervised CCL. The forward network is the model's blocks (encoder, ``x → code``), then
a rule-owned decoder ``h_K..h_1`` (mirrors of the blocks, ``code → x̂``). The feedback network is
fed the *input* as its target and mirrors that whole chain: a fresh encoder ``e_1..e_K`` (mirror
of the decoder, ``x → c_K``), then a fresh decoder ``g_K..g_1`` (mirror of the encoder). With
``r_{j−1} = h_j(SG(r_j))``, ``r_K = a_K``; ``c_j = e_j(SG(c_{j−1}))``, ``c_0 = x``;
``d_{i−1} = g_i(SG(d_i))``, ``d_K = c_K``, the pairs are

    (x, d_0), (a_i, d_i) i=1..K−1, (a_K, c_K), (r_j, c_j) j=K−1..1, (r_0 = x̂, x)

each with ``L = H·MSE(a, b) + H·MSE(n(a), n(b))`` (H = feature-map height, n = per-channel spatial
centring and L2 normalisation; the plain ``H·MSE`` alone on the two end pairs and on vectors),
as in the paper's code. The image-space layers h_1 and g_1 start at zero (paper's init); every
other rule-owned layer is followed by batch-norm, as in the paper's AE. Use a normalised encoder
(``convnet`` with its default BN): with plain blocks the pair (a_K, c_K) can collapse to
a = b = 0 (seen on ``mlp:64,32`` on digits). The model's head (classifier) is trained as a
**linear probe** on the detached code by CE, so ``predict`` still returns class logits from the
forward net and the Trainer needs no special case; labels never reach the encoder. ``step``
returns ``loss`` = the reconstruction error ``MSE(x̂, x)`` (so a record's ``train_loss`` curve is
the reconstruction error and its accuracy the probe's), ``probe_loss`` and ``pair_loss``;
:meth:`reconstruct` returns x̂.

Defaults from the paper's MNIST configs: ELU, no biases (MLP: ``mlp:256×5,act=elu,bias=false``),
κ = 128 (``loss_scale_C · 256``), λ = 0.5. The paper trains with SGD (lr 1, gradient clipping,
loss warm-up over 100 steps); bpfree uses the shared optimizer (Adam), for which κ only sets the
balance against Adam's ε. Not implemented: the paper's CIFAR extras (``filter_target`` masking of
confident samples, gradient centralisation) and feedback batch-norm in classification mode.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import ACTIVATIONS, block_output_shapes
from ..rule import LearningRule, Task, register

_ACT_TYPES = tuple({type(make()) for make in ACTIVATIONS.values()})
_STRUCTURE = (nn.Flatten, nn.MaxPool2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)


class _Layer:
    """One forward block, parsed: its single Linear/Conv2d, activations, and whether it has BN."""

    def __init__(self, block: nn.Module) -> None:
        leaves = [m for m in block.modules() if not list(m.children())]
        weights = [m for m in leaves if isinstance(m, (nn.Linear, nn.Conv2d))]
        known = (nn.Linear, nn.Conv2d, *_ACT_TYPES, *_STRUCTURE)
        bad = [m for m in leaves if not isinstance(m, known)]
        if len(weights) != 1 or bad:
            raise ValueError("ccl supports MLP and conv models (blocks of [Flatten+]Linear+act or "
                             f"Conv2d[+BatchNorm2d]+act[+MaxPool2d]); got block {block}")
        self.weight = weights[0]
        self.acts = [m for m in leaves if isinstance(m, _ACT_TYPES)]
        self.bn = any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in leaves)


def _init_(module: nn.Module, generator: torch.Generator, zero: bool = False) -> None:
    """Seeded re-initialisation: U(±1/√fan_in) weights (PyTorch's default scale), zero biases."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                bound = 0.0 if zero else 1.0 / math.sqrt(m.weight[0].numel())
                m.weight.uniform_(-bound, bound, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.reset_parameters()
                m.reset_running_stats()


def _mirror(layer: _Layer, s_out: tuple[int, ...], s_in: tuple[int, ...], acts: list[nn.Module],
            bn: bool, bias: bool) -> nn.Sequential:
    """The feedback layer of ``layer``: maps its output shape ``s_out`` back to ``s_in``."""
    mods: list[nn.Module] = []
    if isinstance(layer.weight, nn.Conv2d):
        if tuple(s_out[1:]) != tuple(s_in[1:]):
            mods.append(nn.Upsample(size=tuple(s_in[1:]), mode="nearest"))  # undoes pool/stride
        k = layer.weight.kernel_size
        mods.append(nn.Conv2d(s_out[0], s_in[0], k, padding=tuple(n // 2 for n in k), bias=bias))
        norm: nn.Module = nn.BatchNorm2d(s_in[0])
    else:
        d_out = math.prod(s_out)
        if len(s_out) > 1:
            mods.append(nn.Flatten())
        mods.append(nn.Linear(d_out, math.prod(s_in), bias=bias))
        norm = nn.BatchNorm1d(math.prod(s_in))
    if bn and acts:  # never on an input-space output
        mods.append(norm)
    mods += [copy.deepcopy(a) for a in acts]
    if isinstance(layer.weight, nn.Linear) and len(s_in) > 1:
        mods.append(nn.Unflatten(1, s_in))
    return nn.Sequential(*mods)


def _spatial_normalize(a: Tensor) -> Tensor:
    """Per-channel spatial centring and L2 normalisation of a (B, C, H, W) map."""
    a = a - a.mean((2, 3), keepdim=True)
    return a / (a.norm(dim=(2, 3), keepdim=True) + 1e-8)


@register
class CounterCurrent(LearningRule):
    name = "ccl"
    family = "target-propagation"
    locality = "block"
    paper = "https://arxiv.org/abs/2409.19841"
    native_model = "mlp:256,256,256,256,256,act=elu,bias=false"
    search_space = {"lr": ("log", 1e-4, 1e-2)}

    def __init__(self, loss_scale: float = 128.0, feedback_bias: bool = False,
                 similarity: str = "auto", ssl_scale: float = 0.5,
                 mode: str = "classifier") -> None:
        super().__init__()
        if loss_scale <= 0:
            raise ValueError(f"loss_scale must be > 0, got {loss_scale}")
        if similarity not in ("auto", "dot", "cosine"):
            raise ValueError(f"similarity must be auto, dot or cosine, got {similarity!r}")
        if ssl_scale < 0:
            raise ValueError(f"ssl_scale must be >= 0, got {ssl_scale}")
        if mode not in ("classifier", "autoencoder"):
            raise ValueError(f"mode must be classifier or autoencoder, got {mode!r}")
        self.loss_scale, self.feedback_bias = loss_scale, feedback_bias
        self.similarity, self.ssl_scale, self.mode = similarity, ssl_scale, mode

    # ---- building the mirrored networks ------------------------------------------------------
    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        children = list(model.children())
        layers = [_Layer(c) for c in children]  # f_1 .. f_L (the head is f_L)
        conv = isinstance(layers[0].weight, nn.Conv2d)
        # shape_0 .. shape_L: the forward activations' per-sample shapes (a_0 flat for an MLP)
        shapes = [tuple(task.in_shape) if conv else (math.prod(task.in_shape),)]
        shapes += block_output_shapes(model, task.in_shape)
        self._flat_input = not conv
        self._cosine = self.similarity == "cosine" or (
            self.similarity == "auto" and any(isinstance(l.weight, nn.Conv2d) for l in layers))

        def mirrors(n: int, bn: bool, zero_first: bool) -> nn.ModuleList:
            out = nn.ModuleList()  # [m_1 .. m_n], m_i: shape_i -> shape_{i−1}
            for i in range(1, n + 1):
                acts = layers[i - 2].acts if i >= 2 else []  # as f_{i−1}; none in input space
                m = _mirror(layers[i - 1], shapes[i], shapes[i - 1], acts, bn, self.feedback_bias)
                _init_(m, generator, zero=zero_first and i == 1)
                out.append(m)
            return out

        if self.mode == "classifier":
            self.feedback = mirrors(len(layers), bn=False, zero_first=False)  # g_1 .. g_L
            return
        K = len(layers) - 1  # encoder blocks f_1 .. f_K; the head is the probe
        if K < 1:
            raise ValueError("ccl mode='autoencoder' needs a model with at least one block")
        # BN after every rule-owned hidden layer, as in the paper's AE (it keeps the pair losses
        # from the collapsed solution a = b = 0)
        self.decoder = mirrors(K, bn=True, zero_first=True)  # h_1 .. h_K (forward net)
        self.feedback = mirrors(K, bn=True, zero_first=True)  # g_1 .. g_K (feedback net)
        self.feedback_encoder = nn.ModuleList()  # e_1 .. e_K: fresh copies of the blocks
        for block in children[:K]:
            e = copy.deepcopy(block)
            _init_(e, generator)
            self.feedback_encoder.append(e)

    # ---- classification ----------------------------------------------------------------------
    def feedback_signals(self, C: int, device: torch.device) -> list[Tensor]:
        """b_0 .. b_{L−1} for the C class one-hots (shape (C, *shape_i)), inputs detached."""
        b = torch.eye(C, device=device)  # b_L = onehot(c), (C, C)
        out = []
        for g in reversed(self.feedback):
            b = g(b.detach())  # g_i's loss must not reach g_{i+1}
            out.append(b)
        return out[::-1]

    def pair_loss(self, a: Tensor, b: Tensor, target: Tensor) -> Tensor:
        """One depth's loss: a (B, d) forward, b (C, d) feedback, target (B, C) one-hot."""
        if not self._cosine:
            return self.loss_scale / a.size(1) * F.mse_loss(a @ b.t(), target)
        a_hat, b_hat = F.normalize(a, dim=1, eps=1e-8), F.normalize(b, dim=1, eps=1e-8)
        loss = self.loss_scale / 256 * F.mse_loss(a_hat @ b_hat.t(), target)  # (B, C) cosines
        eye = torch.eye(len(b), device=b.device)
        loss = loss + self.ssl_scale * F.mse_loss(b_hat @ b_hat.t(), eye)  # spread class signals
        if a.requires_grad:  # spread samples (skipped for a_0 = x, a constant)
            eye = torch.eye(len(a), device=a.device)
            loss = loss + self.ssl_scale * F.mse_loss(a_hat @ a_hat.t(), eye)
        return loss

    def _input(self, x: Tensor) -> Tensor:
        return x.flatten(1) if self._flat_input else x  # a_0

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.mode == "autoencoder":
            return self._step_autoencoder(x, y)
        assert self.task is not None
        C = self.task.num_classes
        *blocks, head = self.blocks
        acts, h = [self._input(x)], x  # a_0 = x
        for block in blocks:
            h = block(h.detach())  # f_i's loss must not reach f_{i−1}
            acts.append(h)
        logits = head(h.detach())
        target = F.one_hot(y, C).to(logits.dtype)  # [y_n = c], (B, C)
        losses = [self.pair_loss(a.flatten(1), b.flatten(1), target)
                  for a, b in zip(acts, self.feedback_signals(C, x.device))]
        top = F.cross_entropy(logits, y)
        pair = torch.stack(losses).sum()
        (pair + top).backward()  # disjoint per-layer graphs: one pass, every gradient stays local
        return {"loss": top, "pair_loss": pair}

    # ---- autoencoder -------------------------------------------------------------------------
    @staticmethod
    def ae_pair_loss(a: Tensor, b: Tensor, end: bool = False) -> Tensor:
        """H·MSE(a, b) (+ H·MSE of the spatially normalised maps inside the chain)."""
        H = a.size(2) if a.dim() == 4 else 1
        loss = H * F.mse_loss(a, b)
        if a.dim() == 4 and not end:
            loss = loss + H * F.mse_loss(_spatial_normalize(a), _spatial_normalize(b))
        return loss

    def _chains(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Forward list [x, a_1..a_K, r_{K−1}..r_0], feedback list [d_0..d_{K−1}, c_K..c_1, x]
        (paired index by index), and the code a_K; every layer input detached."""
        *blocks, _ = self.blocks
        x0 = self._input(x)
        fwd, h = [x0], x
        for block in blocks:
            h = block(h.detach())  # f_i
            fwd.append(h)
        code = h
        for dec in reversed(self.decoder):
            h = dec(h.detach())  # h_j: r_{j−1}
            fwd.append(h)
        enc, c = [], x
        for e in self.feedback_encoder:
            c = e(c.detach())  # e_j: c_j (feedback net, target = the input)
            enc.append(c)
        dec_fb, d = [], c
        for g in reversed(self.feedback):
            d = g(d.detach())  # g_i: d_{i−1}
            dec_fb.append(d)
        bwd = dec_fb[::-1] + enc[::-1] + [x0]  # [d_0..d_{K−1}, c_K..c_1, x]
        return fwd, bwd, code

    def _step_autoencoder(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        fwd, bwd, code = self._chains(x)
        last = len(fwd) - 1
        pair = torch.stack([self.ae_pair_loss(a, b, end=k in (0, last))
                            for k, (a, b) in enumerate(zip(fwd, bwd))]).sum()
        probe = F.cross_entropy(self.blocks[-1](code.detach()), y)  # linear probe on the code
        (pair + probe).backward()
        recon = F.mse_loss(fwd[-1].detach(), fwd[0])
        return {"loss": recon, "probe_loss": probe, "pair_loss": pair}

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """The forward net's reconstruction x̂ = h_1(…h_K(f_K(…f_1(x)))), shaped like x."""
        if self.mode != "autoencoder":
            raise ValueError("reconstruct() needs ccl mode='autoencoder'")
        self.eval()
        h = x
        for block in self.blocks[:-1]:
            h = block(h)
        for dec in reversed(self.decoder):
            h = dec(h)
        return h.reshape(x.shape)

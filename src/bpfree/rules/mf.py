"""Mono-Forward (Gong, Li & Abdulla 2025, https://arxiv.org/abs/2501.09238).

Each layer i computes ``a_i = σ(W_i a_{i-1})`` from a *detached* input and owns a projection
``M_i`` (classes × width) giving goodness scores ``G_i = a_i M_iᵀ`` (paper eq. 1); the layer's loss
is the cross-entropy of ``softmax(G_i)`` against the label (eq. 2), and it updates only ``W_i`` and
``M_i``. Prediction is one forward pass with the last layer's scores ``a_L M_Lᵀ``.

bpfree uses the model's own head as the last layer's ``M_L`` (same shape, plus a bias), so the
network MF predicts with is *identical* to the BP twin; the other ``M_i`` are rule-owned extras.
Because all layer losses live on disconnected graphs, one ``backward()`` of their sum computes
every local gradient in a single autograd pass without any gradient crossing a block.

On an MLP (every block ``[Flatten,] Linear, activation``) the same gradients are written in
closed form under ``no_grad`` (``manual_grad=True``, the default): with ``e_i = (softmax(G_i) −
y*)/B``, ``∂M_i = e_iᵀ a_i``, ``δ_i = (e_i M_i) ⊙ σ'(z_i)``, ``∂W_i = δ_iᵀ a_{i−1}``. No graph is
built, so no gradient can cross a block; an oracle test checks it equals the autograd path. It
saves the autograd bookkeeping that otherwise eats a third of what MF saves over backprop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import block_output_shapes
from . import _dense
from ..rule import ConfigError, LearningRule, Task, register


@register
class MonoForward(LearningRule):
    name = "mf"
    family = "local-loss"
    locality = "block"
    head_is_local = True  # the head is M_L: layer L's loss trains W_L through it (eq. 2)
    paper = "https://arxiv.org/abs/2501.09238"
    search_space = {"lr": ("log", 1e-4, 1e-2)}

    def __init__(self, head_bias: bool = False, manual_grad: bool = True) -> None:
        super().__init__()
        self.head_bias = head_bias
        self.manual_grad = manual_grad

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        shapes = block_output_shapes(model, task.in_shape)[:-2]  # all but last block and head
        self.M = nn.ModuleList()
        for shape in shapes:  # M_i: (C, width_i) as a Linear, init like nn.Linear (Kaiming-uniform)
            d = math.prod(shape)
            lin = nn.Linear(d, task.num_classes, bias=self.head_bias)
            bound = 1.0 / math.sqrt(d)
            with torch.no_grad():
                lin.weight.uniform_(-bound, bound, generator=generator)
                if lin.bias is not None:
                    lin.bias.zero_()
            self.M.append(lin)
        self._dense: list[_dense.Dense] | None = None
        if self.manual_grad:
            try:
                self._dense = _dense.dense_layers(model, self.name)
            except ConfigError:  # conv/other blocks: the autograd path handles any block
                self._dense = None

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self._dense is not None:
            return self._dense_step(x, y)
        *blocks, head = self.blocks
        h = x
        total = x.new_zeros(())
        last = x.new_zeros(())
        for i, block in enumerate(blocks):
            h = block(h.detach())  # layer i's loss must not reach layer i-1
            G = head(h) if i == len(blocks) - 1 else self.M[i](h.flatten(1))  # (B, C) eq. 1
            last = F.cross_entropy(G, y)  # eq. 2
            total = total + last
        total.backward()  # disconnected per-layer graphs: one pass, no cross-block gradient
        return {"loss": last, "loss_sum": total}

    @torch.no_grad()
    def _dense_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The same local gradients as :meth:`_step`, in closed form for MLP blocks.

        Written for speed (this is MF's whole cost): the target ``y*/B`` is built once per step
        and shared by every layer, ``e_i = softmax(G_i)/B − y*/B`` is two in-place passes over a
        (B, C) tensor, and a ReLU is applied in place (``a_i > 0`` ⇔ ``z_i > 0``, so ``σ'`` is read
        off the output and ``z_i`` need not be kept).
        """
        *layers, head = self._dense
        B = len(y)
        h = x.flatten(1)
        target = torch.zeros(B, head.linear.out_features, dtype=h.dtype, device=h.device)
        target.scatter_(1, y[:, None], 1.0 / B)  # y*/B
        total = h.new_zeros(())
        last = total
        for i, layer in enumerate(layers):
            inp = h  # a_{i-1}: an input, never differentiated
            z = layer.linear(inp)  # (B, d_i)
            relu = isinstance(layer.act, nn.ReLU)
            h = z.relu_() if relu else (z if layer.act is None else layer.act(z))  # a_i
            M = head.linear if i == len(layers) - 1 else self.M[i]  # (C, d_i)
            logp = torch.log_softmax(M(h), 1)  # log softmax(G_i), G_i = a_i M_iᵀ (eq. 1)
            last = -(logp * target).sum()  # eq. 2: mean cross-entropy (target holds 1/B)
            total = total + last
            e = logp.exp_().div_(B).sub_(target)  # e_i = ∂L_i/∂G_i, (B, C)
            _dense.set_grad(M, e, h)  # ∂M_i = e_iᵀ a_i
            g = e @ M.weight  # ∂L_i/∂a_i, (B, d_i)
            delta = torch.ops.aten.threshold_backward(g, h, 0) if relu else \
                _dense.act_grad(layer.act, z, h, g)  # δ_i = g ⊙ σ'(z_i)
            _dense.set_grad(layer.linear, delta, inp)  # ∂W_i = δ_iᵀ a_{i-1}
        return {"loss": last, "loss_sum": total}

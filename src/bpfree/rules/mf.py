"""Mono-Forward (Gong, Li & Abdulla 2025, https://arxiv.org/abs/2501.09238).

Each layer i computes ``a_i = σ(W_i a_{i-1})`` from a *detached* input and owns a projection
``M_i`` (classes × width) giving goodness scores ``G_i = a_i M_iᵀ`` (paper eq. 1); the layer's loss
is the cross-entropy of ``softmax(G_i)`` against the label (eq. 2), and it updates only ``W_i`` and
``M_i``. Prediction is one forward pass with the last layer's scores ``a_L M_Lᵀ``.

bpfree uses the model's own head as the last layer's ``M_L`` (same shape, plus a bias), so the
network MF predicts with is *identical* to the BP twin; the other ``M_i`` are rule-owned extras.
Because all layer losses live on disconnected graphs, one ``backward()`` of their sum computes
every local gradient in a single autograd pass without any gradient crossing a block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import block_output_shapes
from ..rule import LearningRule, Task, register


@register
class MonoForward(LearningRule):
    name = "mf"
    family = "local-loss"
    locality = "block"
    head_is_local = True  # the head is M_L: layer L's loss trains W_L through it (eq. 2)
    paper = "https://arxiv.org/abs/2501.09238"
    search_space = {"lr": ("log", 1e-4, 1e-2)}

    def __init__(self, head_bias: bool = False) -> None:
        super().__init__()
        self.head_bias = head_bias

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

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
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

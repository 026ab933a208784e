"""Counter-Current Learning, CCL (Kao & Hariharan, NeurIPS 2024, https://arxiv.org/abs/2409.19841).

Two networks run in opposite directions. The forward network f (the model) maps the input up,
``a_0 = x``, ``a_i = f_i(SG(a_{i−1}))``, ``i = 1..L`` (``a_L`` = logits). A mirrored *feedback*
network g (rule-owned; built from the model's widths) maps the target down,
``b_L = onehot(y)``, ``b_{i−1} = g_i(SG(b_i))`` with ``g_i: d_i → d_{i−1}`` (activation as the
forward layer at that depth, none on ``g_1`` whose output lives in input space). SG = stop-gradient:
*every* layer input is detached in both networks, so no gradient crosses a layer.

Each depth pairs a forward and a feedback activation and trains both layers that produced them:
the forward layer f_i learns from the feedback network's bottom-up-informative b_i, and the
feedback layer g_{i+1} learns from the forward activity a_i ("counter-current" exchange, §3).
The pairwise loss of the paper's code is a similarity-matching one: with the feedback net run on
the C class one-hots (``b_i ∈ R^{C×d_i}``, one row per class),

    L_i = κ / d_i · mean_{n,c} (⟨a_i(x_n), b_i(c)⟩ − [y_n = c])²,     i = 0..L−1
    L_L = CE(a_L, y)                                                   (top pair: logits vs target)

Prediction uses f alone (the model, identical to the BP twin).

Defaults from the paper's MNIST MLP config: 5×256 hidden, ELU, no biases
(``mlp:256,256,256,256,256,act=elu,bias=false``), κ = 128 (``loss_scale_C · 256``). The paper
trains with SGD (lr 1, gradient clipping 1, 100 epochs); bpfree uses the shared optimizer (Adam),
for which κ only sets the balance against Adam's ε (each layer has exactly one loss).
MLP models only (the CNN and autoencoder variants are not implemented yet).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import block_output_shapes
from ..rule import LearningRule, Task, register


def _linear_and_act(block: nn.Module) -> tuple[nn.Linear, list[nn.Module]]:
    mods = [m for m in block.modules() if m is not block and not isinstance(m, nn.Sequential)]
    lins = [m for m in mods if isinstance(m, nn.Linear)]
    others = [m for m in mods if not isinstance(m, (nn.Linear, nn.Flatten))]
    if len(lins) != 1 or any(isinstance(m, (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d))
                             for m in others):
        raise ValueError("ccl supports MLP models (blocks of Flatten+Linear+activation) only; "
                         f"got block {block}")
    return lins[0], others


@register
class CounterCurrent(LearningRule):
    name = "ccl"
    family = "target-propagation"
    locality = "block"
    paper = "https://arxiv.org/abs/2409.19841"
    native_model = "mlp:256,256,256,256,256,act=elu,bias=false"
    search_space = {"lr": ("log", 1e-4, 1e-2)}

    def __init__(self, loss_scale: float = 128.0, feedback_bias: bool = False) -> None:
        super().__init__()
        if loss_scale <= 0:
            raise ValueError(f"loss_scale must be > 0, got {loss_scale}")
        self.loss_scale, self.feedback_bias = loss_scale, feedback_bias

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        *blocks, head = list(model.children())
        shapes = block_output_shapes(model, task.in_shape)
        dims = [math.prod(task.in_shape)] + [math.prod(s) for s in shapes]  # d_0 .. d_L
        acts = [_linear_and_act(b)[1] for b in blocks]  # activation of forward layer 1..L−1
        _linear_and_act(head)
        self.feedback = nn.ModuleList()  # g_1 .. g_L, g_i: d_i -> d_{i−1}
        for i in range(1, len(dims)):
            lin = nn.Linear(dims[i], dims[i - 1], bias=self.feedback_bias)
            bound = 1.0 / math.sqrt(dims[i])  # nn.Linear's default init, seeded
            with torch.no_grad():
                lin.weight.uniform_(-bound, bound, generator=generator)
                if lin.bias is not None:
                    lin.bias.zero_()
            mirror = [copy.deepcopy(a) for a in acts[i - 2]] if i >= 2 else []  # none on g_1
            self.feedback.append(nn.Sequential(lin, *mirror))

    def feedback_signals(self, C: int, device: torch.device) -> list[Tensor]:
        """b_0 .. b_{L−1} for the C class one-hots: each (C, d_i), inputs detached."""
        b = torch.eye(C, device=device)  # b_L = onehot(c), (C, C)
        out = []
        for g in reversed(self.feedback):
            b = g(b.detach())  # g_i's loss must not reach g_{i+1}
            out.append(b)
        return out[::-1]

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        assert self.task is not None
        C = self.task.num_classes
        *blocks, head = self.blocks
        acts, h = [x.flatten(1)], x  # a_0 = x
        for block in blocks:
            h = block(h.detach())  # f_i's loss must not reach f_{i−1}
            acts.append(h.flatten(1))
        logits = head(h.detach())
        target = F.one_hot(y, C).to(logits.dtype)  # [y_n = c], (B, C)
        losses = []
        for a, b in zip(acts, self.feedback_signals(C, x.device)):
            S = a @ b.t()  # (B, C): ⟨a_i(x_n), b_i(c)⟩
            losses.append(self.loss_scale / a.size(1) * F.mse_loss(S, target))
        top = F.cross_entropy(logits, y)
        total = torch.stack(losses).sum() + top
        total.backward()  # disjoint per-layer graphs: one pass, every gradient stays local
        return {"loss": top, "pair_loss": torch.stack(losses).sum()}

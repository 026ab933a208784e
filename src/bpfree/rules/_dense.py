"""Explicit (autograd-free) forward and update math for MLP-shaped models.

FA, sign-symmetry, DRTP and PEPITA compute their updates with outer products of locally
available signals. Writing them as plain matmuls under ``torch.no_grad()`` is both the clearest
statement of the rule and faster than building an autograd graph for it: no graph, no hooks, and
no gradient can cross a block because no gradient is ever computed.

A "dense layer" is one child of the model (a block or the head) holding exactly one ``nn.Linear``,
optionally a ``Flatten`` before it and one element-wise activation after it (``mlp`` blocks).
Not a rule module (leading underscore): the rule registry does not import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..rule import ConfigError

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.GELU, nn.Identity, nn.ELU, nn.SiLU)


@dataclass
class Dense:
    """One block (or the head) as ``h = drop(act(W·flatten(x) + b))``."""

    linear: nn.Linear
    act: nn.Module | None
    dropout: float = 0.0  # drop rate of the block's nn.Dropout (the rule applies it itself)


def dense_layers(model: nn.Module, rule: str, allow_dropout: bool = False) -> list[Dense]:
    """The model's children as dense layers; a ConfigError names anything else (conv, RNN...).

    A trailing ``nn.Dropout`` is accepted only when the rule applies dropout itself
    (``allow_dropout``); other explicit-math rules would silently train without it."""
    layers = []
    for name, child in model.named_children():
        mods = list(child.children()) if isinstance(child, nn.Sequential) else [child]
        drops = [m for m in mods if isinstance(m, nn.Dropout)]
        if drops and mods[-1] is drops[-1] and len(drops) == 1:
            mods = mods[:-1]
        lins = [m for m in mods if isinstance(m, nn.Linear)]
        acts = [m for m in mods if isinstance(m, ELEMENTWISE)]
        other = [m for m in mods if not isinstance(m, (nn.Linear, nn.Flatten, *ELEMENTWISE))]
        if len(lins) != 1 or len(acts) > 1 or other or (acts and mods.index(acts[0]) < mods.index(lins[0])):
            raise ConfigError(
                f"rule {rule!r} needs an MLP: every block must be [Flatten,] Linear[, activation"
                f"[, Dropout]]; {name!r} is {child.__class__.__name__}"
                f"({', '.join(type(m).__name__ for m in mods + drops[-1:])}). "
                f"Use an 'mlp:...' model, or a block-local rule such as 'dfa' for other models.")
        p = float(drops[0].p) if drops else 0.0
        if p > 0 and not allow_dropout:
            raise ConfigError(f"rule {rule!r} does not apply dropout, but block {name!r} has "
                              f"Dropout(p={p}); remove 'dropout=' from the model spec.")
        layers.append(Dense(lins[0], acts[0] if acts else None, p))
    return layers


def act_grad(act: nn.Module | None, a: Tensor, h: Tensor, g: Tensor) -> Tensor:
    """``g ⊙ f'(a)`` for the layer's activation (closed forms; local autograd for the rest)."""
    if act is None or isinstance(act, nn.Identity):
        return g
    if isinstance(act, nn.ReLU):  # one fused pass instead of a mask and a product
        return torch.ops.aten.threshold_backward(g, a, 0)
    if isinstance(act, nn.Tanh):
        return g * (1 - h * h)
    if isinstance(act, nn.Sigmoid):
        return g * h * (1 - h)
    if isinstance(act, nn.LeakyReLU):
        return torch.where(a > 0, g, g * act.negative_slope)
    with torch.enable_grad():  # GELU & co: the derivative of one element-wise function, in place
        a_ = a.detach().requires_grad_(True)
        return torch.autograd.grad(act(a_), a_, g)[0]


def forward(layers: list[Dense], x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Inputs ``h_{l-1}``, pre-activations ``a_l`` and outputs ``h_l`` of every layer."""
    ins, pre, outs = [], [], []
    h = x.flatten(1)
    for layer in layers:
        ins.append(h)
        a = layer.linear(h)  # (B, d_l)
        h = a if layer.act is None else layer.act(a)
        pre.append(a)
        outs.append(h)
    return ins, pre, outs


def set_grad(linear: nn.Linear, delta: Tensor, inp: Tensor) -> None:
    """``∂W = δᵀ h_{l-1}``, ``∂b = Σ_batch δ`` written into ``.grad`` (delta already / batch)."""
    linear.weight.grad = delta.t() @ inp  # (d_l, d_{l-1})
    if linear.bias is not None:
        linear.bias.grad = delta.sum(0)


def softmax_error(logits: Tensor, y: Tensor) -> Tensor:
    """``e = (softmax(a_L) − y*) / B``: ∂(mean cross-entropy)/∂logits."""
    e = torch.softmax(logits, 1)
    e[torch.arange(len(y), device=y.device), y] -= 1
    return e / len(y)

"""Recurrent models: an image read as a sequence (sequential-row MNIST: one 28-pixel row per step).

``rnn:128`` is one recurrent block of 128 units and a linear head on the last hidden state;
``rnn:128,128`` stacks two recurrent blocks (each block is one locality unit: autograd may run
through time *inside* it, never into the block below). Every block outputs the whole sequence
``(B, T, H)`` and says so with ``sequence_output = True``, so local rules (tpSGD) can put their
target on the last step; the head takes the last step and classifies it.

Inputs: ``(C, H, W)`` images become ``T = H`` steps of ``C·W`` features; ``(T, F)`` inputs are
sequences already. Options: ``cell=rnn|gru|lstm`` (``rnn`` = Elman, ``act=tanh|relu``).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from ..rule import ConfigError
from . import register_model


class ToSequence(nn.Module):
    """``(B, C, H, W)`` -> ``(B, H, C·W)``: row ``t`` of the image is time step ``t``."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return x.permute(0, 2, 1, 3).flatten(2)
        return x


class RecurrentBlock(nn.Module):
    """One recurrent layer over the whole sequence; returns all hidden states ``(B, T, H)``."""

    sequence_output = True

    def __init__(self, in_features: int, hidden: int, cell: str = "rnn", act: str = "tanh",
                 to_sequence: bool = False) -> None:
        super().__init__()
        self.to_seq = ToSequence() if to_sequence else None
        if cell == "rnn":
            self.cell = nn.RNN(in_features, hidden, batch_first=True, nonlinearity=act)
        elif cell == "gru":
            self.cell = nn.GRU(in_features, hidden, batch_first=True)
        else:
            self.cell = nn.LSTM(in_features, hidden, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.to_seq is not None:
            x = self.to_seq(x)
        return self.cell(x)[0]  # (B, T, H)


class LastStep(nn.Module):
    """``(B, T, H)`` -> ``(B, H)``: the state that has read the whole sequence."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, -1]


@register_model("rnn")
def rnn(in_shape: tuple[int, ...], widths: list[int], num_classes: int, cell: str = "rnn",
        act: str = "tanh") -> nn.Sequential:
    """``rnn((1, 28, 28), [128], 10)``: sequential-row MNIST with a 128-unit Elman RNN."""
    if cell not in ("rnn", "gru", "lstm"):
        raise ConfigError(f"rnn: cell must be rnn, gru or lstm, got {cell!r}")
    if act not in ("tanh", "relu"):
        raise ConfigError(f"rnn: act must be tanh or relu, got {act!r}")
    if not widths:
        raise ConfigError("rnn needs at least one hidden width, e.g. 'rnn:128'")
    if len(in_shape) == 3:
        d = in_shape[0] * in_shape[2]
    elif len(in_shape) == 2:
        d = in_shape[1]
    else:
        raise ConfigError(f"rnn reads (C, H, W) images row by row or (T, F) sequences; "
                          f"got per-sample shape {in_shape} (flat features: use 'mlp')")
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, w in enumerate(widths):
        layers[f"block{i}"] = RecurrentBlock(d, w, cell, act, to_sequence=(i == 0))
        d = w
    layers["head"] = nn.Sequential(LastStep(), nn.Linear(d, num_classes))
    return nn.Sequential(layers)


__all__ = ["rnn", "RecurrentBlock", "ToSequence", "LastStep"]

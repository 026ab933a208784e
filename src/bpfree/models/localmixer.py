"""LocalMixer, 1×1-patch form: the MNIST networks of Ren, Kornblith, Liao & Hinton (ICLR 2023).

"Scaling Forward Gradient With Local Losses", https://arxiv.org/abs/2210.03310, §5 and Table 2.
With a single 1×1 patch the token-mixing layer is a scalar and drops out, leaving a residual MLP
whose channels are split into ``groups`` that never talk to each other inside a block (the
*group-wise* local losses of §4 need that), with a parameter-free layer norm before and after
every linear layer (§5 "Normalization": normalise each channel group separately)::

    block:  a = ReLU(LN_g(W1 · LN(x)))            # dense channel FC (block 0: patch embedding)
            out = a + LN_g(GroupLinear(LN_g(a)))  # grouped FC: z_{g,j} = Σ_i w_{g,i,j} x_{g,i}
    head:   Linear(LN_g(out))

``localmixer:512,groups=16`` is Table 2's **M/1/16** (1 block, 512 channels, 16 groups; 424K
parameters here vs the paper's 429K, the difference being the paper's norm gains/biases, which
this parameter-free variant omits); ``localmixer:256`` is **S/1/1** (269K vs 272K). Several
widths give several blocks. Patches larger than 1×1 (the CIFAR/ImageNet mixers) are not built.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..rule import ConfigError
from . import register_model

__all__ = ["GroupLinear", "LocalNorm", "MixerBlock", "localmixer"]


class GroupLinear(nn.Module):
    """Grouped linear layer (Ren et al. §4): channels only connect within their own group."""

    def __init__(self, in_features: int, out_features: int, groups: int, bias: bool = True) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ConfigError(f"GroupLinear: {in_features}->{out_features} not divisible into "
                              f"{groups} groups")
        self.groups = groups
        self.in_features, self.out_features = in_features, out_features
        fan_in = in_features // groups
        bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init, per group
        self.weight = nn.Parameter(torch.empty(groups, out_features // groups, fan_in)
                                   .uniform_(-bound, bound))  # (G, out/G, in/G)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        z = torch.einsum("bgi,goi->bgo", x.reshape(B, self.groups, -1), self.weight)
        z = z.reshape(B, self.out_features)
        return z + self.bias if self.bias is not None else z

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, groups={self.groups}"


class LocalNorm(nn.Module):
    """Parameter-free layer norm within each of ``groups`` contiguous channel groups."""

    def __init__(self, groups: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps

    def forward(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        xg = x.reshape(B, self.groups, -1)
        mu = xg.mean(-1, keepdim=True)
        var = (xg - mu).square().mean(-1, keepdim=True)
        return ((xg - mu) * torch.rsqrt(var + self.eps)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class MixerBlock(nn.Module):
    """One residual LocalMixer block on a single 1×1 patch (see the module docstring)."""

    def __init__(self, d_in: int, width: int, groups: int) -> None:
        super().__init__()
        self.groups = groups  # read by fg-local: the block's outputs form `groups` local losses
        self.norm0 = LocalNorm(1)
        self.fc1 = nn.Linear(d_in, width)
        self.norm1 = LocalNorm(groups)
        self.norm2 = LocalNorm(groups)
        self.fc2 = GroupLinear(width, width, groups)
        self.norm3 = LocalNorm(groups)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.norm1(self.fc1(self.norm0(x.flatten(1)))))  # (B, C)
        return a + self.norm3(self.fc2(self.norm2(a)))  # (B, C): group g depends on group g only


@register_model("localmixer")
def localmixer(in_shape: tuple[int, ...] | int, widths: list[int], num_classes: int,
               groups: int = 1) -> nn.Sequential:
    """``localmixer:512,groups=16`` (Ren et al. M/1/16, MNIST); ``localmixer:256`` (S/1/1)."""
    if not widths:
        raise ConfigError("localmixer needs at least one width, e.g. localmixer:512,groups=16")
    if groups < 1 or any(w % groups for w in widths):
        raise ConfigError(f"localmixer: every width must be divisible by groups={groups}")
    d = in_shape if isinstance(in_shape, int) else math.prod(in_shape)
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, w in enumerate(widths):
        layers[f"block{i}"] = MixerBlock(d, w, groups)
        d = w
    layers["head"] = nn.Sequential(LocalNorm(groups), nn.Linear(d, num_classes))
    return nn.Sequential(layers)

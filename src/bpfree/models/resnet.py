"""ResNet-style CNNs for block-local learning (DGL, AugLocal, MAN split ResNets into modules).

``resnet:8`` is a stem block (Conv3x3+BN+ReLU) followed by 8 residual *basic blocks* (He et al.
2016, https://arxiv.org/abs/1512.03385: conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU) and a
``head`` (global average pooling + Linear). The residual blocks are split evenly over ``stages``
stages of widths ``width·2^s``; the first block of every stage after the first halves the spatial
size (stride 2, 1x1-conv shortcut), as in the CIFAR ResNets (ResNet-32 = ``resnet:15,width=16``).

Children are ``block0`` (stem), ``block1`` ... ``blockN`` and ``head``: each child is one unit of
locality, i.e. one gradient-isolated module for the local rules (AugLocal/MAN's "local layers":
ResNet-32 is 16 of them). Works on (1, 28, 28) and (3, 32, 32) images (any (C, H, W)).

Specs: ``resnet:8``, ``resnet:16,width=32``, ``resnet:4,width=8,stages=2``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from . import register_model
from ..rule import ConfigError

__all__ = ["BasicBlock", "resnet"]


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; stride 2 halves H and W."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


@register_model("resnet")
def resnet(in_shape: tuple[int, ...], widths: list[int], num_classes: int,
           width: int = 16, stages: int = 3) -> nn.Sequential:
    """``resnet((1,28,28), [8], 10)``: stem + 8 basic blocks in 3 stages (16, 32, 64) + head."""
    if len(in_shape) != 3:
        raise ConfigError(f"resnet needs image inputs (C, H, W), got per-sample shape {in_shape}")
    if len(widths) != 1:
        raise ConfigError(f"resnet spec takes one number, the residual block count "
                          f"(e.g. resnet:8,width=16), got {widths}")
    if width < 1 or stages < 1:
        raise ConfigError(f"resnet: width and stages must be >= 1, got width={width}, stages={stages}")
    n = widths[0]
    per_stage = [n // stages + (1 if s < n % stages else 0) for s in range(stages)]
    c, h = in_shape[0], min(in_shape[1], in_shape[2])
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    layers["block0"] = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False),
                                     nn.BatchNorm2d(width), nn.ReLU())
    c, k = width, 1
    for s, count in enumerate(per_stage):
        for j in range(count):
            down = s > 0 and j == 0 and h >= 2  # first block of a later stage halves H, W
            layers[f"block{k}"] = BasicBlock(c, width * 2 ** s, stride=2 if down else 1)
            c, h, k = width * 2 ** s, (h + 1) // 2 if down else h, k + 1
    layers["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
    return nn.Sequential(layers)

"""A simulated *physical* layer and the ``physical`` model family (for model-free rules: mfff).

Physical neural networks (Momeni et al., Science 2023, https://doi.org/10.1126/science.adi8474;
arXiv 2305.13174) compute with a device whose transfer function is unknown, noisy and cannot be
differentiated. :class:`PhysicalLayer` simulates one such device so bpfree can test rules that
must train *around* it from forward measurements only:

    u = Q_in(clip(x, ±c))           input drive through a DAC (``bits`` levels), saturating at ±c
    v = u Pᵀ                        fixed random projection P ∈ R^{p×d}, P_ij ~ N(0, 1/d) (the medium)
    y = Q_out(tanh(g·v) + η)        saturating response, measurement noise η ~ N(0, noise²), ADC

``P`` is a buffer, never trained. The forward *refuses* inputs that require grad (autograd cannot
go through hardware); with ``differentiable=True`` the same layer is an ideal, noise-free,
differentiable digital twin (``y = tanh(g·(x Pᵀ))``), which is what a backprop baseline needs.
Measurement noise is counter-based: measurement ``k`` uses a generator seeded from
``(seed, k)``, so runs are reproducible and the counter is saved in ``state_dict``.

The model: ``physical:w1,w2,...`` builds blocks ``[Flatten] → RMSNorm → Physical(d→p) → Linear(p→w)
→ ReLU`` and a linear head. The trainable parts are the digital ``Linear`` layers (and the head);
``phys_dim`` (default: the block's width) sets the physical layer's output size.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from . import _act, register_model

__all__ = ["PhysicalLayer", "RMSNorm", "physical"]


class RMSNorm(nn.Module):
    """Parameter-free length normalisation ``x / rms(x)`` over features (FF's layer input norm)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)


def _quantise(z: Tensor, lo: float, hi: float, bits: int) -> Tensor:
    levels = 2 ** bits - 1
    return torch.round((z.clamp(lo, hi) - lo) / (hi - lo) * levels) / levels * (hi - lo) + lo


class PhysicalLayer(nn.Module):
    """A fixed, noisy, quantised, non-differentiable nonlinear transform ``R^d → R^p``."""

    def __init__(self, in_features: int, out_features: int, noise: float = 0.02, bits: int = 8,
                 gain: float = 1.0, clip: float = 3.0, differentiable: bool = False) -> None:
        super().__init__()
        if noise < 0 or bits < 1 or gain <= 0 or clip <= 0:
            raise ValueError("PhysicalLayer needs noise >= 0, bits >= 1, gain > 0, clip > 0")
        self.in_features, self.out_features = in_features, out_features
        self.noise, self.bits, self.gain, self.clip = noise, bits, gain, clip
        self.differentiable = differentiable
        # the medium: fixed at "fabrication" from the global (seeded) RNG, saved with the model
        self.register_buffer("P", torch.randn(out_features, in_features) / math.sqrt(in_features))
        self.register_buffer("seed", torch.randint(2**31, ()))
        self.register_buffer("measurements", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if self.differentiable:  # the ideal digital twin: what backprop would need to know
            return torch.tanh(self.gain * (x @ self.P.t()))
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(
                "PhysicalLayer is a black box: autograd cannot differentiate through hardware. "
                "Train this model with a model-free rule (e.g. rule 'mfff'), detach the input, or "
                "build the model with differentiable=true for an ideal digital twin.")
        with torch.no_grad():
            u = _quantise(x, -self.clip, self.clip, self.bits)  # DAC
            v = u @ self.P.t()  # (B, p): propagation through the medium
            y = torch.tanh(self.gain * v)  # saturating response
            if self.noise > 0:
                gen = torch.Generator(device=x.device)
                gen.manual_seed(int(self.seed) * 1_000_003 + int(self.measurements))
                self.measurements += 1
                y = y + self.noise * torch.randn(y.shape, generator=gen, device=x.device,
                                                 dtype=y.dtype)
            return _quantise(y, -1.0, 1.0, self.bits)  # ADC

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, noise={self.noise}, bits={self.bits}, "
                f"differentiable={self.differentiable}")


@register_model("physical")
def physical(in_shape: tuple[int, ...] | int, widths: list[int], num_classes: int,
             phys_dim: int = 0, noise: float = 0.02, bits: int = 8, gain: float = 1.0,
             act: str = "relu", differentiable: bool = False) -> nn.Sequential:
    """Blocks ``RMSNorm → PhysicalLayer(d→p) → Linear(p→w) → act`` and a linear head."""
    d = in_shape if isinstance(in_shape, int) else math.prod(in_shape)
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, w in enumerate(widths):
        p = phys_dim or w
        mods: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        mods += [RMSNorm(), PhysicalLayer(d, p, noise=noise, bits=bits, gain=gain,
                                          differentiable=differentiable),
                 nn.Linear(p, w), _act(act)]
        layers[f"block{i}"] = nn.Sequential(*mods)
        d = w
    head: list[nn.Module] = [nn.Flatten()] if not widths else []
    layers["head"] = nn.Sequential(*head, nn.Linear(d, num_classes))
    return nn.Sequential(layers)

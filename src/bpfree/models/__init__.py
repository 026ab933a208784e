"""Model builders: every model is an ``nn.Sequential`` of *blocks* plus a final classifier.

A block is the unit of locality: a local rule may use autograd inside a block, never across
blocks. Children are named ``block0``, ``block1``, ... and ``head`` (the classifier), so rules
can find the head without guessing. A user's own ``nn.Sequential`` works too: its last child is
treated as the head.

More builders live in sibling modules of this package (one file per model family), register
themselves with :func:`register_model` and are imported at the end of this file.

Specs on the command line: ``mlp:1000,1000``, ``mlp:1000,1000,act=tanh``,
``convnet:32,128,512``, ``convnet:32,64,bn=false``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import nn

from ..rule import ConfigError, Task, _suggest

__all__ = ["Dropout", "keep_mask", "keep_prob", "mlp", "convnet", "build_model", "parse_spec",
           "MODELS", "blocks_of", "head_of"]


class Triangle(nn.Module):
    """``relu(u − mean_k u_k)`` over units/channels (dim 1): SoftHebb's activation (Journé et al.
    2023; the "triangle" k-means encoding of Coates, Lee & Ng 2011)."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.relu(u - u.mean(1, keepdim=True))


class SoftWTA(nn.Module):
    """``n · softmax(u / τ)`` over the ``n`` units (dim 1): a soft winner-take-all code, SoftHebb's
    readout features (Moraitis et al. 2022; ``mlp:2000,act=softmax,tau=2``). Scaled by ``n`` so a
    unit's mean activity is 1 whatever the width (a plain softmax's 1/n values starve the readout)."""

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        if not tau > 0:
            raise ConfigError(f"softmax activation: tau must be > 0, got {tau!r}")
        self.tau = float(tau)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.softmax(u / self.tau, 1) * u.size(1)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


def _keep_threshold(p: float) -> int:
    return round((1.0 - p) * 2**16) - 2**15


def keep_prob(p: float) -> float:
    """The exact keep probability of :func:`keep_mask` for drop rate ``p``: round((1-p)·2^16)/2^16."""
    return (_keep_threshold(p) + 2**15) / 2**16


def keep_mask(n: int, p: float, *, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` dropout *keep* indicators (0./1. in ``dtype``), 1 with probability ``keep_prob(p)``.

    Cheap on CPU, where ``bernoulli_`` and ``rand`` are 4-10x slower: one ``random_`` call fills
    full-range int64 words whose four 16-bit lanes are four independent uniform integers u on
    [-2^15, 2^15) (a quarter of the generator calls of ``rand``), and ``u < t`` is written straight
    into a float tensor (``torch.lt(..., out=)``: one pass, no bool tensor, whose conversion to
    float is slow on CPU). P(keep) = (t + 2^15)/2^16 = round((1-p)·2^16)/2^16, |error| < 8e-6.
    """
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-2**63, 2**63 - 1, generator=generator)
    out = torch.empty(n, dtype=dtype, device=device)
    return torch.lt(words.view(torch.int16)[:n], _keep_threshold(p), out=out)


class Dropout(nn.Dropout):
    """Inverted dropout whose mask comes from :func:`keep_mask` (drop rate ``1 − keep_prob(p)``,
    within 8e-6 of ``p``): the same masks and the same cost for every rule on a network with
    dropout, whether autograd (bp) or a rule's own forward (pepita) applies them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        m = keep_mask(x.numel(), self.p, dtype=x.dtype, device=x.device).view_as(x)
        return x * m.mul_(1.0 / keep_prob(self.p))


ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "triangle": Triangle,
    "softmax": SoftWTA,
}


def _act(name: str, **opts: Any) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}.{_suggest(name, ACTIVATIONS)} "
                          f"Known: {', '.join(ACTIVATIONS)}")
    try:
        return ACTIVATIONS[name](**opts)
    except TypeError:
        raise ConfigError(f"activation {name!r} takes no option {', '.join(opts)}") from None


def mlp(in_shape: tuple[int, ...] | int, widths: list[int], num_classes: int,
        act: str = "relu", bias: bool = True, tau: float | None = None,
        dropout: float = 0.0) -> nn.Sequential:
    """``[Flatten+]Linear+act[+Dropout]`` blocks and a linear head: ``mlp((1,28,28), [1000,1000], 10)``.

    ``tau`` is the temperature of ``act="softmax"`` (soft winner-take-all units); ``dropout``
    (default 0) adds a :class:`Dropout` after every hidden block's activation
    (``mlp:1024,bias=false,dropout=0.1`` is PEPITA's network)."""
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"mlp: dropout must be in [0, 1), got {dropout}")
    act_opts = {} if tau is None else {"tau": tau}
    d = in_shape if isinstance(in_shape, int) else math.prod(in_shape)
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, w in enumerate(widths):
        mods: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        mods += [nn.Linear(d, w, bias=bias), _act(act, **act_opts)]
        if dropout > 0:
            mods.append(Dropout(dropout))
        layers[f"block{i}"] = nn.Sequential(*mods)
        d = w
    head: list[nn.Module] = [nn.Flatten()] if not widths else []
    layers["head"] = nn.Sequential(*head, nn.Linear(d, num_classes, bias=bias))
    return nn.Sequential(layers)


def convnet(in_shape: tuple[int, ...], channels: list[int], num_classes: int,
            kernel: int = 3, bn: bool = True, pool: bool = True, act: str = "relu",
            bn_after_pool: bool = False) -> nn.Sequential:
    """``Conv+BN+act+MaxPool`` blocks and a linear head (CaFo's 3-block CNN: ``[32,128,512]``).

    ``bn_after_pool=True`` orders a block ``Conv+act+MaxPool+BN`` (conv with bias), CaFo's block
    (Zhao et al. 2023): ``convnet:32,128,512,bn_after_pool=true``.
    """
    if len(in_shape) != 3:
        raise ConfigError(f"convnet needs image inputs (C, H, W), got per-sample shape {in_shape}")
    c, h, w = in_shape
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, ch in enumerate(channels):
        late_bn = bn and bn_after_pool
        mods: list[nn.Module] = [nn.Conv2d(c, ch, kernel, padding=kernel // 2,
                                           bias=not bn or late_bn)]
        if bn and not late_bn:
            mods.append(nn.BatchNorm2d(ch))
        mods.append(_act(act))
        if pool and h >= 2 and w >= 2:
            mods.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        if late_bn:
            mods.append(nn.BatchNorm2d(ch))
        layers[f"block{i}"] = nn.Sequential(*mods)
        c = ch
    layers["head"] = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
    return nn.Sequential(layers)


ModelBuilder = Callable[..., nn.Sequential]
MODELS: dict[str, ModelBuilder] = {"mlp": mlp, "convnet": convnet}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder ``f(in_shape, widths, num_classes, **options)`` under ``name``."""
    def deco(fn: ModelBuilder) -> ModelBuilder:
        MODELS[name] = fn
        return fn
    return deco


def _value(s: str) -> Any:
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    for t in (int, float):
        try:
            return t(s)
        except ValueError:
            pass
    return s


def parse_spec(spec: str) -> tuple[str, list[int], dict[str, Any]]:
    """``"mlp:1000,1000,act=tanh"`` -> ``("mlp", [1000, 1000], {"act": "tanh"})``."""
    kind, _, rest = spec.partition(":")
    if kind not in MODELS:
        raise ConfigError(f"unknown model {kind!r} in spec {spec!r}.{_suggest(kind, MODELS)} "
                          f"Known: {', '.join(MODELS)}")
    widths: list[int] = []
    opts: dict[str, Any] = {}
    for tok in filter(None, (t.strip() for t in rest.split(","))):
        if "=" in tok:
            k, v = tok.split("=", 1)
            opts[k.strip()] = _value(v.strip())
        else:
            try:
                widths.append(int(tok))
            except ValueError:
                raise ConfigError(f"model spec {spec!r}: {tok!r} is neither a width nor key=value "
                                  f"(example: mlp:1000,1000,act=relu)") from None
            if widths[-1] <= 0:
                raise ConfigError(f"model spec {spec!r}: widths must be positive, got {tok}")
    return kind, widths, opts


def build_model(spec: str | nn.Module, task: Task) -> nn.Module:
    """Build from a spec string, or pass a user's module through."""
    if isinstance(spec, nn.Module):
        return spec
    kind, widths, opts = parse_spec(spec)
    builder = MODELS[kind]
    import inspect
    params = inspect.signature(builder).parameters
    allowed = set(params) - {"in_shape", "widths", "channels", "num_classes", "graph"}
    for k in opts:
        if k not in allowed:
            raise ConfigError(f"model {kind!r} has no option {k!r}.{_suggest(k, allowed)} "
                              f"Options: {', '.join(sorted(allowed))}")
    if "graph" in params and "graph" in task.meta:  # graph models (gnn.py) hold their graph
        opts["graph"] = task.meta["graph"]
    return builder(task.in_shape, widths, task.num_classes, **opts)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """All children except the head."""
    return list(model.children())[:-1]


def head_of(model: nn.Module) -> nn.Module:
    return list(model.children())[-1]


def last_linear(module: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` inside a module (the head's weight for MF/DFA)."""
    lins = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not lins:
        raise ConfigError(f"expected a Linear layer in {module.__class__.__name__}")
    return lins[-1]


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def block_output_shapes(model: nn.Module, in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-sample output shape of each child (blocks and head), from one dummy forward."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    h = torch.zeros(1, *in_shape, device=dev)
    shapes = []
    for child in model.children():
        h = child(h)
        shapes.append(tuple(h.shape[1:]))
    model.train(was)
    return shapes


def _import_families() -> None:
    import importlib
    import pkgutil

    for m in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
        importlib.import_module(f"{__name__}.{m}")


_import_families()

"""Forward-Forward (Hinton 2022, https://arxiv.org/abs/2212.13345).

Every layer is trained to have high *goodness* ``g = Σ_j h_j²`` on positive data (an image with
its true label written into the first C inputs) and low goodness on negative data (the same image
with a *different* label, never the true one). The layer's probability of "positive" is
``p = σ(g − θ)`` (paper §2, eq. 1), so its loss is

    L_l = softplus(θ − g_pos) + softplus(g_neg − θ)

Each layer's input is length-normalised (§2.1: "normalize the length of the hidden vector before
using it as input to the next layer") and detached, so only the goodness of a layer trains it.
``loss="symba"`` is the symmetric variant softplus(−α(g_pos − g_neg)) (Lee & Song 2023,
arXiv 2303.08418), which converges faster.

Prediction (§3.3): write each label in turn, sum goodness over layers (skipping the first when
there is more than one), take the argmax. bpfree runs all C labels as one (B·C) batch.
``predict_mode="readout"`` instead trains a linear softmax on the normalised activities of layers
2..L for a neutral label (§3.3's cheaper alternative); its gradient stays in the readout.

Defaults: threshold ``θ = theta · width`` with ``theta = 1`` (i.e. mean squared activity 1), Adam,
as in the widely used re-implementation of the paper's MNIST experiment (3×1000 MLP, ReLU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import block_output_shapes
from ..rule import LearningRule, Task, register


def write_label(x: Tensor, labels: Tensor | None, C: int, scale: float) -> Tensor:
    """FF's label embedding: a one-hot label (or a neutral 1/C) over the first C inputs."""
    flat = x.flatten(1).clone()
    flat[:, :C] = (scale / C if labels is None
                   else F.one_hot(labels, C).to(flat.dtype) * scale)
    return flat.view_as(x)


def other_labels(y: Tensor, C: int, generator: torch.Generator) -> Tensor:
    """A uniformly random label different from the true one (never the true label)."""
    shift = torch.randint(1, C, y.shape, generator=generator, device=y.device)
    return (y + shift) % C


class LabelledInputs:
    """Mixin for FF-style rules (ff, ff-collab, mfff): labels written into the input, and negatives.

    Needs ``self.task`` and ``self.label_scale``; noise comes from the rule's seeded generator.
    """

    def embed(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """Write a one-hot label (or a neutral 1/C everywhere when ``labels`` is None)."""
        assert self.task is not None  # type: ignore[attr-defined]
        return write_label(x, labels, self.task.num_classes, self.label_scale)  # type: ignore[attr-defined]

    def wrong_labels(self, y: Tensor) -> Tensor:
        """A uniformly random label different from the true one (never the true label)."""
        assert self.task is not None  # type: ignore[attr-defined]
        return other_labels(y, self.task.num_classes,  # type: ignore[attr-defined]
                            self._device_generator(y.device))  # type: ignore[attr-defined]


def rms_normalise(z: Tensor, eps: float = 1e-8) -> Tensor:
    """Length normalisation scaled so that the mean squared activity is 1: ``z / ‖z‖ · √d``."""
    flat = z.flatten(1)
    return (flat / (flat.pow(2).mean(1, keepdim=True).sqrt() + eps)).view_as(z)


@register
class ForwardForward(LabelledInputs, LearningRule):
    name = "ff"
    family = "goodness"
    locality = "block"
    paper = "https://arxiv.org/abs/2212.13345"
    native_model = "mlp:1000,1000,1000"
    search_space = {"lr": ("log", 1e-4, 1e-2), "theta": ("float", 0.5, 4.0)}
    # constant Adam plateaus near 97.5 % on MNIST 3x1000; a linear cool-down over 30 epochs
    # reaches 98.25 % (benchmarks/ff_cooldown.toml)
    recommended_train = {"lr": 1e-3, "epochs": 30, "lr_schedule": "linear-cooldown"}
    # digits has 23 steps per epoch: FF's early phase needs a larger step to get going
    smoke = {"epochs": 12, "lr": 1e-2}

    def __init__(self, theta: float = 1.0, loss: str = "softplus", alpha: float = 4.0,
                 label_scale: float = 1.0, predict_mode: str = "goodness",
                 skip_first: bool = True, goodness: str = "sum") -> None:
        super().__init__()
        if loss not in ("softplus", "symba"):
            raise ValueError(f"loss must be 'softplus' or 'symba', got {loss!r}")
        if predict_mode not in ("goodness", "readout"):
            raise ValueError(f"predict_mode must be 'goodness' or 'readout', got {predict_mode!r}")
        if goodness not in ("sum", "mean"):
            raise ValueError(f"goodness must be 'sum' or 'mean', got {goodness!r}")
        self.goodness = goodness
        if theta <= 0 or alpha <= 0 or label_scale <= 0:
            raise ValueError("theta, alpha and label_scale must be > 0")
        self.theta, self.loss, self.alpha = theta, loss, alpha
        self.label_scale, self.predict_mode, self.skip_first = label_scale, predict_mode, skip_first

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        if math.prod(task.in_shape) < task.num_classes:
            raise ValueError(f"ff writes the label into the first {task.num_classes} inputs; "
                             f"the input has only {math.prod(task.in_shape)} features")
        shapes = block_output_shapes(model, task.in_shape)[:-1]
        self.register_buffer("widths", torch.tensor([math.prod(s) for s in shapes]))
        self._width_list = [math.prod(s) for s in shapes]
        if self.predict_mode == "readout":
            used = self._width_list[1:] if len(shapes) > 1 else self._width_list
            self.readout = nn.Linear(sum(used), task.num_classes)

    # ---- helpers ---------------------------------------------------------------------------
    def _forward_goodness(self, z: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Run the blocks on detached, normalised inputs; return activities and goodness."""
        hs, gs = [], []
        for block in self.blocks[:-1]:
            z = block(rms_normalise(z.detach()))  # a layer's loss must not reach the layer below
            hs.append(z)
            sq = z.flatten(1).pow(2)
            gs.append(sq.sum(1) if self.goodness == "sum" else sq.mean(1))  # g = Σ h², (N,)
        return hs, gs

    def layer_losses(self, g_pos: list[Tensor], g_neg: list[Tensor]) -> list[Tensor]:
        out = []
        for g_p, g_n, d in zip(g_pos, g_neg, self._width_list):
            d = d if self.goodness == "sum" else 1
            if self.loss == "symba":
                out.append(F.softplus(-self.alpha * (g_p - g_n) / d).mean())
            else:
                th = self.theta * d
                out.append((F.softplus(th - g_p) + F.softplus(g_n - th)).mean())
        return out

    # ---- training --------------------------------------------------------------------------
    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        B = len(y)
        z = torch.cat([self.embed(x, y), self.embed(x, self.wrong_labels(y))])  # (2B, ...)
        hs, gs = self._forward_goodness(z)
        losses = self.layer_losses([g[:B] for g in gs], [g[B:] for g in gs])
        total = torch.stack(losses).sum()
        out = {"loss": total}
        if self.predict_mode == "readout":
            with torch.no_grad():
                feats = self._readout_features(x)
            ro = F.cross_entropy(self.readout(feats), y)  # readout's own gradient only
            total = total + ro
            out["readout_loss"] = ro
        total.backward()
        return out

    def _readout_features(self, x: Tensor) -> Tensor:
        hs, _ = self._forward_goodness(self.embed(x, None))
        used = hs[1:] if len(hs) > 1 and self.skip_first else hs
        return torch.cat([rms_normalise(h).flatten(1) for h in used], 1)

    # ---- inference -------------------------------------------------------------------------
    def _predict(self, x: Tensor) -> Tensor:
        assert self.task is not None
        if self.predict_mode == "readout":
            return self.readout(self._readout_features(x))
        B, C = len(x), self.task.num_classes
        labels = torch.arange(C, device=x.device).repeat_interleave(B)  # (C·B,)
        _, gs = self._forward_goodness(self.embed(x.repeat(C, *([1] * (x.dim() - 1))), labels))
        used = gs[1:] if len(gs) > 1 and self.skip_first else gs
        return torch.stack(used).sum(0).view(C, B).t()  # (B, C) summed goodness per label

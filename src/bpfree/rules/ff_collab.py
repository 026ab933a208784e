"""Collaborative Forward-Forward (Lorberbom, Gat, Adi, Schwing & Hazan, AAAI 2024,
"Layer Collaboration in the Forward-Forward Algorithm", https://arxiv.org/abs/2305.12393).

In FF every layer l is trained on its own goodness g_l only. Collaborative FF trains layer l on
the goodness of the *whole network*, in which only its own term carries a gradient:

    G_l = g_l + Σ_{k≠l} SG(g_k)           (SG = stop-gradient, the other layers' goodness)
    L_l = softplus(Θ − G_l⁺) + softplus(G_l⁻ − Θ),   Θ = Σ_k θ_k

so a layer learns what the network as a whole still gets wrong, while every gradient stays inside
its own layer (the other layers' goodness enters as a constant). ``scope="below"`` sums only the
layers under l (a causal variant). Prediction sums the goodness of *all* layers
(``skip_first=False`` by default: the sum is what the layers were trained on). Everything else (label embedding, negatives, normalisation,
prediction by summed goodness) is FF's, inherited from :class:`~bpfree.rules.ff.ForwardForward`.

Implementation: FF's per-layer loss compares g_l with θ_l, so the collaborative loss is FF's loss
applied to ``g_l + Σ_{k≠l} SG(g_k − θ_k)`` (θ_l + Σ_{k≠l} θ_k = Θ). The symba loss compares
positive and negative goodness directly and needs no threshold shift.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ..rule import register
from .ff import ForwardForward

COLLAB_DEFAULTS = {"skip_first": False}


@register
class CollaborativeFF(ForwardForward):
    name = "ff-collab"
    paper = "https://arxiv.org/abs/2305.12393"

    def __init__(self, scope: str = "all", **ff_options) -> None:
        # the layers are trained so that the goodness *summed over all layers* separates positive
        # from negative data, so prediction sums all layers too (FF skips the first)
        super().__init__(**{**COLLAB_DEFAULTS, **ff_options})
        if scope not in ("all", "below"):
            raise ValueError(f"scope must be 'all' or 'below', got {scope!r}")
        self.scope = scope

    def _threshold(self, width: int) -> float:
        """θ_l as FF uses it (θ·width for summed goodness, θ for mean goodness)."""
        return self.theta * (width if getattr(self, "goodness", "sum") == "sum" else 1)

    def _collaborative(self, gs: list[Tensor]) -> list[Tensor]:
        centred = [(g - self._threshold(d)).detach() for g, d in zip(gs, self._width_list)]
        out = []
        for l, g in enumerate(gs):
            others = [c for k, c in enumerate(centred)
                      if k != l and (self.scope == "all" or k < l)]
            # other layers' goodness is a constant here: layer l's loss cannot reach them
            out.append(g + torch.stack(others).sum(0) if others else g)
        return out

    def layer_losses(self, g_pos: list[Tensor], g_neg: list[Tensor]) -> list[Tensor]:
        return super().layer_losses(self._collaborative(g_pos), self._collaborative(g_neg))


# Expose FF's hyperparameters as ff-collab's own (CLI --set, make_rule validation, records).
_ff_params = [p for n, p in inspect.signature(ForwardForward.__init__).parameters.items()
              if n != "self"]
_own = [p for n, p in inspect.signature(CollaborativeFF.__init__).parameters.items()
        if p.kind is not p.VAR_KEYWORD]
CollaborativeFF.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    _own + [p.replace(kind=p.KEYWORD_ONLY, default=COLLAB_DEFAULTS.get(p.name, p.default))
            for p in _ff_params])

"""ForwardGNN, single-forward variant (Park et al., "Forward Learning of Graph Neural Networks",
ICLR 2024, https://arxiv.org/abs/2403.11004, Sec. 3.2 "single forward", node classification).

No negative graphs, no backward chain: the input graph is augmented with one *virtual node per
class*, and every training node gets an edge to the virtual node of its label. One forward pass
of the GNN then embeds real and virtual nodes together; the virtual node of class c aggregates its
class's training nodes, so at every layer l it is a learned class representative v_c^l. Layer l
is trained alone (its input is detached: locality "block") so that each training node's embedding
is closest to its own class's virtual node:

    s_l(v, c) = sim(h_v^l, v_c^l)                        cos(h, v) / τ  (default)  or  h·v
    L_l       = CE(softmax_c s_l(v, ·), y_v)             averaged over the training nodes
    ŷ(v)      = argmax_c Σ_l softmax_c s_l(v, c)         prediction sums the layer-wise softmaxes

The virtual edges point *into* the virtual nodes (train node -> v_c): GCN normalises with the
target's in-degree, so real nodes keep their degree, their messages and hence exactly the
embeddings of the plain graph; no label information flows back into the real nodes (a test node
sees the same graph as in the BP twin). Prediction rebuilds the virtual nodes from every training
node seen so far (labels kept in the ``vlabel`` buffer) with dropout off.

The GNN's own head is not used by this rule (it predicts through the virtual nodes); it stays in
the model so the BP twin is the very same network. Models: ``gcn:...`` and ``sage:...``
(:mod:`bpfree.models.gnn`). With float inputs (no graph: the contract tests, sklearn digits) the
nodes are the batch's samples, edge-less, and prediction compares with the virtual-node embeddings
of the last training batch (``proto_l`` buffers).

Reading note: section 3.2's exact similarity and hyperparameters could not be read from the
stored copy of the paper available when this was written (only the abstract and summaries): the
cosine/temperature similarity and its default are bpfree's choice, set on the generated SBM graph
and the karate club (``benchmarks/forwardgnn.py``), and the ``sim="dot"`` variant is offered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.gnn import GNN, GraphConv
from ..rule import ConfigError, LearningRule, Task, register


@register
class ForwardGNN(LearningRule):
    name = "forwardgnn"
    family = "local-loss"
    locality = "block"
    paper = "https://arxiv.org/abs/2403.11004"
    native_model = "gcn:128,128"
    small_model = "gcn:32,32"
    smoke_model = "gcn:64,64,dropout=0.0"
    smoke = {"epochs": 12, "lr": 3e-3}
    search_space = {"lr": ("log", 1e-4, 3e-2), "tau": ("log", 0.05, 1.0)}

    def __init__(self, sim: str = "cos", tau: float = 0.2) -> None:
        super().__init__()
        if sim not in ("cos", "dot"):
            raise ValueError(f"sim must be 'cos' or 'dot', got {sim!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.sim, self.tau = sim, tau

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        if not isinstance(model, GNN):
            raise ConfigError(f"forwardgnn trains graph models (gcn:..., sage:...), got "
                              f"{type(model).__name__}")
        self.C = task.num_classes
        convs = [b for b in self.blocks if isinstance(b, GraphConv)]
        # label of every training node seen so far (-1: none): the virtual edges at prediction
        self.register_buffer("vlabel", torch.full((model.num_nodes,), -1, dtype=torch.long))
        for l, conv in enumerate(convs):  # virtual-node embeddings v_c^l of the last step
            self.register_buffer(f"proto_{l}", torch.zeros(self.C, conv.out_features))

    # ---- the rule --------------------------------------------------------------------------
    def _scores(self, h: Tensor, v: Tensor) -> Tensor:
        """s_l(node, c) for nodes ``h`` (B, d) and virtual nodes ``v`` (C, d) -> (B, C)."""
        if self.sim == "cos":
            return F.normalize(h, dim=1) @ F.normalize(v, dim=1).T / self.tau
        return h @ v.T

    def _augmented(self, x: Tensor, src: Tensor, labels: Tensor) -> tuple[Tensor, tuple, int, Tensor]:
        """(h0 for real + virtual nodes, propagation, number of real nodes, nodes to score)."""
        model = self.model
        assert isinstance(model, GNN)
        if x.is_floating_point():  # the batch's samples are the (edge-less) real nodes
            h0, base, idx = x.flatten(1), None, torch.arange(len(x), device=x.device)
        else:
            h0, base, idx = model.features, model.edge_index, x.reshape(-1)
        n = h0.shape[0]
        virtual = torch.stack([src, n + labels])  # train node -> its class's virtual node
        edges = virtual if base is None else torch.cat([base, virtual], 1)
        prop = model.propagation(edges, n + self.C)
        h0 = torch.cat([h0, h0.new_zeros(self.C, h0.shape[1])])  # virtual nodes start at 0
        return h0, prop, n, idx

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if not x.is_floating_point():
            self.vlabel[x.reshape(-1)] = y  # remembered for prediction (no host sync)
        src = torch.arange(len(x), device=x.device) if x.is_floating_point() else x.reshape(-1)
        h, prop, n, idx = self._augmented(x, src, y)
        total = h.new_zeros(())
        loss = total
        for l, block in enumerate(self.blocks[:-1]):
            h = block(h.detach(), prop)  # layer l's loss must not reach layer l-1
            v = h[n:]  # (C, d) virtual class nodes v_c^l
            loss = F.cross_entropy(self._scores(h[idx], v), y)  # L_l
            total = total + loss
            getattr(self, f"proto_{l}").copy_(v.detach())
        total.backward()  # disconnected per-layer graphs: one pass, no cross-block gradient
        return {"loss": loss, "loss_sum": total}

    def _predict(self, x: Tensor) -> Tensor:
        blocks = self.blocks[:-1]
        if x.is_floating_point():  # no graph: compare with the last batch's virtual nodes
            h, prop, idx, n = x.flatten(1), None, slice(None), None
        else:
            known = (self.vlabel >= 0).nonzero().reshape(-1)
            h, prop, n, idx = self._augmented(x, known, self.vlabel[known])
        p = x.new_zeros((len(x), self.C), dtype=torch.float32)
        for l, block in enumerate(blocks):
            h = block(h, prop)
            v = getattr(self, f"proto_{l}") if n is None else h[n:]
            p = p + self._scores(h[idx], v).softmax(1)  # Σ_l softmax_c s_l(v, c)
        return p

"""Graph neural networks for node classification: GCN and GraphSAGE as stacks of blocks.

``gcn:64,64`` = two graph-convolution blocks (Kipf & Welling 2017, https://arxiv.org/abs/1609.02907,
eq. 2: ``H' = σ(Â H W + b)``, ``Â = D̃^-1/2 (A+I) D̃^-1/2``) and a linear head;
``sage:64,64`` = GraphSAGE-mean blocks (Hamilton et al. 2017, https://arxiv.org/abs/1706.02216,
Alg. 1 with the mean aggregator: ``h'_v = σ(W_r h_v + W_n mean_{u∈N(v)} h_u + b)``).
Options: ``dropout`` (default 0.5, Kipf & Welling §5.2) before every layer, ``act``.

The graph lives in the model: its node features and edges are (non-persistent) buffers, taken from
``Task.meta["graph"]`` (a :class:`bpfree.graphs.Graph`) when the model is built. Inputs are then
*node indices* ``(B, 1)`` or ``(B,)`` int64: the model runs every layer on the whole graph and
returns the head's scores of those nodes. Float inputs ``(B, ...)`` are read as the features of
``B`` nodes without edges (each node only has its self loop, so a GCN is an MLP there): that is how
the registry-wide contract tests and sklearn digits run a GNN with no graph.

Each block is called as ``block(h, prop)`` where ``h`` is ``(N, d)`` for *all* nodes and ``prop``
the propagation matrix as ``(src, dst, weight)`` (see :func:`bpfree.graphs.propagation`); rules that
change the graph (ForwardGNN's virtual nodes) call the blocks with their own ``prop``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from ..graphs import Graph, propagate, propagation
from . import _act, register_model

__all__ = ["GraphConv", "GNN", "gcn", "sage"]

Prop = tuple[Tensor, Tensor, Tensor]


class GraphConv(nn.Module):
    """One GNN layer (a block): ``kind="gcn"`` or ``"sage"`` (mean aggregator, root weight)."""

    def __init__(self, d_in: int, d_out: int, kind: str, act: str = "relu",
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.kind = kind
        self.drop = nn.Dropout(dropout)
        self.lin = nn.Linear(d_in, d_out)  # GCN: W, b;  SAGE: W_r, b
        self.lin_neigh = nn.Linear(d_in, d_out, bias=False) if kind == "sage" else None  # W_n
        self.act = _act(act)

    @property
    def out_features(self) -> int:
        return self.lin.out_features

    def forward(self, h: Tensor, prop: Prop | None = None) -> Tensor:  # (N, d_in) -> (N, d_out)
        h = self.drop(h)
        if self.lin_neigh is None:  # GCN: Â (H W) + b; without edges Â = I
            z = h @ self.lin.weight.T
            if prop is not None:
                z = propagate(z, prop)
            return self.act(z + self.lin.bias)
        z = self.lin(h)  # SAGE: W_r h_v + b + W_n mean_{u∈N(v)} h_u
        if prop is not None:
            z = z + self.lin_neigh(propagate(h, prop))
        return self.act(z)


class GNN(nn.Sequential):
    """``nn.Sequential`` of :class:`GraphConv` blocks and a ``head``, plus the graph as buffers."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", kind: str,
                 graph: Graph | None) -> None:
        super().__init__(layers)
        self.kind = kind
        self.prop_kind = "gcn" if kind == "gcn" else "mean"
        # The graph is data, not learned state: non-persistent buffers move with .to(device)
        # and count in memory, but checkpoints stay small.
        x = graph.x if graph is not None else torch.zeros(0, 0)
        ei = graph.edge_index if graph is not None else torch.zeros(2, 0, dtype=torch.long)
        self.register_buffer("features", x.to(torch.float32), persistent=False)  # (N, F)
        self.register_buffer("edge_index", ei.to(torch.long), persistent=False)  # (2, E)
        self.has_graph = graph is not None
        self._prop: Prop | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.features.shape[0])

    def propagation(self, edge_index: Tensor | None = None,
                    num_nodes: int | None = None) -> Prop:
        """This model's propagation matrix for ``edge_index`` (default: its own graph, cached)."""
        if edge_index is not None:
            return propagation(edge_index, num_nodes or self.num_nodes, self.prop_kind)
        if self._prop is None or self._prop[0].device != self.edge_index.device:
            self._prop = propagation(self.edge_index, self.num_nodes, self.prop_kind)
        return self._prop

    def node_inputs(self, x: Tensor) -> tuple[Tensor, Prop | None, Tensor | None]:
        """``(h0 for all nodes, prop, indices of the nodes asked for or None)``."""
        if x.is_floating_point():  # features of B edge-less nodes
            return x.flatten(1), None, None
        if not self.has_graph:
            raise ValueError("this GNN was built without a graph, so it cannot take node indices; "
                             "build it from a Task whose meta holds {'graph': Graph}")
        return self.features, self.propagation(), x.reshape(-1)

    def forward(self, x: Tensor) -> Tensor:
        h, prop, idx = self.node_inputs(x)
        *blocks, head = self.children()
        for block in blocks:
            h = block(h, prop)  # (N, d)
        if idx is not None:
            h = h[idx]  # (B, d): only the nodes asked for reach the head
        return head(h)


def _gnn(kind: str, in_shape: tuple[int, ...], widths: list[int], num_classes: int,
         dropout: float, act: str, graph: Graph | None) -> GNN:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    d = int(graph.x.shape[1]) if graph is not None else math.prod(in_shape)
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, w in enumerate(widths):
        layers[f"block{i}"] = GraphConv(d, w, kind, act, dropout)
        d = w
    layers["head"] = nn.Linear(d, num_classes)
    return GNN(layers, kind, graph)


@register_model("gcn")
def gcn(in_shape: tuple[int, ...], widths: list[int], num_classes: int, dropout: float = 0.5,
        act: str = "relu", graph: Graph | None = None) -> GNN:
    """GCN blocks (Kipf & Welling 2017) and a linear head: ``gcn:64,64``."""
    return _gnn("gcn", in_shape, widths, num_classes, dropout, act, graph)


@register_model("sage")
def sage(in_shape: tuple[int, ...], widths: list[int], num_classes: int, dropout: float = 0.5,
         act: str = "relu", graph: Graph | None = None) -> GNN:
    """GraphSAGE-mean blocks (Hamilton et al. 2017) and a linear head: ``sage:64,64``."""
    return _gnn("sage", in_shape, widths, num_classes, dropout, act, graph)

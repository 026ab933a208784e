"""Graph datasets for node classification, and the graph maths GNN layers share.

How a graph fits the one Trainer: a graph dataset is a :class:`~bpfree.data.DataBundle` whose
``x`` tensors are *node indices* ``(N, 1)`` int64 (train nodes in ``x_train``, test nodes in
``x_test``) and whose :class:`Graph` (features, edges, labels) travels in ``bundle.meta["graph"]``.
``prepare`` keeps index tensors as they are, the Trainer puts the graph into ``Task.meta`` and
the GNN builders (:mod:`bpfree.models.gnn`) store it in the model as buffers. Full-batch
training = ``batch_size >= number of training nodes``.

Datasets (registered in :mod:`bpfree.data`):

* ``karate`` / ``karate2``: Zachary's karate club (34 nodes, 78 edges; public-domain data,
  Zachary 1977). Labels: the 4 communities PyTorch Geometric's ``KarateClub`` uses, or the 2
  factions after the split. Features: one-hot node ids (as PyG). Read from PyG when it is
  importable, else from the copy below (identical; a test checks it).
* ``sbm``: a seeded planted-partition graph (stochastic block model) whose node features are
  noisy class prototypes: the features alone are a weak signal, the graph helps.
* ``cora`` / ``citeseer`` / ``pubmed``: Planetoid files ``ind.<name>.{x,tx,allx,y,ty,ally,graph,
  test.index}`` (Yang et al. 2016, as distributed by Kipf & Welling), features row-normalised.
  Split: the ForwardGNN paper's protocol (random 64/16/20 train/val/test): the bundle holds
  80 % train / 20 % test and ``prepare(val_fraction=0.2)`` carves the 16 % validation part.
  :func:`planetoid` with ``split="public"`` gives the standard 140/500/1000 split instead.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import DataBundle, DataError, _how_to, _register, _Spec, _stratified_split

__all__ = ["Graph", "propagation", "to_undirected", "karate", "sbm", "planetoid", "graph_bundle",
           "KARATE_EDGES"]


@dataclass(eq=False)
class Graph:
    """A node-classification graph: ``x`` (N, F) float32, ``edge_index`` (2, E) int64 holding
    both directions of every undirected edge (row 0 = source, row 1 = target, no self loops),
    ``y`` (N,) int64 labels."""

    x: Tensor
    edge_index: Tensor
    y: Tensor
    num_classes: int
    name: str = "graph"

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return (f"Graph({self.name!r}, nodes={self.num_nodes}, edges={self.edge_index.shape[1]}, "
                f"features={self.x.shape[1]}, classes={self.num_classes})")


# --------------------------------------------------------------------------------------------
# Graph maths
# --------------------------------------------------------------------------------------------


def to_undirected(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Both directions of every edge, self loops removed, duplicates removed, sorted."""
    ei = torch.cat([edge_index, edge_index.flip(0)], 1)
    ei = ei[:, ei[0] != ei[1]]
    key = torch.unique(ei[0] * num_nodes + ei[1])
    return torch.stack([key // num_nodes, key % num_nodes])


def propagation(edge_index: Tensor | None, num_nodes: int, kind: str,
                device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Sparse propagation matrix as ``(src, dst, weight)``: ``out[dst] += weight * h[src]``.

    ``kind="gcn"`` (Kipf & Welling 2017, eq. 2): Â = D̃^-1/2 (A + I) D̃^-1/2 with D̃ the
    *in*-degree + 1, so an edge u -> v added later (a virtual node's in-edge) leaves u's own
    normalisation, and hence every real node's embedding, unchanged.
    ``kind="mean"`` (GraphSAGE-mean, Hamilton et al. 2017, Alg. 1): out[v] = mean of in-neighbours.
    """
    if edge_index is None:
        edge_index = torch.zeros(2, 0, dtype=torch.long, device=device)
    src, dst = edge_index[0], edge_index[1]
    indeg = torch.bincount(dst, minlength=num_nodes).to(torch.float32)
    if kind == "gcn":
        loops = torch.arange(num_nodes, device=src.device)
        src, dst = torch.cat([src, loops]), torch.cat([dst, loops])
        dinv = (indeg + 1.0).rsqrt()  # (N,)
        return src, dst, dinv[src] * dinv[dst]
    if kind == "mean":
        return src, dst, 1.0 / indeg.clamp(min=1.0)[dst]
    raise ValueError(f"unknown propagation kind {kind!r}; expected 'gcn' or 'mean'")


def propagate(h: Tensor, prop: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """``Â h`` for ``prop = (src, dst, weight)``: a scatter-add over edges.  # (N, d) -> (N, d)"""
    src, dst, w = prop
    return torch.zeros_like(h).index_add_(0, dst, h[src] * w.unsqueeze(1))


# --------------------------------------------------------------------------------------------
# Bundles
# --------------------------------------------------------------------------------------------


def graph_bundle(graph: Graph, train_idx: Tensor, test_idx: Tensor, source: str) -> DataBundle:
    """Train/test *node indices* as ``(n, 1)`` int64 x tensors; the graph rides in ``meta``."""
    train_idx, test_idx = train_idx.to(torch.int64), test_idx.to(torch.int64)
    return DataBundle(graph.name, train_idx.unsqueeze(1), graph.y[train_idx],
                      test_idx.unsqueeze(1), graph.y[test_idx], graph.num_classes, source,
                      meta={"graph": graph})


# Zachary (1977), "An information flow model for conflict and fission in small groups", the
# 78 friendships of the 34 club members (0-based, as in networkx/PyG).
KARATE_EDGES = (
    (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (0, 7), (0, 8), (0, 10), (0, 11), (0, 12),
    (0, 13), (0, 17), (0, 19), (0, 21), (0, 31), (1, 2), (1, 3), (1, 7), (1, 13), (1, 17),
    (1, 19), (1, 21), (1, 30), (2, 3), (2, 7), (2, 8), (2, 9), (2, 13), (2, 27), (2, 28),
    (2, 32), (3, 7), (3, 12), (3, 13), (4, 6), (4, 10), (5, 6), (5, 10), (5, 16), (6, 16),
    (8, 30), (8, 32), (8, 33), (9, 33), (13, 33), (14, 32), (14, 33), (15, 32), (15, 33),
    (18, 32), (18, 33), (19, 33), (20, 32), (20, 33), (22, 32), (22, 33), (23, 25), (23, 27),
    (23, 29), (23, 32), (23, 33), (24, 25), (24, 27), (24, 31), (25, 31), (26, 29), (26, 33),
    (27, 33), (28, 31), (28, 33), (29, 32), (29, 33), (30, 32), (30, 33), (31, 32), (31, 33),
    (32, 33),
)
#: the 4 communities PyTorch Geometric's KarateClub uses as labels
KARATE_COMMUNITIES = (1, 1, 1, 1, 3, 3, 3, 1, 0, 1, 3, 1, 1, 1, 0, 0, 3, 1, 0, 1, 0, 1, 0, 0,
                      2, 2, 0, 0, 2, 0, 0, 2, 0, 0)
#: the 2 factions after the split (0 = Mr. Hi, 1 = Officer), as networkx's ``club`` attribute
_OFFICER = {9, 14, 15, 18, 20, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33}
KARATE_FACTIONS = tuple(int(i in _OFFICER) for i in range(34))


def karate(num_classes: int = 4, use_pyg: bool = True) -> Graph:
    """Zachary's karate club; from PyTorch Geometric when importable, else the built-in copy."""
    if num_classes not in (2, 4):
        raise ValueError(f"karate has 2 factions or 4 communities, got num_classes={num_classes}")
    ei = x = y4 = None
    if use_pyg:
        try:
            from torch_geometric.datasets import KarateClub
        except ImportError:
            pass
        else:
            data = KarateClub()[0]
            ei, x, y4 = data.edge_index.long(), data.x.float(), data.y.long()
    if ei is None:
        ei = to_undirected(torch.tensor(KARATE_EDGES).T, 34)
        x, y4 = torch.eye(34), torch.tensor(KARATE_COMMUNITIES)
    y = y4 if num_classes == 4 else torch.tensor(KARATE_FACTIONS)
    name = "karate" if num_classes == 4 else "karate2"
    return Graph(x, to_undirected(ei, 34), y, num_classes, name)


def _karate_bundle(num_classes: int) -> DataBundle:
    """Fixed, seed-0, per-class 50 % train / 50 % test split of the 34 members."""
    g = karate(num_classes)
    train, test = _stratified_split(g.y, 0.5, seed=0)
    return graph_bundle(g, train, test, "torch_geometric or built-in copy (Zachary 1977)")


def sbm(num_nodes: int = 1000, num_classes: int = 4, p_in: float = 0.02, p_out: float = 0.004,
        feature_dim: int = 32, noise: float = 3.0, seed: int = 0) -> Graph:
    """A seeded planted-partition graph with informative node features.

    Node v of class c links to a same-class node with probability ``p_in`` and to any other node
    with ``p_out``; its features are ``μ_c + noise · ε`` with unit-Gaussian prototypes ``μ_c``.
    Defaults: ~10 same-class and ~3 other-class neighbours; features alone give ~60 % accuracy.
    """
    if not 0 <= p_out <= 1 or not 0 <= p_in <= 1:
        raise ValueError(f"p_in and p_out must be probabilities, got {p_in}, {p_out}")
    g = torch.Generator().manual_seed(seed)
    y = torch.randperm(num_nodes, generator=g) % num_classes  # balanced classes
    p = torch.where(y[:, None] == y[None, :], p_in, p_out)  # (N, N)
    upper = torch.triu(torch.rand(num_nodes, num_nodes, generator=g) < p, diagonal=1)
    mu = torch.randn(num_classes, feature_dim, generator=g)
    x = mu[y] + noise * torch.randn(num_nodes, feature_dim, generator=g)
    return Graph(x, to_undirected(upper.nonzero().T, num_nodes), y, num_classes, "sbm")


def _sbm_bundle() -> DataBundle:
    g = sbm()
    train, test = _stratified_split(g.y, 0.2, seed=0)  # 80 % train(+val) / 20 % test
    return graph_bundle(g, train, test, "generated (planted partition, seed 0)")


# --------------------------------------------------------------------------------------------
# Planetoid (Cora, CiteSeer, PubMed)
# --------------------------------------------------------------------------------------------

PLANETOID = {"cora": "cora", "citeseer": "citeseer", "pubmed": "pubmed"}
_PLANETOID_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def _locate_planetoid(name: str, folder: Path, notes: list[str]) -> Path | None:
    if not folder.is_dir():
        return None
    missing = [p for p in _PLANETOID_PARTS if not (folder / f"ind.{name}.{p}").is_file()]
    if not missing:
        return folder
    if len(missing) < len(_PLANETOID_PARTS):
        notes.append(f"{folder} lacks ind.{name}.{{{','.join(missing)}}}")
    return None


def _load_pickle(path: Path) -> object:
    with open(path, "rb") as f:
        try:
            return pickle.load(f, encoding="latin1")  # the files were written by Python 2
        except Exception as err:  # noqa: BLE001  (any unpickling failure: say which file)
            raise DataError(f"{path}: cannot unpickle ({type(err).__name__}: {err})") from err


def _dense(a: object) -> np.ndarray:
    return np.asarray(a.todense() if hasattr(a, "todense") else a, dtype=np.float32)


def planetoid(folder: str | Path, name: str = "cora", split: str = "random",
              normalize: bool = True, seed: int = 0) -> tuple[Graph, dict[str, Tensor]]:
    """Read ``ind.<name>.*`` from ``folder``; returns the graph and ``{"train","val","test"}``.

    Kipf & Welling's layout: ``allx``/``ally`` are the first nodes (``x``/``y`` the labelled
    training ones among them), ``tx``/``ty`` the test nodes in the order ``test.index`` lists
    them; test nodes are put back at their sorted index positions. CiteSeer's isolated test
    nodes missing from ``tx`` get zero features (their rows are not tested).
    ``split="public"``: train = the ``len(y)`` first nodes, val = the next 500, test =
    ``test.index``. ``split="random"``: seeded 64/16/20 % of all nodes (ForwardGNN's protocol).
    """
    folder = Path(folder)
    parts = {p: _load_pickle(folder / f"ind.{name}.{p}") for p in _PLANETOID_PARTS[:-1]}
    lines = (folder / f"ind.{name}.test.index").read_text().split()
    test_index = torch.tensor([int(s) for s in lines], dtype=torch.long)
    allx, tx = _dense(parts["allx"]), _dense(parts["tx"])
    ally, ty = _dense(parts["ally"]), _dense(parts["ty"])
    sorted_test = test_index.sort().values
    lo, hi = int(sorted_test[0]), int(sorted_test[-1])
    if len(allx) != len(ally) or len(tx) != len(ty) or len(tx) != len(test_index):
        raise DataError(f"{folder}: ind.{name}.* sizes disagree (allx {len(allx)}, ally "
                        f"{len(ally)}, tx {len(tx)}, ty {len(ty)}, test.index {len(test_index)})")
    if hi - lo + 1 != len(tx):  # CiteSeer: some test ids have no row in tx
        tx_ext = np.zeros((hi - lo + 1, tx.shape[1]), np.float32)
        ty_ext = np.zeros((hi - lo + 1, ty.shape[1]), np.float32)
        tx_ext[sorted_test.numpy() - lo], ty_ext[sorted_test.numpy() - lo] = tx, ty
        tx, ty = tx_ext, ty_ext
    x = torch.from_numpy(np.concatenate([allx, tx]))
    y = torch.from_numpy(np.concatenate([ally, ty]).argmax(1)).long()
    x[test_index], y[test_index] = x[sorted_test].clone(), y[sorted_test].clone()
    if normalize:  # row-normalise bag-of-words features (Kipf & Welling; PyG NormalizeFeatures)
        x = x / x.sum(1, keepdim=True).clamp(min=1e-12)
    n = len(x)
    graph_dict = parts["graph"]
    pairs = [(int(u), int(v)) for u, nbrs in graph_dict.items() for v in nbrs]
    ei = torch.tensor(pairs, dtype=torch.long).T if pairs else torch.zeros(2, 0, dtype=torch.long)
    if ei.numel() and int(ei.max()) >= n:
        raise DataError(f"{folder}: ind.{name}.graph refers to node {int(ei.max())}, but there "
                        f"are only {n} feature rows")
    g = Graph(x, to_undirected(ei, n), y, int(ally.shape[1]), name)
    if split == "public":
        n_train = len(_dense(parts["y"]))
        idx = {"train": torch.arange(n_train), "val": torch.arange(n_train, n_train + 500),
               "test": sorted_test}
    elif split == "random":
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        a, b = int(round(0.64 * n)), int(round(0.8 * n))
        idx = {"train": perm[:a].sort().values, "val": perm[a:b].sort().values,
               "test": perm[b:].sort().values}
    else:
        raise ValueError(f"split must be 'random' or 'public', got {split!r}")
    return g, idx


def _read_planetoid(name: str, folder: Path) -> DataBundle:
    g, idx = planetoid(folder, name, split="random")
    train = torch.cat([idx["train"], idx["val"]]).sort().values  # prepare() carves val (0.2)
    return graph_bundle(g, train, idx["test"], str(folder))


for _key, _file in PLANETOID.items():
    _register(_Spec(
        name=_key,
        folders=(_key, _key.capitalize(), f"{_key.capitalize()}/raw", f"planetoid/{_key}",
                 f"Planetoid/{_key.capitalize()}/raw"),
        locate=lambda folder, notes, _file=_file: _locate_planetoid(_file, folder, notes),
        read=lambda folder, _file=_file: _read_planetoid(_file, folder),
        expected=f"Planetoid files ind.{_file}.{{{','.join(_PLANETOID_PARTS)}}}",
        how_to=_how_to(_key, _key, ("PyTorch Geometric's Planetoid(root, 'Cora') downloads them "
                                    "to root/Cora/raw",)),
    ))
_register(_Spec(name="karate", build=lambda: _karate_bundle(4)))
_register(_Spec(name="karate2", build=lambda: _karate_bundle(2)))
_register(_Spec(name="sbm", build=_sbm_bundle))

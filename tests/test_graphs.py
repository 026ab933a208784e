"""Graph datasets, GNN models and the forwardgnn rule (ForwardGNN single-forward)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from bpfree import Task, make_rule, train
from bpfree.data import DataBundle, load_dataset, prepare
from bpfree.graphs import KARATE_EDGES, Graph, karate, planetoid, propagation, sbm, to_undirected
from bpfree.models import build_model

FAST = {"progress": False, "measure_flops": False, "energy": False, "threads": 1,
        "batch_size": 100_000, "lr": 0.01, "weight_decay": 5e-4}


def _dense_adj(g: Graph) -> torch.Tensor:
    a = torch.zeros(g.num_nodes, g.num_nodes)
    a[g.edge_index[1], g.edge_index[0]] = 1.0  # a[dst, src]
    return a


# ---- datasets -----------------------------------------------------------------------------------

def test_karate_builtin_copy() -> None:
    g = karate(4, use_pyg=False)
    assert g.num_nodes == 34 and len(KARATE_EDGES) == 78 and g.edge_index.shape == (2, 156)
    a = _dense_adj(g)
    assert torch.equal(a, a.T) and a.diag().sum() == 0
    assert g.y.bincount().tolist() == [13, 12, 4, 5]
    assert karate(2, use_pyg=False).y.bincount().tolist() == [17, 17]
    with pytest.raises(ValueError, match="num_classes"):
        karate(3)


def test_karate_builtin_matches_pyg() -> None:
    pytest.importorskip("torch_geometric")
    a, b = karate(4, use_pyg=True), karate(4, use_pyg=False)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.y, b.y)
    assert torch.equal(a.x, b.x)


def test_sbm_seeded_and_homophilous() -> None:
    g1, g2, g3 = sbm(seed=0), sbm(seed=0), sbm(seed=1)
    assert torch.equal(g1.edge_index, g2.edge_index) and torch.equal(g1.x, g2.x)
    assert not torch.equal(g1.edge_index, g3.edge_index)
    same = (g1.y[g1.edge_index[0]] == g1.y[g1.edge_index[1]]).float().mean()
    assert 0.6 < same < 0.9  # informative, not trivial
    assert g1.y.bincount().tolist() == [250] * 4


def test_registered_bundles_hold_indices_and_graph() -> None:
    for name, n_cls in (("karate", 4), ("karate2", 2), ("sbm", 4)):
        b = load_dataset(name)
        assert b.x_train.dtype == torch.int64 and b.x_train.shape[1] == 1
        g = b.meta["graph"]
        assert b.num_classes == n_cls == g.num_classes
        assert torch.equal(g.y[b.x_train[:, 0]], b.y_train)
        assert not set(b.x_train[:, 0].tolist()) & set(b.x_test[:, 0].tolist())
        s = prepare(b, val_fraction=0.2, seed=0)
        assert s.x_train.dtype == torch.int64 and s.mean is None and s.meta["graph"] is g
        assert len(s.x_train) + len(s.x_val) == len(b.x_train)


def test_prepare_still_standardizes_float_features() -> None:
    x = torch.randn(20, 3) * 5 + 2
    b = DataBundle("f", x, torch.arange(20) % 2, x[:4], torch.arange(4) % 2, 2, "t")
    s = prepare(b, val_fraction=0.0)
    assert s.x_train.dtype == torch.float32 and abs(float(s.x_train.mean())) < 1e-5 and s.meta == {}


def _write_planetoid(folder, name: str, gap: bool) -> dict:
    """A 12-node graph in Kipf's format: 8 'allx' nodes (3 labelled), test nodes 8..11 listed
    out of order; with ``gap`` test node 9 is missing from tx (CiteSeer's isolated nodes)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n, f, c = 12, 5, 3
    feats = rng.integers(1, 4, size=(n, f)).astype(np.float32)
    labels = np.arange(n) % c
    onehot = np.eye(c, dtype=np.float32)[labels]
    test_ids = [10, 8, 11] if gap else [10, 8, 11, 9]
    parts = {
        "x": sp.csr_matrix(feats[:3]), "y": onehot[:3],
        "allx": sp.csr_matrix(feats[:8]), "ally": onehot[:8],
        "tx": sp.csr_matrix(feats[test_ids]), "ty": onehot[test_ids],
        "graph": {0: [1, 2], 1: [0], 2: [0, 8], 3: [4], 8: [2, 10], 10: [8], 11: [11]},
    }
    for key, val in parts.items():
        with open(folder / f"ind.{name}.{key}", "wb") as fh:
            pickle.dump(val, fh, protocol=2)
    (folder / f"ind.{name}.test.index").write_text("\n".join(map(str, test_ids)) + "\n")
    return {"feats": feats, "labels": labels, "test_ids": test_ids}


@pytest.mark.parametrize("gap", [False, True])
def test_planetoid_reader_on_generated_files(tmp_path, gap: bool) -> None:
    ref = _write_planetoid(tmp_path, "cora", gap)
    g, idx = planetoid(tmp_path, "cora", split="public", normalize=False)
    assert g.num_nodes == 12 and g.num_classes == 3
    for t in ref["test_ids"]:  # test rows are back at their own index
        assert torch.equal(g.x[t], torch.from_numpy(ref["feats"][t])) and g.y[t] == ref["labels"][t]
    assert torch.equal(g.x[:8], torch.from_numpy(ref["feats"][:8]))
    if gap:
        assert g.x[9].abs().sum() == 0  # missing from tx: zero features
    assert idx["train"].tolist() == [0, 1, 2] and idx["test"].tolist() == sorted(ref["test_ids"])
    edges = set(map(tuple, g.edge_index.T.tolist()))
    assert {(0, 1), (1, 0), (0, 2), (2, 0), (2, 8), (8, 2), (8, 10), (10, 8), (3, 4),
            (4, 3)} == edges  # symmetric, deduplicated, no self loop
    gn, _ = planetoid(tmp_path, "cora")  # row-normalised features
    torch.testing.assert_close(gn.x[:6].sum(1), torch.ones(6))
    _, rnd = planetoid(tmp_path, "cora", split="random")
    assert sorted(torch.cat(list(rnd.values())).tolist()) == list(range(g.num_nodes))


def test_planetoid_through_the_registry(tmp_path) -> None:
    (tmp_path / "cora").mkdir()
    _write_planetoid(tmp_path / "cora", "cora", gap=False)
    b = load_dataset("cora", data_dir=tmp_path)
    assert b.name == "cora" and b.x_train.dtype == torch.int64
    assert len(b.x_train) + len(b.x_test) == 12 and b.meta["graph"].num_nodes == 12


# ---- graph maths and models -------------------------------------------------------------------

def test_gcn_propagation_is_sym_normalised_adjacency() -> None:
    g = karate(4, use_pyg=False)
    a = _dense_adj(g) + torch.eye(34)
    dinv = a.sum(1).rsqrt()
    want = dinv[:, None] * a * dinv[None, :]
    src, dst, w = propagation(g.edge_index, 34, "gcn")
    got = torch.zeros(34, 34).index_put_((dst, src), w, accumulate=True)
    torch.testing.assert_close(got, want)
    src, dst, w = propagation(g.edge_index, 34, "mean")
    got = torch.zeros(34, 34).index_put_((dst, src), w, accumulate=True)
    torch.testing.assert_close(got, _dense_adj(g) / _dense_adj(g).sum(1, keepdim=True))


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_gnn_forward_matches_dense_maths(kind: str) -> None:
    g = sbm(num_nodes=60, feature_dim=6, p_in=0.2, p_out=0.05)
    torch.manual_seed(0)
    net = build_model(f"{kind}:8,dropout=0.0", Task((1,), 4, meta={"graph": g})).eval()
    conv, head = net.block0, net.head
    a = _dense_adj(g)
    if kind == "gcn":
        a = a + torch.eye(60)
        d = a.sum(1).rsqrt()
        h = torch.relu(d[:, None] * a * d[None, :] @ g.x @ conv.lin.weight.T + conv.lin.bias)
    else:
        mean = a / a.sum(1, keepdim=True).clamp(min=1)
        h = torch.relu(conv.lin(g.x) + (mean @ g.x) @ conv.lin_neigh.weight.T)
    idx = torch.tensor([[3], [0], [59]])
    torch.testing.assert_close(net(idx), head(h)[idx[:, 0]])
    assert net(torch.randn(5, 6)).shape == (5, 4)  # float inputs: edge-less nodes
    assert "features" not in net.state_dict()  # the graph is data, not a checkpointed weight


def test_model_without_graph_rejects_indices() -> None:
    net = build_model("gcn:8", Task((6,), 3))
    with pytest.raises(ValueError, match="without a graph"):
        net(torch.tensor([[0]]))


# ---- forwardgnn ---------------------------------------------------------------------------------

def _bound_graph_rule(kind: str = "gcn", **opts):
    b = load_dataset("sbm")
    task = Task((1,), 4, meta=b.meta)
    torch.manual_seed(0)
    net = build_model(f"{kind}:16,16,dropout=0.0", task)
    rule = make_rule("forwardgnn", **opts).bind(net, task, torch.Generator().manual_seed(0))
    return rule, b


def test_virtual_nodes_leave_real_nodes_unchanged() -> None:
    rule, b = _bound_graph_rule()
    net = rule.model
    x, y = b.x_train[:50], b.y_train[:50]
    h_aug, prop, n, _ = rule._augmented(x, x[:, 0], y)
    h_plain, prop_plain = net.features, net.propagation()
    for block in rule.blocks[:-1]:
        h_aug, h_plain = block(h_aug, prop), block(h_plain, prop_plain)
        torch.testing.assert_close(h_aug[:n], h_plain)
        assert h_aug[n:].abs().sum() > 0  # virtual nodes aggregate their class


@pytest.mark.parametrize("kind", ["gcn", "sage"])
def test_each_layer_learns_only_from_its_own_loss(kind: str) -> None:
    """Block-local: block 0's gradient equals the gradient of L_0 alone (L_1 never reaches it)."""
    rule, b = _bound_graph_rule(kind)
    x, y = b.x_train, b.y_train
    rule.step(x, y)
    got = rule.model.block0.lin.weight.grad.clone()
    rule.zero_grad()
    h, prop, n, idx = rule._augmented(x, x[:, 0], y)
    h = rule.model.block0(h, prop)
    torch.nn.functional.cross_entropy(rule._scores(h[idx], h[n:]), y).backward()
    torch.testing.assert_close(got, rule.model.block0.lin.weight.grad)
    assert rule.model.head.weight.grad is None  # the head is not part of ForwardGNN
    assert (rule.vlabel >= 0).sum() == len(x)


def test_forwardgnn_options_are_validated() -> None:
    with pytest.raises(ValueError, match="sim"):
        make_rule("forwardgnn", sim="l2")
    with pytest.raises(ValueError, match="tau"):
        make_rule("forwardgnn", tau=0.0)
    with pytest.raises(ValueError, match="graph models"):
        train("forwardgnn", "mlp:8", "digits", epochs=1, **FAST)


@pytest.mark.parametrize("rule,model", [("forwardgnn", "gcn:64,64"), ("bp", "gcn:64,64"),
                                        ("forwardgnn", "sage:64,64")])
def test_learns_the_karate_club(rule: str, model: str) -> None:
    """Zachary's club (real data), 4 communities, half the members labelled, full batch."""
    rec = train(rule, model, "karate", epochs=100, val_fraction=0.0, seed=0, **FAST)
    assert rec.status == "ok" and rec.test_acc >= 0.8, rec.test_acc


@pytest.mark.parametrize("rule", ["forwardgnn", "bp"])
def test_learns_the_sbm_graph(rule: str) -> None:
    rec = train(rule, "gcn:64,64", "sbm", epochs=60, val_fraction=0.2, seed=0, **FAST)
    assert rec.status == "ok" and rec.test_acc >= 0.85, rec.test_acc  # features alone: ~60 %

"""Oracle tests: where a rule must agree with autograd backprop, it does (to float precision)."""

from __future__ import annotations

import torch

from bpfree import Task, make_rule
from bpfree.models import build_model


def _grads(rule_name: str, spec: str, x: torch.Tensor, y: torch.Tensor, setup=None) -> dict:
    task = Task(tuple(x.shape[1:]), 10)
    torch.manual_seed(0)
    model = build_model(spec, task)
    rule = make_rule(rule_name).bind(model, task, torch.Generator().manual_seed(0))
    if setup:
        setup(rule)
    rule.step(x, y)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _xy(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(10, (n,), generator=g)


def test_dfa_with_transposed_weights_is_backprop() -> None:
    """One hidden layer: DFA's B equal to the head's weights is exactly backprop (Nøkland 2016)."""
    x, y = _xy()
    bp = _grads("bp", "mlp:20", x, y)

    def transport(rule) -> None:
        rule.B0.copy_(rule.model.head[-1].weight.detach())

    dfa = _grads("dfa", "mlp:20", x, y, transport)
    assert bp.keys() == dfa.keys()
    for k in bp:
        torch.testing.assert_close(dfa[k], bp[k], rtol=1e-5, atol=1e-6)


def test_dfa_random_feedback_differs_from_backprop() -> None:
    """The oracle can fail: random B gives hidden gradients different from backprop's."""
    x, y = _xy()
    bp = _grads("bp", "mlp:20", x, y)
    dfa = _grads("dfa", "mlp:20", x, y)
    torch.testing.assert_close(dfa["head.0.weight"], bp["head.0.weight"])  # head is local anyway
    assert not torch.allclose(dfa["block0.1.weight"], bp["block0.1.weight"], atol=1e-4)


def test_mf_single_layer_is_backprop() -> None:
    """With one hidden layer MF's only loss is CE through the model's head: the BP gradient."""
    x, y = _xy()
    bp = _grads("bp", "mlp:20", x, y)
    mf = _grads("mf", "mlp:20", x, y)
    for k in bp:
        torch.testing.assert_close(mf[k], bp[k])


def test_mf_deep_grads_are_local() -> None:
    """Two layers: layer 1's gradient is CE through M_1 alone, computed here by hand with autograd."""
    x, y = _xy()
    task = Task((1, 6, 6), 10)
    torch.manual_seed(0)
    model = build_model("mlp:20,20", task)
    rule = make_rule("mf").bind(model, task, torch.Generator().manual_seed(0))
    rule.step(x, y)
    w = model.block0[1].weight
    h = model.block0(x)
    ref = torch.autograd.grad(torch.nn.functional.cross_entropy(rule.M[0](h), y), w)[0]
    torch.testing.assert_close(w.grad, ref)


def test_mf_closed_form_equals_its_autograd_path() -> None:
    """MF's closed-form MLP gradients (the default) equal its autograd path, for relu and tanh."""
    x, y = _xy()
    task = Task((1, 6, 6), 10)
    for spec, n_blocks in (("mlp:20,16,12", 3), ("mlp:20,20,act=tanh", 2)):
        grads = []
        for manual in (True, False):
            torch.manual_seed(0)
            model = build_model(spec, task)
            rule = make_rule("mf", manual_grad=manual).bind(model, task, torch.Generator().manual_seed(0))
            assert (rule._dense is not None) == manual
            rule.step(x, y)
            grads.append({n: p.grad.clone() for n, p in rule.named_parameters() if p.grad is not None})
        # W, b of every block and the head; M_i of every block but the last (the head is M_L)
        assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * (n_blocks + 1) + n_blocks - 1
        for k in grads[0]:
            torch.testing.assert_close(grads[0][k], grads[1][k])


def test_ff_negative_labels_are_never_true() -> None:
    task = Task((1, 6, 6), 10)
    model = build_model("mlp:16,16", task)
    rule = make_rule("ff").bind(model, task, torch.Generator().manual_seed(0))
    y = torch.arange(10).repeat(100)
    neg = rule.wrong_labels(y)
    assert (neg != y).all() and set(neg.tolist()) == set(range(10))


def test_ff_batched_predict_matches_label_by_label() -> None:
    task = Task((1, 6, 6), 10)
    torch.manual_seed(0)
    model = build_model("mlp:16,16,16", task)
    rule = make_rule("ff").bind(model, task, torch.Generator().manual_seed(0))
    x, _ = _xy(8)
    scores = rule.predict(x)
    for c in range(10):
        _, gs = rule._forward_goodness(rule.embed(x, torch.full((8,), c)))
        torch.testing.assert_close(scores[:, c], gs[1] + gs[2])

"""The contract, checked over the whole registry: every rule, the same tests."""

from __future__ import annotations

import copy

import pytest
import torch

from bpfree import RULES, Task, make_rule
from bpfree.audit import audit
from bpfree.models import build_model
from bpfree.rule import ConfigError, LearningRule, rule_hparams

NAMES = sorted(RULES)


def _bound(name: str, seed: int = 0) -> LearningRule:
    cls = RULES[name]
    task = Task(cls.small_in_shape, 10)
    torch.manual_seed(seed)
    model = build_model(cls.small_model, task)
    return make_rule(name).bind(model, task, torch.Generator().manual_seed(seed))


def _batch(cls: type[LearningRule], n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *cls.small_in_shape, generator=g), torch.randint(10, (n,), generator=g)


@pytest.mark.parametrize("name", NAMES)
def test_declares_itself(name: str) -> None:
    cls = RULES[name]
    assert cls.name == name and cls.family and cls.paper.startswith("http")
    assert cls.locality in ("global", "block", "none")
    assert cls.__doc__ or (cls.__module__ and __import__(cls.__module__, fromlist=["x"]).__doc__)
    for key, p in rule_hparams(cls).items():
        assert p.default is not p.empty, f"{name}.{key} needs a default"
    with pytest.raises(ConfigError, match="no option"):
        make_rule(name, definitely_not_an_option=1)
    from bpfree.train import TrainConfig

    TrainConfig.from_dict(dict(cls.recommended_train))  # valid, typed train options


@pytest.mark.parametrize("name", NAMES)
def test_step_fills_grads_and_predicts(name: str) -> None:
    rule = _bound(name)
    x, y = _batch(type(rule))
    before = {k: v.clone() for k, v in rule.state_dict().items()}
    out = rule.step(x, y)
    assert "loss" in out and out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert not out["loss"].requires_grad
    if rule.uses_optimizer:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in rule.parameters())
    else:
        assert any(not torch.equal(before[k], v) for k, v in rule.state_dict().items())
    scores = rule.predict(x)
    assert scores.shape == (len(x), 10) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    a = _bound(name, seed=0)
    x, y = _batch(type(a))
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    a.step(x, y)
    if a.uses_optimizer:
        opt.step()
    b = _bound(name, seed=123)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    torch.testing.assert_close(a.predict(x), b.predict(x))


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_with_seed(name: str) -> None:
    preds = []
    for _ in range(2):
        r = _bound(name, seed=7)
        x, y = _batch(type(r))
        opt = torch.optim.Adam(r.parameters(), lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            r.step(x, y)
            if r.uses_optimizer:
                opt.step()
        preds.append(r.predict(x))
    torch.testing.assert_close(preds[0], preds[1])


@pytest.mark.parametrize("name", NAMES)
def test_locality(name: str) -> None:
    rep = audit(name)
    assert rep.passed, rep.summary()
    if rep.locality == "global":
        assert rep.crossings, "backprop must be seen crossing block boundaries"
    assert rep.trained or not RULES[name].uses_optimizer


@pytest.mark.parametrize("name", NAMES)
def test_learns_a_small_real_task(name: str) -> None:
    """sklearn's digits (real handwritten 8x8 images): well above chance after a short budget."""
    from bpfree import train

    cls = RULES[name]
    opts = {"epochs": 12, "lr": 3e-3, "batch_size": 64, "progress": False,
            "measure_flops": False, "energy": False, **cls.smoke}
    rec = train(rule=name, model=cls.smoke_model, data="digits", **opts)
    assert rec.status == "ok", rec.error
    assert rec.test_acc is not None and rec.test_acc >= 0.8, f"{name}: {rec.test_acc}"


def test_unknown_rule_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'dfa'|Did you mean 'dfa'"):
        make_rule("dfaa")


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match="theta"):
        make_rule("ff", theta="lots")
    assert make_rule("ff", theta="2.5").theta == 2.5

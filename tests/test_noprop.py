"""NoProp: the schedule algebra (oracle: Gaussian conditioning), block isolation, the audit against
the BP twin on the same model, and a short learning test on real MNIST."""

from __future__ import annotations

import pytest
import torch

from bpfree import Task, make_rule
from bpfree.audit import audit
from bpfree.models import build_model
from bpfree.models.noprop import NoPropNet
from bpfree.rule import ConfigError

SMALL = "noprop:8,T=3,width=16,dropout=0"


def _bound(name: str = "noprop", spec: str = SMALL, seed: int = 0, **options):
    task = Task((1, 8, 8), 10)
    torch.manual_seed(seed)
    model = build_model(spec, task)
    return make_rule(name, **options).bind(model, task, torch.Generator().manual_seed(seed))


def _xy(n: int = 16):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(10, (n,), generator=g)


def test_eq3_coefficients_are_the_gaussian_posterior() -> None:
    """a_t, b_t, c_t of eq. 3 equal q(z_t | z_{t-1}, y), derived here by Gaussian conditioning."""
    net = build_model("noprop:T=10,cnn=false,width=8", Task((4,), 3))
    ab = net.alpha_bar.double()
    assert ab[0] < 1e-6 and ab[-1] > 0.99 and (ab[1:] > ab[:-1]).all()
    for t in range(1, 11):
        a, b, c = net.step_coeffs(ab[t - 1], ab[t])
        alpha = ab[t - 1] / ab[t]  # z_{t-1} = √α z_t + √(1-α) ε,  z_t ~ N(√ᾱ_t u, 1-ᾱ_t)
        prec = 1 / (1 - ab[t]) + alpha / (1 - alpha)
        torch.testing.assert_close(c, 1 / prec)
        torch.testing.assert_close(a, ab[t].sqrt() / (1 - ab[t]) / prec)
        torch.testing.assert_close(b, alpha.sqrt() / (1 - alpha) / prec)


def test_blocks_learn_in_isolation() -> None:
    """Block t's gradient does not depend on any other block: change block 0's weights and the
    other blocks' gradients are bit-for-bit the same (same seed, same noise)."""
    x, y = _xy()
    grads = []
    for perturb in (False, True):
        rule = _bound()
        if perturb:
            with torch.no_grad():
                for p in rule.net.block0.parameters():
                    p.add_(torch.randn_like(p))
        rule.step(x, y)
        grads.append({n: p.grad.clone() for n, p in rule.net.named_parameters()
                      if p.grad is not None and not n.startswith("block0.")})
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("block2.") for k in grads[0])
    for k in grads[0]:
        if k.startswith("head.W_embed"):
            continue  # the shared embedding sums every block's term (paper Algorithm 1)
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["noprop", "noprop-ct"])
def test_embed_update_head_trains_w_embed_by_the_output_unit_alone(name: str) -> None:
    """``embed_update="head"``: W_Embed's gradient is exactly that of CE + KL (autograd on the
    output-unit loss alone, same noise), and every other gradient is the same as with "all"."""
    x, y = _xy()
    spec = SMALL if name == "noprop" else "noprop:8,kind=ct,T=3,width=16,dropout=0"
    grads = {}
    for mode in ("all", "head"):
        rule = _bound(name, spec, embed_update=mode)
        rule.step(x, y)
        grads[mode] = {n: p.grad.clone() for n, p in rule.net.named_parameters()}
    oracle = _bound(name, spec, embed_update="head")
    oracle.train()
    n_blocks = len(oracle.net.denoisers)
    for _ in range(n_blocks):  # draw what the step draws before the head's noise
        if name == "noprop-ct":
            torch.rand(len(y), generator=oracle._device_generator(x.device))  # t
        oracle.randn(len(y), 10)
    ce, kl = oracle._output_unit_loss(y)
    (w_grad,) = torch.autograd.grad(ce + kl, oracle.net.head.W_embed)
    torch.testing.assert_close(grads["head"]["head.W_embed"], w_grad)
    assert not torch.allclose(grads["all"]["head.W_embed"], w_grad)
    for k in grads["all"]:
        if k != "head.W_embed":
            torch.testing.assert_close(grads["head"][k], grads["all"][k], rtol=0, atol=0)


def test_embed_update_head_leaves_blocks_nothing_in_common() -> None:
    """With "head", perturbing block 0 changes no other gradient at all, W_Embed's included."""
    x, y = _xy()
    grads = []
    for perturb in (False, True):
        rule = _bound(embed_update="head")
        if perturb:
            with torch.no_grad():
                for p in rule.net.block0.parameters():
                    p.add_(torch.randn_like(p))
        rule.step(x, y)
        grads.append({n: p.grad.clone() for n, p in rule.net.named_parameters()
                      if not n.startswith("block0.")})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=0, atol=0)


def test_collapsing_class_embeddings_warn_once_naming_the_fix() -> None:
    rule = _bound()
    rule.on_epoch_start(0)  # the reference distance
    with torch.no_grad():
        rule.net.head.W_embed[1] = rule.net.head.W_embed[0] + 1e-3
    with pytest.warns(RuntimeWarning, match="collapsing.*embed_update='head'"):
        rule.on_epoch_start(1)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rule.on_epoch_start(2)  # once per run
        _bound(spec="noprop:8,T=3,width=16,dropout=0,embed=onehot").on_epoch_start(0)


def test_bad_embed_update_names_the_choices() -> None:
    with pytest.raises(ValueError, match="embed_update.*'all'.*'head'"):
        make_rule("noprop", embed_update="block")


def test_every_block_and_the_output_unit_are_trained() -> None:
    rule = _bound()
    rule.step(*_xy())
    for name, p in rule.net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_audit_passes_and_the_bp_twin_crosses_the_chain() -> None:
    rep = audit("noprop")
    assert rep.passed and not rep.crossings, rep.summary()
    twin = audit("bp", model=SMALL)  # same model, trained end to end through the T-step chain
    assert any(c.startswith("block1 -> block0") for c in twin.crossings), twin.summary()
    assert any(c.startswith("head -> block2") for c in twin.crossings), twin.summary()
    for name in ("noprop-ct", "noprop-fm"):
        assert audit(name).passed


def test_predict_is_deterministic_and_shaped() -> None:
    rule = _bound()
    x, _ = _xy()
    a, b = rule.predict(x), rule.predict(x)
    assert a.shape == (16, 10)
    torch.testing.assert_close(a, b)


def test_wrong_model_is_an_error_naming_it() -> None:
    task = Task((1, 8, 8), 10)
    with pytest.raises(ConfigError, match="noprop"):
        make_rule("noprop").bind(build_model("mlp:16", task), task, torch.Generator())
    with pytest.raises(ConfigError, match="kind"):
        make_rule("noprop-fm").bind(build_model(SMALL, task), task, torch.Generator())
    with pytest.raises(ConfigError, match="kind"):
        build_model("noprop:kind=xx", task)
    assert isinstance(build_model("noprop:kind=ct,T=5", task), NoPropNet)


@pytest.mark.parametrize("kind", ["ct", "fm"])
def test_ct_fm_inference_computes_image_features_once(kind: str) -> None:
    """CT/FM inference runs one block T times on the same x: its image branch runs once, and the
    predictions equal those of the chain that recomputes it at every step."""
    task = Task((1, 8, 8), 10)
    torch.manual_seed(0)
    net = build_model(f"noprop:8,kind={kind},T=6,width=16,dropout=0", task).eval()
    x, _ = _xy()
    calls = []
    net.block0.image.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        cached = net(x)
        assert len(calls) == 1
        forward = net.block0.forward
        net.block0.forward = lambda z, x, t=None, hx=None: forward(z, x, t)  # recompute per step
        recomputed = net(x)
    assert len(calls) == 1 + 1 + 6  # the unused cached call, then one per step
    torch.testing.assert_close(cached, recomputed)


@pytest.mark.slow
def test_learns_real_mnist(mnist_dir) -> None:
    """A small NoProp-DT (MLP image branch) on 10k real MNIST digits, 3 epochs: well above chance."""
    from dataclasses import replace

    from bpfree import train
    from bpfree.data import load_dataset

    full = load_dataset("mnist", mnist_dir)
    bundle = replace(full, name="mnist-10k", x_train=full.x_train[:10000],
                     y_train=full.y_train[:10000], x_test=full.x_test[:2000],
                     y_test=full.y_test[:2000])
    rec = train(rule="noprop", model="noprop:T=4,cnn=false,width=64,dropout=0", data=bundle,
                epochs=3, lr=1e-3, batch_size=128, optimizer="adamw", weight_decay=1e-3,
                progress=False, measure_flops=False, energy=False, threads=1)
    assert rec.status == "ok", rec.error
    assert rec.test_acc is not None and rec.test_acc > 0.85, rec.test_acc

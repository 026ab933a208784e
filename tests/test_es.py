"""Oracle and property tests for es, eggroll (rules/es.py) and mfff + the physical layer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bpfree import Task, make_rule
from bpfree.models import build_model
from bpfree.models.physical import PhysicalLayer


def _setup(rule: str, spec: str, in_shape=(1, 6, 6), seed: int = 0, **opts):
    task = Task(in_shape, 10)
    torch.manual_seed(seed)
    model = build_model(spec, task)
    r = make_rule(rule, **opts).bind(model, task, torch.Generator().manual_seed(seed))
    return r, model


def _xy(n: int = 32, in_shape=(1, 6, 6), seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *in_shape, generator=g), torch.randint(10, (n,), generator=g)


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _autograd_grad(model, x, y) -> torch.Tensor:
    """The oracle: backprop's gradient of the batch loss (autograd in the test only)."""
    params = [p for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    return _flat(torch.autograd.grad(loss, params))


def _mean_estimate(rule, x, y, reps: int) -> torch.Tensor:
    est = []
    for _ in range(reps):
        grads, _ = rule.estimate(x, y)
        if isinstance(grads, dict):
            est.append(_flat(grads[n] for n, _ in rule.model.named_parameters()))
        else:  # eggroll: per Linear layer, in model.parameters() order (weight, bias)
            est.append(_flat(t for g in grads for t in (g["weight"], g["bias"])))
    return torch.stack(est).mean(0)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a, b, dim=0).item()


# ---- es: E[ĝ] = ∇ of the Gaussian-smoothed loss ≈ ∇L for small σ -------------------------------
def test_es_mean_estimate_matches_autograd_and_improves_with_population() -> None:
    x, y = _xy()
    cosines = {}
    for pop in (64, 4096):
        rule, model = _setup("es", "mlp:8", population=pop, sigma=1e-3, fitness_shaping="none")
        with torch.no_grad():
            est = _mean_estimate(rule, x, y, reps=8)
        ref = _autograd_grad(model, x, y)
        cosines[pop] = _cos(est, ref)
        if pop == 4096:  # unshaped antithetic ES is an unbiased estimate: the scale matches too
            assert abs(est.norm() / ref.norm() - 1) < 0.25
    assert cosines[4096] > 0.9, cosines  # 8 × 4096 samples in D = 386 dimensions
    assert cosines[4096] > cosines[64] + 0.2, cosines  # error falls as the population grows


def test_es_rank_shaped_estimate_points_downhill() -> None:
    """Centered ranks change the scale, not the direction (on average)."""
    x, y = _xy()
    rule, model = _setup("es", "mlp:8", population=4096, sigma=1e-3)
    with torch.no_grad():
        est = _mean_estimate(rule, x, y, reps=4)
    assert _cos(est, _autograd_grad(model, x, y)) > 0.8


def test_es_has_no_python_loop_over_members() -> None:
    """One batched pass: the model's Linear forward runs once per layer, not once per member."""
    rule, model = _setup("es", "mlp:8", population=64)
    calls = []
    h = model.block0[1].register_forward_hook(lambda *a: calls.append(1))
    x, y = _xy(8)
    rule.step(x, y)
    h.remove()
    assert len(calls) == 1


# ---- eggroll ------------------------------------------------------------------------------------
@pytest.mark.parametrize("share_batch", [True, False])
def test_eggroll_lowrank_forward_equals_explicit_perturbed_forward(share_batch: bool) -> None:
    """x Wᵀ + σ/√r (x B) Aᵀ per member == the model run with W + σ A Bᵀ/√r formed explicitly."""
    pop, r = 6, 3
    rule, model = _setup("eggroll", "mlp:7,5", population=pop, rank=r, sigma=0.3,
                         share_batch=share_batch)
    x, _ = _xy(4 * (pop if not share_batch else 1))
    with torch.no_grad():
        noise = rule.sample(x.device)
        xin = x if share_batch else x.view(pop, -1, *x.shape[1:])
        fast = rule.population_forward(xin, noise, shared=share_batch)  # (N, B, C)
        lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        for i in range(pop):
            k, sgn = i // 2, (1.0 if i % 2 == 0 else -1.0)  # members 2j, 2j+1 mirror pair j
            params = {}
            for name, lin, z in zip(("block0.1", "block1.0", "head.0"), lins, noise):
                E = z["A"][k] @ z["B"][k].t() / math.sqrt(r)  # (m, n): only in the test
                params[f"{name}.weight"] = lin.weight + sgn * 0.3 * E
                params[f"{name}.bias"] = lin.bias + sgn * 0.3 * z["b"][k]
            xi = x if share_batch else xin[i]
            ref = torch.func.functional_call(model, params, (xi,))
            torch.testing.assert_close(fast[i], ref, rtol=1e-4, atol=1e-5)


def test_eggroll_update_is_the_fitness_weighted_sum_of_lowrank_perturbations() -> None:
    """The one-matmul update equals −1/(Nσ√r) Σ_i u_i A_i B_iᵀ summed member by member."""
    from bpfree.rules.es import shape_fitness

    pop, r, sigma = 8, 2, 0.1
    rule, model = _setup("eggroll", "mlp:7", population=pop, rank=r, sigma=sigma)
    x, y = _xy(5)
    gen_state = rule._generator.get_state()
    with torch.no_grad():
        grads, losses = rule.estimate(x, y)
        rule._generator.set_state(gen_state)
        noise = rule.sample(x.device)
    u = shape_fitness(-losses, "centered_rank")
    for g, z in zip(grads, noise):
        ref = sum(u[i] * (1 if i % 2 == 0 else -1) * z["A"][i // 2] @ z["B"][i // 2].t()
                  for i in range(pop))
        torch.testing.assert_close(g["weight"], -ref / (pop * sigma * math.sqrt(r)))


class _AllocRecorder(TorchDispatchMode):
    """Records the shape of every tensor an aten op returns (and every random draw)."""

    def __init__(self) -> None:
        super().__init__()
        self.numels: list[int] = []
        self.random_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        for t in outs:
            if isinstance(t, torch.Tensor):
                self.numels.append(t.numel())
                if "normal" in str(func) or "randn" in str(func):
                    self.random_numel += t.numel()
        return out


def _record_step(rule_name: str, **opts) -> tuple[_AllocRecorder, int, int, int]:
    rule, model = _setup(rule_name, "mlp:64", in_shape=(1, 8, 8), **opts)
    x, y = _xy(2, in_shape=(1, 8, 8))  # N·B·width stays below m·n
    rec = _AllocRecorder()
    with rec:
        rule.step(x, y)
    return rec, 64, 64, opts.get("population", 0)


def test_eggroll_perturbation_memory_is_low_rank() -> None:
    """Noise is r(m+n)+m numbers per layer and pair, and no step tensor reaches N·m·n/4 elements."""
    pop, r = 16, 1
    rec, m, n, _ = _record_step("eggroll", population=pop, rank=r)
    H = pop // 2
    layers = [(64, 64), (10, 64)]  # (out, in) of block0 and head
    assert rec.random_numel == sum(H * (r * (o + i) + o) for o, i in layers)
    assert max(rec.numels) <= m * n  # the largest tensor is one layer's gradient, m·n
    assert max(rec.numels) < pop * m * n // 4


def test_full_rank_es_fails_the_low_rank_memory_check() -> None:
    """The memory check can fail: OpenAI-ES materialises N full-rank perturbations."""
    rec, m, n, pop = _record_step("es", population=16)
    assert max(rec.numels) >= pop * m * n // 4


def test_eggroll_rejects_layers_it_cannot_perturb() -> None:
    task = Task((3, 8, 8), 10)
    with pytest.raises(ValueError, match="Conv2d"):
        make_rule("eggroll").bind(build_model("convnet:4", task), task, torch.Generator())


def test_eggroll_split_batch_needs_a_multiple_of_the_population() -> None:
    rule, _ = _setup("eggroll", "mlp:8", population=4, share_batch=False)
    x, y = _xy(6)
    with pytest.raises(ValueError, match="multiple of the population"):
        rule.step(x, y)


# ---- the physical layer and mfff -----------------------------------------------------------------
def test_physical_layer_refuses_autograd() -> None:
    layer = PhysicalLayer(6, 4)
    x = torch.randn(3, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match="black box"):
        layer(x)
    y = layer(x.detach())  # a forward measurement is fine
    assert y.shape == (3, 4) and not y.requires_grad and y.abs().max() <= 1


def test_physical_layer_is_noisy_quantised_and_reproducible() -> None:
    torch.manual_seed(0)
    layer = PhysicalLayer(6, 50, noise=0.05, bits=4)
    x = torch.randn(3, 6)
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b)  # measurement noise
    assert a.unique().numel() <= 2 ** 4  # ADC levels
    layer2 = PhysicalLayer(6, 50, noise=0.05, bits=4)
    layer2.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), layer2(x))  # counter-based noise: same measurement


def test_bp_cannot_train_through_the_black_box() -> None:
    from bpfree import train

    with pytest.raises(RuntimeError, match="black box"):
        train(rule="bp", model="physical:16,16", data="digits", epochs=1, progress=False,
              measure_flops=False, energy=False)


def test_mfff_closed_form_grads_equal_autograd_of_the_local_loss() -> None:
    """With a noise-free physical layer, the model-free gradient equals autograd of L_l w.r.t.
    the digital weights (the physical output held fixed, as measured)."""
    for loss in ("symba", "softplus"):
        rule, model = _setup("mfff", "physical:12,9,noise=0", loss=loss)
        x, y = _xy(8)
        gen = rule._generator.get_state()
        rule.step(x, y)
        rule._generator.set_state(gen)
        neg = rule.wrong_labels(y)
        z_in = torch.cat([rule.embed(x, y), rule.embed(x, neg)])
        with torch.no_grad():
            meas = rule.measure(z_in)
        for (yv, _, _), (lin, act) in zip(meas, rule._digital):
            w, b = lin.weight.detach().requires_grad_(), lin.bias.detach().requires_grad_()
            h = act(yv @ w.t() + b)
            g = h.pow(2).sum(1)
            gp, gn, d = g[:8], g[8:], h.shape[1]
            L = (F.softplus(-rule.alpha * (gp - gn) / d).mean() if loss == "symba" else
                 (F.softplus(d - gp) + F.softplus(gn - d)).mean())
            gw, gb = torch.autograd.grad(L, (w, b))
            torch.testing.assert_close(lin.weight.grad, gw, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(lin.bias.grad, gb, rtol=1e-4, atol=1e-6)


def test_mfff_learns_digits_through_two_physical_layers() -> None:
    from bpfree import train

    rec = train(rule="mfff", model="physical:256,256", data="digits", epochs=10, lr=3e-3,
                batch_size=64, progress=False, measure_flops=False, energy=False)
    assert rec.status == "ok" and rec.test_acc >= 0.85, rec.test_acc


@pytest.mark.slow
def test_eggroll_learns_mnist(mnist_dir) -> None:
    from bpfree import train

    rec = train(rule="eggroll", model="mlp:64", data="mnist", data_dir=mnist_dir, epochs=1,
                lr=3e-3, batch_size=100, progress=False, measure_flops=False, energy=False,
                rule_options={"population": 256})
    assert rec.status == "ok" and rec.test_acc >= 0.8, rec.test_acc

"""DGL, AugLocal and MAN: the ResNet builder, oracles against autograd, memory, learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bpfree import Task, make_rule
from bpfree.models import build_model
from bpfree.models.resnet import BasicBlock
from bpfree.rules.auxnet import split_modules

LOCAL = ["dgl", "auglocal", "man"]


def _bound(name: str, spec: str = "resnet:4,width=8", in_shape=(1, 12, 12), seed: int = 0, **hp):
    task = Task(in_shape, 10)
    torch.manual_seed(seed)
    return make_rule(name, **hp).bind(build_model(spec, task), task, torch.Generator().manual_seed(seed))


def _batch(in_shape=(1, 12, 12), n: int = 8):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, *in_shape, generator=g), torch.randint(10, (n,), generator=g)


@pytest.mark.parametrize("in_shape,n,out_hw", [((1, 28, 28), 8, 7), ((3, 32, 32), 16, 8)])
def test_resnet_shapes(in_shape, n, out_hw) -> None:
    m = build_model(f"resnet:{n},width=8", Task(in_shape, 10))
    names = [k for k, _ in m.named_children()]
    assert names == [f"block{i}" for i in range(n + 1)] + ["head"]
    assert sum(isinstance(b, BasicBlock) for b in m.children()) == n
    h = torch.randn(2, *in_shape)
    for child in list(m.children())[:-1]:
        h = child(h)
    assert h.shape == (2, 32, out_hw, out_hw)  # 3 stages: 8 -> 16 -> 32 channels, H/4
    assert m(torch.randn(2, *in_shape)).shape == (2, 10)


def test_split_modules() -> None:
    assert split_modules(5, 5) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert split_modules(9, 4) == [(0, 2), (2, 4), (4, 6), (6, 9)]  # extra block goes last
    assert split_modules(9, 2) == [(0, 4), (4, 9)]
    for n in range(1, 12):
        for k in range(1, n + 1):
            b = split_modules(n, k)
            assert b[0][0] == 0 and b[-1][1] == n and len(b) == k
            assert all(e == s2 for (_, e), (s2, _) in zip(b, b[1:]))
            sizes = [e - s for s, e in b]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes)


@pytest.mark.parametrize("n_modules", [0, 3])
@pytest.mark.parametrize("name", LOCAL)
def test_grads_equal_per_module_autograd(name: str, n_modules: int) -> None:
    """Oracle: module k's gradient is ∇_{θ_k} CE(a_k(f_k(h_{k-1}.detach())), y), nothing else;
    with ``n_modules`` f_k is a group of consecutive blocks trained through one another."""
    rule = _bound(name, n_modules=n_modules)
    ref = _bound(name, n_modules=n_modules)  # identical copy, plain autograd one module at a time
    x, y = _batch()
    rule.step(x, y)
    *blocks, head = ref.blocks
    bounds = split_modules(len(blocks), n_modules or len(blocks))
    assert rule.bounds == bounds and len(rule.aux) == len(bounds) - 1
    ref.train()
    h = x
    for k, (start, end) in enumerate(bounds):
        for p in ref.parameters():
            p.grad = None
        out = h.detach()
        for block in blocks[start:end]:
            out = block(out)
        logits = head(out) if k == len(bounds) - 1 else ref.aux[k](out)
        params = [p for block in blocks[start:end] for p in block.parameters()]
        grads = torch.autograd.grad(F.cross_entropy(logits, y), params)
        got = [p for block in rule.blocks[start:end] for p in block.parameters()]
        for p_rule, g in zip(got, grads, strict=True):
            torch.testing.assert_close(p_rule.grad, g)
        h = out


@pytest.mark.parametrize("name", LOCAL)
def test_grouped_modules_audit_and_errors(name: str) -> None:
    """Blocks inside one module are trained jointly; module boundaries stay gradient-isolated."""
    from bpfree.audit import audit
    from bpfree.rule import ConfigError

    rep = audit(name, model="resnet:4,width=8", rule_options={"n_modules": 2})
    assert rep.passed, rep.summary()
    rule = _bound(name, n_modules=2)  # 5 blocks -> (0, 2), (2, 5)
    assert rule.joint_blocks() == {1, 3, 4}
    assert _bound(name).joint_blocks() == set()
    with pytest.raises(ConfigError, match="n_modules=9"):
        _bound(name, n_modules=9)
    with pytest.raises(ValueError, match="n_modules"):
        make_rule(name, n_modules=1)


@pytest.mark.parametrize("name", LOCAL)
def test_module_gradient_ignores_later_modules(name: str) -> None:
    """Block 0's gradient must not change when every later module is perturbed."""
    a, b = _bound(name), _bound(name)
    with torch.no_grad():
        for blk in b.blocks[1:]:
            for p in blk.parameters():
                p.add_(torch.randn_like(p))
    x, y = _batch()
    a.step(x, y)
    b.step(x, y)
    for pa, pb in zip(a.blocks[0].parameters(), b.blocks[0].parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_auglocal_pyramidal_uniform_selection() -> None:
    r = make_rule("auglocal", aux_depth=5, min_depth=2)
    K = 16  # ResNet-32: 16 local layers
    depths = [r.depth(k, K) for k in range(K - 1)]
    assert depths[0] == 5 and depths[-1] == 1  # capped: module K-2 has one layer after it
    assert all(a >= b for a, b in zip(depths, depths[1:]))  # linearly shrinking
    for k in range(K - 1):
        sel = r.selected(k, K)
        assert len(sel) == depths[k] and sel[-1] == K - 1 and sel == sorted(set(sel))
        assert all(k < j < K for j in sel)
    assert r.selected(0, K) == [3, 6, 9, 12, 15]  # uniform over layers 1..15
    rule = _bound("auglocal", spec="resnet:6,width=8", aux_depth=3)
    x, _ = _batch()
    for k, aux in enumerate(rule.aux):  # every auxiliary net maps module k's output to logits
        h = x
        for blk in rule.blocks[:k + 1]:
            h = blk(h)
        assert aux(h).shape == (len(x), 10)
        assert sum(isinstance(m, BasicBlock) for m in aux) == len(rule.selected(k, 7))


def test_auglocal_grouped_modules_mirror_layers_after_the_module() -> None:
    r = make_rule("auglocal", aux_depth=3)
    assert r.selected(0, 4, n_layers=9, last=1) == [3, 6, 8]  # uniform over layers 2..8
    assert r.selected(1, 4, n_layers=9, last=3) == [5, 8]  # pyramidal: depth 2 for module 1 of 4
    assert r.selected(2, 4, n_layers=9, last=5) == [8]  # and 1 for module 2
    rule = _bound("auglocal", spec="resnet:6,width=8", aux_depth=3, n_modules=3)
    x, _ = _batch()
    for k, aux in enumerate(rule.aux):
        h = x
        for blk in rule.blocks[:rule.bounds[k][1]]:
            h = blk(h)
        assert aux(h).shape == (len(x), 10)
        n_mirrored = len(rule.selected(k, 3, 7, rule.bounds[k][1] - 1))
        assert sum(isinstance(m, BasicBlock) for m in aux) == n_mirrored


@pytest.mark.parametrize("ema,span", [("block", (2, 3)), ("module", (2, 4))])
def test_man_grouped_ema_span(ema: str, span: tuple[int, int]) -> None:
    """Grouped modules: θ̃ follows the block after the module (authors' code) or the whole module."""
    rule = _bound("man", spec="resnet:5,width=8", momentum=0.5, n_modules=3, ema=ema)  # (0,2),(2,4),(4,6)
    with torch.no_grad():
        for b in rule.blocks[2:4]:
            for p in b.parameters():
                p.add_(1.0)
    before = [p.detach().clone() for p in rule.aux[0][0].ema.parameters()]
    target = [p.detach().clone() for b in rule.blocks[span[0]:span[1]] for p in b.parameters()]
    assert len(before) == len(target)
    rule.step(*_batch())
    for p, e, t in zip(rule.aux[0][0].ema.parameters(), before, target, strict=True):
        torch.testing.assert_close(p, 0.5 * e + 0.5 * t)


@pytest.mark.parametrize("bias", ["block", "channel"])
def test_man_ema_and_bias(bias: str) -> None:
    rule = _bound("man", momentum=0.9, bias=bias)
    x, y = _batch()
    inp = rule.aux[0][0]
    ema0 = [p.detach().clone() for p in inp.ema.parameters()]
    nxt = [p.detach().clone() for p in rule.blocks[1].parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ema0, nxt))  # θ̃ starts at θ_{k+1}
    with torch.no_grad():
        for p in rule.blocks[1].parameters():
            p.add_(1.0)
    nxt = [p.detach().clone() for p in rule.blocks[1].parameters()]
    rule.step(x, y)
    for p, e, n in zip(inp.ema.parameters(), ema0, nxt):
        torch.testing.assert_close(p, 0.9 * e + 0.1 * n)  # θ̃ ← m θ̃ + (1-m) θ
        assert not p.requires_grad and p.grad is None  # EMA only, never trained by gradient
    learnable = list(inp.lb.parameters()) if bias == "block" else [inp.b]
    assert all(p.requires_grad and p.grad is not None for p in learnable)
    assert sum(float(p.grad.abs().sum()) for p in learnable) > 0
    ids = {id(p) for g in rule.param_groups() for p in g["params"]}
    assert not any(id(p) in ids for p in inp.ema.parameters())
    assert all(id(p) in ids for p in learnable)  # the bias is trained with module k's loss


def test_man_block_bias_is_the_reference_sum() -> None:
    """bias="block": the auxiliary input is EMA(h) + LB(h), LB a fresh block of the next
    block's type (the authors' ``y = self.LB[i](x) + self.EMA_Net[i](x)``)."""
    rule = _bound("man")
    inp, h = rule.aux[0][0], torch.randn(4, 8, 12, 12)
    assert type(inp.lb) is type(rule.blocks[1]) and inp.lb is not rule.blocks[1]
    assert not all(torch.equal(a, b) for a, b in zip(inp.lb.parameters(), rule.blocks[1].parameters()))
    inp.eval()
    torch.testing.assert_close(inp(h), inp.ema(h) + inp.lb(h))


def test_man_old_records_are_the_channel_variant() -> None:
    """Records made before ``bias``/``ema`` existed ran the per-channel bias, whole-module EMA."""
    from bpfree.records import RunRecord, record_rule_key

    def rec(rule_opts: dict, variant=None) -> RunRecord:
        config = {"rule": rule_opts} | ({} if variant is None else {"variant": variant})
        return RunRecord(rule="man", dataset="d", model="m", seed=0, config=config)

    old = {"momentum": 0.995, "aux_convs": 1, "aux_mlp": 3}
    assert record_rule_key(rec(old)) == "man[bias=channel,ema=module]"
    assert record_rule_key(rec({**old, "n_modules": 4}, "n_modules=4")) == \
        "man[n_modules=4,bias=channel,ema=module]"
    new = {**old, "n_modules": 0, "bias": "block", "ema": "block"}
    assert record_rule_key(rec(new, "")) == "man"


class _LiveSaved:
    """Peak bytes of tensors saved for backward that are alive at the same time."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor):
        meter, n = self, t.numel() * t.element_size()

        class Box:
            def __init__(self) -> None:
                self.t = t
                meter.live += n
                meter.peak = max(meter.peak, meter.live)

            def __del__(self) -> None:
                meter.live -= n

        return Box()

    @staticmethod
    def unpack(box):
        return box.t


@pytest.mark.parametrize("n_modules,bound", [(0, 0.6), (4, 0.7)])
@pytest.mark.parametrize("name", LOCAL)
def test_activation_memory_below_bp(name: str, n_modules: int, bound: float) -> None:
    """Per-module backward frees each module's graph: saved activations peak far below BP's."""
    spec, shape = "resnet:8,width=8", (1, 28, 28)
    x, y = _batch(shape, n=32)
    peaks = {}
    for rule_name in ("bp", name):
        opts = {"n_modules": n_modules} if rule_name != "bp" else {}
        rule = _bound(rule_name, spec=spec, in_shape=shape, **opts)
        meter = _LiveSaved()
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            rule.step(x, y)
        peaks[rule_name] = meter.peak
    if name == "man":  # its auxiliary input runs two copies of the next block (EMA + LB)
        bound = 0.7
    assert peaks[name] < bound * peaks["bp"], peaks


@pytest.mark.slow
@pytest.mark.parametrize("name", LOCAL)
def test_learns_fashion_mnist_subset(name: str) -> None:
    """Real data: 6k Fashion-MNIST images, 2 epochs of a 4-block ResNet, well above chance
    (measured: bp 0.72, dgl 0.67, auglocal 0.70, man 0.70 on the 2k test images)."""
    from conftest import real_data_dir

    from bpfree import train
    from bpfree.data import load_dataset

    d = real_data_dir("fashion-mnist")
    if d is None:
        pytest.skip("real Fashion-MNIST not found: set BPFREE_DATA_DIR")
    full = load_dataset("fashion-mnist", d)
    sub = dataclasses.replace(full, x_train=full.x_train[:6000], y_train=full.y_train[:6000],
                              x_test=full.x_test[:2000], y_test=full.y_test[:2000])
    rec = train(rule=name, model="resnet:4,width=8", data=sub, epochs=2, lr=1e-3,
                lr_schedule="cosine", batch_size=32, threads=1, progress=False,
                measure_flops=False, energy=False)
    assert rec.status == "ok" and rec.test_acc is not None and rec.test_acc >= 0.6, rec.test_acc


def test_minimax_split_is_optimal() -> None:
    """The DP returns a split whose largest module cost equals the brute-force minimum."""
    import itertools

    from bpfree.rules.auxnet import minimax_split

    g = torch.Generator().manual_seed(0)
    for n, k in [(5, 2), (7, 3), (9, 4), (6, 6), (4, 1)]:
        w = torch.rand(k, n, generator=g).tolist()  # per-module weight of each block

        def cost(m: int, s: int, e: int) -> float:
            return sum(w[m][s:e]) + 0.1 * m * e  # depends on the module index and the end

        got = minimax_split(n, k, cost)
        assert got[0][0] == 0 and got[-1][1] == n and len(got) == k
        assert all(e == s2 and s < e for (s, e), (s2, _) in zip(got, got[1:]))
        best = min(max(cost(m, s, e) for m, (s, e) in enumerate(zip((0, *cut), (*cut, n))))
                   for cut in itertools.combinations(range(1, n), k - 1))
        assert max(cost(m, s, e) for m, (s, e) in enumerate(got)) == pytest.approx(best)


class _LiveStorages:
    """Peak bytes of the distinct non-parameter storages saved for backward alive at once."""

    def __init__(self, params: set[int]) -> None:
        self.params, self.refs, self.live, self.peak = params, {}, 0, 0

    def pack(self, t: torch.Tensor):
        meter, st = self, t.untyped_storage()
        ptr, n = st.data_ptr(), st.nbytes()
        if ptr in self.params:
            return t

        class Box:
            def __init__(self) -> None:
                self.t = t
                meter.refs[ptr] = meter.refs.get(ptr, 0) + 1
                if meter.refs[ptr] == 1:
                    meter.live += n
                    meter.peak = max(meter.peak, meter.live)

            def __del__(self) -> None:
                meter.refs[ptr] -= 1
                if meter.refs[ptr] == 0:
                    meter.live -= n

        return Box()

    @staticmethod
    def unpack(box):
        return box if isinstance(box, torch.Tensor) else box.t


@pytest.mark.parametrize("name", LOCAL)
def test_memory_split_balances_saved_activations(name: str) -> None:
    """split='memory' picks boundaries whose largest module holds no more saved activation
    memory than the even split's, its per-module estimate matches a real step's saved peak,
    and the per-module autograd oracle still holds for those boundaries."""
    spec, shape = "resnet:8,width=8", (1, 28, 28)
    x, y = _batch(shape, n=16)
    peaks = {}
    for split in ("even", "memory"):
        rule = _bound(name, spec=spec, in_shape=shape, n_modules=2, split=split)
        meter = _LiveStorages({t.untyped_storage().data_ptr()
                               for t in [*rule.parameters(), *rule.buffers()]})
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            rule.step(x, y)
        peaks[split] = meter.peak
    assert rule.bounds != split_modules(9, 2) and rule.bounds[0][0] == 0 and rule.bounds[-1][1] == 9
    assert peaks["memory"] <= peaks["even"], peaks
    est = max(rule.module_bytes) * 16  # bytes per sample x batch
    assert est == pytest.approx(peaks["memory"], rel=0.02), (est, peaks)  # measured: 0.3 %
    assert rule.bp_bytes > max(rule.module_bytes)
    # the autograd oracle on the chosen boundaries
    ref = _bound(name, spec=spec, in_shape=shape, n_modules=2, split="memory")
    rule = _bound(name, spec=spec, in_shape=shape, n_modules=2, split="memory")
    assert ref.bounds == rule.bounds
    rule.step(x, y)
    *blocks, head = ref.blocks
    h = x
    for k, (start, end) in enumerate(ref.bounds):
        out = h.detach()
        for block in blocks[start:end]:
            out = block(out)
        logits = head(out) if k == len(ref.bounds) - 1 else ref.aux[k](out)
        params = [p for block in blocks[start:end] for p in block.parameters()]
        grads = torch.autograd.grad(F.cross_entropy(logits, y), params)
        got = [p for block in rule.blocks[start:end] for p in block.parameters()]
        for p_rule, g in zip(got, grads, strict=True):
            torch.testing.assert_close(p_rule.grad, g)
        h = out


def test_memory_split_leaves_model_and_rng_untouched_and_rejects_bad_values() -> None:
    task = Task((1, 28, 28), 10)
    torch.manual_seed(0)
    model = build_model("resnet:8,width=8", task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    make_rule("man", n_modules=3, split="memory").bind(model, task, torch.Generator().manual_seed(0))
    after_rng = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), after_rng)  # the global RNG did not move
    for k, v in model.state_dict().items():  # BN running statistics of the real model unchanged
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="split must be 'even'.*'memory'"):
        make_rule("dgl", n_modules=2, split="balanced")
    with pytest.raises(ValueError, match="ema='block'"):
        make_rule("man", n_modules=2, split="memory", ema="module")

"""Counter-Current Learning on conv models and in autoencoder mode (Kao & Hariharan 2024)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bpfree import Task, make_rule, train
from bpfree.audit import audit
from bpfree.data import load_dataset
from bpfree.models import block_output_shapes, build_model


def _bound(spec: str, in_shape=(1, 8, 8), seed: int = 0, **opts):
    task = Task(in_shape, 10)
    torch.manual_seed(seed)
    model = build_model(spec, task)
    return make_rule("ccl", **opts).bind(model, task, torch.Generator().manual_seed(seed))


def _digits(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    b = load_dataset("digits")
    x = b.x_train[:n].float()
    return (x - x.mean()) / x.std(), b.y_train[:n]


# ---- the mirrored feedback network of a CNN ---------------------------------------------------
def test_conv_feedback_net_mirrors_the_block_shapes() -> None:
    rule = _bound("convnet:8,16")  # (1,8,8) -> (8,4,4) -> (16,2,2) -> 10
    g1, g2, g3 = rule.feedback
    # g_1: upsample (undoes block 1's pool) + conv 8 -> 1 channels, no activation (input space)
    assert isinstance(g1[0], nn.Upsample) and tuple(g1[1].weight.shape) == (1, 8, 3, 3)
    assert len(g1) == 2
    # g_2: upsample + conv 16 -> 8 + the activation of f_1
    assert isinstance(g2[0], nn.Upsample) and tuple(g2[1].weight.shape) == (8, 16, 3, 3)
    assert isinstance(g2[-1], nn.ReLU)
    # g_3 mirrors the head: Linear 10 -> 16·2·2, activation of f_2, back to a feature map
    assert tuple(g3[0].weight.shape) == (64, 10) and isinstance(g3[-1], nn.Unflatten)
    b = rule.feedback_signals(10, torch.device("cpu"))
    assert [tuple(t.shape) for t in b] == [(10, 1, 8, 8), (10, 8, 4, 4), (10, 16, 2, 2)]
    assert rule._cosine  # similarity="auto": the paper's CNN (cosine) loss on conv models


def test_conv_feedback_net_restores_odd_sizes() -> None:
    # MNIST-like: 28 -> 14 -> 7 -> 3; nearest upsampling goes back to the exact size (3 -> 7)
    rule = _bound("convnet:4,4,4", (1, 28, 28))
    shapes = block_output_shapes(rule.model, (1, 28, 28))[:-1]
    b = rule.feedback_signals(10, torch.device("cpu"))
    assert [tuple(t.shape[1:]) for t in b] == [(1, 28, 28), *shapes]


def test_unsupported_blocks_and_options_are_named() -> None:
    with pytest.raises(ValueError, match="MLP and conv"):
        _bound("resnet:1,width=4")
    with pytest.raises(ValueError, match="mode"):
        make_rule("ccl", mode="decoder")
    with pytest.raises(ValueError, match="similarity"):
        make_rule("ccl", similarity="l1")


# ---- locality ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["classifier", "autoencoder"])
def test_conv_ccl_passes_the_locality_audit(mode: str) -> None:
    rep = audit("ccl", "convnet:8,16", Task((1, 8, 8), 10), rule_options={"mode": mode})
    assert rep.passed, rep.summary()
    trained = set(rep.trained)
    assert {"model.block0.0.weight", "model.block1.0.weight", "model.head.1.weight"} <= trained
    assert any(n.startswith("feedback.") for n in trained)
    if mode == "autoencoder":
        assert any(n.startswith("decoder.") for n in trained)
        assert any(n.startswith("feedback_encoder.") for n in trained)


def test_conv_gradients_are_the_local_pair_losses() -> None:
    x, y = _digits(32)
    rule = _bound("convnet:8,16,bn=false")
    rule.step(x, y)
    target = F.one_hot(y, 10).float()
    b = [t.detach() for t in rule.feedback_signals(10, x.device)]
    # conv 1 of f is trained only by pair 1 (a_1 against b_1); b_1's producer g_2 is not f's
    w1 = rule.model.block0[0].weight
    loss1 = rule.pair_loss(rule.blocks[0](x).flatten(1), b[1].flatten(1), target)
    torch.testing.assert_close(w1.grad, torch.autograd.grad(loss1, w1)[0])
    # g_1 only by pair 0: the input x against g_1(SG(b_1))
    g1 = rule.feedback[0][1].weight
    loss0 = rule.pair_loss(x.flatten(1), rule.feedback[0](b[1]).flatten(1), target)
    torch.testing.assert_close(g1.grad, torch.autograd.grad(loss0, g1)[0])


# ---- learning ---------------------------------------------------------------------------------
def test_conv_ccl_learns_digits() -> None:
    rec = train(rule="ccl", model="convnet:16,32", data="digits", epochs=10, lr=3e-3, seed=0,
                progress=False, measure_flops=False, energy=False)
    assert rec.error is None
    assert rec.test_acc >= 0.80, rec.test_acc  # measured 0.908 (BP twin 0.983)


def test_autoencoder_chains_pair_up_shape_by_shape() -> None:
    rule = _bound("convnet:8,16", mode="autoencoder")
    fwd, bwd, code = rule._chains(_digits(8)[0])
    assert [t.shape for t in fwd] == [t.shape for t in bwd]
    assert tuple(code.shape) == (8, 16, 2, 2) and len(fwd) == 2 * 2 + 1
    assert rule.predict(_digits(8)[0]).shape == (8, 10)  # class logits from the forward net


def test_autoencoder_reduces_reconstruction_error() -> None:
    x, y = _digits(256)
    rule = _bound("convnet:16,32", mode="autoencoder")
    opt = torch.optim.Adam(rule.parameters(), lr=3e-3)
    before = F.mse_loss(rule.reconstruct(x), x).item()
    losses = []
    for i in range(40):
        idx = torch.arange(i * 64, (i + 1) * 64) % len(x)
        opt.zero_grad(set_to_none=True)
        losses.append(rule.step(x[idx], y[idx])["loss"].item())  # = MSE(x̂, x) of the batch
        opt.step()
    after = F.mse_loss(rule.reconstruct(x), x).item()
    assert before == pytest.approx(1.0, rel=0.01)  # h_1 starts at zero: x̂ = 0
    assert after < 0.8 * before, (before, after)
    assert sum(losses[-5:]) < sum(losses[:5])

"""The Trainer: early stopping, divergence, checkpoint/resume, records, user tensors."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import bpfree
from bpfree.records import read_record, record_path
from bpfree.rule import ConfigError
from bpfree.train import TrainConfig

FAST = {"progress": False, "energy": False, "measure_flops": False, "batch_size": 64}


def test_user_tensors_any_shape() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 13, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()  # 4 classes, 13 features
    rec = bpfree.train(rule="mf", model="mlp:32", data=(x, y), epochs=8, lr=1e-2, **FAST)
    assert rec.status == "ok" and rec.test_acc > 0.8
    assert rec.curve and rec.curve[-1]["epoch"] == 8 and rec.params > 0


def test_record_written_and_skipped(tmp_path) -> None:
    rec = bpfree.train(rule="bp", model="mlp:16", data="synthetic", epochs=2, out=tmp_path, **FAST)
    path = record_path(tmp_path, suite="adhoc", dataset="synthetic", model="mlp:16", rule="bp", seed=0)
    d = json.loads(path.read_text())
    for key in ("rule", "dataset", "model", "seed", "test_acc", "val_acc", "epochs", "train_time_s",
                "epoch_time_s", "peak_mem_bytes", "energy_j", "energy_method", "status", "config",
                "machine", "commit"):
        assert key in d, key
    assert d["config"]["train"]["epochs"] == 2 and d["machine"]["torch"]
    again = bpfree.train(rule="bp", model="mlp:16", data="synthetic", epochs=2, out=tmp_path, **FAST)
    assert again.created == rec.created  # read back, not retrained


def test_finished_record_with_other_settings_is_not_returned(tmp_path) -> None:
    """A finished run with other settings must not be passed off as this run's result: rule options
    off the defaults make a variant with its own record; anything else that changes the result is
    refused; resume=False overwrites; run-only options (threads...) don't count."""
    first = bpfree.train(rule="fa", model="mlp:16", data="synthetic", epochs=1, out=tmp_path, **FAST)
    same = bpfree.train(rule="fa", model="mlp:16", data="synthetic", epochs=1, out=tmp_path,
                        threads=1, **FAST)
    assert same.created == first.created
    variant = bpfree.train(rule="fa", model="mlp:16", data="synthetic", epochs=1, out=tmp_path,
                           rule_options={"feedback": "gaussian"}, **FAST)  # its own record
    vpath = record_path(tmp_path, suite="adhoc", dataset="synthetic", model="mlp:16",
                        rule="fa[feedback=gaussian]", seed=0)
    assert read_record(vpath).config["variant"] == "feedback=gaussian"
    assert variant.config["rule"]["feedback"] == "gaussian"
    with pytest.raises(ConfigError, match=r"other settings \(rule.feedback: 'uniform' -> 'gaussian'\)"):
        bpfree.train(rule="fa", model="mlp:16", data="synthetic", epochs=1, out=tmp_path,
                     rule_options={"feedback": "gaussian"}, variant="", **FAST)  # forced label
    with pytest.raises(ConfigError, match=r"train.epochs: 1 -> 2.*resume=False"):
        bpfree.train(rule="fa", model="mlp:16", data="synthetic", epochs=2, out=tmp_path, **FAST)
    new = bpfree.train(rule="fa", model="mlp:16", data="synthetic", epochs=2, out=tmp_path,
                       resume=False, **FAST)
    path = record_path(tmp_path, suite="adhoc", dataset="synthetic", model="mlp:16", rule="fa", seed=0)
    assert new.epochs == 2 and read_record(path).config["train"]["epochs"] == 2


def test_checkpoint_of_other_settings_is_refused(tmp_path) -> None:
    train_mod = sys.modules["bpfree.train"]
    orig = train_mod.Trainer._save_ckpt

    def crash(self) -> None:
        orig(self)
        raise KeyboardInterrupt

    train_mod.Trainer._save_ckpt = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            bpfree.train(rule="bp", model="mlp:16", data="synthetic", epochs=3, lr=1e-3,
                         out=tmp_path, **FAST)
    finally:
        train_mod.Trainer._save_ckpt = orig
    with pytest.raises(ConfigError, match=r"checkpoint .* other settings \(train.lr: 0.001 -> 0.01\)"):
        bpfree.train(rule="bp", model="mlp:16", data="synthetic", epochs=3, lr=1e-2,
                     out=tmp_path, **FAST)
    assert len(list(tmp_path.rglob("*.ckpt"))) == 1 and not list(tmp_path.rglob("*.json"))


def test_divergence_is_recorded_not_raised(tmp_path) -> None:
    rec = bpfree.train(rule="bp", model="mlp:64,64", data="synthetic", epochs=3, lr=1e6,
                       optimizer="sgd", out=tmp_path, **FAST)
    assert rec.status == "diverged" and "lower the learning rate" in rec.error
    assert rec.test_acc is None


def test_early_stopping_restores_best() -> None:
    rec = bpfree.train(rule="bp", model="mlp:64", data="synthetic", epochs=30, patience=2,
                       lr=3e-2, **FAST)
    assert rec.status in ("early-stopped", "ok")
    if rec.status == "early-stopped":
        assert rec.epochs < 30 and rec.best_epoch <= rec.epochs - 2


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path) -> None:
    """Stop after 2 of 4 epochs (checkpoint kept), resume: same result as one 4-epoch run."""
    full = bpfree.train(rule="dfa", model="mlp:32", data="synthetic", epochs=4, **FAST)
    train_mod = sys.modules["bpfree.train"]  # the module (bpfree.train is the function)

    calls = {"n": 0}
    orig = train_mod.Trainer._save_ckpt

    def crash_after_two(self) -> None:
        orig(self)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    train_mod.Trainer._save_ckpt = crash_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            bpfree.train(rule="dfa", model="mlp:32", data="synthetic", epochs=4, out=tmp_path, **FAST)
    finally:
        train_mod.Trainer._save_ckpt = orig
    ckpts = list(tmp_path.rglob("*.ckpt"))
    assert len(ckpts) == 1
    resumed = bpfree.train(rule="dfa", model="mlp:32", data="synthetic", epochs=4, out=tmp_path, **FAST)
    assert resumed.epochs == 4 and not list(tmp_path.rglob("*.ckpt"))
    assert resumed.test_acc == pytest.approx(full.test_acc)
    assert [c["val_acc"] for c in resumed.curve] == pytest.approx([c["val_acc"] for c in full.curve])


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="epochz"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig.from_dict({"batch_size": "big"})
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="adamm")
    with pytest.raises(ConfigError, match="unknown model"):
        bpfree.train(rule="bp", model="mpl:10", data="synthetic", epochs=1, **FAST)


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(Exception, match="(?i)length|mismatch|samples"):
        bpfree.train(rule="bp", model="mlp:8", data=(torch.randn(10, 3), torch.zeros(9).long()),
                     epochs=1, **FAST)


def test_meters_fill_the_record() -> None:
    rec = bpfree.train(rule="mf", model="mlp:32", data="synthetic", epochs=2,
                       progress=False, batch_size=64)
    assert rec.train_time_s > 0 and rec.epoch_time_s > 0 and len(rec.epoch_times_s) == 2
    assert rec.peak_mem_bytes and rec.peak_mem_bytes > 0
    assert rec.energy_method is not None
    assert rec.energy_j is None or rec.energy_j > 0
    if rec.energy_method.startswith("estimate"):
        assert rec.energy_j > 0
    assert rec.flops_per_step and rec.flops_per_step > 0


def test_lr_schedules_shape_and_errors() -> None:
    from bpfree.train import LR_SCHEDULES

    E = 10
    assert [LR_SCHEDULES["constant"](e, E) for e in range(E)] == [1.0] * E
    cool = [LR_SCHEDULES["linear-cooldown"](e, E) for e in range(E)]
    assert cool[:5] == [1.0] * 5 and cool[5:] == sorted(cool[5:], reverse=True) and cool[-1] > 0
    cos = [LR_SCHEDULES["cosine"](e, E) for e in range(E)]
    assert cos[0] == 1.0 and all(a > b for a, b in zip(cos, cos[1:])) and cos[-1] > 0
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosin")
    rec = bpfree.train(rule="bp", model="mlp:16", data="synthetic", epochs=3,
                       lr_schedule="cosine", **FAST)
    assert rec.status == "ok" and rec.config["train"]["lr_schedule"] == "cosine"


def test_interleaved_runs_match_sequential_and_write_records(tmp_path) -> None:
    """Epochs of bp, mf and dfa taken in turn: each run ends exactly as it would alone (own
    batches and seeds), records are written, a finished run is skipped on re-run."""
    runs = [{"rule": "bp"}, {"rule": "mf"}, {"rule": "dfa", "epochs": 2}]
    common = {"model": "mlp:32", "epochs": 3, "lr": 1e-2, **FAST}
    alone = {r["rule"]: bpfree.train(rule=r["rule"], data="synthetic",
                                     **{**common, **{k: v for k, v in r.items() if k != "rule"}})
             for r in runs}
    recs = bpfree.train_interleaved([{**r, "model": "mlp:32"} for r in runs], data="synthetic",
                                    out=tmp_path, **{k: v for k, v in common.items() if k != "model"})
    assert [r.rule for r in recs] == ["bp", "mf", "dfa"]
    for r in recs:
        assert r.status == "ok" and r.test_acc == alone[r.rule].test_acc, r.rule
        assert [c["val_acc"] for c in r.curve] == [c["val_acc"] for c in alone[r.rule].curve]
    assert [r.epochs for r in recs] == [3, 3, 2]
    again = bpfree.train_interleaved([{**r, "model": "mlp:32"} for r in runs], data="synthetic",
                                     out=tmp_path, **{k: v for k, v in common.items() if k != "model"})
    assert [a.created for a in again] == [r.created for r in recs]  # read back, not retrained


def test_interleaved_bad_run_spec_names_the_key() -> None:
    with pytest.raises(ConfigError, match="lrr"):
        bpfree.train_interleaved([{"rule": "bp", "lrr": 1}], data="synthetic", **FAST)
    with pytest.raises(ConfigError, match="needs a 'rule'"):
        bpfree.train_interleaved([{"model": "mlp:8"}], data="synthetic", **FAST)

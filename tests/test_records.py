"""RunRecord store: round trip, atomicity, corruption, paths and resume semantics."""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest

from bpfree import records
from bpfree.records import (
    RECORD_VERSION, RunRecord, is_done, load_records, median_epoch_time, read_record, record_path,
    write_record,
)


def _rec(**kw: object) -> RunRecord:
    base: dict = dict(rule="ff", dataset="fashion-mnist", model="mlp:1000,1000", seed=0)
    base.update(kw)
    return RunRecord(**base)


def test_round_trip(tmp_path: Path) -> None:
    rec = _rec(
        test_acc=0.91, val_acc=0.9, best_epoch=3, epochs=4, train_time_s=12.5, epoch_times_s=[4.0, 3.0, 3.1, 2.9],
        peak_mem_bytes=123456789, mem_method="vmhwm", energy_j=40.0, energy_method="estimate-tdp",
        curve=[{"epoch": 1, "train_loss": 0.5, "val_acc": 0.8, "time_s": 4.0, "energy_j": None}],
        config={"lr": 1e-3, "widths": [1000, 1000]}, machine={"cpu_model": "x"}, commit="a" * 40,
        dirty=False, extra={"mem_delta_bytes": 10},
    )
    path = write_record(rec, tmp_path / "r.json")
    back = read_record(path)
    assert back == rec
    assert RunRecord.from_dict(rec.to_dict()) == rec
    assert back.record_version == RECORD_VERSION and back.created and back.version


def test_nan_and_inf_become_null(tmp_path: Path) -> None:
    rec = _rec(status="diverged", test_acc=float("nan"), curve=[{"train_loss": float("inf")}])
    path = write_record(rec, tmp_path / "r.json")
    raw = json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert raw["test_acc"] is None and raw["curve"][0]["train_loss"] is None
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert read_record(path).test_acc is None


def test_atomic_write_crash_leaves_target_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    write_record(_rec(status="running"), path)
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(records.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write_record(_rec(status="ok", test_acc=0.5), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left

    fresh = tmp_path / "new" / "r.json"
    with pytest.raises(OSError):
        write_record(_rec(), fresh)
    assert not fresh.exists() and list(fresh.parent.iterdir()) == []


def test_corrupt_file_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"rule": "ff", "dataset": ')  # a partial write
    with pytest.raises(ValueError, match="bad.json"):
        read_record(path)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"rule": "ff", "dataset": "d", "model": "m", "seed": "zero"}))
    with pytest.raises(ValueError, match=r"wrong\.json.*seed"):
        read_record(wrong)


def test_from_dict_unknown_and_missing_keys() -> None:
    d = _rec().to_dict()
    with pytest.raises(ValueError, match="bogus"):
        RunRecord.from_dict({**d, "bogus": 1, "other": 2})
    d.pop("seed")
    with pytest.raises(ValueError, match="seed"):
        RunRecord.from_dict(d)


def test_validation_names_field() -> None:
    with pytest.raises(ValueError, match="status"):
        _rec(status="done")
    with pytest.raises(ValueError, match="seed"):
        _rec(seed=True)
    with pytest.raises(ValueError, match="record_version"):
        _rec(record_version=RECORD_VERSION + 1)
    rec = _rec()
    rec.test_acc = "high"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="test_acc"):
        rec.to_dict()


def test_record_path_safe_and_unique(tmp_path: Path) -> None:
    kw = dict(suite="s", dataset="fashion-mnist", rule="ff", seed=0)
    p = record_path(tmp_path, model="mlp:1000,1000", **kw)
    assert p.parent.parent.name == "mlp%3A1000,1000" and p.name == "seed0.json"
    names = ["mlp:1000,1000", "mlp_1000,1000", "mlp%3A1000,1000", "a/b", "a%2Fb", "..", ".", "x" * 300,
             "x" * 299 + "y", "conv net", "é", "a\\b", "CON?*<>|\""]
    paths = {record_path(tmp_path, model=n, **kw) for n in names}
    assert len(paths) == len(names)
    for path in paths:
        assert path.resolve().is_relative_to(tmp_path.resolve())
        rel = path.relative_to(tmp_path)
        assert all(len(part) <= 255 and not part.startswith(".") for part in rel.parts)
        assert all(ch not in part for part in rel.parts for ch in ':*?"<>|\\ ')
        write_record(_rec(model="m"), path)  # the filesystem accepts it
    assert record_path(tmp_path, model="m", **{**kw, "seed": 1}) != record_path(tmp_path, model="m", **kw)
    with pytest.raises(ValueError):
        record_path(tmp_path, model="", **kw)


def test_is_done_semantics(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    assert not is_done(path)
    write_record(_rec(status="running"), path)
    assert not is_done(path)
    for status in ("ok", "diverged", "failed", "early-stopped"):
        write_record(_rec(status=status), path)
        assert is_done(path), status
    assert is_done(path, retry_failed=True)  # "early-stopped" is final either way
    write_record(_rec(status="failed"), path)
    assert not is_done(path, retry_failed=True)
    path.write_text("{")
    with pytest.warns(UserWarning, match="r.json"):
        assert not is_done(path)


def test_load_records_recursive_skips_temp_and_warns_on_corrupt(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_record(_rec(seed=seed), record_path(tmp_path, suite="s", dataset="d", model="m", rule="ff", seed=seed))
    (tmp_path / "s" / ".seed9.json.abc.tmp").write_text("{")  # a stray temp file
    bad = tmp_path / "s" / "bad.json"
    bad.write_text("not json")
    with pytest.warns(UserWarning, match="bad.json"):
        recs = load_records(tmp_path)
    assert sorted(r.seed for r in recs) == [0, 1]
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "typo")


def test_median_epoch_time_excludes_warmup() -> None:
    assert median_epoch_time([]) is None
    assert median_epoch_time([5.0]) == 5.0
    assert median_epoch_time([10.0, 2.0, 3.0, 4.0]) == 3.0
    assert not math.isnan(median_epoch_time([1.0, 2.0]) or math.nan)


def test_write_without_warnings(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_record(_rec(), tmp_path / "a" / "b" / "r.json")
    assert os.listdir(tmp_path / "a" / "b") == ["r.json"]

"""The command line: help everywhere, clear errors, the main subcommands end to end."""

from __future__ import annotations

import json

import pytest

from bpfree.cli import main


@pytest.mark.parametrize("cmd", [[], ["rules"], ["datasets"], ["train"], ["bench"], ["audit"]])
def test_help(cmd, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_rules_table(capsys) -> None:
    assert main(["rules", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert {"bp", "mf", "ff", "dfa"} <= names
    assert all(r["locality"] in ("global", "block", "none") for r in rows)


def test_unknown_rule_suggests(capsys) -> None:
    assert main(["train", "--rule", "mff", "--dataset", "synthetic", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown rule 'mff'" in err and "Did you mean" in err


def test_unknown_option_names_it(capsys) -> None:
    assert main(["train", "--rule", "ff", "--dataset", "synthetic", "--set", "thta=1", "--quiet"]) == 2
    assert "thta" in capsys.readouterr().err


def test_missing_dataset_explains(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("BPFREE_DATA_DIR", raising=False)
    monkeypatch.setenv("BPFREE_CACHE_DIR", str(tmp_path / "cache"))
    import bpfree.data as D

    if any(p.exists() and any(p.iterdir()) for p in D.search_paths("cifar10", tmp_path)):
        pytest.skip("cifar10 present on this machine")
    assert main(["train", "--rule", "bp", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err


def test_train_writes_record(tmp_path, capsys) -> None:
    rc = main(["train", "--rule", "dfa", "--dataset", "synthetic", "--model", "mlp:16",
               "--epochs", "2", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    assert "test acc" in capsys.readouterr().out
    assert len(list(tmp_path.rglob("*.json"))) == 1


@pytest.mark.parametrize("rule,ok", [("mf", True), ("ff", True), ("dfa", True), ("bp", True)])
def test_audit(rule, ok, capsys) -> None:
    assert (main(["audit", rule]) == 0) is ok
    out = capsys.readouterr().out
    assert ("global" in out) if rule == "bp" else ("PASS" in out)


def test_bench_custom_suite_resumes(tmp_path, capsys) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text('name = "tiny"\ndatasets = ["synthetic"]\nseeds = [0]\n'
                     '[train]\nepochs = 1\nbatch_size = 64\nmeasure_flops = false\nenergy = false\n'
                     '[[runs]]\nrule = "mf"\nmodel = "mlp:16"\n')
    out = tmp_path / "out"
    assert main(["bench", "--suite", str(suite), "--out", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| synthetic | mlp:16 | bp |" in table and "| synthetic | mlp:16 | mf |" in table
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    assert len(stamps) == 2
    assert main(["bench", "--suite", str(suite), "--out", str(out), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == stamps


def test_bench_runs_rule_variants_side_by_side(tmp_path, capsys) -> None:
    """An ablation: the default rule and an option variant in one suite, one BP twin, own rows."""
    suite = tmp_path / "abl.toml"
    suite.write_text('name = "abl"\ndatasets = ["synthetic"]\nseeds = [0]\n'
                     '[train]\nepochs = 1\nbatch_size = 64\nmeasure_flops = false\nenergy = false\n'
                     '[[runs]]\nrule = "fa"\nmodel = "mlp:16"\n'
                     '[[runs]]\nrule = "fa"\nmodel = "mlp:16"\noptions = {feedback = "gaussian"}\n')
    out = tmp_path / "out"
    assert main(["bench", "--suite", str(suite), "--out", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    for name in ("bp", "fa", "fa[feedback=gaussian]"):
        assert f"| synthetic | mlp:16 | {name} |" in table, table
    names = sorted(p.parent.name for p in out.rglob("*.json"))
    assert names == ["bp", "fa", "fa%5Bfeedback=gaussian%5D"], names
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    assert main(["bench", "--suite", str(suite), "--out", str(out), "--quiet"]) == 0  # resumes
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == stamps


def test_bench_interleave_same_records_and_resume(tmp_path, capsys) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text('name = "tiny"\ndatasets = ["synthetic"]\nseeds = [0]\n'
                     '[train]\nepochs = 2\nbatch_size = 64\nmeasure_flops = false\nenergy = false\n'
                     '[[runs]]\nrule = "mf"\nmodel = "mlp:16"\n')
    seq, inter = tmp_path / "seq", tmp_path / "inter"
    assert main(["bench", "--suite", str(suite), "--out", str(seq), "--quiet"]) == 0
    assert main(["bench", "--suite", str(suite), "--out", str(inter), "--quiet", "--interleave"]) == 0
    assert "| synthetic | mlp:16 | mf |" in capsys.readouterr().out
    by_rel = {p.relative_to(seq): json.loads(p.read_text()) for p in seq.rglob("seed*.json")}
    got = {p.relative_to(inter): json.loads(p.read_text()) for p in inter.rglob("seed*.json")}
    assert set(got) == set(by_rel) and len(got) == 2  # same record paths as the queue runner
    for rel, rec in got.items():
        assert rec["test_acc"] == by_rel[rel]["test_acc"] and rec["epochs"] == 2
    stamps = {p: p.stat().st_mtime_ns for p in inter.rglob("*.json")}
    assert main(["bench", "--suite", str(suite), "--out", str(inter), "--quiet", "--interleave"]) == 0
    assert {p: p.stat().st_mtime_ns for p in inter.rglob("*.json")} == stamps
    capsys.readouterr()
    assert main(["bench", "--suite", str(suite), "--out", str(inter), "--interleave", "--workers", "2"]) == 2
    assert "--workers" in capsys.readouterr().err

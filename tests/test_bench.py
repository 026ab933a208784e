"""The benchmark harness: suites, queue (exactly once), resume after SIGINT / kill -9, failed and
diverged runs, fair tuning, metrics and the report. Tiny models on the synthetic dataset."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpfree.bench import load_suite, run_suite
from bpfree.bench.queue import FileQueue, SqlQueue, run_key
from bpfree.bench.report import markdown_table, summarize
from bpfree.records import RunRecord, load_records
from bpfree.rule import RULES, ConfigError

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = """
[train]
epochs = {epochs}
batch_size = 32
lr = 3e-3
threads = 1
energy = false
measure_flops = false
val_fraction = 0.1
"""


def write_suite(tmp: Path, name: str, body: str, *, seeds=(0,), epochs: int = 2,
                header: str = "") -> Path:
    p = tmp / f"{name}.toml"
    p.write_text(f'name = "{name}"\ndatasets = ["synthetic"]\nseeds = {list(seeds)}\n{header}\n'
                 + FAST.format(epochs=epochs) + body)
    return p


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bpfree.cli", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, e.get("PYTHONPATH")]))
    return e


# ---- suites -------------------------------------------------------------------------------------

def test_builtin_suites_load_with_bp_twins():
    for name in ("quick", "paper", "paper-cpu", "all"):
        s = load_suite(name)
        models = {(r.model, r.dataset) for r in s.runs if r.rule != "bp"}
        twins = {(r.model, r.dataset) for r in s.runs if r.rule == "bp"}
        assert models <= twins, f"{name}: a rule without its BP twin"
    paper = load_suite("paper")
    assert {r.seed for r in paper.runs} == {0, 1, 2}
    assert {r.dataset for r in paper.runs} == {"mnist", "fashion-mnist"}
    assert {(r.rule, r.model) for r in paper.runs} >= {("mf", "mlp:1000,1000"),
                                                       ("ff", "mlp:2000,2000,2000,2000")}
    assert all(r.train["patience"] > 0 for r in paper.runs)  # early stopping on validation
    assert paper.target_for("mnist") and paper.tune.trials > 0


def test_all_suite_is_generated_from_the_registry():
    s = load_suite("all")
    assert {r.rule for r in s.runs} == set(RULES)
    for r in s.runs:
        if r.rule != "bp":
            assert r.model == RULES[r.rule].native_model


def test_suite_errors_name_the_problem(tmp_path):
    p = write_suite(tmp_path, "bad", '[[runs]]\nrule = "cafo-nonexistent"\nmodel = "convnet:32,128,512"\n')
    with pytest.raises(ConfigError, match="cafo-nonexistent.*not registered"):
        load_suite(p)
    p = write_suite(tmp_path, "bad2", '[[runs]]\nrule = "mf"\nmodle = "mlp:8"\n')
    with pytest.raises(ConfigError, match="unknown key 'modle'.*'model'"):
        load_suite(p)
    p = write_suite(tmp_path, "bad3", '[[runs]]\nrule = "mf"\noptions = {nope = 1}\n')
    with pytest.raises(ConfigError, match="no option 'nope'"):
        load_suite(p)
    p = write_suite(tmp_path, "ok", '[[runs]]\nrules = ["mf", "dfa"]\nmodel = "mlp:8"\n',
                    header="target_acc = {synthetic = 0.5}")
    s = load_suite(p)
    assert {r.rule for r in s.runs} == {"bp", "mf", "dfa"} and s.target_for("synthetic") == 0.5


# ---- queue --------------------------------------------------------------------------------------

def test_file_queue_claims_exactly_once(tmp_path):
    s = load_suite(write_suite(tmp_path, "q", '[[runs]]\nrule = "mf"\nmodel = "mlp:8"\n'))
    spec = s.runs[0]
    a, b = FileQueue(tmp_path / "out", s.name), FileQueue(tmp_path / "out", s.name)
    ca = a.claim(spec)
    assert ca is not None and b.claim(spec) is None  # held (flock) by a live worker
    ca.update(epoch=1, val_acc=0.5)
    assert any(x.get("epoch") == 1 for x in b.active())
    ca.release()  # interrupted: the run is free again
    cb = b.claim(spec)
    assert cb is not None
    rec = RunRecord(rule=spec.rule, dataset=spec.dataset, model=spec.model, seed=spec.seed, suite=s.name)
    from bpfree.records import write_record
    write_record(rec, b.path(spec))
    cb.finish(rec)
    assert not b.path(spec).with_suffix(".claim").exists()
    assert a.claim(spec) is None and a.is_done(spec)


def test_sql_queue_exactly_once_and_stale_takeover(tmp_path):
    pytest.importorskip("sqlalchemy")
    s = load_suite(write_suite(tmp_path, "sq", '[[runs]]\nrule = "mf"\nmodel = "mlp:8"\n'))
    spec = s.runs[0]
    url = f"sqlite:///{tmp_path / 'q.db'}"
    a = SqlQueue(url, s.name, stale_after_s=0.6, heartbeat_s=100)
    b = SqlQueue(url, s.name, stale_after_s=0.6, heartbeat_s=100)
    ca = a.claim(spec)
    assert ca is not None and b.claim(spec) is None
    time.sleep(0.8)  # a stops heart-beating (as if its machine died): b may take the run over
    cb = b.claim(spec)
    assert cb is not None and a.claim(spec) is None
    rec = RunRecord(rule=spec.rule, dataset=spec.dataset, model=spec.model, seed=spec.seed, suite=s.name)
    with pytest.warns(UserWarning, match="taken over"):
        ca.finish(rec)  # the stale worker's late result is not recorded as the run's
    cb.finish(rec)
    rows = b.rows()
    assert len(rows) == 1 and rows[0]["status"] == "done" and rows[0]["attempts"] == 2
    assert rows[0]["worker"] == b.worker
    assert run_key(s.name, spec) in a.done_keys(s.runs) and len(b.records()) == 1
    a.close(), b.close()


# ---- runs that diverge or crash -----------------------------------------------------------------

def test_diverged_and_failed_runs_are_recorded_and_the_suite_carries_on(tmp_path, monkeypatch):
    body = ('[[runs]]\nrule = "bp"\nmodel = "mlp:16"\ntrain = {lr = 1e6, optimizer = "sgd"}\n'
            '[[runs]]\nrule = "mf"\nmodel = "mlp:16"\n')
    s = load_suite(write_suite(tmp_path, "bad-runs", body, seeds=(0, 1), header="bp_twin = false"))
    import bpfree.bench.runner as runner
    real = runner.train

    def crashing(**kw):
        if kw["rule"] == "mf" and kw["seed"] == 1:
            raise RuntimeError("boom: simulated crash")
        return real(**kw)

    monkeypatch.setattr(runner, "train", crashing)
    recs = run_suite(s, tmp_path / "out", progress=False)
    st = {(r.rule, r.seed): r for r in recs}
    assert len(recs) == 4
    assert st[("bp", 0)].status == st[("bp", 1)].status == "diverged"
    assert "nan" in st[("bp", 0)].error or "inf" in st[("bp", 0)].error
    assert st[("mf", 0)].status == "ok"
    assert st[("mf", 1)].status == "failed" and "boom: simulated crash" in st[("mf", 1)].error
    assert "RuntimeError" in st[("mf", 1)].error
    # a rerun skips everything; --retry-failed reruns only the failed one (now working)
    monkeypatch.setattr(runner, "train", real)
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("seed*.json")}
    run_suite(s, tmp_path / "out", progress=False)
    assert before == {p: p.read_bytes() for p in (tmp_path / "out").rglob("seed*.json")}
    recs = run_suite(s, tmp_path / "out", progress=False, retry_failed=True)
    assert {(r.rule, r.seed): r.status for r in recs}[("mf", 1)] == "ok"
    table = markdown_table(summarize(recs))
    assert "diverged" in table


# ---- resume after SIGINT and kill -9 ------------------------------------------------------------

def _records(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in out.rglob("seed*.json")}


def _wait_for(pred, proc, timeout=60.0, poll=0.02):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def test_bench_resumes_after_sigint_and_kill9(tmp_path):
    body = '[[runs]]\nrule = "mf"\nmodel = "mlp:64"\n'
    # long enough runs that a fast, idle machine cannot finish the suite between the signals
    suite = write_suite(tmp_path, "resume", body, seeds=(0, 1, 2, 3), epochs=30)
    out = tmp_path / "out"
    n_runs = 8
    cmd = cli("bench", "--suite", str(suite), "--out", str(out), "--quiet")

    # 1) SIGINT once, after a couple of runs have finished. A shell's background job (e.g.
    # `make test &`) starts with SIGINT ignored, which Python would inherit: restore the default.
    p = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert _wait_for(lambda: len(_records(out)) >= 2, p), p.communicate()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    snap1 = _records(out)
    assert 2 <= len(snap1) < n_runs

    # 2) kill -9 once, mid-suite
    p = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: len(_records(out)) >= len(snap1) + 1, p), p.communicate()
    p.kill()
    p.wait(timeout=30)
    snap2 = _records(out)
    assert len(snap2) < n_runs, "suite finished before kill -9; make runs longer"

    # 3) rerun to completion
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    final = _records(out)
    for snap in (snap1, snap2):  # no finished run redone (records byte-identical, same 'created')
        assert {k: final[k] for k in snap} == snap
    recs = load_records(out)
    keys = [(r.rule, r.seed) for r in recs]
    assert len(recs) == n_runs and len(set(keys)) == n_runs  # none lost, none duplicated
    assert {r.status for r in recs} == {"ok"}
    leftovers = [q for q in out.rglob("*") if q.suffix in (".claim", ".ckpt", ".tmp")]
    assert not leftovers, leftovers


def test_two_workers_train_every_run_exactly_once(tmp_path, capfd):
    body = '[[runs]]\nrule = "mf"\nmodel = "mlp:32"\n'
    s = load_suite(write_suite(tmp_path, "two", body, seeds=(0, 1, 2), epochs=2))
    out = tmp_path / "out"
    recs = run_suite(s, out, workers=2, progress=False)  # two worker processes, one queue
    stdout = capfd.readouterr().out
    done = [m.groups() for m in re.finditer(r"^\[(\S+)\] (.+? seed \d+): ", stdout, re.M)]
    labels = [label for _, label in done]
    assert len(labels) == 6 and len(set(labels)) == 6, stdout  # each run trained exactly once
    assert len(recs) == 6 and len(load_records(out)) == 6
    assert not list(out.rglob("*.claim"))


# ---- tuning -------------------------------------------------------------------------------------

def test_on_epoch_callback_can_stop_a_run():
    import bpfree

    seen = []

    class Stop(Exception):
        pass

    def cb(epoch, val):
        seen.append((epoch, val))
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        bpfree.train(rule="bp", model="mlp:8", data="synthetic", epochs=5, threads=1,
                     progress=False, energy=False, measure_flops=False, on_epoch=cb)
    assert [e for e, _ in seen] == [1, 2] and all(0 <= v <= 1 for _, v in seen)


def test_tune_gives_every_rule_the_same_budget_and_bench_uses_it(tmp_path):
    optuna = pytest.importorskip("optuna")
    from bpfree.bench.tune import load_tuned, study_name, tune_suite

    body = '[[runs]]\nrule = "mf"\nmodel = "mlp:16"\n'
    s = load_suite(write_suite(tmp_path, "tn", body, epochs=2,
                               header="[tune]\ntrials = 3\nepochs = 2\n"))
    out = tmp_path / "out"
    res = tune_suite(s, out, progress=False, log=lambda m: None)
    assert set(res) == {"synthetic/mlp:16/bp", "synthetic/mlp:16/mf"}
    storage = f"sqlite:///{(out / 'tune.db').resolve()}"
    for spec in s.groups().values():
        study = optuna.load_study(study_name=study_name(s.name, spec), storage=storage)
        finished = [t for t in study.trials if t.state.is_finished()]
        assert len(finished) == 3  # the same budget for the rule and its BP twin
        best = load_tuned(out, s.name, spec)
        assert best["trials_counted"] == 3 and "lr" in best["train"]
        assert study.user_attrs["best_config"]["params"] == best["params"]
    # a second call does not add trials (budget already spent)
    tune_suite(s, out, progress=False, log=lambda m: None)
    study = optuna.load_study(study_name=study_name(s.name, s.runs[0]), storage=storage)
    assert len(study.trials) == 3
    recs = run_suite(s, out, progress=False)
    for r in recs:
        tuned = load_tuned(out, s.name, next(x for x in s.runs if x.rule == r.rule))
        assert r.config["train"]["lr"] == pytest.approx(tuned["train"]["lr"])
        assert r.extra["tuned"]["study"] == tuned["study"]
    assert not [r for r in load_records(out) if r.rule not in ("bp", "mf")]  # .tuned.json hidden


# ---- metrics and report -------------------------------------------------------------------------

def fake_records(datasets=("mnist",), seeds=(0, 1, 2), energy_method="estimate-tdp") -> list[RunRecord]:
    recs = []
    for ds in datasets:
        for rule, t, acc, mem, flops, reach in (("bp", 1.0, 0.97, 100e6, 2e9, True),
                                                 ("mf", 0.6, 0.975, 60e6, 1e9, True),
                                                 ("ff", 5.0, 0.95, 150e6, 6e9, False)):
            for seed in seeds:
                curve = [{"epoch": e, "train_loss": 1.0 / e, "val_acc": acc - 0.1 / e,
                          "time_s": t * e, "energy_j": 10 * t * e} for e in range(1, 6)]
                recs.append(RunRecord(
                    rule=rule, dataset=ds, model="mlp:1000,1000", seed=seed, suite="fake",
                    status="ok", test_acc=acc + 0.001 * seed, val_acc=acc, epochs=5,
                    train_time_s=5 * t, epoch_time_s=t, epoch_times_s=[t] * 5,
                    peak_mem_bytes=int(mem), energy_j=50 * t, energy_method=energy_method,
                    flops_per_step=int(flops), target_acc=0.96,
                    time_to_target_s=3 * t if reach else None,
                    energy_to_target_j=30 * t if reach else None, curve=curve,
                    machine={"cpu_model": "Test CPU", "torch_threads": 1}, commit="abcdef1234567",
                    dirty=False))
    return recs


def test_summary_ratios_and_not_reached():
    rows = {r.rule: r for r in summarize(fake_records())}
    assert rows["bp"].time_ratio == pytest.approx(1.0)
    assert rows["mf"].time_ratio == pytest.approx(0.6)
    assert rows["mf"].flops_ratio == pytest.approx(0.5)
    assert rows["mf"].ttt_ratio == pytest.approx(0.6) and rows["mf"].ett_ratio == pytest.approx(0.6)
    assert rows["ff"].reached == 0 and rows["ff"].time_to_target_s is None
    assert rows["mf"].test_acc_mean == pytest.approx(0.976) and rows["mf"].test_acc_std > 0
    table = markdown_table(list(rows.values()))
    ff_line = next(ln for ln in table.splitlines() if "| ff |" in ln)
    assert "not reached" in ff_line and "(estimated)" in table
    assert "| 0.0 " not in ff_line  # never 0 for "not reached"


def test_pareto_front():
    from bpfree.bench.html import pareto_front

    pts = [(1.0, 0.97), (0.6, 0.975), (5.0, 0.95), (0.5, 0.90), (2.0, 0.976)]
    assert pareto_front(pts) == [(0.5, 0.90), (0.6, 0.975), (2.0, 0.976)]


def test_report_files(tmp_path):
    from bpfree.bench.html import write_report
    from bpfree.records import record_path, write_record

    for r in fake_records(datasets=("mnist", "fashion-mnist")):
        write_record(r, record_path(tmp_path, suite=r.suite, dataset=r.dataset, model=r.model,
                                    rule=r.rule, seed=r.seed))
    md, page = write_report(tmp_path)
    text = md.read_text()
    assert "not reached" in text and "Test CPU" in text and "abcdef1234" in text
    h = page.read_text()
    assert h.count('<svg class="plot"') == 10  # 5 figures x 2 datasets
    assert 'data-expected="10"' in h
    assert h.count("energy ESTIMATED") >= 10  # every figure says how energy was obtained
    for bad in ("<script src", "<link ", "http://", "https://"):  # self-contained, no network
        assert bad not in h.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_cli_report_and_tune_help(tmp_path):
    from bpfree.cli import main
    from bpfree.records import record_path, write_record

    for r in fake_records(seeds=(0,)):
        write_record(r, record_path(tmp_path, suite=r.suite, dataset=r.dataset, model=r.model,
                                    rule=r.rule, seed=r.seed))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").is_file()
    assert json.loads(json.dumps({"ok": True}))
    with pytest.raises(SystemExit):
        main(["tune", "--help"])


def test_untrimmed_cpu_memory_is_flagged_not_trusted():
    recs = fake_records()
    for r in recs:
        r.mem_method = "vmhwm"
        r.extra = {"mem_delta_bytes": 0 if r.rule == "mf" else 30 * 2**20}
    table = markdown_table(summarize(recs))
    mf_line = next(ln for ln in table.splitlines() if "| mf |" in ln)
    assert "0†" in mf_line and "may read low" in table
    for r in recs:
        r.extra["mem_heap_trimmed"] = True
    table = markdown_table(summarize(recs))
    assert "†" not in table and "may read low" not in table


def test_paired_step_times_runs_on_the_configured_threads_and_restores_them(monkeypatch) -> None:
    """``threads=`` applies to the timed steps (as in ``train``) and the caller's count is restored:
    a timing taken on torch's default thread count beside another job oversubscribes the cores."""
    import torch

    from bpfree.bench import steptime

    seen: list[int] = []
    real = steptime.Trainer.train_step

    def spy(self, xb, yb):
        seen.append(torch.get_num_threads())
        return real(self, xb, yb)

    monkeypatch.setattr(steptime.Trainer, "train_step", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = steptime.paired_step_times(["bp", "fa"], "mlp:16", "synthetic", batch_size=32,
                                         steps=2, repeats=2, warmup=1, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert set(seen) == {1} and len(seen) == 2 * (1 + 2 * 2)
    assert all(len(t.times_s) == 2 for t in out.values())

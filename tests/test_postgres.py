"""Many workers, one PostgreSQL: every run of a suite is trained exactly once, and parallel tuners
fill one Optuna study with the same budget.

The server is ``$BPFREE_TEST_PG_URL`` when set (e.g. the one `.ci/setup_services.sh` starts), else
a throwaway cluster made here with Debian's ``initdb``/``pg_ctl`` in a temporary directory on
127.0.0.1 (as the ``postgres`` user via ``runuser`` when running as root: initdb refuses root).
Skips with the reason when neither is possible. Needs SQLAlchemy and psycopg2 (or psycopg).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without `runuser`: cannot start a PostgreSQL cluster "
                    "(initdb refuses root); set BPFREE_TEST_PG_URL")
    try:
        import pwd
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and no 'postgres' user to run initdb as; set BPFREE_TEST_PG_URL")
    return [runuser, "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="module")
def pg_url():
    pytest.importorskip("sqlalchemy")
    try:
        import psycopg2  # noqa: F401
        driver = "postgresql+psycopg2"
    except ImportError:
        pytest.importorskip("psycopg", reason="needs psycopg2-binary (or psycopg)")
        driver = "postgresql+psycopg"
    url = os.environ.get("BPFREE_TEST_PG_URL")
    if url:
        yield url
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql, or set "
                    "BPFREE_TEST_PG_URL); .ci/setup_services.sh installs it in CI")
    data = Path(tempfile.mkdtemp(prefix="bpfree-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    port = _free_port()
    r = subprocess.run(_as_pg_user([initdb, "-D", str(data / "db"), "-A", "trust", "-U", "postgres",
                                    "--no-sync", "-E", "UTF8"]),
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"initdb failed: {r.stderr[-500:]}")
    opts = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c max_connections=100"
    r = subprocess.run(_as_pg_user([pg_ctl, "-D", str(data / "db"), "-l", str(data / "log"),
                                    "-o", opts, "-w", "-t", "60", "start"]),
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        log = (data / "log").read_text() if (data / "log").exists() else ""
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"pg_ctl start failed: {r.stderr[-300:]} {log[-500:]}")
    try:
        yield f"{driver}://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_pg_user([pg_ctl, "-D", str(data / "db"), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def _suite(tmp: Path, name: str) -> Path:
    p = tmp / f"{name}.toml"
    p.write_text(f"""name = "{name}"
datasets = ["synthetic"]
seeds = [0, 1, 2]
[train]
epochs = 2
batch_size = 32
lr = 3e-3
threads = 1
energy = false
measure_flops = false
[tune]
trials = 4
epochs = 2
[[runs]]
rule = "mf"
model = "mlp:32"
""")
    return p


def test_two_bench_workers_share_one_queue_exactly_once(pg_url, tmp_path):
    from bpfree.bench import load_suite
    from bpfree.bench.queue import SqlQueue, run_key
    from bpfree.records import load_records

    name = f"pg-{uuid.uuid4().hex[:8]}"  # unique: the server may be shared (BPFREE_TEST_PG_URL)
    suite_file = _suite(tmp_path, name)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]  # no shared disk: only the database
    procs = [subprocess.Popen([sys.executable, "-m", "bpfree.cli", "bench", "--suite", str(suite_file),
                               "--out", str(o), "--storage", pg_url, "--quiet", "--wait"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for o in outs]
    results = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    suite = load_suite(suite_file)
    keys = {run_key(name, s) for s in suite.runs}
    q = SqlQueue(pg_url, name)
    try:
        rows = q.rows()
        assert {r["run_key"] for r in rows} == keys and len(rows) == 6
        assert all(r["status"] == "done" and r["attempts"] == 1 for r in rows), rows
        assert len(q.records()) == 6
    finally:
        q.close()
    per_machine = [{(r.rule, r.seed) for r in load_records(o)} if o.exists() else set() for o in outs]
    assert not (per_machine[0] & per_machine[1]), per_machine  # nothing trained twice
    assert len(per_machine[0] | per_machine[1]) == 6  # nothing lost
    # the report gathers every machine's records from the database
    from bpfree.bench.html import write_report
    md, _ = write_report(tmp_path / "gathered", storage=pg_url, suite=name)
    assert len(load_records(tmp_path / "gathered")) == 6 and "| mf |" in md.read_text()


def test_parallel_tuners_fill_one_study_with_one_budget(pg_url, tmp_path):
    optuna = pytest.importorskip("optuna")
    from bpfree.bench import load_suite
    from bpfree.bench.tune import load_tuned, study_name, tune_one

    name = f"pgt-{uuid.uuid4().hex[:8]}"
    suite = load_suite(_suite(tmp_path, name))
    spec = next(s for s in suite.runs if s.rule == "mf")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            tune_one(suite, spec, tmp_path / f"tuner{i}", storage=pg_url, trials=4,
                     progress=False, seed_offset=i, log=lambda m: None)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=170)
    assert not errors, errors
    study = optuna.load_study(study_name=study_name(name, spec), storage=pg_url)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5  # at most one extra trial started concurrently...
    first4 = sorted(finished, key=lambda t: t.number)[:4]
    best = max((t for t in first4 if t.value is not None), key=lambda t: (t.value, -t.number))
    for i in range(2):  # ...and it never enters the budget: best is among the first 4 trials
        tuned = load_tuned(tmp_path / f"tuner{i}", name, spec)
        assert tuned is not None and tuned["trials_counted"] == 4
    assert study.user_attrs["best_config"]["trial"] == best.number
    assert json.dumps(study.user_attrs["best_config"]["params"])

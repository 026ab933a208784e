"""Run a suite: one record per run, finished runs skipped, so an interrupted bench resumes.

Any number of workers (``workers=N`` processes here, more `bpfree bench` processes elsewhere)
share one queue (see :mod:`bpfree.bench.queue`): each run is claimed by exactly one worker, a dead
worker's run is taken over (and resumed from its per-epoch checkpoint), a run that diverges is
recorded ``diverged`` and one that crashes ``failed`` with its error, and the suite carries on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ..meters import git_info, machine_info
from ..records import RunRecord, read_record, record_rule_key, write_record
from ..train import _bar, train
from .queue import FileQueue, SqlQueue, make_queue, run_key
from .suite import RunSpec, Suite
from .tune import load_tuned

__all__ = ["run_suite", "work", "collect"]


def _say(bar: Any, msg: str) -> None:
    if hasattr(bar, "write"):
        bar.write(msg)
    else:
        print(msg, flush=True)


def _failed_record(suite: Suite, spec: RunSpec, exc: BaseException) -> RunRecord:
    rec = RunRecord(rule=spec.rule, dataset=spec.dataset, model=spec.model, seed=spec.seed,
                    suite=suite.name, status="failed", error=f"{type(exc).__name__}: {exc}")
    rec.config = {"train": dict(spec.train), "rule": dict(spec.options), "variant": spec.variant,
                  "model": spec.model, "dataset": spec.dataset}
    rec.machine = machine_info()
    g = git_info()
    rec.commit, rec.dirty = g.get("commit"), g.get("dirty")
    rec.extra = {"traceback": traceback.format_exception(exc)[-6:]}
    return rec


def _spec_options(suite: Suite, spec: RunSpec, out: Path, *, storage: str | None, use_tuned: bool,
                  device: str, progress: bool) -> tuple[dict[str, Any], dict[str, Any], dict | None]:
    """(train options, rule options, tuned config) of one run: the suite's, then a tuned config
    if one exists, then the suite's target accuracy, device and progress defaults."""
    train_opts, options = dict(spec.train), dict(spec.options)
    tuned = load_tuned(out, suite.name, spec, storage) if use_tuned else None
    if tuned:
        train_opts.update(tuned.get("train", {}))
        options.update(tuned.get("options", {}))
    train_opts.setdefault("device", device)
    target = suite.target_for(spec.dataset)
    if target is not None:
        train_opts.setdefault("target_acc", target)
    train_opts.setdefault("progress", progress)
    return train_opts, options, tuned


def _run_one(suite: Suite, spec: RunSpec, out: Path, claim: Any, queue: FileQueue | SqlQueue, *,
             data_dir: str | Path | None, device: str, progress: bool, use_tuned: bool,
             storage: str | None, bar: Any = None) -> RunRecord:
    path = FileQueue(out, suite.name).path(spec)
    train_opts, options, tuned = _spec_options(suite, spec, out, storage=storage,
                                               use_tuned=use_tuned, device=device, progress=progress)
    epochs = train_opts.get("epochs")

    def on_epoch(epoch: int, val: float | None) -> None:
        claim.update(epoch=epoch, epochs=epochs, val_acc=val)  # other workers' monitors see it
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{spec.label} · epoch {epoch}/{epochs}"
                                + (f" · val {val:.4f}" if val is not None else ""))

    finished = False
    try:
        try:
            rec = train(rule=spec.rule, model=spec.model, data=spec.dataset, rule_options=options,
                        variant=spec.variant,  # tuned options don't change which run this is
                        out=out, suite=suite.name, data_dir=data_dir, on_epoch=on_epoch,
                        resume=False,  # the queue decided this run is due (e.g. --retry-failed);
                        **train_opts)  # its per-epoch checkpoint is still resumed
            if tuned:
                rec.extra = dict(rec.extra or {}, tuned={k: tuned.get(k) for k in
                                                         ("study", "trial", "value", "params")})
                write_record(rec, path)
        except Exception as exc:  # noqa: BLE001 - a crashing run must not stop the suite: it is
            rec = _failed_record(suite, spec, exc)  # recorded "failed" with its error instead
            write_record(rec, path)
            path.with_suffix(".ckpt").unlink(missing_ok=True)
        claim.finish(rec)
        finished = True
        return rec
    finally:
        if not finished:  # interrupted (Ctrl-C, SIGTERM): give the run back, keep its checkpoint
            claim.release()


def work(suite: Suite, out: str | Path, queue: FileQueue | SqlQueue, *,
         data_dir: str | Path | None = None, device: str = "auto", progress: bool = True,
         use_tuned: bool = True, storage: str | None = None, wait: bool = False,
         poll_s: float = 2.0, say: Callable[[str], None] | None = None) -> int:
    """One worker: claim and train runs until none is left to claim. Returns runs trained."""
    out = Path(out)
    keys = {run_key(suite.name, s): s for s in suite.runs}
    attempted: set[str] = set()  # never retry a run twice in one invocation
    done = queue.done_keys(suite.runs)
    for k in done & keys.keys():  # leftovers of a worker killed between record and clean-up
        queue.tidy(keys[k])
    bar = _bar(None, progress, desc=f"suite {suite.name}", unit="run", total=len(keys),
               initial=len(done))
    trained = 0
    try:
        while True:
            pending = [s for k, s in keys.items() if k not in done and k not in attempted]
            if not pending:
                break
            ran = False
            for spec in pending:
                claim = queue.claim(spec)
                if claim is None:
                    continue
                attempted.add(run_key(suite.name, spec))
                if hasattr(bar, "set_postfix_str"):
                    bar.set_postfix_str(spec.label)
                t0 = time.time()
                rec = _run_one(suite, spec, out, claim, queue, data_dir=data_dir, device=device,
                               progress=progress, use_tuned=use_tuned, storage=storage, bar=bar)
                trained += 1
                ran = True
                acc = "-" if rec.test_acc is None else f"{100 * rec.test_acc:.2f}%"
                msg = (f"[{queue.worker}] {spec.label}: {rec.status}, test {acc}, "
                       f"{rec.epochs} epochs, {time.time() - t0:.1f} s")
                if rec.error and rec.status in ("failed", "diverged"):
                    msg += f" ({rec.error.splitlines()[0][:200]})"
                (say or (lambda m: _say(bar, m)))(msg)
                done = queue.done_keys(suite.runs)
                if hasattr(bar, "n"):
                    bar.n = len(done)
                    bar.refresh()
            if not ran:
                busy = [k for k in keys if k not in done and k not in attempted]
                if not busy or not wait:
                    if busy:
                        _say(bar, f"{len(busy)} run(s) are held by other workers: "
                                  f"{', '.join(sorted(busy)[:5])}{' ...' if len(busy) > 5 else ''}")
                    break
                time.sleep(poll_s)
            done = queue.done_keys(suite.runs)
    finally:
        if hasattr(bar, "close"):
            bar.close()
    return trained


def collect(suite: Suite, out: str | Path, queue: FileQueue | SqlQueue | None = None) -> list[RunRecord]:
    """The suite's records in suite order: local files, plus other machines' via the SQL queue."""
    by_key: dict[str, RunRecord] = {}
    if queue is not None:
        for r in queue.records():
            by_key[f"{r.suite}/{r.dataset}/{r.model}/{record_rule_key(r)}/seed{r.seed}"] = r
    local = FileQueue(out, suite.name)
    recs = []
    for s in suite.runs:
        k = run_key(suite.name, s)
        p = local.path(s)
        if p.is_file():
            try:
                by_key[k] = read_record(p)
            except ValueError:
                pass  # corrupt: it counts as not done and is rerun; the DB copy (if any) stays
        if k in by_key:
            recs.append(by_key[k])
    return recs


def run_suite(suite: Suite, out: str | Path, *, data_dir: str | Path | None = None,
              progress: bool = True, device: str = "auto", workers: int = 1,
              storage: str | None = None, retry_failed: bool = False, use_tuned: bool = True,
              stale_after_s: float = 300.0, wait: bool = False) -> list[RunRecord]:
    """Train every run of the suite that has no finished record; returns the suite's records.

    ``workers > 1`` starts that many worker processes on this machine; ``storage`` (an SQLAlchemy
    URL) makes the queue a database table, so workers on other machines can join with the same
    command. Without it, workers coordinate through ``flock`` on claim files in ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if workers > 1:
        _run_parallel(suite, out, workers=workers, data_dir=data_dir, progress=progress,
                      device=device, storage=storage, retry_failed=retry_failed,
                      use_tuned=use_tuned, stale_after_s=stale_after_s, wait=wait)
        q = make_queue(out, suite.name, storage=storage, stale_after_s=stale_after_s)
        try:
            return collect(suite, out, q)
        finally:
            q.close()
    queue = make_queue(out, suite.name, storage=storage, stale_after_s=stale_after_s,
                       retry_failed=retry_failed)
    try:
        work(suite, out, queue, data_dir=data_dir, device=device, progress=progress,
             use_tuned=use_tuned, storage=storage, wait=wait)
        return collect(suite, out, queue)
    finally:
        queue.close()


def worker_command(suite: Suite, out: Path, *, data_dir: str | Path | None, device: str,
                   storage: str | None, retry_failed: bool, use_tuned: bool,
                   stale_after_s: float, wait: bool) -> list[str]:
    if suite.path is None:
        raise ValueError("workers > 1 needs a suite loaded from a file (suite.path is None)")
    cmd = [sys.executable, "-m", "bpfree.cli", "bench", "--suite", str(suite.path), "--out",
           str(out), "--device", device, "--worker", "--quiet", "--stale-after", str(stale_after_s)]
    for flag, val in (("--data-dir", data_dir), ("--storage", storage)):
        if val:
            cmd += [flag, str(val)]
    cmd += ["--retry-failed"] * retry_failed + ["--no-tuned"] * (not use_tuned) + ["--wait"] * wait
    return cmd


def _run_parallel(suite: Suite, out: Path, *, workers: int, progress: bool, **kw: Any) -> None:
    """Start ``workers`` worker processes and show one progress bar over the whole suite."""
    cmd = worker_command(suite, out, **{k: kw[k] for k in ("data_dir", "device", "storage",
                                                          "retry_failed", "use_tuned",
                                                          "stale_after_s", "wait")})
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])  # so `-m bpfree.cli` finds this bpfree
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
    procs = [subprocess.Popen(cmd, env=env) for _ in range(workers)]
    monitor = make_queue(out, suite.name, storage=kw["storage"], stale_after_s=kw["stale_after_s"])
    bar = _bar(None, progress, desc=f"suite {suite.name} ({workers} workers)", unit="run",
               total=len(suite.runs))
    try:
        while any(p.poll() is None for p in procs):
            if hasattr(bar, "n"):
                bar.n = len(monitor.done_keys(suite.runs))
                act = monitor.active()
                bar.set_postfix_str(" | ".join(
                    f"{_short(a.get('run'))} e{a.get('epoch') or 0}"
                    + (f" val {a['val_acc']:.3f}" if a.get("val_acc") is not None else "")
                    for a in act[:4]))
                bar.refresh()
            time.sleep(1.0)
    except KeyboardInterrupt:
        for p in procs:  # the terminal already sent SIGINT to the group; make sure of it
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        if hasattr(bar, "n"):
            bar.n = len(monitor.done_keys(suite.runs))
            bar.close()
        monitor.close()
    bad = [p.returncode for p in procs if p.returncode]
    if bad:
        print(f"bpfree: {len(bad)} worker(s) exited with status {bad}", file=sys.stderr)


def _short(label: Any) -> str:
    return str(label).replace(" seed ", "/s") if label else "?"


def run_interleaved(suite: Suite, out: str | Path, *, data_dir: str | Path | None = None,
                    device: str = "auto", progress: bool = False, use_tuned: bool = True,
                    on_record: Any = None) -> list[RunRecord]:
    """The suite in one process, the runs of each (dataset, seed) *epoch by epoch in turn*
    (:func:`bpfree.train.train_interleaved`): their epoch times are taken under the same machine
    load, so the ratios to the BP twin do not carry the drift between sequential runs. Same
    records, paths and resume behaviour as :func:`run_suite` (finished runs are skipped)."""
    from ..train import train_interleaved

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, int], list[RunSpec]] = {}
    for spec in suite.runs:
        groups.setdefault((spec.dataset, spec.seed), []).append(spec)
    recs: list[RunRecord] = []
    for (dataset, seed), specs in groups.items():
        runs = []
        for spec in specs:
            train_opts, options, _ = _spec_options(suite, spec, out, storage=None,
                                                   use_tuned=use_tuned, device=device,
                                                   progress=progress)
            train_opts["seed"] = seed
            runs.append({"rule": spec.rule, "model": spec.model, "rule_options": options,
                         "variant": spec.variant, **train_opts})
        group = train_interleaved(runs, data=dataset, out=out, suite=suite.name, data_dir=data_dir)
        for rec in group:
            if on_record is not None:
                on_record(rec)
        recs += group
    return recs

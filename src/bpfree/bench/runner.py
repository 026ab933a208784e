"""Run a suite: one record per run, finished runs skipped, so an interrupted bench resumes."""

from __future__ import annotations

from pathlib import Path

from ..records import RunRecord, is_done, read_record, record_path
from ..train import _bar, train
from .suite import Suite


def run_suite(suite: Suite, out: str | Path, *, data_dir: str | Path | None = None,
              progress: bool = True, device: str = "auto") -> list[RunRecord]:
    """Train every run of the suite that has no finished record in ``out``."""
    out = Path(out)
    records = []
    bar = _bar(suite.runs, progress, desc=f"suite {suite.name}", unit="run")
    for spec in bar:
        path = record_path(out, suite=suite.name, dataset=spec.dataset, model=spec.model,
                           rule=spec.rule, seed=spec.seed)
        if is_done(path):
            records.append(read_record(path))
            continue
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{spec.rule} {spec.model} {spec.dataset} seed {spec.seed}")
        train_opts = dict(spec.train)
        train_opts.setdefault("device", device)
        if suite.target_acc is not None:
            train_opts.setdefault("target_acc", suite.target_acc)
        train_opts.setdefault("progress", progress)
        rec = train(rule=spec.rule, model=spec.model, data=spec.dataset,
                    rule_options=spec.options, out=out, suite=suite.name, data_dir=data_dir,
                    **train_opts)
        records.append(rec)
    return records

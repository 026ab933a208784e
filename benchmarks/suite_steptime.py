"""Paired step timing for every (dataset, model, rule) of a suite, each against bp on that model.

    python benchmarks/suite_steptime.py --suite paper-cpu --out benchmarks/records/paper-cpu \
        [--steps 20] [--repeats 15] [--threads 1]

A suite's whole-run epoch times drift with whatever else the machine runs; here bp and the rule
take turns on the same batches (``bpfree.bench.steptime``), so both see the same machine. One
file per rule and dataset, ``steptime-<rule>-<dataset>.json``, with machine and commit, beside the
suite's records (``update_readme.py`` renders them under the suite's table). Existing files are
skipped; delete one to remeasure.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from bpfree.bench import load_suite
from bpfree.bench.steptime import paired_step_times
from bpfree.meters import git_info, machine_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True, help="suite name or .toml file")
    ap.add_argument("--out", required=True, help="directory for steptime-<rule>-<dataset>.json")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the suite's")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = sorted({(s.dataset, s.model, s.rule) for s in suite.runs if s.rule != "bp"})
    for dataset, model, rule in todo:
        path = out / f"steptime-{rule}-{dataset}.json"
        if path.exists():
            print(f"{path.name}: exists, skipped")
            continue
        bs = args.batch_size or next(s.train.get("batch_size", 128) for s in suite.runs
                                     if (s.dataset, s.model, s.rule) == (dataset, model, rule))
        times = paired_step_times(["bp", rule], model, dataset, batch_size=bs, steps=args.steps,
                                  repeats=args.repeats)
        rows = {n: {"median_step_s": t.median_s, "min_s": t.spread_s[0], "max_s": t.spread_s[1],
                    "ratios_per_repeat": [a / b for a, b in zip(t.times_s, times["bp"].times_s)],
                    "times_s": t.times_s} for n, t in times.items()}
        blob = {"what": f"paired step time, suite {suite.name}", "rule": rule, "model": model,
                "dataset": dataset, "batch_size": bs, "steps_per_repeat": args.steps,
                "repeats": args.repeats, "rules": rows, "machine": machine_info(), **git_info(),
                "torch_threads": torch.get_num_threads()}
        path.write_text(json.dumps(blob, indent=2))
        print(f"{rule} on {dataset} ({model}): {statistics.median(rows[rule]['ratios_per_repeat']):.2f} x bp")


if __name__ == "__main__":
    main()

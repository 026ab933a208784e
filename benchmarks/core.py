"""The core rules against backprop: accuracy runs (records) and paired step timing.

    python benchmarks/core.py [--out benchmarks/records/core] [--skip-accuracy] [--skip-timing]

1. Runs the suite ``benchmarks/core.toml`` (resumable: finished runs are skipped) and prints the
   results table.
2. Times bp, mf, ff and dfa training steps on Fashion-MNIST, MLP 2x1000, batch 128, fused Adam,
   *interleaved* (see ``bpfree.bench.steptime``), and writes ``steptime.json`` with the machine
   and commit. These ratios are the ones the README quotes: under a loaded machine they are far
   more stable than whole-run epoch times.

   ``--steps 422 --rules bp,mf --threads 1`` makes each timed window one full training epoch of
   Fashion-MNIST (54k training images at batch 128, as in the suite's runs): bp and mf then take
   turns epoch by epoch, so "median epoch time, same run" is measured under the same machine load
   for both (sequential whole runs drift by up to 2x on a shared VM).

``--interleave`` trains the suite's runs of each (dataset, seed) *epoch by epoch in turn*
(:func:`bpfree.train_interleaved`) instead of one after another: the records are the same kind
(accuracy as each run alone, early stopping, resumable), and the epoch-time ratios compare epochs
taken under the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from bpfree.bench import load_suite, markdown_table, run_suite, summarize
from bpfree.bench.runner import run_interleaved
from bpfree.bench.steptime import paired_step_times
from bpfree.meters import git_info, machine_info

HERE = Path(__file__).parent


def _print_record(r) -> None:
    print(f"{r.rule:8s} {r.model} {r.dataset} seed {r.seed}: {r.status}, test {r.test_acc}, "
          f"epoch {r.epoch_time_s} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "records" / "core"))
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20, help="training steps per timed window")
    ap.add_argument("--rules", default="bp,mf,ff,dfa", help="comma-separated; bp first")
    ap.add_argument("--interleave", action="store_true",
                    help="accuracy runs of each (dataset, seed) take turns epoch by epoch")
    ap.add_argument("--suite", default=str(HERE / "core.toml"), help="suite file for the accuracy runs")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if not args.skip_timing:
        rules = args.rules.split(",")
        if rules[0] != "bp":
            ap.error("--rules must start with bp (ratios are to bp)")
        times = paired_step_times(rules, "mlp:1000,1000", "fashion-mnist",
                                  batch_size=128, steps=args.steps, repeats=args.repeats)
        bp = times["bp"].median_s
        rows = {n: {"median_step_s": t.median_s, "min_s": t.spread_s[0], "max_s": t.spread_s[1],
                    "ratio_to_bp": t.median_s / bp,
                    "ratios_per_repeat": [a / b for a, b in zip(t.times_s, times["bp"].times_s)],
                    "times_s": t.times_s} for n, t in times.items()}
        blob = {"what": "paired step time, fashion-mnist, mlp:1000,1000, batch 128, fused Adam",
                "repeats": args.repeats, "steps_per_repeat": args.steps, "rules": rows,
                "machine": machine_info(), **git_info(), "torch_threads": torch.get_num_threads()}
        out.mkdir(parents=True, exist_ok=True)
        (out / "steptime.json").write_text(json.dumps(blob, indent=2))
        if args.steps >= 100:
            print(f"per window of {args.steps} steps (one epoch): "
                  + ", ".join(f"{n} {r['median_step_s'] * args.steps:.2f} s" for n, r in rows.items()))
        print("| rule | median step ms | min–max ms | × bp (median of paired ratios) |\n|---|---|---|---|")
        for n, r in rows.items():
            print(f"| {n} | {1e3 * r['median_step_s']:.1f} | {1e3 * r['min_s']:.1f}–{1e3 * r['max_s']:.1f} "
                  f"| {statistics.median(r['ratios_per_repeat']):.2f} |")
    if not args.skip_accuracy:
        suite = load_suite(args.suite)
        if args.interleave:
            recs = run_interleaved(suite, out, on_record=_print_record)
        else:
            recs = run_suite(suite, out, progress=os.isatty(1))
        print(markdown_table(summarize(recs)))


if __name__ == "__main__":
    main()

"""fa, sign-symmetry, drtp, tpsgd and pepita against their BP twins on real MNIST.

    PYTHONPATH=src BPFREE_DATA_DIR=../shared/data python benchmarks/feedback_rules.py \
        [--epochs 2] [--pepita-epochs 4] [--out results/feedback_rules] [--skip-timing]

Three groups, each with its own BP twin on the identical model, data and train options:

* ``mlp:500,500,act=tanh`` (DRTP's tanh MLP), Adam lr 1e-3, batch 128: bp, fa, sign-symmetry,
  drtp, tpsgd;
* ``mlp:1024,bias=false`` (PEPITA's native 1×1024), PEPITA's own train options
  (``PEPITA.recommended_train``: SGD momentum 0.9, batch 64) for both pepita and bp;
* ``rnn:128`` (sequential-row MNIST, 28 steps of 28 pixels), Adam lr 1e-3, batch 128: bp, tpsgd.

Records go to ``--out`` (resumable: finished runs are skipped); the table gives test accuracy and
the epoch-time ratio to bp from the records. Then per-step costs are measured *interleaved*
(``bpfree.bench.steptime``), which is the ratio to trust on a shared machine. Threads: 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import bpfree
from bpfree import RULES
from bpfree.bench import markdown_table, summarize
from bpfree.bench.steptime import paired_step_times
from bpfree.meters import git_info, machine_info
from bpfree.records import load_records

ADAM = {"optimizer": "adam", "lr": 1e-3, "batch_size": 128}
PEPITA_TRAIN = dict(RULES["pepita"].recommended_train)
GROUPS = [  # (model, rules, train options, epochs key)
    ("mlp:500,500,act=tanh", ["bp", "fa", "sign-symmetry", "drtp", "tpsgd"], ADAM, "epochs"),
    ("mlp:1024,bias=false", ["bp", "pepita"], PEPITA_TRAIN, "pepita_epochs"),
    ("rnn:128", ["bp", "tpsgd"], ADAM, "epochs"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/feedback_rules")
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--pepita-epochs", type=int, default=4)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--groups", default="0,1,2", help="which groups to run (indices)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    chosen = [GROUPS[int(i)] for i in args.groups.split(",")]
    m, g = machine_info(), git_info()
    print(f"machine: {m.get('cpu', m)} | commit {g.get('commit')} dirty={g.get('dirty')} | threads 1")
    if not args.skip_accuracy:
        for model, rules, opts, ep_key in chosen:
            for rule in rules:
                rec = bpfree.train(rule=rule, model=model, data=args.data, out=args.out,
                                   suite="feedback_rules", epochs=getattr(args, ep_key), threads=1,
                                   progress=False, **opts)
                print(f"{model:24s} {rule:14s} {rec.status:8s} test_acc={rec.test_acc} "
                      f"epoch_time_s={rec.epoch_time_s}")
        print(markdown_table(summarize(load_records(args.out))))
    if not args.skip_timing:
        print("\nInterleaved per-step cost (median of repeats), ratio to bp on the same model:")
        for model, rules, opts, _ in chosen:
            times = paired_step_times(rules, model, args.data, batch_size=opts["batch_size"],
                                      steps=15, repeats=7, lr=opts["lr"])
            base = times["bp"].median_s
            row = ", ".join(f"{r} {t.median_s * 1e3:.1f} ms ({t.median_s / base:.2f}x)"
                            for r, t in times.items())
            print(f"  {model} batch {opts['batch_size']}: {row}")


if __name__ == "__main__":
    main()

"""fa, sign-symmetry, drtp, tpsgd and pepita against their BP twins on real MNIST.

    PYTHONPATH=src BPFREE_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/feedback_rules.py \
        [--epochs 12] [--tp-epochs 30] [--pepita-epochs 100] [--groups 0,1,2,3] [--rules bp,fa] \
        [--out benchmarks/records/feedback_rules_v2] [--skip-accuracy] [--skip-timing]

(the defaults are the settings of ``benchmarks/records/feedback_rules_v2``, whose paired step
times are in ``steptime.txt`` there).

Four groups, each with its own BP twin on the identical model, data and train options (a rule's
``recommended_train`` is applied to the whole group, BP included):

0. ``mlp:1000,1000`` (ReLU; FA's native 2×1000 MLP, the Beyond-Backpropagation baseline), Adam
   lr 1e-3, batch 128, cosine decay: bp, fa, sign-symmetry;
1. ``mlp:1024,bias=false,dropout=0.1`` (PEPITA's native 1×1024 with its 10 % dropout, which the
   BP twin applies too: the same network), PEPITA's own train options
   (``PEPITA.recommended_train``: SGD momentum 0.9, lr 0.01, batch 64, lr ×0.1 at 60 % and 90 %
   of the epochs, all 60k training images as in the paper; the paper's 100 epochs): bp, pepita;
2. ``rnn:128`` (sequential-row MNIST, 28 steps of 28 pixels), Adam lr 1e-3, batch 128: bp, tpsgd;
3. ``mlp:500,500,act=tanh`` (DRTP's tanh MLP), Adam lr 1e-3, batch 128, constant lr (DRTP's
   fixed-sign target push keeps improving at full lr; a decay freezes it early): bp, drtp, tpsgd.

Records go to ``--out`` (resumable: finished runs are skipped); the table gives test accuracy and
the epoch-time ratio to bp from the records. Then per-step costs are measured *interleaved*
(``bpfree.bench.steptime``), which is the ratio to trust on a shared machine. Threads: 1.
"""

from __future__ import annotations

import argparse
import statistics
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
GROUPS = [  # (model, rules, train options, epochs key); indices are the --groups values
    ("mlp:1000,1000", ["bp", "fa", "sign-symmetry"], dict(ADAM, lr_schedule="cosine"), "epochs"),
    (RULES["pepita"].native_model, ["bp", "pepita"], PEPITA_TRAIN, "pepita_epochs"),
    ("rnn:128", ["bp", "tpsgd"], ADAM, "epochs"),
    ("mlp:500,500,act=tanh", ["bp", "drtp", "tpsgd"], ADAM, "tp_epochs"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/feedback_rules")
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--tp-epochs", type=int, default=30, help="epochs of the drtp/tpsgd group")
    ap.add_argument("--pepita-epochs", type=int, default=100)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--timing-repeats", type=int, default=15)
    ap.add_argument("--groups", default="0,1,2,3", help="which groups to run (indices)")
    ap.add_argument("--rules", default="", help="only these rules of the chosen groups (comma-"
                    "separated; e.g. to train a group's bp and rule in two processes)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    chosen = [GROUPS[int(i)] for i in args.groups.split(",")]
    m, g = machine_info(), git_info()
    print(f"machine: {m.get('cpu', m)} | commit {g.get('commit')} dirty={g.get('dirty')} | threads 1")
    if not args.skip_accuracy:
        for model, rules, opts, ep_key in chosen:
            for rule in rules:
                if args.rules and rule not in args.rules.split(","):
                    continue
                rec = bpfree.train(rule=rule, model=model, data=args.data, out=args.out,
                                   suite="feedback_rules", epochs=getattr(args, ep_key), threads=1,
                                   progress=False, **opts)
                print(f"{model:24s} {rule:14s} {rec.status:8s} test_acc={rec.test_acc} "
                      f"epoch_time_s={rec.epoch_time_s}")
        print(markdown_table(summarize(load_records(args.out))))
    if not args.skip_timing:
        print("\nInterleaved per-step cost (median of repeats; each group's optimizer), ratio to bp "
              "on the same model:")
        for model, rules, opts, _ in chosen:
            optim = {k: v for k, v in opts.items() if k in ("optimizer", "momentum")}
            times = paired_step_times(rules, model, args.data, batch_size=opts["batch_size"],
                                      steps=15, repeats=args.timing_repeats, lr=opts["lr"], **optim)
            bp = times["bp"]
            # ratio of medians, and [median of the per-repeat paired ratios] (robust to drift)
            row = ", ".join(f"{r} {t.median_s * 1e3:.1f} ms ({t.median_s / bp.median_s:.2f}x "
                            f"[{statistics.median(a / b for a, b in zip(t.times_s, bp.times_s)):.2f}x])"
                            for r, t in times.items())
            print(f"  {model} batch {opts['batch_size']}: {row}")


if __name__ == "__main__":
    main()

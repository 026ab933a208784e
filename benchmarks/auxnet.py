"""DGL, AugLocal and MAN vs their BP twin on a ResNet, Fashion-MNIST, one process, threads=1.

Trains bp, dgl, auglocal and man on the same model, data, seed and budget (records under
``--out``), then prints the bench table (accuracy, epoch time and peak-memory ratios to bp, the
memory being ``extra["mem_delta_bytes"]``: peak RSS above the pre-training baseline).

    PYTHONPATH=src BPFREE_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/auxnet.py \
        --model resnet:8,width=8 --epochs 3 --train-subset 20000
    # accuracy at convergence: a cosine schedule to 0 so that every rule ends on a settled model
    ... --epochs 6 --train-subset 20000 --lr-schedule cosine --rules bp,dgl   # and auglocal,man
    # rule variants: options off the defaults get their own rows (auglocal[aux_depth=5]) beside
    # the same BP twin; benchmarks/records/auxnet_full_k4 came from (full data, 6 epochs, cosine):
    ... --epochs 6 --lr-schedule cosine --rules bp --out benchmarks/records/auxnet_full_k4
    ... --epochs 6 --lr-schedule cosine --rules auglocal --set aux_depth=5 --out (same)
    ... --epochs 6 --lr-schedule cosine --rules auglocal,dgl,man --set n_modules=4 --out (same)

``--train-subset N`` trains on the first N training images (the full test set is always used) so
that a deep CNN fits a CPU budget; say so when quoting numbers. FLOP counting is off: it runs a
training step on a copy before the first epoch, and the heap it leaves behind would hide part of
the first epoch's peak from the RSS meter. The script re-executes itself with
``MALLOC_MMAP_THRESHOLD_=65536`` so freed activations go back to the OS and RSS tracks live memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # must be set before the process starts
    os.execve(sys.executable, [sys.executable, *sys.argv],
              {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})

from bpfree import train  # noqa: E402
from bpfree.bench import markdown_table, summarize  # noqa: E402
from bpfree.cli import _parse_sets  # noqa: E402
from bpfree.data import load_dataset  # noqa: E402
from bpfree.meters import git_info, machine_info  # noqa: E402
from bpfree.records import load_records  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet:8,width=8")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr-schedule", default="constant",
                    help="constant | cosine | linear-cooldown (the same for every rule)")
    ap.add_argument("--train-subset", type=int, default=0, help="first N training images (0: all)")
    ap.add_argument("--rules", default="bp,dgl,auglocal,man")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a rule option for every rule in --rules, e.g. --set aux_depth=5 (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/auxnet")
    args = ap.parse_args()
    data = load_dataset(args.data)
    if args.train_subset:
        n = args.train_subset
        data = dataclasses.replace(data, name=f"{data.name}[:{n}]", x_train=data.x_train[:n],
                                   y_train=data.y_train[:n])
    for rule in args.rules.split(","):
        rec = train(rule=rule, rule_options=_parse_sets(args.set), model=args.model, data=data, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, lr_schedule=args.lr_schedule, seed=args.seed,
                    threads=1, progress=False, measure_flops=False, energy=False, out=args.out, suite="auxnet")
        mem = (rec.extra or {}).get("mem_delta_bytes")
        print(f"{rule:9s} {rec.status:6s} test_acc {rec.test_acc} epoch_time_s {rec.epoch_time_s} "
              f"mem_delta_MiB {mem / 2**20 if mem else None} curve "
              f"{[round(c['val_acc'], 4) for c in rec.curve if c['val_acc'] is not None]}", flush=True)
    m, g = machine_info(), git_info()
    print(f"\nmachine: {m.get('cpu_model')}, {m.get('logical_cores')} cores, torch {m.get('torch')}  commit: {g.get('commit')} dirty={g.get('dirty')}")
    print(markdown_table(summarize(load_records(args.out))))


if __name__ == "__main__":
    main()

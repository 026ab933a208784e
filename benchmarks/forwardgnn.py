"""ForwardGNN (single forward, virtual class nodes) against its BP twin on node classification.

    PYTHONPATH=src python benchmarks/forwardgnn.py [--out results/forwardgnn] [--seeds 5]
                                                   [--epochs 100] [--skip-timing]

Same model (GCN / GraphSAGE, 2 x 64, dropout 0.5, linear head), same data, full-batch training
with fused Adam (lr 0.01, weight decay 5e-4: Kipf & Welling's GCN settings) for both rules, seeds
interleaved. Graphs: the generated planted-partition graph ``sbm`` (64/16/20 train/val/test, the
ForwardGNN paper's protocol) and Zachary's karate club (4 communities, half the members labelled).
Cora (the anchor: 84.54 % vs BP 86.04 % in the paper, on CoraML) runs when its Planetoid files are
found (``BPFREE_DATA_DIR``). Writes one record per run under ``--out`` (resumable), prints the
results table and a paired step-time table (interleaved, median of repeats: see
``bpfree.bench.steptime``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from bpfree import train
from bpfree.bench import markdown_table, summarize
from bpfree.bench.steptime import paired_step_times
from bpfree.data import DatasetNotFoundError, load_dataset
from bpfree.meters import git_info, machine_info
from bpfree.records import load_records

# (dataset, model, val_fraction)
RUNS = [("sbm", "gcn:64,64", 0.2), ("sbm", "sage:64,64", 0.2), ("karate", "gcn:64,64", 0.0),
        ("cora", "gcn:64,64", 0.2)]
TRAIN = {"lr": 0.01, "weight_decay": 5e-4, "threads": 1, "progress": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/forwardgnn")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    runs = []
    for ds, model, val in RUNS:
        try:
            bundle = load_dataset(ds)
        except DatasetNotFoundError:
            print(f"skipping {ds}: its files were not found (set BPFREE_DATA_DIR)")
            continue
        runs.append((ds, model, val, len(bundle.y_train)))
    for seed in range(args.seeds):  # interleaved: machine-load drifts hit both rules alike
        for ds, model, val, n_train in runs:
            for rule in ("bp", "forwardgnn"):
                rec = train(rule, model, ds, out=out, suite="forwardgnn", seed=seed,
                            epochs=args.epochs, val_fraction=val, batch_size=n_train, **TRAIN)
                print(f"{ds:7s} {model:11s} {rule:10s} seed {seed}: test "
                      f"{100 * (rec.test_acc or 0):.2f} %  ({rec.status})", flush=True)
    print(markdown_table(summarize(load_records(out))))
    if args.skip_timing:
        return
    timing = {}
    print("\n| dataset | model | bp step ms | forwardgnn step ms | × bp (median of paired ratios) |")
    print("|---|---|---|---|---|")
    for ds, model, _, n_train in runs:
        t = paired_step_times(["bp", "forwardgnn"], model, ds, batch_size=n_train, steps=10,
                              repeats=9, lr=TRAIN["lr"], device="cpu")
        ratios = [a / b for a, b in zip(t["forwardgnn"].times_s, t["bp"].times_s)]
        timing[f"{ds}/{model}"] = {"bp_s": t["bp"].times_s, "forwardgnn_s": t["forwardgnn"].times_s,
                                   "ratio_median": statistics.median(ratios)}
        print(f"| {ds} | {model} | {1e3 * t['bp'].median_s:.2f} | "
              f"{1e3 * t['forwardgnn'].median_s:.2f} | {statistics.median(ratios):.2f} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "steptime.json").write_text(json.dumps(
        {"what": "paired full-batch step time, 1 thread", "runs": timing,
         "machine": machine_info(), **git_info()}, indent=2))


if __name__ == "__main__":
    main()

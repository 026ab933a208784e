"""MNIST: fg-local, fg and ulr against their BP twins (same model, data, budget, one process).

- fg-local trains Ren et al.'s MNIST LocalMixer M/1/16 (``localmixer:512,groups=16``);
- fg trains Baydin et al.'s MNIST MLP (``mlp:1024,1024``);
- ulr trains an MLP (``mlp:512``);
and bp trains each identical model with the same optimizer (Adam), lr schedule (``--schedule``,
default cosine), batch, epochs and seed. Each
BP twin runs right after its rule, so the two epoch times come from the same machine state; the
table's "× bp" columns are the ratios of median epoch time (warm-up epoch excluded) and of peak
training memory above the pre-training baseline (``extra["mem_delta_bytes"]``).

Usage (threads=1; finished runs are skipped on a rerun):
    PYTHONPATH=src BPFREE_DATA_DIR=... python benchmarks/estimators_fg.py \
        --out benchmarks/records/estimators_fg_v2 [--only fg-local] [--local-epochs 20]
"""

from __future__ import annotations

import argparse
import platform

from bpfree import train
from bpfree.bench import markdown_table, summarize
from bpfree.records import load_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/estimators_fg")
    ap.add_argument("--only", choices=["fg-local", "fg", "ulr"], nargs="*",
                    help="run these rules (and their twins) only; default: every rule")
    ap.add_argument("--schedule", default="cosine",
                    help="lr schedule of every run and twin (Ren et al. decay the lr by a cosine)")
    ap.add_argument("--local-model", default="localmixer:512,groups=16")
    ap.add_argument("--local-epochs", type=int, default=20)
    ap.add_argument("--local-lr", type=float, default=2e-3)
    ap.add_argument("--local-directions", type=int, default=1)
    ap.add_argument("--fg-model", default="mlp:1024,1024")
    ap.add_argument("--fg-epochs", type=int, default=2)
    ap.add_argument("--fg-lr", type=float, default=1e-4)
    ap.add_argument("--ulr-model", default="mlp:512")
    ap.add_argument("--ulr-epochs", type=int, default=2)
    ap.add_argument("--ulr-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    common = dict(data="mnist", out=args.out, suite="estimators_fg", threads=1, progress=False,
                  seed=args.seed, batch_size=128, measure_flops=False, lr_schedule=args.schedule)
    only = set(args.only or ["fg-local", "fg", "ulr"])
    runs = []
    if args.local_epochs and "fg-local" in only:
        runs += [("fg-local", args.local_model, {"num_directions": args.local_directions},
                  args.local_lr, args.local_epochs),
                 ("bp", args.local_model, {}, 1e-3, args.local_epochs)]
    if args.fg_epochs and "fg" in only:
        runs += [("fg", args.fg_model, {}, args.fg_lr, args.fg_epochs),
                 ("bp", args.fg_model, {}, 1e-3, args.fg_epochs)]
    if args.ulr_epochs and "ulr" in only:
        runs += [("ulr", args.ulr_model, {}, args.ulr_lr, args.ulr_epochs),
                 ("bp", args.ulr_model, {}, 1e-3, args.ulr_epochs)]
    for rule, model, opts, lr, epochs in runs:
        rec = train(rule=rule, model=model, rule_options=opts, lr=lr, epochs=epochs, **common)
        acc = "–" if rec.test_acc is None else f"{100 * rec.test_acc:.2f} %"
        mem = (rec.extra or {}).get("mem_delta_bytes")
        print(f"{rule:8s} {model:28s} {rec.status:8s} test {acc} epochs {rec.epochs} "
              f"epoch {rec.epoch_time_s} s mem_delta {mem} {rec.error or ''}", flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, threads=1, batch 128, Adam, "
          f"{args.schedule} schedule; "
          f"epochs: fg-local {args.local_epochs} (lr {args.local_lr}, "
          f"{args.local_directions} directions), fg {args.fg_epochs} (lr {args.fg_lr}), "
          f"ulr {args.ulr_epochs} (lr {args.ulr_lr}); bp twins lr 1e-3\n")
    print(markdown_table(summarize(load_records(args.out))))


if __name__ == "__main__":
    main()

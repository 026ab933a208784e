"""MNIST: eggroll, es and mfff against their BP twins (same model, data, budget, one process).

- eggroll and es train an MLP; bp trains the identical MLP.
- mfff trains ``physical:...`` (black-box, noisy, non-differentiable physical layers). Backprop
  cannot run on that model (the physical layer refuses autograd), so its twin is bp on the same
  architecture with ``differentiable=true``: an ideal, noise-free digital twin of the physics
  (the best case for bp). Its record is labelled with the black-box model's name so the table
  gives mfff's ratios to it.

Usage (threads=1; records under results/estimators_es, git-ignored; finished runs are skipped):
    PYTHONPATH=src BPFREE_DATA_DIR=... python benchmarks/estimators_es.py [--eggroll-epochs 2]
"""

from __future__ import annotations

import argparse
import platform

from bpfree import train
from bpfree.bench import markdown_table, summarize
from bpfree.records import load_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/estimators_es")
    ap.add_argument("--eggroll-model", default="mlp:128")
    ap.add_argument("--eggroll-epochs", type=int, default=2)
    ap.add_argument("--es-model", default="mlp:32")
    ap.add_argument("--es-epochs", type=int, default=1)
    ap.add_argument("--mfff-widths", default="500,500")
    ap.add_argument("--mfff-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    common = dict(data="mnist", out=args.out, suite="estimators_es", threads=1, progress=False,
                  seed=args.seed, batch_size=100, measure_flops=False)
    runs = []
    if args.eggroll_epochs:
        runs += [("eggroll", args.eggroll_model, {"population": 512, "sigma": 0.05}, 3e-3,
                  args.eggroll_epochs),
                 ("bp", args.eggroll_model, {}, 1e-3, args.eggroll_epochs)]
    if args.es_epochs:
        runs += [("es", args.es_model, {"population": 256, "sigma": 0.02}, 3e-3, args.es_epochs),
                 ("bp", args.es_model, {}, 1e-3, args.es_epochs)]
    phys = f"physical:{args.mfff_widths}"
    if args.mfff_epochs:
        runs += [("mfff", phys, {}, 1e-3, args.mfff_epochs),
                 ("bp", f"{phys},differentiable=true", {}, 1e-3, args.mfff_epochs)]
    for rule, model, opts, lr, epochs in runs:
        rec = train(rule=rule, model=model, rule_options=opts, lr=lr, epochs=epochs, **common)
        acc = "–" if rec.test_acc is None else f"{100 * rec.test_acc:.2f} %"
        print(f"{rule:8s} {model:40s} {rec.status:8s} test {acc} epoch {rec.epoch_time_s} s "
              f"{rec.error or ''}", flush=True)
    recs = load_records(args.out)
    for r in recs:  # the ideal digital twin stands in for bp on the black-box model
        if r.rule == "bp" and r.model.endswith(",differentiable=true"):
            r.model = r.model[: -len(",differentiable=true")]
    print(f"\nmachine: {platform.processor() or platform.machine()}, threads=1, "
          f"batch 100, Adam; epochs: eggroll {args.eggroll_epochs}, es {args.es_epochs}, "
          f"mfff {args.mfff_epochs}\n")
    print(markdown_table(summarize(recs)))


if __name__ == "__main__":
    main()

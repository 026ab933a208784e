"""MNIST: eggroll, es and mfff against their BP twins (same model, data, budget, one process).

- eggroll and es train an MLP; bp trains the identical MLP.
- mfff trains ``physical:...`` (black-box, noisy, non-differentiable physical layers). Backprop
  cannot run on that model (the physical layer refuses autograd), so its twin is bp on the same
  architecture with ``differentiable=true``: an ideal, noise-free digital twin of the physics
  (the best case for bp). Its record is labelled with the black-box model's name so the table
  gives mfff's ratios to it.

Every BP twin gets the rule's epochs, batch, optimizer (Adam) and lr schedule (``--schedule``,
default cosine: a noisy gradient estimate needs a decaying step to settle, and bp gets the same
schedule); only the base lr differs (bp: 1e-3). ES-family recipe (OpenAI-ES, EGGROLL):
antithetic pairs, centered-rank fitness shaping, Adam on the ES gradient estimate; σ = 0.02
(measured best of 0.005-0.1 on mlp:128 after one epoch: 90.7 / 91.0 / 91.3 / 89.3 / 85.7 % for
σ = 0.005 / 0.01 / 0.02 / 0.05 / 0.1). Rule and twin run back to back in one process; with
``--only`` two processes can share one ``--out`` (the table covers every record there).

Usage (threads=1; finished runs are skipped on a rerun):
    PYTHONPATH=src BPFREE_DATA_DIR=... python benchmarks/estimators_es.py \
        --out benchmarks/records/estimators_es_v2 [--only eggroll] [--eggroll-epochs 12]
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
    ap.add_argument("--only", choices=["eggroll", "es", "mfff"], nargs="*",
                    help="run these rules (and their twins) only; default: every rule")
    ap.add_argument("--schedule", default="cosine", help="lr schedule of every run and twin")
    ap.add_argument("--eggroll-model", default="mlp:128")
    ap.add_argument("--eggroll-epochs", type=int, default=12)
    ap.add_argument("--eggroll-lr", type=float, default=3e-3)
    ap.add_argument("--eggroll-population", type=int, default=512)
    ap.add_argument("--eggroll-sigma", type=float, default=0.02)
    ap.add_argument("--es-model", default="mlp:32")
    ap.add_argument("--es-epochs", type=int, default=1)
    ap.add_argument("--mfff-widths", default="500,500")
    ap.add_argument("--mfff-epochs", type=int, default=15)
    ap.add_argument("--mfff-lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    only = set(args.only or ["eggroll", "es", "mfff"])
    common = dict(data="mnist", out=args.out, suite="estimators_es", threads=1, progress=False,
                  seed=args.seed, batch_size=100, measure_flops=False,
                  lr_schedule=args.schedule)
    runs = []
    if args.eggroll_epochs and "eggroll" in only:
        opts = {"population": args.eggroll_population, "sigma": args.eggroll_sigma}
        runs += [("eggroll", args.eggroll_model, opts, args.eggroll_lr, args.eggroll_epochs),
                 ("bp", args.eggroll_model, {}, 1e-3, args.eggroll_epochs)]
    if args.es_epochs and "es" in only:
        runs += [("es", args.es_model, {"population": 256, "sigma": 0.02}, 3e-3, args.es_epochs),
                 ("bp", args.es_model, {}, 1e-3, args.es_epochs)]
    phys = f"physical:{args.mfff_widths}"
    if args.mfff_epochs and "mfff" in only:
        runs += [("mfff", phys, {}, args.mfff_lr, args.mfff_epochs),
                 ("bp", f"{phys},differentiable=true", {}, 1e-3, args.mfff_epochs)]
    for rule, model, opts, lr, epochs in runs:
        rec = train(rule=rule, model=model, rule_options=opts, lr=lr, epochs=epochs, **common)
        acc = "–" if rec.test_acc is None else f"{100 * rec.test_acc:.2f} %"
        mem = (rec.extra or {}).get("mem_delta_bytes")
        print(f"{rule:8s} {model:40s} {rec.status:8s} test {acc} epochs {rec.epochs} "
              f"epoch {rec.epoch_time_s} s mem_delta {mem} {rec.error or ''}", flush=True)
    recs = load_records(args.out)
    for r in recs:  # the ideal digital twin stands in for bp on the black-box model
        if r.rule == "bp" and r.model.endswith(",differentiable=true"):
            r.model = r.model[: -len(",differentiable=true")]
    print(f"\nmachine: {platform.processor() or platform.machine()}, threads=1, batch 100, Adam, "
          f"{args.schedule} schedule; eggroll {args.eggroll_epochs} epochs (lr {args.eggroll_lr}, "
          f"N {args.eggroll_population}, σ {args.eggroll_sigma}), es {args.es_epochs}, "
          f"mfff {args.mfff_epochs} (lr {args.mfff_lr}); bp twins lr 1e-3\n")
    print(markdown_table(summarize(recs)))


if __name__ == "__main__":
    main()

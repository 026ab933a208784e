"""cafo-rand, cafo-dfa, ccl, ff / ff-collab and hebbian against their BP twins on real data.

    PYTHONPATH=src BPFREE_DATA_DIR=../shared/data python benchmarks/local_rules.py \
        [--groups cafo,ccl,ff,hebbian] [--data mnist,fashion-mnist] [--out results/local_rules] \
        [--quick] [--skip-timing]

Each group trains its rules and a BP twin on the identical model, data and train options (Adam,
lr 1e-3, batch 128, seeds from ``--seeds`` (default 0), threads 1), in one process, writing records to ``--out``
(resumable: finished runs are skipped):

* ``cafo``: ``convnet:32,128,512,bn_after_pool=true`` (CaFo's 3-block CNN, Conv+ReLU+Pool+BN):
  bp, cafo-rand, cafo-dfa. Full config: 20 epochs, cafo-dfa's DFA phase 5 epochs (MNIST) /
  15 (F-MNIST), as in the Beyond-Backpropagation CaFo configs.
* ``ccl``: ``mlp:256,256,256,256,256,act=elu,bias=false`` (CCL's MNIST MLP): bp, ccl; 20 epochs.
* ``ff``: ``mlp:1000,1000,1000`` (FF's 3×1000): bp, ff, ff-collab (both symba loss); 10 epochs.
* ``hebbian``: ``mlp:2000,act=softmax,tau=2`` (SoftHebb's 2000-unit soft-WTA layer, its readout
  features): bp, hebbian (one Hebbian epoch, then the readout alone); 10 epochs.

``--quick`` shrinks the epochs to what fits a ~15-minute CPU budget (cafo 2 epochs with 1 DFA
epoch, ccl 8, ff 2, hebbian 3), which is what the README numbers on the 2-core CPU used.
The table gives test accuracy and epoch-time ratio to bp from the records; then per-step costs
are measured interleaved (``bpfree.bench.steptime``), the ratio to trust on a shared machine
(cafo-dfa's steps there are its DFA phase; cafo-rand's are CaFo's predictor phase).
"""

from __future__ import annotations

import argparse

import torch

import bpfree
from bpfree.bench import markdown_table, summarize
from bpfree.bench.steptime import paired_step_times
from bpfree.meters import git_info, machine_info
from bpfree.records import load_records

ADAM = {"optimizer": "adam", "lr": 1e-3, "batch_size": 128}
SYMBA = {"loss": "symba"}
# name -> (model, [(rule, rule_options)], full epochs, quick epochs)
GROUPS = {
    "cafo": ("convnet:32,128,512,bn_after_pool=true",
             [("bp", {}), ("cafo-rand", {}), ("cafo-dfa", {"dfa_epochs": "DFA"})], 20, 2),
    "ccl": ("mlp:256,256,256,256,256,act=elu,bias=false", [("bp", {}), ("ccl", {})], 20, 8),
    "ff": ("mlp:1000,1000,1000", [("bp", {}), ("ff", SYMBA), ("ff-collab", SYMBA)], 10, 2),
    "hebbian": ("mlp:2000,act=softmax,tau=2", [("bp", {}), ("hebbian", {})], 10, 3),
}
DFA_EPOCHS = {("mnist", False): 5, ("fashion-mnist", False): 15, ("mnist", True): 1,
              ("fashion-mnist", True): 1}


def _options(opts: dict, data: str, quick: bool, dfa_epochs: int | None = None) -> dict:
    def dfa() -> int:
        return DFA_EPOCHS[(data, quick)] if dfa_epochs is None else dfa_epochs
    return {k: (dfa() if v == "DFA" else v) for k, v in opts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/local_rules")
    ap.add_argument("--data", default="mnist", help="comma-separated datasets")
    ap.add_argument("--groups", default="cafo,ccl,ff,hebbian")
    ap.add_argument("--quick", action="store_true", help="the reduced CPU budget")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (each with its BP twin)")
    ap.add_argument("--rules", default=None,
                    help="comma-separated subset of each group's rules (default: all)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="override every group's epoch budget (BP twins included)")
    ap.add_argument("--dfa-epochs", type=int, default=None,
                    help="override cafo-dfa's DFA phase length (epochs)")
    ap.add_argument("--lr", type=float, default=None,
                    help="override Adam's learning rate (BP twins included; default 1e-3)")
    ap.add_argument("--patience", type=int, default=0,
                    help="early stopping on validation accuracy, best epoch restored (0: off)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train_opts = {**ADAM, **({"lr": args.lr} if args.lr is not None else {}), "patience": args.patience}
    m, g = machine_info(), git_info()
    print(f"machine: {m.get('cpu', m)} | commit {g.get('commit')} dirty={g.get('dirty')} | threads 1")
    groups = [GROUPS[name] for name in args.groups.split(",")]
    datasets = args.data.split(",")
    if not args.skip_accuracy:
        for data, seed in [(d, int(s)) for d in datasets for s in args.seeds.split(",")]:
            for model, rules, full, quick in groups:
                for rule, opts in rules:
                    if args.rules and rule not in args.rules.split(","):
                        continue
                    epochs = args.epochs or (quick if args.quick else full)
                    rec = bpfree.train(rule=rule, model=model, data=data, out=args.out, seed=seed,
                                       suite="local_rules", epochs=epochs,
                                       rule_options=_options(opts, data, args.quick,
                                                             args.dfa_epochs), threads=1,
                                       progress=False, **train_opts)
                    print(f"{data:14s} {model:42s} {rule:10s} seed {seed} {rec.status:8s} "
                          f"test_acc={rec.test_acc} epoch_time_s={rec.epoch_time_s}", flush=True)
        print(markdown_table(summarize(load_records(args.out))))
    if not args.skip_timing:
        print("\nInterleaved per-step cost (median of repeats), ratio to bp on the same model:")
        for model, rules, _, _ in groups:
            names = [r for r, _ in rules]
            opts = {r: _options(o, datasets[0], args.quick) for r, o in rules}
            times = paired_step_times(names, model, datasets[0], batch_size=128, steps=10,
                                      repeats=5, lr=1e-3, rule_options=opts)
            base = times["bp"].median_s
            row = ", ".join(f"{r} {t.median_s * 1e3:.1f} ms ({t.median_s / base:.2f}x)"
                            for r, t in times.items())
            print(f"  {model}: {row}", flush=True)


if __name__ == "__main__":
    main()

"""NoProp (DT, CT, FM) vs its BP twin on the same NoProp network, MNIST and Fashion-MNIST, one process.

The BP twin is ``bp`` on the *same* ``noprop:`` model: cross-entropy back-propagated end to end
through the whole T-step inference chain ``z_0 ~ N(0, I) -> z_1 -> ... -> z_T -> head`` (eq. 3),
i.e. the identical architecture trained as one deep network. Both runs use the paper's optimizer
(AdamW, lr 1e-3, weight decay 1e-3, batch 128), the same seed, data and epochs. Records go under
``--out``; the script prints the bench table, the peak-memory ratio (``extra["mem_delta_bytes"]``:
peak RSS above the pre-training baseline) and an interleaved per-step time ratio
(:func:`bpfree.bench.steptime.paired_step_times`, robust to the shared machine's load).

    # CPU-sized (what fits minutes on a shared 2-core CPU): MLP image branch, width 128
    PYTHONPATH=src BPFREE_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/noprop.py \
        --config cpu --epochs 3
    # the paper's conv image branch at half width, 5 epochs, cosine: about 4 min/epoch/run on CPU
    ... --config cpu-cnn --out results/noprop-cnn
    # Fashion-MNIST, 10 epochs, W_Embed trained by the output unit only (see the noprop rule)
    ... --config cpu-cnn --data fashion-mnist --epochs 10 --embed-update head
    # NoProp-CT / NoProp-FM: one time-conditioned block (same half-width conv branch), T = 40
    ... --config cpu-cnn-ct --out results/noprop-ct
    ... --config cpu-cnn-fm --out results/noprop-fm
    # the paper's MNIST configuration (conv 32-64-128 image branch, width 256, 100 epochs): GPU
    PYTHONPATH=src .venv/bin/python benchmarks/noprop.py --config paper

The script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed activations go back
to the OS and RSS tracks live memory (otherwise glibc keeps the BP twin's freed heap and the
per-block memory saving is invisible on CPU).
"""

from __future__ import annotations

import argparse
import os
import sys

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # must be set before the process starts
    os.execve(sys.executable, [sys.executable, *sys.argv],
              {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})

from bpfree import train  # noqa: E402
from bpfree.bench import markdown_table, summarize  # noqa: E402
from bpfree.bench.steptime import paired_step_times  # noqa: E402
from bpfree.meters import git_info, machine_info  # noqa: E402
from bpfree.records import load_records  # noqa: E402

CONFIGS = {
    # paper (MNIST, NoProp-DT): T=10, conv 32-64-128 + dropout 0.2, width 256, AdamW 1e-3,
    # weight decay 1e-3, batch 128, 100 epochs, eta 0.1
    "paper": {"model": "noprop:32,64,128,T=10,width=256,dropout=0.2", "epochs": 100},
    # CPU-sized: same T and objective, MLP image branch (784 -> 128), no dropout
    "cpu": {"model": "noprop:T=10,cnn=false,width=128,dropout=0", "epochs": 3},
    # CPU-sized with the paper's conv image branch at half its channels and width (4x fewer
    # multiply-adds per block), no dropout, a cosine schedule over a short budget
    "cpu-cnn": {"model": "noprop:16,32,64,T=10,width=128,dropout=0", "epochs": 5,
                "lr_schedule": "cosine"},
    # the same image branch and budget for the continuous-time variants (one time-conditioned
    # block; T = 40 inference steps, the rules' native T)
    "cpu-cnn-ct": {"model": "noprop:16,32,64,kind=ct,T=40,width=128,dropout=0", "epochs": 5,
                   "lr_schedule": "cosine", "rules": "bp,noprop-ct"},
    "cpu-cnn-fm": {"model": "noprop:16,32,64,kind=fm,T=40,width=128,dropout=0", "epochs": 5,
                   "lr_schedule": "cosine", "rules": "bp,noprop-fm"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    ap.add_argument("--model", default=None, help="override the config's model spec")
    ap.add_argument("--data", default="mnist,fashion-mnist")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--eta", type=float, default=None,
                    help="the denoising loss weight (default: the rule's, DT 0.1, CT/FM 1.0)")
    ap.add_argument("--embed-update", choices=("all", "head"), default=None,
                    help="which losses train W_Embed (noprop, noprop-ct): all (paper Algorithm "
                         "1, the default) or head (CE + KL only; keeps the class embeddings apart "
                         "on Fashion-MNIST past 5 epochs)")
    ap.add_argument("--lr-schedule", default=None,
                    help="constant | cosine | linear-cooldown (default: the config's, else constant)")
    ap.add_argument("--rules", default=None,
                    help="which rules to train, in order (default: the config's, else bp,noprop)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--step-repeats", type=int, default=5, help="paired step timing (0: skip)")
    ap.add_argument("--out", default="results/noprop")
    args = ap.parse_args()
    cfg = CONFIGS[args.config]
    model = args.model or cfg["model"]
    epochs = args.epochs or cfg["epochs"]
    schedule = args.lr_schedule or cfg.get("lr_schedule", "constant")
    rules = (args.rules or cfg.get("rules", "bp,noprop")).split(",")
    common = dict(model=model, epochs=epochs, lr=1e-3, batch_size=128, optimizer="adamw",
                  lr_schedule=schedule,
                  weight_decay=1e-3, seed=args.seed, threads=args.threads, progress=False,
                  measure_flops=False, energy=False, out=args.out, suite="noprop")
    mem = {}
    for data in args.data.split(","):
        for rule in rules:
            opts = {}
            if rule != "bp" and args.eta is not None:
                opts["eta"] = args.eta
            if rule in ("noprop", "noprop-ct") and args.embed_update is not None:
                opts["embed_update"] = args.embed_update
            rec = train(rule=rule, data=data, rule_options=opts, **common)
            mem[(data, rule)] = (rec.extra or {}).get("mem_delta_bytes")
            curve = [round(c["val_acc"], 4) for c in rec.curve if c["val_acc"] is not None]
            print(f"{data:13s} {rule:9s} {rec.status:6s} test_acc {rec.test_acc} epochs {rec.epochs} "
                  f"epoch_time_s {rec.epoch_time_s} mem_delta_MiB "
                  f"{mem[(data, rule)] / 2**20 if mem[(data, rule)] else None} val {curve}",
                  flush=True)
        for rule in rules:
            if rule != "bp" and mem.get((data, "bp")) and mem.get((data, rule)):
                print(f"{data}: peak train memory (RSS above baseline) {rule}/bp = "
                      f"{mem[(data, rule)] / mem[(data, 'bp')]:.2f}")
    if args.step_repeats and len(rules) > 1:
        st = paired_step_times(rules, model, args.data.split(",")[0],
                               batch_size=128, steps=10, repeats=args.step_repeats, seed=args.seed,
                               threads=args.threads)
        print(f"paired step time (median of {args.step_repeats}, interleaved): "
              + ", ".join(f"{k} {v.median_s * 1e3:.1f} ms" for k, v in st.items())
              + "".join(f"; {k}/bp = {v.median_s / st['bp'].median_s:.2f}"
                        for k, v in st.items() if k != "bp" and "bp" in st))
    m, g = machine_info(), git_info()
    print(f"\nmachine: {m.get('cpu_model')}, {m.get('logical_cores')} cores, torch {m.get('torch')}"
          f"  commit: {g.get('commit')} dirty={g.get('dirty')}  model: {model}")
    print(markdown_table(summarize(load_records(args.out))))


if __name__ == "__main__":
    main()

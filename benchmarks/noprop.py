"""NoProp-DT vs its BP twin on the same NoProp network, MNIST and Fashion-MNIST, one process.

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
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    ap.add_argument("--model", default=None, help="override the config's model spec")
    ap.add_argument("--data", default="mnist,fashion-mnist")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--eta", type=float, default=0.1)
    ap.add_argument("--embed-update", choices=("all", "head"), default="all",
                    help="which losses train W_Embed: all (paper Algorithm 1) or head (CE + KL "
                         "only; keeps the class embeddings apart on Fashion-MNIST past 5 epochs)")
    ap.add_argument("--lr-schedule", default=None,
                    help="constant | cosine | linear-cooldown (default: the config's, else constant)")
    ap.add_argument("--rules", default="bp,noprop", help="which of the pair to train, in order")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--step-repeats", type=int, default=5, help="paired step timing (0: skip)")
    ap.add_argument("--out", default="results/noprop")
    args = ap.parse_args()
    cfg = CONFIGS[args.config]
    model = args.model or cfg["model"]
    epochs = args.epochs or cfg["epochs"]
    schedule = args.lr_schedule or cfg.get("lr_schedule", "constant")
    common = dict(model=model, epochs=epochs, lr=1e-3, batch_size=128, optimizer="adamw",
                  lr_schedule=schedule,
                  weight_decay=1e-3, seed=args.seed, threads=args.threads, progress=False,
                  measure_flops=False, energy=False, out=args.out, suite="noprop")
    mem = {}
    for data in args.data.split(","):
        for rule in args.rules.split(","):
            opts = ({"eta": args.eta, "embed_update": args.embed_update}
                    if rule == "noprop" else {})
            rec = train(rule=rule, data=data, rule_options=opts, **common)
            mem[(data, rule)] = (rec.extra or {}).get("mem_delta_bytes")
            curve = [round(c["val_acc"], 4) for c in rec.curve if c["val_acc"] is not None]
            print(f"{data:13s} {rule:7s} {rec.status:6s} test_acc {rec.test_acc} epochs {rec.epochs} "
                  f"epoch_time_s {rec.epoch_time_s} mem_delta_MiB "
                  f"{mem[(data, rule)] / 2**20 if mem[(data, rule)] else None} val {curve}",
                  flush=True)
        if mem.get((data, "bp")) and mem.get((data, "noprop")):
            print(f"{data}: peak train memory (RSS above baseline) noprop/bp = "
                  f"{mem[(data, 'noprop')] / mem[(data, 'bp')]:.2f}")
    if args.step_repeats:
        st = paired_step_times(["bp", "noprop"], model, args.data.split(",")[0],
                               batch_size=128, steps=10, repeats=args.step_repeats, seed=args.seed)
        print(f"paired step time (median of {args.step_repeats}, interleaved): "
              + ", ".join(f"{k} {v.median_s * 1e3:.1f} ms" for k, v in st.items())
              + f"; noprop/bp = {st['noprop'].median_s / st['bp'].median_s:.2f}")
    m, g = machine_info(), git_info()
    print(f"\nmachine: {m.get('cpu_model')}, {m.get('logical_cores')} cores, torch {m.get('torch')}"
          f"  commit: {g.get('commit')} dirty={g.get('dirty')}  model: {model}")
    print(markdown_table(summarize(load_records(args.out))))


if __name__ == "__main__":
    main()

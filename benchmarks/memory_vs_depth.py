"""Peak training memory vs depth: bp and the auxiliary-network rules (dgl, auglocal, man).

For each ResNet depth (residual blocks) and rule, a few training steps on Fashion-MNIST through
``bpfree.train`` (the Trainer's MemoryMeter: ``extra["mem_delta_bytes"]`` = peak RSS above the
pre-training baseline), plus an allocator-independent count: the peak bytes of tensors saved for
backward that are alive at once in one step (``saved_peak_bytes``). Prints a table, writes
``results/memory_vs_depth/memory_vs_depth.json`` and, if matplotlib is installed, a PNG.

    PYTHONPATH=src BPFREE_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/memory_vs_depth.py
    # rule variants too (their rows are named rule[k=v])
    ... --depths 8 --width 8 --batch-size 128 --variant 'auglocal aux_depth=5' \
        --variant 'auglocal n_modules=4' --out benchmarks/records/memory_variants

glibc keeps freed heap pages and moves its mmap threshold up, which makes RSS lag behind what
is live; the script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=65536`` so large tensors are
mmapped and returned to the OS on free, and RSS tracks live memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # must be set before the process starts
    os.execve(sys.executable, [sys.executable, *sys.argv],
              {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})

import torch  # noqa: E402

from bpfree import Task, make_rule, train  # noqa: E402
from bpfree.data import load_dataset  # noqa: E402
from bpfree.meters import git_info, machine_info  # noqa: E402
from bpfree.cli import _parse_sets  # noqa: E402
from bpfree.models import build_model  # noqa: E402
from bpfree.rule import rule_key  # noqa: E402

RULES = ["bp", "dgl", "auglocal", "man"]


def saved_peak_bytes(rule_name: str, spec: str, x: torch.Tensor, y: torch.Tensor,
                     options: dict | None = None) -> int:
    """Peak bytes of autograd-saved tensors alive at once during one training step."""
    task = Task(tuple(x.shape[1:]), 10)
    torch.manual_seed(0)
    rule = make_rule(rule_name, **(options or {})).bind(build_model(spec, task), task,
                                                        torch.Generator().manual_seed(0))
    state = {"live": 0, "peak": 0}

    class Box:
        def __init__(self, t: torch.Tensor) -> None:
            self.t, self.n = t, t.numel() * t.element_size()
            state["live"] += self.n
            state["peak"] = max(state["peak"], state["live"])

        def __del__(self) -> None:
            state["live"] -= self.n

    with torch.autograd.graph.saved_tensors_hooks(Box, lambda b: b.t):
        rule.step(x, y)
    return state["peak"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depths", default="4,8,16")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--variant", action="append", default=[], metavar="'RULE K=V ...'",
                    help="also measure a rule variant, e.g. --variant 'auglocal aux_depth=5' "
                         "(repeatable)")
    ap.add_argument("--out", default="results/memory_vs_depth")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the plot of a finished run's "
                    "memory_vs_depth.json (beside it, as memory_vs_depth.png)")
    args = ap.parse_args()
    if args.replot:
        blob = json.loads(Path(args.replot).read_text())
        args.width, args.batch_size = blob["width"], blob["batch_size"]
        plot(blob["rows"], Path(args.replot).with_suffix(".png"), args)
        return
    git = git_info()  # the code that runs: taken now, before the tree can change under a long run
    runs = [(r, {}) for r in RULES]
    for v in args.variant:
        name, *pairs = v.split()
        runs.append((name, _parse_sets(pairs)))
    torch.set_num_threads(1)
    full = load_dataset("fashion-mnist")
    n = args.batch_size * args.steps
    # val_fraction=0 below: all n samples train, args.steps steps per epoch
    sub = dataclasses.replace(full, x_train=full.x_train[:n], y_train=full.y_train[:n],
                              x_test=full.x_test[:256], y_test=full.y_test[:256])
    xb = (full.x_train[:args.batch_size].float() / 255.0)
    yb = full.y_train[:args.batch_size]
    rows = []
    for depth in [int(d) for d in args.depths.split(",")]:
        spec = f"resnet:{depth},width={args.width}"
        for rule, opts in runs:  # interleaved per depth
            rec = train(rule=rule, rule_options=opts, model=spec, data=sub, epochs=1,
                        batch_size=args.batch_size, val_fraction=0.0, threads=1, progress=False,
                        measure_flops=False, energy=False)
            label = rule_key(rule, make_rule(rule, **opts).variant())
            rows.append({"depth": depth, "rule": label, "model": spec, "status": rec.status,
                         "mem_delta_bytes": (rec.extra or {}).get("mem_delta_bytes"),
                         "peak_mem_bytes": rec.peak_mem_bytes, "mem_method": rec.mem_method,
                         "saved_peak_bytes": saved_peak_bytes(rule, spec, xb, yb, opts)})
            rule = label
            print(f"depth {depth:3d} {rule:9s} rss_delta {rows[-1]['mem_delta_bytes'] / 2**20:8.1f} MiB"
                  f"  saved {rows[-1]['saved_peak_bytes'] / 2**20:8.1f} MiB", flush=True)
    bp = {r["depth"]: r for r in rows if r["rule"] == "bp"}
    print(f"\n| depth | rule | RSS delta MiB | ratio to bp | saved-activation peak MiB | ratio to bp |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        b = bp[r["depth"]]
        print(f"| {r['depth']} | {r['rule']} | {r['mem_delta_bytes'] / 2**20:.1f} | "
              f"{r['mem_delta_bytes'] / b['mem_delta_bytes']:.2f} | {r['saved_peak_bytes'] / 2**20:.1f} | "
              f"{r['saved_peak_bytes'] / b['saved_peak_bytes']:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"batch_size": args.batch_size, "steps": args.steps, "width": args.width,
            "machine": machine_info(), "git": git, "rows": rows}
    (out / "memory_vs_depth.json").write_text(json.dumps(meta, indent=1, default=str))
    plot(rows, out / "memory_vs_depth.png", args)


def plot(rows: list[dict], path: Path, args: argparse.Namespace) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    depths = sorted({r["depth"] for r in rows})
    cycle = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3)
    colors = {rule: ("black" if rule == "bp" else next(cycle))
              for rule in dict.fromkeys(r["rule"] for r in rows)}
    for ax, key, title in ((axes[0], "mem_delta_bytes", "peak RSS above baseline"),
                           (axes[1], "saved_peak_bytes", "peak saved activations")):
        for rule, color in colors.items():
            rs = [r for r in rows if r["rule"] == rule and r.get(key) is not None]
            # bp bold; a rule that groups blocks into a few modules dashed, per-block rules solid
            style = dict(lw=2.5) if rule == "bp" else dict(ls="--" if "n_modules" in rule else "-")
            ax.plot([r["depth"] for r in rs], [r[key] / 2**20 for r in rs], marker="o",
                    color=color, label=rule, **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.set_xlabel("residual blocks")
        ax.set_ylabel("MiB")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.74, 0.5), fontsize=8,
               frameon=False)
    fig.suptitle(f"Fashion-MNIST, ResNet width {args.width}, batch {args.batch_size}, CPU "
                 f"(dashed: blocks grouped into n_modules)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    fig.savefig(path, dpi=90)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()

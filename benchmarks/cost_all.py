"""Cost of every registered rule relative to backprop, on the rule's native model.

    python benchmarks/cost_all.py [--rules mf,ff] [--steps 10] [--repeats 5] [--threads N]
    python benchmarks/cost_all.py --rules auglocal --set aux_depth=5   # a variant: its own file

For each rule, bp and the rule train the *same* native model on the same batches, taking turns
(``bpfree.bench.steptime.paired_step_times``); the median per-step time and the median of the
per-repeat ratios go to ``benchmarks/records/cost/steptime-<rule>.json`` with machine and commit.
Finished rules are skipped on rerun (delete the file to remeasure). A rule that fails is recorded
with its error and the script carries on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import traceback
from pathlib import Path

import torch

from bpfree import RULES, make_rule
from bpfree.cli import _parse_sets
from bpfree.rule import rule_key
from bpfree.bench.steptime import paired_step_times
from bpfree.meters import git_info, machine_info

HERE = Path(__file__).parent


def dataset_for(model: str) -> str:
    kind = model.split(":", 1)[0]
    return "sbm" if kind in ("gcn", "sage") else "mnist"


def measure(rule: str, steps: int, repeats: int, batch_size: int,
            options: dict | None = None) -> dict:
    cls = RULES[rule]
    label = rule_key(rule, make_rule(rule, **(options or {})).variant())
    model = cls.native_model
    data = dataset_for(model)
    bs = 10**9 if data == "sbm" else batch_size  # graphs train full-batch
    # backprop cannot run through a black-box physical layer: its twin is the ideal digital copy
    twin = {"bp": model + ",differentiable=true"} if model.startswith("physical") else None
    t = paired_step_times(["bp", rule], model, data, batch_size=min(bs, 60000), steps=steps,
                          repeats=repeats, warmup=2, model_for=twin,
                          rule_options={rule: dict(options or {})})
    t = {(label if n == rule else n): v for n, v in t.items()}
    rule = label
    ratios = [a / b for a, b in zip(t[rule].times_s, t["bp"].times_s)]
    return {"what": f"paired step time, {data}, {model}, batch {batch_size if data != 'sbm' else 'full graph'}",
            "rule": rule, "model": model, "dataset": data, "repeats": repeats,
            "steps_per_repeat": steps,
            "rules": {n: {"median_step_s": s.median_s, "min_s": s.spread_s[0], "max_s": s.spread_s[1],
                          "ratio_to_bp": s.median_s / t["bp"].median_s,
                          "ratios_per_repeat": [a / b for a, b in zip(s.times_s, t["bp"].times_s)],
                          "times_s": s.times_s} for n, s in t.items()},
            "ratio_median": statistics.median(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", default="", help="comma-separated (default: every rule but bp)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a rule option for every rule in --rules: measures that variant")
    ap.add_argument("--out", default=str(HERE / "records" / "cost"))
    args = ap.parse_args()
    options = _parse_sets(args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [r for r in (args.rules.split(",") if args.rules else sorted(RULES)) if r and r != "bp"]
    git = git_info()  # the code that runs: taken before a long run, while the tree can still change
    for name in names:
        label = rule_key(name, make_rule(name, **options).variant())
        path = out / f"steptime-{label}.json"
        if path.exists():
            continue
        try:
            blob = measure(name, args.steps, args.repeats, args.batch_size, options)
        except Exception as exc:  # recorded, not swallowed: the file names the failure
            blob = {"rule": label, "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()}
        blob.update(machine=machine_info(), torch_threads=torch.get_num_threads(), **git)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(blob, indent=2))
        tmp.replace(path)
        print(f"{label:14s} " + (f"× bp {blob['ratio_median']:.2f}  ({blob['model']}, {blob['dataset']})"
                                if "error" not in blob else f"FAILED {blob['error']}"), flush=True)


if __name__ == "__main__":
    main()

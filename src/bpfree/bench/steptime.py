"""Paired step timing: the cost ratio of rules to backprop under a noisy, shared machine.

Whole-run epoch times drift with machine load. Here every rule gets its own Trainer on the same
data, and the rules take turns (rotating order) timing ``steps`` training steps on the *same*
batches, ``repeats`` times; the median per-step time and its ratio to bp come from interleaved
samples, so slow phases of the machine hit every rule alike.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch

from .. import data as data_mod
from ..meters import Timer
from ..models import build_model
from ..records import RunRecord
from ..rule import Task, make_rule
from ..train import TrainConfig, Trainer, torch_threads


@dataclass
class StepTimes:
    rule: str
    times_s: list[float]  # per-step seconds, one per repeat

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def spread_s(self) -> tuple[float, float]:
        return min(self.times_s), max(self.times_s)


def paired_step_times(rules: list[str], model: str, data: str, *, batch_size: int = 128,
                      steps: int = 20, repeats: int = 7, warmup: int = 3, lr: float = 1e-3,
                      rule_options: dict[str, dict[str, Any]] | None = None,
                      data_dir: str | None = None, seed: int = 0, device: str = "auto",
                      model_for: dict[str, str] | None = None,
                      **train_options: Any) -> dict[str, StepTimes]:
    """Median per-step training time of each rule, measured interleaved with the others.

    ``model_for`` gives a rule another spec of the same network (e.g. bp on the differentiable
    twin of a black-box ``physical:`` model); ``train_options`` are further
    :class:`~bpfree.train.TrainConfig` fields (e.g. ``optimizer="sgd", momentum=0.9``), the same
    for every rule.
    """
    bundle = data_mod.load_dataset(data, data_dir)
    splits = data_mod.prepare(bundle, val_fraction=0.0, seed=seed)
    cfg = TrainConfig(batch_size=batch_size, lr=lr, seed=seed, progress=False, device=device,
                      **train_options)
    trainers = {}
    for name in rules:
        torch.manual_seed(seed)
        task = Task(splits.in_shape, splits.num_classes, meta=splits.meta)  # meta: e.g. a graph
        rule = make_rule(name, **(rule_options or {}).get(name, {}))
        rec = RunRecord(rule=name, dataset=bundle.name, model=model, seed=seed, suite="steptime")
        spec = (model_for or {}).get(name, model)
        trainers[name] = Trainer(rule, build_model(spec, task), splits, cfg, record=rec)
    s = next(iter(trainers.values())).splits
    g = torch.Generator().manual_seed(seed)
    n = len(s.y_train)
    batches = [torch.randint(n, (batch_size,), generator=g).to(s.x_train.device)
               for _ in range(steps)]
    data = [(s.x_train[i], s.y_train[i]) for i in batches]
    with torch_threads(cfg.threads):  # as in train(): timed steps run on the configured threads
        for tr in trainers.values():  # warm-up: allocator, kernels, lazy state
            for xb, yb in data[:warmup]:
                tr.train_step(xb, yb)
        out = {name: StepTimes(name, []) for name in rules}
        order = list(rules)
        for r in range(repeats):
            for name in order[r % len(order):] + order[:r % len(order)]:
                tr = trainers[name]
                timer = Timer(tr.device)
                timer.start()
                for xb, yb in data:
                    tr.train_step(xb, yb)
                timer.stop()
                out[name].times_s.append(timer.elapsed_s / steps)
    return out

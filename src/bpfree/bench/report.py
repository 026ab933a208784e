"""Turn records into a table: mean ± std over seeds and ratios to the BP twin.

Every cost is compared with the BP twin (rule ``bp`` on the same dataset and model): the ratio of
medians over seeds for epoch time, peak training memory, energy per epoch and FLOPs per step, and
for time/energy to the target accuracy when both reached it. A rule that never reached the target
says "not reached", never 0.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from ..records import RunRecord, record_variant

OK_STATUSES = ("ok", "early-stopped")


@dataclass
class Row:
    dataset: str
    model: str
    rule: str
    n: int
    n_ok: int
    test_acc_mean: float | None
    test_acc_std: float | None
    epoch_time_s: float | None
    time_ratio: float | None  # epoch time / BP twin's epoch time (same dataset and model)
    peak_mem_bytes: float | None
    mem_ratio: float | None
    energy_j: float | None  # per epoch
    energy_ratio: float | None
    energy_method: str | None
    epochs: float | None
    time_to_target_s: float | None  # median over the runs that reached the target
    reached: int  # runs that reached the target accuracy
    statuses: str
    flops_per_step: float | None = None
    flops_ratio: float | None = None
    energy_to_target_j: float | None = None
    ttt_ratio: float | None = None  # time to target / BP's (both reached)
    ett_ratio: float | None = None  # energy to target / BP's (both reached)
    target_acc: float | None = None
    train_time_s: float | None = None  # median total training time
    val_acc_mean: float | None = None
    energy_total_j: float | None = None  # median total training energy
    errors: list[str] = field(default_factory=list)
    mem_untrimmed: bool = False  # CPU memory measured without releasing freed heap first (may read low)
    variant: str = ""  # the rule options that differ from its defaults ("" for the default rule)

    @property
    def name(self) -> str:
        """``rule`` or ``rule[variant]``: how tables name this row."""
        return f"{self.rule}[{self.variant}]" if self.variant else self.rule

    @property
    def energy_estimated(self) -> bool:
        return bool(self.energy_method and "estimate" in self.energy_method)


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _median(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _mem(r: RunRecord) -> float | None:
    """Peak training memory above the pre-training baseline when known, else absolute peak."""
    delta = (r.extra or {}).get("mem_delta_bytes")
    return delta if delta is not None else r.peak_mem_bytes


def _epoch_energy(r: RunRecord) -> float | None:
    if r.energy_j is None or not r.epochs:
        return None
    return r.energy_j / r.epochs


def _mem_untrimmed(r: RunRecord) -> bool:
    """CPU records from before baselines were taken after ``malloc_trim``: heap freed by an earlier
    run in the same process was reused without showing in RSS, so their deltas may read low (even 0)."""
    method = r.mem_method or ""
    return bool(method) and not method.startswith("cuda") and not (r.extra or {}).get("mem_heap_trimmed")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _cost(rs: list[RunRecord]) -> dict[str, float | None]:
    return {"t": _median(r.epoch_time_s for r in rs), "m": _median(_mem(r) for r in rs),
            "e": _median(_epoch_energy(r) for r in rs), "f": _median(r.flops_per_step for r in rs),
            "ttt": _median(r.time_to_target_s for r in rs),
            "ett": _median(r.energy_to_target_j for r in rs)}


def summarize(records: Iterable[RunRecord]) -> list[Row]:
    """One row per (dataset, model, rule, variant); ratios are to the default bp on the same
    dataset and model (the BP twin)."""
    groups: dict[tuple[str, str, str, str], list[RunRecord]] = defaultdict(list)
    for r in records:
        groups[(r.dataset, r.model, r.rule, record_variant(r))].append(r)
    base_records = {(ds, model): [r for r in rs if r.status in OK_STATUSES]
                    for (ds, model, rule, var), rs in groups.items() if rule == "bp" and not var}
    base = {k: _cost(rs) for k, rs in base_records.items()}
    rows = []
    for (ds, model, rule, var), rs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "bp", kv[0][2:])):
        ok = [r for r in rs if r.status in OK_STATUSES and r.test_acc is not None]
        mean, std = _mean_std([r.test_acc for r in ok])
        c, b = _cost(ok), base.get((ds, model), {})
        methods = sorted({r.energy_method for r in ok if r.energy_method})
        targets = {r.target_acc for r in rs if r.target_acc is not None}
        rows.append(Row(
            ds, model, rule, len(rs), len(ok), mean, std, c["t"], _ratio(c["t"], b.get("t")),
            c["m"], _ratio(c["m"], b.get("m")), c["e"], _ratio(c["e"], b.get("e")),
            "/".join(methods) or None, _median(r.epochs for r in ok), c["ttt"],
            sum(r.time_to_target_s is not None for r in ok), ",".join(sorted({r.status for r in rs})),
            flops_per_step=c["f"], flops_ratio=_ratio(c["f"], b.get("f")),
            energy_to_target_j=c["ett"], ttt_ratio=_ratio(c["ttt"], b.get("ttt")),
            ett_ratio=_ratio(c["ett"], b.get("ett")),
            target_acc=min(targets) if targets else None,
            train_time_s=_median(r.train_time_s for r in ok),
            val_acc_mean=_mean_std([r.val_acc for r in ok if r.val_acc is not None])[0],
            energy_total_j=_median(r.energy_j for r in ok),
            errors=sorted({(r.error or "").splitlines()[0][:160] for r in rs
                           if r.status in ("failed", "diverged") and r.error}),
            mem_untrimmed=any(_mem_untrimmed(r) for r in ok)
            or any(_mem_untrimmed(r) for r in base_records.get((ds, model), [])),
            variant=var,
        ))
    return rows


def _fmt(x: float | None, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def _to_target(r: Row, value: float | None, spec: str) -> str:
    """Median over the runs that reached the target, and how many did; never 0 for 'not reached'."""
    if r.target_acc is None or not r.n_ok:
        return "–"
    if not r.reached:
        return "not reached"
    if value is None:  # reached, but this cost was not measured (e.g. no energy meter)
        return "–"
    return f"{format(value, spec)} ({r.reached}/{r.n_ok})"


def energy_note(rows: list[Row]) -> str:
    methods = sorted({m for r in rows if r.energy_method for m in r.energy_method.split("/")})
    if not methods:
        return "Energy: not measured (no energy meter available, or energy=False)."
    est = [m for m in methods if "estimate" in m]
    if est:
        return ("Energy is an *estimate* (no hardware energy counter on this machine): method "
                + ", ".join(methods) + ".")
    return "Energy is *measured* by hardware counters: " + ", ".join(methods) + "."


def markdown_table(rows: list[Row]) -> str:
    est = any(r.energy_estimated for r in rows)
    targets = sorted({r.target_acc for r in rows if r.target_acc is not None})
    tgt = f" to {'/'.join(f'{100 * t:g}%' for t in targets)} val" if targets else " to target"
    head = ("| dataset | model | rule | test acc % (mean ± std) | n | epoch time s | × bp "
            "| peak train mem MB | × bp | energy/epoch J" + (" (estimated)" if est else "")
            + " | × bp | GFLOP/step | × bp | time" + tgt + " s | × bp | energy" + tgt + " J |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        dag = "†" if r.mem_untrimmed else ""
        acc = "–" if r.test_acc_mean is None else (
            f"{100 * r.test_acc_mean:.2f} ± {100 * (r.test_acc_std or 0):.2f}")
        lines.append(
            f"| {r.dataset} | {r.model} | {r.name} | {acc} | {r.n_ok}/{r.n} | "
            f"{_fmt(r.epoch_time_s, '.2f')} | {_fmt(r.time_ratio, '.2f')} | "
            f"{_fmt(None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20, '.0f')}"
            f"{dag if r.peak_mem_bytes is not None else ''} | "
            f"{_fmt(r.mem_ratio, '.2f')}{dag if r.mem_ratio is not None else ''} | {_fmt(r.energy_j, '.3g')} | "
            f"{_fmt(r.energy_ratio, '.2f')} | "
            f"{_fmt(None if r.flops_per_step is None else r.flops_per_step / 1e9, '.3g')} | "
            f"{_fmt(r.flops_ratio, '.2f')} | {_to_target(r, r.time_to_target_s, '.1f')} | "
            f"{_fmt(r.ttt_ratio, '.2f')} | {_to_target(r, r.energy_to_target_j, '.3g')} |")
    notes = [energy_note(rows)]
    if any(r.mem_untrimmed for r in rows):
        notes.append("† CPU memory from records taken before the meter released freed heap "
                     "(`malloc_trim`) at each baseline: a run that followed another in the same "
                     "process could reuse its freed heap unseen, so these values may read low (even "
                     "0) and their ratios are not reliable; re-run to measure them.")
    bad = [f"{r.name} on {r.dataset} ({r.model}): {r.statuses} — {'; '.join(r.errors)}"
           for r in rows if r.errors]
    if bad:
        notes.append("Runs that did not finish normally: " + " | ".join(bad))
    notes.append("n = finished runs / runs; costs are medians over seeds, × bp = ratio to the BP "
                 "twin (same dataset and model); time/energy to target: median over the runs that "
                 "reached it (how many in brackets).")
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes)

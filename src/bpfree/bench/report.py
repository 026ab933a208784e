"""Turn records into a table: mean ± std over seeds and ratios to the BP twin."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from ..records import RunRecord


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
    energy_j: float | None
    energy_ratio: float | None
    energy_method: str | None
    epochs: float | None
    time_to_target_s: float | None
    reached: int  # runs that reached the target accuracy
    statuses: str


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _median(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def summarize(records: Iterable[RunRecord]) -> list[Row]:
    groups: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for r in records:
        groups[(r.dataset, r.model, r.rule)].append(r)
    base: dict[tuple[str, str], dict[str, float | None]] = {}
    for (ds, model, rule), rs in groups.items():
        if rule == "bp":
            base[(ds, model)] = {
                "t": _median(r.epoch_time_s for r in rs),
                "m": _median(_mem(r) for r in rs),
                "e": _median(_epoch_energy(r) for r in rs),
            }
    rows = []
    for (ds, model, rule), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "bp", kv[0][2])):
        ok = [r for r in rs if r.status in ("ok", "early-stopped") and r.test_acc is not None]
        mean, std = _mean_std([r.test_acc for r in ok])
        t = _median(r.epoch_time_s for r in ok)
        m = _median(_mem(r) for r in ok)
        e = _median(_epoch_energy(r) for r in ok)
        b = base.get((ds, model), {})
        methods = sorted({r.energy_method for r in ok if r.energy_method})
        rows.append(Row(
            ds, model, rule, len(rs), len(ok), mean, std, t,
            _ratio(t, b.get("t")), m, _ratio(m, b.get("m")), e, _ratio(e, b.get("e")),
            "/".join(methods) or None, _median(r.epochs for r in ok),
            _median(r.time_to_target_s for r in ok),
            sum(r.time_to_target_s is not None for r in ok),
            ",".join(sorted({r.status for r in rs})),
        ))
    return rows


def _mem(r: RunRecord) -> float | None:
    """Peak training memory above the pre-training baseline when known, else absolute peak."""
    delta = (r.extra or {}).get("mem_delta_bytes") if hasattr(r, "extra") else None
    return delta if delta is not None else r.peak_mem_bytes


def _epoch_energy(r: RunRecord) -> float | None:
    if r.energy_j is None or not r.epochs:
        return None
    return r.energy_j / r.epochs


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(x: float | None, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def markdown_table(rows: list[Row]) -> str:
    est = any(r.energy_method and r.energy_method.startswith("estimate") for r in rows)
    head = ("| dataset | model | rule | test acc % (mean ± std) | n | epoch time s | × bp "
            "| peak train mem MB | × bp | energy/epoch J" + (" (estimated)" if est else "")
            + " | × bp | time to target s |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        acc = "–" if r.test_acc_mean is None else (
            f"{100 * r.test_acc_mean:.2f} ± {100 * (r.test_acc_std or 0):.2f}")
        ttt = _fmt(r.time_to_target_s, ".1f", "not reached" if r.n_ok else "–")
        lines.append(
            f"| {r.dataset} | {r.model} | {r.rule} | {acc} | {r.n_ok}/{r.n} | "
            f"{_fmt(r.epoch_time_s, '.2f')} | {_fmt(r.time_ratio, '.2f')} | "
            f"{_fmt(None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20, '.0f')} | "
            f"{_fmt(r.mem_ratio, '.2f')} | {_fmt(r.energy_j, '.0f')} | "
            f"{_fmt(r.energy_ratio, '.2f')} | {ttt} |")
    if est:
        lines.append("\nEnergy is an *estimate* (no hardware energy counter on this machine): "
                     "method " + ", ".join(sorted({r.energy_method for r in rows if r.energy_method})) + ".")
    return "\n".join(lines)

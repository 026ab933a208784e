"""Suites are TOML data files: which rules, models, datasets, seeds, budgets and target accuracy."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rule import RULES, ConfigError, _suggest
from ..train import TrainConfig

SUITE_DIR = Path(__file__).parent / "suites"
_TOP_KEYS = {"name", "description", "datasets", "seeds", "target_acc", "bp_twin", "train", "runs"}
_RUN_KEYS = {"rule", "model", "options", "train", "datasets", "name"}


@dataclass(frozen=True)
class RunSpec:
    """One cell of a suite: a rule on a model and dataset with one seed."""

    rule: str
    model: str
    dataset: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.dataset, self.model, self.rule, self.seed)


@dataclass
class Suite:
    name: str
    description: str
    runs: list[RunSpec]
    target_acc: float | None = None
    path: Path | None = None


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.toml"))


def _check_keys(where: str, d: dict, allowed: set[str]) -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}: unknown key {k!r}.{_suggest(k, allowed)} "
                              f"Allowed: {', '.join(sorted(allowed))}")


def load_suite(name_or_path: str | Path) -> Suite:
    """Load a suite by name (``quick``) or from a ``.toml`` path; every key is checked."""
    from .. import rules as _  # noqa: F401

    p = Path(name_or_path)
    if not p.suffix:
        p = SUITE_DIR / f"{name_or_path}.toml"
        if not p.exists():
            raise ConfigError(f"unknown suite {str(name_or_path)!r}."
                              f"{_suggest(str(name_or_path), list_suites())} "
                              f"Known suites: {', '.join(list_suites())}, or give a .toml path")
    try:
        raw = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read suite file {p}: {exc}") from None
    _check_keys(f"suite {p.name}", raw, _TOP_KEYS)
    base_train = dict(raw.get("train", {}))
    TrainConfig.from_dict(base_train)  # validate early, naming the key
    datasets = raw.get("datasets", ["fashion-mnist"])
    seeds = raw.get("seeds", [0])
    runs: list[RunSpec] = []
    entries = list(raw.get("runs", []))
    for i, e in enumerate(entries):
        _check_keys(f"suite {p.name}, runs[{i}]", e, _RUN_KEYS)
        if e.get("rule") not in RULES:
            raise ConfigError(f"suite {p.name}, runs[{i}]: unknown rule {e.get('rule')!r}."
                              f"{_suggest(str(e.get('rule')), RULES)}")
    if raw.get("bp_twin", True):  # a BP twin for every (model, datasets) the suite trains
        seen = {(e.get("model") or RULES[e["rule"]].native_model, tuple(e.get("datasets", datasets)))
                for e in entries if e["rule"] != "bp"}
        have = {(e.get("model") or RULES["bp"].native_model, tuple(e.get("datasets", datasets)))
                for e in entries if e["rule"] == "bp"}
        twins = [{"rule": "bp", "model": m, "datasets": list(d)} for m, d in sorted(seen - have)]
        entries = twins + entries
    for e in entries:
        model = e.get("model") or RULES[e["rule"]].native_model
        train = {**base_train, **e.get("train", {})}
        TrainConfig.from_dict(train)
        for ds in e.get("datasets", datasets):
            for seed in seeds:
                runs.append(RunSpec(e["rule"], model, ds, int(seed), dict(e.get("options", {})),
                                    {**train, "seed": int(seed)}))
    keys = [r.key for r in runs]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ConfigError(f"suite {p.name}: duplicate runs {sorted(dup)}")
    return Suite(raw.get("name", p.stem), raw.get("description", ""), runs,
                 raw.get("target_acc"), p)

"""Suites are TOML data files: which rules, models, datasets, seeds, budgets and target accuracy.

Schema (every key is checked; unknown keys are errors naming the key)::

    name = "paper"                     # default: the file's stem
    description = "..."
    datasets = ["mnist", "fashion-mnist"]
    seeds = [0, 1, 2]
    target_acc = 0.98                  # or per dataset: {mnist = 0.98, fashion-mnist = 0.88}
    bp_twin = true                     # add a bp run on every (model, datasets) a rule trains
    [train]                            # TrainConfig options for every run (epochs, patience...)
    [tune]                             # `bpfree tune`: trials, epochs, seed, patience
    [[runs]]
    rule = "mf"                        # one rule, or
    rules = "*"                        # every registered rule (or a list), each on its
    exclude = ["bp"]                   #   native_model unless `model` is given
    model = "mlp:1000,1000"            # default: the rule's native_model
    options = {head_bias = true}       # rule options
    train = {lr = 3e-3}                # per-entry train options
    datasets = ["mnist"]               # per-entry datasets
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rule import RULES, ConfigError, _suggest, make_rule, rule_key
from ..train import TrainConfig

SUITE_DIR = Path(__file__).parent / "suites"
_TOP_KEYS = {"name", "description", "datasets", "seeds", "target_acc", "bp_twin", "train", "tune",
             "runs"}
_RUN_KEYS = {"rule", "rules", "exclude", "model", "options", "train", "datasets", "name"}
_TUNE_KEYS = {"trials", "epochs", "seed", "patience", "startup_trials"}


@dataclass(frozen=True)
class RunSpec:
    """One cell of a suite: a rule on a model and dataset with one seed."""

    rule: str
    model: str
    dataset: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    #: the options that differ from the rule's defaults ("" for the default rule), see
    #: LearningRule.variant: a suite may run several variants of one rule side by side
    variant: str = ""

    @property
    def rule_key(self) -> str:
        """``rule`` or ``rule[variant]``: the rule's name in record paths and tables."""
        return rule_key(self.rule, self.variant)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.dataset, self.model, self.rule_key, self.seed)

    @property
    def group(self) -> tuple[str, str, str]:
        """What tuning shares across seeds: (dataset, model, rule[variant])."""
        return (self.dataset, self.model, self.rule_key)

    @property
    def label(self) -> str:
        return f"{self.rule_key} {self.model} {self.dataset} seed {self.seed}"


@dataclass
class TuneSpec:
    """How `bpfree tune` searches: the same trial budget for every rule."""

    trials: int = 20
    epochs: int | None = None  # epochs per trial (default: the suite's train.epochs)
    seed: int = 0  # TPE sampler seed and the training seed of every trial
    patience: int | None = None  # early stopping inside a trial (default: the suite's)
    startup_trials: int | None = None  # random trials before TPE (default: min(10, trials // 2))


@dataclass
class Suite:
    name: str
    description: str
    runs: list[RunSpec]
    target_acc: float | dict[str, float] | None = None
    path: Path | None = None
    tune: TuneSpec = field(default_factory=TuneSpec)

    def target_for(self, dataset: str) -> float | None:
        if isinstance(self.target_acc, dict):
            return self.target_acc.get(dataset)
        return self.target_acc

    def groups(self) -> dict[tuple[str, str, str], RunSpec]:
        """One representative run per (dataset, model, rule), in suite order."""
        out: dict[tuple[str, str, str], RunSpec] = {}
        for r in self.runs:
            out.setdefault(r.group, r)
        return out


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.toml"))


def _check_keys(where: str, d: dict, allowed: set[str]) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a table, got {type(d).__name__} {d!r}")
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}: unknown key {k!r}.{_suggest(k, allowed)} "
                              f"Allowed: {', '.join(sorted(allowed))}")


def _check_type(where: str, value: Any, types: type | tuple[type, ...], what: str) -> Any:
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise ConfigError(f"{where}: expected {what}, got {type(value).__name__} {value!r}")
    return value


def _resolve_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix:
        return p
    p = SUITE_DIR / f"{name_or_path}.toml"
    if not p.exists():
        raise ConfigError(f"unknown suite {str(name_or_path)!r}."
                          f"{_suggest(str(name_or_path), list_suites())} "
                          f"Known suites: {', '.join(list_suites())}, or give a .toml path")
    return p


def _expand_rules(where: str, e: dict) -> list[str]:
    """``rule = "mf"`` or ``rules = "*"`` / ``rules = [...]`` minus ``exclude``."""
    if ("rule" in e) == ("rules" in e):
        raise ConfigError(f"{where}: give exactly one of 'rule' (a name) or 'rules' "
                          f"('*' for every registered rule, or a list)")
    if "rule" in e:
        names = [_check_type(where + ".rule", e["rule"], str, "a rule name")]
    elif e["rules"] == "*":
        names = sorted(RULES)
    else:
        names = list(_check_type(where + ".rules", e["rules"], list, "'*' or a list of rule names"))
    exclude = set(_check_type(where + ".exclude", e.get("exclude", []), list, "a list of rule names"))
    for n in names + sorted(exclude):
        if n not in RULES:
            raise ConfigError(
                f"{where}: rule {n!r} is not registered.{_suggest(str(n), RULES)} Registered "
                f"rules: {', '.join(sorted(RULES))}. If it is still being written, leave it out "
                f"of the suite (or comment it) until its module lands in bpfree/rules/")
    return [n for n in names if n not in exclude]


def _parse_target(where: str, t: Any) -> float | dict[str, float] | None:
    if t is None:
        return None
    vals = t.items() if isinstance(t, dict) else [("", t)]
    for k, v in vals:
        _check_type(f"{where}{'.' + k if k else ''}", v, (int, float), "a fraction in (0, 1]")
        if not 0 < v <= 1:
            raise ConfigError(f"{where}{'.' + k if k else ''}: target_acc is a fraction in (0, 1], got {v}")
    return {k: float(v) for k, v in t.items()} if isinstance(t, dict) else float(t)


def _parse_tune(where: str, raw: dict) -> TuneSpec:
    _check_keys(where, raw, _TUNE_KEYS)
    for k, v in raw.items():
        _check_type(f"{where}.{k}", v, int, "an integer")
        if v < (0 if k == "seed" else 1):
            raise ConfigError(f"{where}.{k}: must be positive, got {v}")
    return TuneSpec(**raw)


def load_suite(name_or_path: str | Path) -> Suite:
    """Load a suite by name (``quick``) or from a ``.toml`` path; every key is checked."""
    from .. import rules as _  # noqa: F401
    from ..models import parse_spec

    p = _resolve_path(name_or_path)
    try:
        raw = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read suite file {p}: {exc}") from None
    where = f"suite {p.name}"
    _check_keys(where, raw, _TOP_KEYS)
    base_train = dict(raw.get("train", {}))
    TrainConfig.from_dict(base_train)  # validate early, naming the key
    datasets = _check_type(f"{where}.datasets", raw.get("datasets", ["fashion-mnist"]), list,
                           "a list of dataset names")
    seeds = [_check_type(f"{where}.seeds", s, int, "integers")
             for s in _check_type(f"{where}.seeds", raw.get("seeds", [0]), list, "a list of ints")]
    entries: list[dict] = []
    for i, e in enumerate(raw.get("runs", [])):
        w = f"{where}, runs[{i}]"
        _check_keys(w, e, _RUN_KEYS)
        for name in _expand_rules(w, e):
            entry = {k: v for k, v in e.items() if k not in ("rule", "rules", "exclude")}
            entry["rule"] = name
            entry["_where"] = w
            entries.append(entry)
    if raw.get("bp_twin", True):  # a BP twin for every (model, datasets) the suite trains
        seen = {(e.get("model") or RULES[e["rule"]].native_model, tuple(e.get("datasets", datasets)))
                for e in entries if e["rule"] != "bp"}
        have = {(e.get("model") or RULES["bp"].native_model, tuple(e.get("datasets", datasets)))
                for e in entries if e["rule"] == "bp"}
        twins = [{"rule": "bp", "model": m, "datasets": list(d), "_where": f"{where}, bp twin"}
                 for m, d in sorted(seen - have)]
        entries = twins + entries
    runs: list[RunSpec] = []
    for e in entries:
        w = e["_where"]
        model = e.get("model") or RULES[e["rule"]].native_model
        parse_spec(model)  # unknown model family: an error now, not after hours of other runs
        options = dict(e.get("options", {}))
        variant = make_rule(e["rule"], **options).variant()  # mistyped rule options: an error now
        train = {**base_train, **e.get("train", {})}
        TrainConfig.from_dict(train)
        for ds in e.get("datasets", datasets):
            for seed in seeds:
                runs.append(RunSpec(e["rule"], model, ds, int(seed), options,
                                    {**train, "seed": int(seed)}, variant))
    keys = [r.key for r in runs]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ConfigError(f"{where}: duplicate runs {sorted(dup)}")
    return Suite(raw.get("name", p.stem), raw.get("description", ""), runs,
                 _parse_target(f"{where}.target_acc", raw.get("target_acc")), p,
                 _parse_tune(f"{where}.tune", raw.get("tune", {})))

"""Fair tuning: every rule (and every BP twin) gets the same Optuna trial budget.

For each (dataset, model, rule) of a suite, one Optuna study named ``suite/dataset/model/rule``
searches the rule's ``search_space`` (declared next to its code; train options such as ``lr`` and
rule options alike) with a seeded TPE sampler; a MedianPruner stops trials whose per-epoch
validation accuracy falls below the median of earlier trials at the same epoch. The objective is
the best *validation* accuracy (the test split is never looked at). Studies live in any SQLAlchemy
storage (default: SQLite ``OUT/tune.db``), so several ``bpfree tune`` processes, on one machine or
many (``--storage postgresql://...``), fill one study together.

The budget is counted in finished trials (complete or pruned). A trial that crashes counts as
finished with the worst value (accuracy 0) and its error, so no rule gets extra trials by failing;
a trial left running by a killed worker is failed by Optuna's heartbeat and does not count. The
best config is chosen among the *first* ``trials`` finished trials by trial number, so a few
extra trials started concurrently by parallel workers never give a rule a bigger budget.

The best config is saved in the study (user attribute ``best_config``) and as
``OUT/SUITE/DATASET/MODEL/RULE/.tuned.json`` next to the records; ``bpfree bench`` uses it.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

from ..records import record_path
from ..rule import RULES, ConfigError, _suggest, rule_hparams
from ..train import TrainConfig, _bar, train
from .suite import RunSpec, Suite

TUNED_FILE = ".tuned.json"  # hidden: load_records() reads every other *.json as a record
_KINDS = ("log", "float", "int", "cat")


def default_storage(out: str | Path) -> str:
    path = Path(out).resolve() / "tune.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def study_name(suite: str, spec: RunSpec) -> str:
    return f"{suite}/{spec.dataset}/{spec.model}/{spec.rule_key}"


def tuned_path(out: str | Path, suite: str, spec: RunSpec) -> Path:
    return record_path(out, suite=suite, dataset=spec.dataset, model=spec.model,
                       rule=spec.rule_key, seed=0).parent / TUNED_FILE


def split_params(rule: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Search-space names -> (train options, rule options); anything else is an error naming it."""
    train_keys = set(TrainConfig.__dataclass_fields__)
    rule_keys = set(rule_hparams(RULES[rule]))
    tr, opts = {}, {}
    for k, v in params.items():
        if k in train_keys:
            tr[k] = v
        elif k in rule_keys:
            opts[k] = v
        else:
            raise ConfigError(f"rule {rule!r}: search_space key {k!r} is neither a train option "
                              f"nor a rule option.{_suggest(k, train_keys | rule_keys)}")
    return tr, opts


def check_space(rule: str) -> dict[str, tuple]:
    """The rule's ``search_space``, validated: name -> ("log"|"float"|"int", lo, hi) | ("cat", [..])."""
    space = dict(getattr(RULES[rule], "search_space", {}) or {})
    for name, spec in space.items():
        where = f"rule {rule!r}: search_space[{name!r}]"
        if not isinstance(spec, tuple) or not spec or spec[0] not in _KINDS:
            raise ConfigError(f"{where} = {spec!r}: expected (kind, low, high) or ('cat', [choices]) "
                              f"with kind in {_KINDS}")
        if spec[0] == "cat":
            if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or not spec[1]:
                raise ConfigError(f"{where} = {spec!r}: expected ('cat', [choice, ...])")
        elif len(spec) != 3 or not spec[1] < spec[2] or (spec[0] == "log" and spec[1] <= 0):
            raise ConfigError(f"{where} = {spec!r}: expected ({spec[0]!r}, low, high) with "
                              f"{'0 < ' if spec[0] == 'log' else ''}low < high")
    split_params(rule, {k: None for k in space})
    return space


def suggest(trial: Any, space: dict[str, tuple]) -> dict[str, Any]:
    out = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "cat":
            out[name] = trial.suggest_categorical(name, list(spec[1]))
        elif kind == "int":
            out[name] = trial.suggest_int(name, int(spec[1]), int(spec[2]))
        else:
            out[name] = trial.suggest_float(name, float(spec[1]), float(spec[2]), log=kind == "log")
    return out


_STORAGES: dict[str, Any] = {}


def make_storage(url: str) -> Any:
    """Optuna RDB storage with heartbeats (a killed worker's trial is failed, not counted)."""
    import optuna

    if url in _STORAGES:
        return _STORAGES[url]

    kwargs: dict[str, Any] = {"heartbeat_interval": 30, "grace_period": 120}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    last: Exception | None = None
    for attempt in range(5):  # concurrent first use: several workers create the schema at once
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in optuna; we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                _STORAGES[url] = optuna.storages.RDBStorage(url, **kwargs)
            return _STORAGES[url]
        except Exception as exc:  # noqa: BLE001 - sqlalchemy/alembic raise various types here
            last = exc
            import time
            time.sleep(0.3 * (attempt + 1))
    raise ConfigError(f"cannot open tuning storage {_redact(url)}: {last}")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return sorted((t for t in study.get_trials(deepcopy=False)
                   if t.state in (TrialState.COMPLETE, TrialState.PRUNED)), key=lambda t: t.number)


def best_config(study: Any, trials: int) -> dict[str, Any] | None:
    """Best of the first ``trials`` finished trials (by number); None if none completed."""
    from optuna.trial import TrialState

    budget = _finished(study)[:trials]
    done = [t for t in budget if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    best = max(done, key=lambda t: (t.value, -t.number))
    return {"params": dict(best.params), "value": best.value, "trial": best.number,
            "trials_counted": len(budget), "pruned": sum(t.state == TrialState.PRUNED for t in budget)}


def tune_one(suite: Suite, spec: RunSpec, out: str | Path, *, storage: str, trials: int,
             data_dir: str | Path | None = None, device: str = "auto", progress: bool = True,
             seed_offset: int = 0, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Tune one (dataset, model, rule) of the suite up to ``trials`` finished trials."""
    import optuna
    from optuna.trial import TrialState

    space = check_space(spec.rule)
    name = study_name(suite.name, spec)
    ts = suite.tune
    base = dict(spec.train)
    base.update(seed=ts.seed, progress=False, energy=False, measure_flops=False, device=device)
    if ts.epochs:
        base["epochs"] = ts.epochs
    if ts.patience is not None:
        base["patience"] = ts.patience
    if not space:
        log(f"{name}: no search_space declared; using its defaults")
        result: dict[str, Any] | None = {"params": {}, "value": None, "trial": None,
                                          "trials_counted": 0, "pruned": 0}
        _save(out, suite, spec, name, storage, trials, result)
        return result
    st = make_storage(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    startup = ts.startup_trials or max(1, min(10, trials // 2))
    study = optuna.create_study(storage=st, study_name=name, direction="maximize",
                                load_if_exists=True)
    # seeded TPE; the offset (trials already in the study, worker index) keeps resumed or
    # parallel workers from replaying the same random start-up points
    n_existing = len(study.get_trials(deepcopy=False))
    seed = (ts.seed + zlib.crc32(name.encode()) + n_existing + 7919 * seed_offset) % 2**31
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                                   constant_liar=True)
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=1)
    study.set_user_attr("trials_budget", trials)

    def objective(trial: Any) -> float:
        params = suggest(trial, space)
        tr, opts = split_params(spec.rule, params)

        def on_epoch(epoch: int, val: float | None) -> None:
            if val is None:
                return
            trial.report(val, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val acc {val:.4f} below median at epoch {epoch}")

        try:
            rec = train(rule=spec.rule, model=spec.model, data=spec.dataset, data_dir=data_dir,
                        rule_options={**spec.options, **opts}, on_epoch=on_epoch,
                        **{**base, **tr})
        except optuna.TrialPruned:
            raise
        except (ValueError, RuntimeError, FloatingPointError) as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            return 0.0  # a crash counts as a trial with the worst accuracy: no free retries
        trial.set_user_attr("status", rec.status)
        if rec.error:
            trial.set_user_attr("error", rec.error)
        return rec.val_acc if rec.status != "diverged" and rec.val_acc is not None else 0.0

    done = len(_finished(study))
    bar = _bar(range(trials), progress, desc=f"tune {spec.rule} {spec.model} {spec.dataset}",
               unit="trial", total=trials, initial=min(done, trials))

    def after(study: Any, trial: Any) -> None:
        n = len(_finished(study))
        if hasattr(bar, "n"):
            bar.n = min(n, trials)
            b = best_config(study, trials)
            bar.set_postfix_str(f"best val {b['value']:.4f}" if b else "")
            bar.refresh()
        if n >= trials:
            study.stop()

    if done < trials:
        study.optimize(objective, n_trials=trials - done, callbacks=[after],
                       gc_after_trial=False, show_progress_bar=False)
    if hasattr(bar, "close"):
        bar.close()
    result = best_config(study, trials)
    if result is None:
        log(f"{name}: no trial completed; nothing saved")
        return None
    states = [t.state for t in study.get_trials(deepcopy=False)]
    result["trials_total"] = len(states)
    result["running_elsewhere"] = sum(s == TrialState.RUNNING for s in states)
    _save(out, suite, spec, name, storage, trials, result)
    study.set_user_attr("best_config", result)
    return result


def _save(out: str | Path, suite: Suite, spec: RunSpec, name: str, storage: str, trials: int,
          result: dict[str, Any]) -> Path:
    tr, opts = split_params(spec.rule, result["params"])
    blob = {"study": name, "storage": _redact(storage), "trials_budget": trials,
            "train": tr, "options": opts, **result}
    path = tuned_path(out, suite.name, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(blob, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def tune_suite(suite: Suite, out: str | Path, *, trials: int | None = None,
               storage: str | None = None, data_dir: str | Path | None = None,
               device: str = "auto", progress: bool = True, only: list[str] | None = None,
               seed_offset: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tune every (dataset, model, rule) of the suite with the same budget; returns best configs."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("bpfree tune needs optuna: pip install 'bpfree[tune]'") from None
    trials = trials or suite.tune.trials
    storage = storage or default_storage(out)
    results = {}
    for group, spec in suite.groups().items():
        if only and spec.rule not in only:
            continue
        results["/".join(group)] = tune_one(suite, spec, out, storage=storage, trials=trials,
                                            data_dir=data_dir, device=device, progress=progress,
                                            seed_offset=seed_offset, log=log)
    return results


def load_tuned(out: str | Path, suite: str, spec: RunSpec,
               storage: str | None = None) -> dict[str, Any] | None:
    """The tuned config for a run: the JSON file next to the records, else the shared study."""
    p = tuned_path(out, suite, spec)
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"corrupt tuned config {p}: {exc}; delete it or rerun bpfree tune") from None
    if storage:
        try:
            import optuna
        except ImportError:
            return None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.load_study(study_name=study_name(suite, spec), storage=make_storage(storage))
        except KeyError:  # no such study
            return None
        best = study.user_attrs.get("best_config")
        if best:
            tr, opts = split_params(spec.rule, best["params"])
            return {"study": study.study_name, "train": tr, "options": opts, **best}
    return None

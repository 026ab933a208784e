"""The Trainer: the only loop in bpfree.

Seeds, device, batching, evaluation cadence, the validation split, early stopping, checkpoint and
resume, progress bars and the meters live here and only here. Rules contribute ``_step`` and hooks.
"""

from __future__ import annotations

import copy
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from . import data as data_mod
from .meters import (EnergyMeter, FlopMeter, MemoryMeter, Timer, git_info, heap_trim_available,
                     machine_info, sync)
from .models import build_model, count_params
from .records import (RunRecord, is_done, median_epoch_time, read_record, record_path,
                      write_record)
from .rule import ConfigError, LearningRule, Task, _suggest, make_rule, rule_key

__all__ = ["TrainConfig", "Trainer", "train", "DivergedError"]


class DivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Everything about *how* a run trains; the rule's own options live in the rule."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    lr_schedule: str = "constant"  # constant | cosine | linear-cooldown (flat, then linear to 0 in the 2nd half)
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0
    val_fraction: float = 0.1
    patience: int = 0  # early stopping: epochs without val improvement (0 = off)
    device: str = "auto"
    eval_batch_size: int = 1000
    target_acc: float | None = None  # for time/energy-to-accuracy (validation accuracy, 0..1)
    max_time_s: float | None = None  # training-time budget; stops after the epoch that crosses it
    threads: int | None = None  # torch intra-op threads (None: torch default)
    progress: bool = True
    measure_flops: bool = True
    energy: bool = True

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0, "val_fraction": 0 <= self.val_fraction < 1,
            "patience": self.patience >= 0, "eval_batch_size": self.eval_batch_size >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"train option {key!r} has an invalid value {getattr(self, key)!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}.{_suggest(self.optimizer, OPTIMIZERS)} "
                              f"Known: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr_schedule {self.lr_schedule!r}."
                              f"{_suggest(self.lr_schedule, LR_SCHEDULES)} Known: {', '.join(LR_SCHEDULES)}")
        if self.target_acc is not None and not 0 < self.target_acc <= 1:
            raise ConfigError(f"target_acc is a fraction in (0, 1], got {self.target_acc}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Typed construction: unknown keys and wrong types are errors that name the key."""
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for k, v in d.items():
            if k not in known:
                raise ConfigError(f"unknown train option {k!r}.{_suggest(k, known)} "
                                  f"Options: {', '.join(known)}")
            kwargs[k] = _coerce_field(k, v, known[k].type)
        return cls(**kwargs)


def _coerce_field(key: str, v: Any, typ: Any) -> Any:
    t = str(typ)
    base = t.split("|")[0].strip()
    if v is None and "None" in t:
        return None
    conv = {"int": int, "float": float, "str": str, "bool": bool}.get(base)
    if conv is None:
        return v
    if isinstance(v, str) and conv is not str:
        if conv is bool:
            if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"train option {key!r} expects bool, got {v!r}")
            return v.lower() in ("true", "1", "yes")
        try:
            return conv(v)
        except ValueError:
            raise ConfigError(f"train option {key!r} expects {base}, got {v!r}") from None
    if conv is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if not isinstance(v, conv) or (isinstance(v, bool) and conv is not bool):
        raise ConfigError(f"train option {key!r} expects {base}, got {type(v).__name__} {v!r}")
    return v


def _adam(groups: list[dict], cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def _sgd(groups: list[dict], cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, fused=fused)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": _adam, "sgd": _sgd,
    "adamw": lambda g, c, f: torch.optim.AdamW(g, lr=c.lr, weight_decay=c.weight_decay, fused=f),
}


LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    # factor applied to every group's base learning rate at the start of epoch e (0-based) of E
    "constant": lambda e, E: 1.0,
    "cosine": lambda e, E: 0.5 * (1.0 + math.cos(math.pi * e / E)),
    "linear-cooldown": lambda e, E: 1.0 if e < E / 2 else 2.0 * (E - e) / E,
    # x0.1 at 60 % and again at 90 % of the epochs (PEPITA's MNIST schedule: epochs 60, 90 of 100)
    "step-60-90": lambda e, E: 0.1 ** ((e >= 0.6 * E) + (e >= 0.9 * E)),
}


def make_optimizer(rule: LearningRule, cfg: TrainConfig) -> torch.optim.Optimizer | None:
    """The same stock optimizer for every rule; fused kernels (cheaper step on CPU and GPU)."""
    groups = [g for g in rule.param_groups() if g["params"]]
    if not rule.uses_optimizer or not groups:
        return None
    return OPTIMIZERS[cfg.optimizer](groups, cfg, True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev


@torch.no_grad()
def evaluate(rule: LearningRule, x: Tensor, y: Tensor, batch_size: int) -> float | None:
    """Accuracy of ``rule.predict`` (one host sync at the end)."""
    if len(y) == 0:
        return None
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    for i in range(0, len(y), batch_size):
        correct += (rule.predict(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum()
    return correct.item() / len(y)


@dataclass
class _State:
    """What a checkpoint holds besides the rule and optimizer state."""

    epoch: int = 0
    curve: list[dict] = field(default_factory=list)
    epoch_times_s: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    energy_j: float | None = None
    energy_method: str | None = None
    peak_mem_bytes: int | None = None
    mem_delta_bytes: int | None = None
    mem_method: str | None = None
    best_val: float = -1.0
    best_epoch: int | None = None
    bad_epochs: int = 0
    time_to_target_s: float | None = None
    energy_to_target_j: float | None = None


#: train options that change how a run is executed or observed, not what it computes
_RUN_ONLY = frozenset({"progress", "threads", "device", "measure_flops", "energy",
                       "eval_batch_size", "max_time_s"})


def settings_of(config: dict[str, Any] | None) -> dict[str, Any]:
    """What makes two runs the same run: rule options, model, dataset and the train options that
    change the result (JSON-normalised, so a record read back compares equal)."""
    import json

    config = config or {}
    train_cfg = {k: v for k, v in (config.get("train") or {}).items() if k not in _RUN_ONLY}
    out = {"rule": config.get("rule"), "model": config.get("model"),
           "dataset": config.get("dataset"), "train": train_cfg}
    return json.loads(json.dumps(out, default=str))


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every setting that differs (nested keys joined by '.')."""
    diffs: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{d}" for d in settings_diff(a, b)]
        elif a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


def _check_ckpt_settings(path: Path, blob: dict[str, Any], config: dict[str, Any] | None) -> None:
    if config and "settings" in blob:
        diff = settings_diff(blob["settings"], settings_of(config))
        if diff:
            raise ConfigError(
                f"checkpoint {path} belongs to a run with other settings ({'; '.join(diff)}); "
                f"resuming it would mix two runs. Delete it to start afresh, or write this run "
                f"elsewhere (another out directory or suite name)")


class Trainer:
    """Train one rule on one model and dataset; returns a :class:`RunRecord`."""

    def __init__(self, rule: LearningRule, model: nn.Module, splits: "data_mod.Splits",
                 cfg: TrainConfig, *, record: RunRecord, ckpt_path: Path | None = None,
                 on_epoch: Callable[[int, float | None], None] | None = None) -> None:
        self.cfg, self.splits, self.rec = cfg, splits, record
        self.ckpt_path = ckpt_path
        #: called after every finished epoch with (epoch, val_acc); may raise to stop the run
        #: (the tuner raises optuna.TrialPruned), the checkpoint is already saved by then
        self.on_epoch = on_epoch
        self.device = resolve_device(cfg.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # batches; the rule gets its own
        task = Task(splits.in_shape, splits.num_classes, meta=getattr(splits, "meta", {}))
        rule.bind(model, task, torch.Generator().manual_seed(cfg.seed + 1))
        self.rule = rule.to(self.device)
        self.splits = splits.to(self.device)
        self.opt = make_optimizer(rule, cfg)
        self._base_lrs = [g["lr"] for g in self.opt.param_groups] if self.opt else []
        self.state = _State()
        self.best_state: dict[str, Tensor] | None = None

    # ---- checkpoints ---------------------------------------------------------------------------
    def _save_ckpt(self) -> None:
        if self.ckpt_path is None:
            return
        blob = {"rule": self.rule.state_dict(), "opt": self.opt.state_dict() if self.opt else None,
                "gen": self.gen.get_state(), "rule_gen": self.rule._generator.get_state(),
                "state": asdict(self.state), "best_state": self.best_state,
                "torch_rng": torch.get_rng_state(), "settings": settings_of(self.rec.config)}
        tmp = self.ckpt_path.with_suffix(".ckpt.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, self.ckpt_path)

    def _load_ckpt(self) -> bool:
        if self.ckpt_path is None or not self.ckpt_path.exists():
            return False
        blob = torch.load(self.ckpt_path, map_location=self.device, weights_only=False)
        _check_ckpt_settings(self.ckpt_path, blob, self.rec.config)
        self.rule.load_state_dict(blob["rule"])
        if self.opt is not None and blob["opt"] is not None:
            self.opt.load_state_dict(blob["opt"])
        self.gen.set_state(blob["gen"])
        self.rule._generator.set_state(blob["rule_gen"])
        torch.set_rng_state(blob["torch_rng"])
        self.state = _State(**blob["state"])
        self.best_state = blob["best_state"]
        return True

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self) -> RunRecord:
        for _ in self.epochs():
            pass
        return self.finish()

    def epochs(self) -> Iterator[int]:
        """Train epoch by epoch, yielding after each finished epoch (its number, 1-based).

        :meth:`fit` exhausts it; :func:`train_interleaved` advances several trainers in turn.
        Stops at the epoch budget, on divergence, early stopping or ``max_time_s``; call
        :meth:`finish` afterwards for the record.
        """
        cfg, s, rec = self.cfg, self.splits, self.rec
        resumed = self._load_ckpt()
        if cfg.measure_flops and rec.flops_per_step is None and not resumed:
            rec.flops_per_step = self._flops_per_step()
        rec.params = count_params(self.rule)
        n = len(s.y_train)
        epoch_bar = _bar(range(self.state.epoch, cfg.epochs), cfg.progress,
                         desc=f"{rec.rule} {rec.dataset}", total=cfg.epochs, initial=self.state.epoch)
        rec.status = "ok"
        for epoch in epoch_bar:
            if self.opt is not None:  # the schedule is a function of the epoch: resume-safe
                f = LR_SCHEDULES[cfg.lr_schedule](epoch, cfg.epochs)
                for g, lr0 in zip(self.opt.param_groups, self._base_lrs):
                    g["lr"] = lr0 * f
            self.rule.on_epoch_start(epoch)
            loss, dt, energy = self._train_epoch(n)
            self.state.epoch = epoch + 1
            st = self.state
            st.epoch_times_s.append(dt)
            st.train_time_s += dt
            if energy is not None:
                st.energy_j = (st.energy_j or 0.0) + energy
            if not math.isfinite(loss):
                rec.status = "diverged"
                rec.error = (f"training loss became {loss} in epoch {epoch + 1}; lower the learning "
                             f"rate (--lr) or check the rule's options")
                st.curve.append({"epoch": epoch + 1, "train_loss": None, "val_acc": None,
                                 "time_s": st.train_time_s, "energy_j": st.energy_j})
                return
            val = evaluate(self.rule, s.x_val, s.y_val, cfg.eval_batch_size)
            st.curve.append({"epoch": epoch + 1, "train_loss": loss, "val_acc": val,
                             "time_s": st.train_time_s, "energy_j": st.energy_j})
            if hasattr(epoch_bar, "set_postfix"):
                epoch_bar.set_postfix(loss=f"{loss:.4f}", val=f"{val:.4f}" if val is not None else "-")
            self._track(val, epoch + 1)
            self._save_ckpt()
            if self.on_epoch is not None:
                self.on_epoch(epoch + 1, val)
            yield epoch + 1
            if cfg.patience and st.bad_epochs >= cfg.patience:
                rec.status = "early-stopped"
                return
            if cfg.max_time_s is not None and st.train_time_s >= cfg.max_time_s:
                return


    def _train_epoch(self, n: int) -> tuple[float, float, float | None]:
        cfg, s = self.cfg, self.splits
        perm = torch.randperm(n, generator=self.gen).to(self.device)
        steps = math.ceil(n / cfg.batch_size)
        total = torch.zeros((), device=self.device)
        mem, energy = MemoryMeter(self.device), EnergyMeter(self.device) if cfg.energy else None
        bar = _bar(range(steps), cfg.progress, desc="  batches", leave=False)
        mem.start()
        if energy is not None:
            energy.start()
        timer = Timer(self.device)
        timer.start()
        for i in bar:
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            total += self.train_step(s.x_train[idx], s.y_train[idx])["loss"]
        timer.stop()
        e = energy.stop() if energy is not None else None
        m = mem.stop()
        st = self.state
        if m.value is not None:
            st.peak_mem_bytes = max(st.peak_mem_bytes or 0, int(m.value))
            delta = getattr(m, "delta_bytes", None)
            if delta is not None:
                st.mem_delta_bytes = max(st.mem_delta_bytes or 0, int(delta))
        st.mem_method = m.method
        if e is not None:
            st.energy_method = e.method
        return (total / steps).item(), timer.elapsed_s, (e.value if e is not None else None)

    def train_step(self, xb: Tensor, yb: Tensor) -> dict[str, Tensor]:
        """One optimisation step: the rule fills ``.grad``, the shared optimizer applies it."""
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)
        out = self.rule.step(xb, yb)
        if self.opt is not None:
            self.opt.step()
        return out

    def _track(self, val: float | None, epoch: int) -> None:
        st, cfg = self.state, self.cfg
        score = val if val is not None else -float(epoch)  # no validation: keep the last epoch
        if score > st.best_val or val is None:
            st.best_val, st.best_epoch, st.bad_epochs = score, epoch, 0
            if cfg.patience and val is not None:
                self.best_state = {k: v.detach().clone() for k, v in self.rule.state_dict().items()}
        else:
            st.bad_epochs += 1
        if (cfg.target_acc is not None and val is not None and val >= cfg.target_acc
                and st.time_to_target_s is None):
            st.time_to_target_s = st.train_time_s
            st.energy_to_target_j = st.energy_j

    def _flops_per_step(self) -> int | None:
        """FLOPs of one training step (forward + whatever backward the rule runs), on a copy."""
        s, cfg = self.splits, self.cfg
        rule = copy.deepcopy(self.rule)
        xb, yb = s.x_train[:cfg.batch_size], s.y_train[:cfg.batch_size]
        meter = FlopMeter()
        try:
            with meter:
                rule.step(xb, yb)
        except (RuntimeError, NotImplementedError) as exc:  # an op without a flop formula
            self.rec.error = f"flop count unavailable: {exc}"
            return None
        return int(meter.total)

    def finish(self) -> RunRecord:
        """The run record after :meth:`epochs` ended: best epoch restored, test accuracy."""
        cfg, s, st, rec = self.cfg, self.splits, self.state, self.rec
        if self.best_state is not None and rec.status != "diverged":
            self.rule.load_state_dict(self.best_state)  # test the model early stopping chose
        rec.epochs = st.epoch
        rec.curve = st.curve
        rec.epoch_times_s = st.epoch_times_s
        rec.train_time_s = st.train_time_s
        rec.epoch_time_s = median_epoch_time(st.epoch_times_s)  # warm-up epoch excluded
        rec.peak_mem_bytes, rec.mem_method = st.peak_mem_bytes, st.mem_method
        rec.energy_j, rec.energy_method = st.energy_j, st.energy_method
        rec.best_epoch = st.best_epoch
        rec.time_to_target_s, rec.energy_to_target_j = st.time_to_target_s, st.energy_to_target_j
        rec.target_acc = cfg.target_acc
        rec.extra = dict(rec.extra or {}, mem_delta_bytes=st.mem_delta_bytes)
        if st.mem_method is not None and not st.mem_method.startswith("cuda"):
            rec.extra["mem_heap_trimmed"] = heap_trim_available()
            if os.environ.get("MALLOC_MMAP_THRESHOLD_"):  # glibc tuning that changes what RSS shows
                rec.extra["malloc_mmap_threshold"] = os.environ["MALLOC_MMAP_THRESHOLD_"]
        if rec.status != "diverged":
            vals = [c["val_acc"] for c in st.curve if c["val_acc"] is not None]
            rec.val_acc = max(vals) if vals else None
            rec.test_acc = evaluate(self.rule, s.x_test, s.y_test, cfg.eval_batch_size)
        return rec


def _bar(it: Any, enabled: bool, **kw: Any) -> Any:
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    return tqdm(it, dynamic_ncols=True, **kw)


def train(rule: str | LearningRule = "bp", model: str | nn.Module = "mlp:1000,1000",
          data: str | "data_mod.DataBundle" | tuple = "fashion-mnist", *,
          rule_options: dict[str, Any] | None = None, out: str | Path | None = None,
          suite: str = "adhoc", data_dir: str | Path | None = None, resume: bool = True,
          on_epoch: Callable[[int, float | None], None] | None = None,
          variant: str | None = None, **train_options: Any) -> RunRecord:
    """Train one rule and return its record (written to ``out`` if given).

    ``data`` is a registered dataset name, a :class:`~bpfree.data.DataBundle`, or ``(x, y)``
    tensors/arrays of any feature and class count. ``train_options`` are :class:`TrainConfig`
    fields (``epochs``, ``batch_size``, ``lr``, ``seed``, ``patience``...). Rule options that
    differ from the defaults make a *variant* (``auglocal[n_modules=4]``): its record lives beside
    the default rule's, so an ablation and its BP twin share one ``out`` directory; ``variant``
    overrides that label.
    """
    cfg = TrainConfig.from_dict(train_options)
    with torch_threads(cfg.threads):
        return _train(cfg, rule, model, data, rule_options=rule_options, out=out, suite=suite,
                      data_dir=data_dir, resume=resume, on_epoch=on_epoch, variant=variant)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body on ``n`` torch intra-op threads (None/0: leave torch's count), then restore
    the caller's: a run's thread count must not leak out of it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(cfg: TrainConfig, rule: str | LearningRule, model: str | nn.Module, data: Any, *,
           rule_options: dict[str, Any] | None, out: str | Path | None, suite: str,
           data_dir: str | Path | None, resume: bool,
           on_epoch: Callable[[int, float | None], None] | None,
           variant: str | None = None) -> RunRecord:
    run = _Run(cfg, rule, model, data, rule_options=rule_options, out=out, suite=suite,
               data_dir=data_dir, resume=resume, on_epoch=on_epoch, variant=variant)
    if run.done is not None:
        return run.done
    try:
        run.start()
        assert run.trainer is not None
        run.rec = run.trainer.fit()
    except (ValueError, RuntimeError, FloatingPointError) as exc:
        if out is None:
            raise
        run.fail(exc)
    return run.complete()


class _Run:
    """One run's setup and bookkeeping around a Trainer: its record path (a finished record is
    returned as ``done``), checkpoint, failure capture and the atomic record write."""

    def __init__(self, cfg: TrainConfig, rule: str | LearningRule, model: str | nn.Module,
                 data: Any, *, rule_options: dict[str, Any] | None, out: str | Path | None,
                 suite: str, data_dir: str | Path | None, resume: bool,
                 on_epoch: Callable[[int, float | None], None] | None = None,
                 variant: str | None = None) -> None:
        self.cfg, self.model, self.on_epoch = cfg, model, on_epoch
        self.bundle = _bundle(data, data_dir)
        self.rule = rule if isinstance(rule, LearningRule) else make_rule(rule, **(rule_options or {}))
        model_name = model if isinstance(model, str) else type(model).__name__
        rec = RunRecord(rule=self.rule.name, dataset=self.bundle.name, model=model_name,
                        seed=cfg.seed, suite=suite)
        self.variant = self.rule.variant() if variant is None else variant
        rec.config = {"train": asdict(cfg), "rule": self.rule.hparams(), "variant": self.variant,
                      "model": model_name, "dataset": self.bundle.name,
                      "data_source": self.bundle.source}
        rec.machine = machine_info()
        g = git_info()
        rec.commit, rec.dirty = g.get("commit"), g.get("dirty")
        self.rec, self.path, self.ckpt = rec, None, None
        self.done: RunRecord | None = None
        self.trainer: Trainer | None = None
        if out is not None:
            self.path = record_path(out, suite=suite, dataset=self.bundle.name, model=model_name,
                                    rule=rule_key(self.rule.name, self.variant), seed=cfg.seed)
            if resume and is_done(self.path):
                done = read_record(self.path)
                diff = settings_diff(settings_of(done.config), settings_of(rec.config)) \
                    if done.config else []
                if diff:
                    raise ConfigError(
                        f"{self.path} already holds a finished run of {rec.rule} with other "
                        f"settings ({'; '.join(diff)}); records are keyed by suite, dataset, "
                        f"model, rule[variant] and seed. Write this run elsewhere (another out directory "
                        f"or suite name), or pass resume=False (`bpfree train --overwrite`) to overwrite that record")
                self.done = done
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.ckpt = self.path.with_suffix(".ckpt")
            if self.ckpt.exists():  # refuse now, before a failed record could replace it
                # mmap: only the small "settings" entry is read, not the weights (loaded later)
                blob = torch.load(self.ckpt, map_location="cpu", weights_only=False, mmap=True)
                _check_ckpt_settings(self.ckpt, blob, rec.config)
        self.t0 = time.time()

    def start(self) -> None:
        cfg = self.cfg
        splits = data_mod.prepare(self.bundle, val_fraction=cfg.val_fraction, seed=cfg.seed)
        task = Task(splits.in_shape, splits.num_classes, meta=splits.meta)  # meta: e.g. a graph
        torch.manual_seed(cfg.seed)  # model init
        net = build_model(self.model, task)
        self.trainer = Trainer(self.rule, net, splits, cfg, record=self.rec, ckpt_path=self.ckpt,
                               on_epoch=self.on_epoch)

    def fail(self, exc: BaseException) -> None:
        self.rec.status, self.rec.error = "failed", f"{type(exc).__name__}: {exc}"

    def complete(self) -> RunRecord:
        rec = self.rec
        rec.extra = dict(rec.extra or {}, wall_s=time.time() - self.t0)
        if self.path is not None:
            write_record(rec, self.path)
            if self.ckpt is not None and self.ckpt.exists():
                self.ckpt.unlink()
        return rec


def train_interleaved(runs: list[dict[str, Any]], data: str | "data_mod.DataBundle" | tuple = "fashion-mnist",
                      *, out: str | Path | None = None, suite: str = "adhoc",
                      data_dir: str | Path | None = None, resume: bool = True,
                      **train_options: Any) -> list[RunRecord]:
    """Train several runs *epoch by epoch in turn* in one process; returns their records.

    ``runs`` are dicts with ``rule`` and optionally ``model``, ``rule_options`` and per-run train
    options (e.g. ``{"rule": "bp"}, {"rule": "mf"}``); ``train_options`` are shared. Epoch ``k``
    of every run is timed next to epoch ``k`` of the others (the order rotates each round), so a
    drifting machine slows all runs alike and their epoch-time *ratios* are measured under the
    same conditions: on a shared VM, sequential whole runs drift by up to 2x. Accuracy is what
    each run would reach alone (own seeds, data order, early stopping). Records are written as
    each run ends; an interrupted call resumes from the checkpoints, skipping finished runs.
    """
    threads_before = torch.get_num_threads()
    prepared: list[_Run] = []
    try:
        for spec in runs:
            spec = dict(spec)
            unknown = (set(spec) - {"rule", "model", "rule_options", "variant"}
                       - {f.name for f in fields(TrainConfig)})
            if "rule" not in spec or unknown:
                raise ConfigError(f"each run needs a 'rule' (and may set model, rule_options or train "
                                  f"options); got {sorted(spec)}" + (f", unknown {sorted(unknown)}" if unknown else ""))
            rule, model = spec.pop("rule"), spec.pop("model", "mlp:1000,1000")
            variant = spec.pop("variant", None)
            cfg = TrainConfig.from_dict({**train_options, **{k: v for k, v in spec.items() if k != "rule_options"}})
            prepared.append(_Run(cfg, rule, model, data, rule_options=spec.get("rule_options"),
                                 out=out, suite=suite, data_dir=data_dir, resume=resume,
                                 variant=variant))
        if any(r.cfg.threads for r in prepared):
            torch.set_num_threads(next(r.cfg.threads for r in prepared if r.cfg.threads))
        active: list[tuple[_Run, Iterator[int]]] = []
        for run in prepared:
            if run.done is None:
                try:
                    run.start()
                    assert run.trainer is not None
                    active.append((run, run.trainer.epochs()))
                except (ValueError, RuntimeError, FloatingPointError) as exc:
                    if out is None:
                        raise
                    run.fail(exc)
                    run.done = run.complete()
        rnd = 0
        while active:
            order = active[rnd % len(active):] + active[:rnd % len(active)]
            for run, it in order:
                try:
                    next(it)
                    continue
                except StopIteration:
                    assert run.trainer is not None
                    run.rec = run.trainer.finish()
                except (ValueError, RuntimeError, FloatingPointError) as exc:
                    if out is None:
                        raise
                    run.fail(exc)
                run.done = run.complete()
                active.remove((run, it))
            rnd += 1
    finally:
        torch.set_num_threads(threads_before)
    return [r.done for r in prepared if r.done is not None]


def _bundle(data: Any, data_dir: str | Path | None) -> "data_mod.DataBundle":
    if isinstance(data, str):
        return data_mod.load_dataset(data, data_dir)
    if isinstance(data, data_mod.DataBundle):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data_mod.from_tensors(*data)
    raise ConfigError("data must be a dataset name, a DataBundle or an (x, y) pair; "
                      f"got {type(data).__name__}")

"""The learning-rule contract. Read this file first.

A :class:`LearningRule` is *credit assignment only*: given a batch it fills ``.grad`` of every
parameter it trains (or of its own extras), and a stock ``torch.optim`` optimizer built by the
:class:`~bpfree.train.Trainer` applies the update. Rules never see loaders, files or configs.

A rule is an ``nn.Module``: after :meth:`bind` the model and every rule-owned extra (feedback
matrices, per-layer heads, denoisers...) are submodules or buffers, so parameter counts, memory,
``state_dict`` checkpoints and ``.to(device)`` cover them without special cases.

Locality is declared in ``locality`` and *checked* by :mod:`bpfree.audit`:

- ``"global"``: gradients may cross block boundaries (backprop).
- ``"block"``: autograd only inside a block; no gradient reaches a block's input.
- ``"none"``: no backward pass reaches the model at all (perturbation, ES, forward mode).
"""

from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch
from torch import Tensor, nn

__all__ = ["Task", "LearningRule", "RULES", "register", "make_rule", "rule_hparams", "ConfigError"]


class ConfigError(ValueError):
    """A bad option: unknown rule, unknown key, wrong type or out-of-range value."""


@dataclass(frozen=True)
class Task:
    """What a rule needs to know about the problem, and nothing about where data comes from."""

    in_shape: tuple[int, ...]  # per-sample input shape, e.g. (1, 28, 28)
    num_classes: int
    kind: str = "classification"
    #: anything else a model or rule may need (e.g. a graph's features and edges for node
    #: classification, where the Trainer batches node indices)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class LearningRule(nn.Module):
    """Base class: one subclass per rule, registered by name with :func:`register`.

    Subclasses set the class variables, take their hyperparameters as keyword arguments with
    defaults in ``__init__`` (the only place defaults live), and implement ``_step``.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    locality: ClassVar[str] = "block"
    paper: ClassVar[str] = ""
    #: does the rule's update need an optimizer (True), or does it write weights itself (False)?
    uses_optimizer: ClassVar[bool] = True
    #: the model builder this rule is usually run with (used by suites when none is given)
    native_model: ClassVar[str] = "mlp:1000,1000"
    #: the model's head is the last block's own local readout (MF's M_L): the head -> last-block
    #: boundary is then inside one locality unit, and the audit does not probe it
    head_is_local: ClassVar[bool] = False
    #: a small model and input shape for the contract/locality tests and `bpfree audit`
    small_model: ClassVar[str] = "mlp:32,32"
    small_in_shape: ClassVar[tuple[int, ...]] = (1, 8, 8)
    #: model and train options for the contract "learns a small real task" test (sklearn digits)
    smoke_model: ClassVar[str] = "mlp:64,64"
    smoke: ClassVar[dict[str, Any]] = {"epochs": 12, "lr": 3e-3}
    #: train options the rule's paper (or its best re-implementation) needs, e.g. an optimizer
    #: or a schedule; suites and benchmark scripts apply them to the rule *and* its BP twin
    recommended_train: ClassVar[dict[str, Any]] = {}
    #: Optuna search space: name -> ("log"|"float"|"int"|"cat", low, high) or ("cat", [choices])
    search_space: ClassVar[dict[str, tuple]] = {}
    #: options added after records were made, with the value those older records ran with (a
    #: record whose config lacks the option is named and compared as that variant)
    legacy_options: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.model: nn.Module | None = None
        self.task: Task | None = None
        self._generator: torch.Generator | None = None

    # ---- binding --------------------------------------------------------------------------
    def bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> "LearningRule":
        """Attach the model and build rule-owned state (feedback matrices, heads...)."""
        self.model = model
        self.task = task
        self._generator = generator
        self._bind(model, task, generator)
        return self

    def _bind(self, model: nn.Module, task: Task, generator: torch.Generator) -> None:
        """Override to create extras; ``generator`` is the run's seeded CPU generator."""

    @property
    def blocks(self) -> list[nn.Module]:
        """The model's blocks: the units of locality (children of the ``nn.Sequential``)."""
        assert self.model is not None, "call bind() first"
        return list(self.model.children())

    def joint_blocks(self) -> set[int]:
        """Indices k of blocks trained *jointly with block k-1* by design (the two share one
        gradient-isolated module, e.g. DGL with ``n_modules`` < blocks): the audit does not probe
        the boundary below them. Default: none, every block boundary is a locality boundary."""
        return set()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups; override to give extras another learning rate."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    # ---- training -------------------------------------------------------------------------
    def step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """One training step on a batch: fills ``.grad``; returns detached scalar tensors.

        No host sync here (no ``.item()``): the Trainer reads scalars at log time.
        """
        self.train()
        out = self._step(x, y)
        return {k: v.detach() for k, v in out.items()}

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Schedules (e.g. layer-by-layer phases) without a second loop."""

    # ---- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Class scores ``(B, C)``; higher is more likely. Default: the model's output."""
        self.eval()
        return self._predict(x)

    def _predict(self, x: Tensor) -> Tensor:
        assert self.model is not None
        return self.model(x)

    # ---- helpers for subclasses --------------------------------------------------------------
    def randn(self, *shape: int, device: torch.device | None = None) -> Tensor:
        """Seeded noise on the rule's device (a device generator is made lazily from the seed)."""
        dev = device or self.device
        return torch.randn(*shape, generator=self._device_generator(dev), device=dev)

    def _device_generator(self, dev: torch.device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(0)
        if dev.type == "cpu":
            return self._generator
        gens = self.__dict__.setdefault("_dev_gens", {})
        if dev not in gens:
            seed = int(torch.randint(2**62, (1,), generator=self._generator))
            gens[dev] = torch.Generator(device=dev).manual_seed(seed)
        return gens[dev]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())

    def hparams(self) -> dict[str, Any]:
        """The rule's hyperparameters as passed (defaults filled in)."""
        return {k: getattr(self, k) for k in rule_hparams(type(self))}

    def variant(self) -> str:
        """The options that differ from the defaults, ``"k=v,k2=v2"`` in signature order ("" for
        the default rule): what tells an ablation's records apart from the default run's."""
        return variant_of(type(self), self.hparams())


def variant_of(cls: type[LearningRule], options: dict[str, Any]) -> str:
    """``"k=v,..."`` for the ``options`` of rule class ``cls`` that differ from its defaults."""
    params = rule_hparams(cls)
    return ",".join(f"{k}={v}" for k, v in options.items() if k in params and (
        params[k].default is inspect.Parameter.empty or v != params[k].default))


def rule_key(name: str, variant: str = "") -> str:
    """How a run's rule is named in record paths and tables: ``name`` or ``name[variant]``."""
    return f"{name}[{variant}]" if variant else name


RULES: dict[str, type[LearningRule]] = {}


def register(cls: type[LearningRule]) -> type[LearningRule]:
    """Class decorator: add a rule to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty `name`")
    if cls.locality not in ("global", "block", "none"):
        raise TypeError(f"{cls.__name__}.locality must be global/block/none, got {cls.locality!r}")
    if cls.name in RULES and RULES[cls.name] is not cls:
        raise TypeError(f"rule name {cls.name!r} registered twice")
    RULES[cls.name] = cls
    return cls


def rule_hparams(cls: type[LearningRule]) -> dict[str, inspect.Parameter]:
    """Hyperparameters = keyword arguments of the rule's ``__init__``."""
    sig = inspect.signature(cls.__init__)
    return {
        n: p
        for n, p in sig.parameters.items()
        if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _coerce(rule: str, key: str, value: Any, annotation: Any, default: Any) -> Any:
    """Check (and for strings from the CLI, convert) one hyperparameter value."""
    hints = {float: (int, float), int: (int,), bool: (bool,), str: (str,)}
    target = type(default) if default is not inspect.Parameter.empty and default is not None else None
    if isinstance(annotation, str):
        for t in (bool, int, float, str):
            if annotation.split("|")[0].strip() == t.__name__:
                target = t
    if target is None or target not in hints:
        return value
    if isinstance(value, str) and target is not str:
        try:
            if target is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return target(value)
        except ValueError:
            raise ConfigError(
                f"rule {rule!r}: option {key!r} expects {target.__name__}, got {value!r}"
            ) from None
    if isinstance(value, bool) and target is not bool:
        raise ConfigError(f"rule {rule!r}: option {key!r} expects {target.__name__}, got a bool")
    if not isinstance(value, hints[target]):
        raise ConfigError(
            f"rule {rule!r}: option {key!r} expects {target.__name__}, "
            f"got {type(value).__name__} {value!r}"
        )
    return float(value) if target is float else value


def make_rule(name: str, **hparams: Any) -> LearningRule:
    """Build a registered rule; unknown names/keys and wrong types are errors naming them."""
    from . import rules as _  # noqa: F401  (populate the registry)

    if name not in RULES:
        raise ConfigError(
            f"unknown rule {name!r}.{_suggest(name, RULES)} Known rules: {', '.join(sorted(RULES))}"
        )
    cls = RULES[name]
    params = rule_hparams(cls)
    clean = {}
    for key, value in hparams.items():
        if key not in params:
            raise ConfigError(
                f"rule {name!r} has no option {key!r}.{_suggest(key, params)} "
                f"Options: {', '.join(params) or '(none)'}"
            )
        p = params[key]
        clean[key] = _coerce(name, key, value, p.annotation, p.default)
    return cls(**clean)

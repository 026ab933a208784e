"""bpfree: train neural networks without end-to-end backpropagation, measured against backprop.

>>> import bpfree
>>> rec = bpfree.train(rule="mf", model="mlp:1000,1000", data="fashion-mnist", epochs=5)
>>> rec.test_acc, rec.epoch_time_s
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import models  # noqa: E402
from .rule import RULES, LearningRule, Task, make_rule, register  # noqa: E402
from . import rules as _rules  # noqa: E402,F401  (registers every rule)
from .train import TrainConfig, Trainer, train, train_interleaved  # noqa: E402

__all__ = ["train", "train_interleaved", "TrainConfig", "Trainer", "RULES", "LearningRule", "Task", "make_rule",
           "register", "models", "__version__"]

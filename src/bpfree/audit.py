"""The locality check: does a rule's gradient stay where the rule says it does?

One training step of the rule runs with probes on every block boundary:

- a forward pre-hook replaces each block's input by an identity view whose gradient hook records
  any gradient flowing *through that block into the block below* (a fresh view, so the block
  below's own local loss on the same tensor is not counted);
- a rule with ``head_is_local`` (MF: the head *is* the last layer's projection M_L) trains the
  last block through the head by design, so that one boundary is not probed; likewise the
  boundaries a rule's ``joint_blocks()`` names (blocks grouped into one module, e.g. DGL's
  ``n_modules``) are not probed;
- for ``locality = "none"`` rules, a hook on every model parameter records any backward pass that
  reaches the model at all.

``"block"`` rules must show no crossing; ``"none"`` rules no crossing and no parameter reached by
autograd; ``"global"`` rules (backprop) are reported with the boundaries they cross.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .models import build_model
from .rule import LearningRule, Task, make_rule

__all__ = ["AuditReport", "audit"]


@dataclass
class AuditReport:
    rule: str
    locality: str
    crossings: list[str] = field(default_factory=list)  # "block 2 -> block 1 (|g|max=...)"
    param_backward: list[str] = field(default_factory=list)  # params reached by autograd
    trained: list[str] = field(default_factory=list)  # params that received a .grad

    @property
    def passed(self) -> bool:
        if self.locality == "global":
            return True
        if self.locality == "block":
            return not self.crossings
        return not self.crossings and not self.param_backward

    def summary(self) -> str:
        lines = [f"rule {self.rule!r} declares locality {self.locality!r}"]
        if self.locality == "global":
            lines.append(f"global: gradients cross {len(self.crossings)} block boundar"
                         f"{'y' if len(self.crossings) == 1 else 'ies'} (expected for backprop)")
        elif self.passed:
            lines.append("PASS: no gradient crossed a block boundary"
                         + (" and no backward pass reached the model" if self.locality == "none" else ""))
        else:
            lines.append("FAIL:")
            lines += [f"  gradient crossed {c}" for c in self.crossings]
            lines += [f"  backward reached parameter {p}" for p in self.param_backward[:20]]
        lines.append(f"parameters updated: {len(self.trained)}")
        return "\n".join(lines)


def audit(rule: str | LearningRule, model: str | nn.Module | None = None,
          task: Task | None = None, batch_size: int = 16, seed: int = 0,
          rule_options: dict | None = None) -> AuditReport:
    """Run one step of ``rule`` with boundary probes and report what crossed where."""
    r = rule if isinstance(rule, LearningRule) else make_rule(rule, **(rule_options or {}))
    task = task or Task(r.small_in_shape, 10)
    torch.manual_seed(seed)
    net = build_model(model or r.small_model, task)
    r.bind(net, task, torch.Generator().manual_seed(seed))
    report = AuditReport(r.name, r.locality)
    handles = []
    children = list(net.named_children())
    joint = r.joint_blocks()
    for k, (name, child) in enumerate(children):
        if k == 0 or (k == len(children) - 1 and r.head_is_local) or k in joint:
            continue
        below = children[k - 1][0]

        def pre_hook(mod: nn.Module, args: tuple, name: str = name, below: str = below) -> tuple:
            if not args or not isinstance(args[0], Tensor) or not args[0].requires_grad:
                return args
            probe = args[0].view_as(args[0])  # a fresh node: only this block's path goes through it

            def on_grad(g: Tensor) -> None:
                report.crossings.append(f"{name} -> {below} (|g|max={g.abs().max().item():.3g})")

            probe.register_hook(on_grad)
            return (probe, *args[1:])

        handles.append(child.register_forward_pre_hook(pre_hook))
    if r.locality == "none":
        for pname, p in net.named_parameters():
            if p.requires_grad:
                handles.append(p.register_hook(
                    lambda g, pname=pname: report.param_backward.append(pname)))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *task.in_shape, generator=gen)
    y = torch.randint(task.num_classes, (batch_size,), generator=gen)
    try:
        for p in r.parameters():
            p.grad = None
        r.step(x, y)
    finally:
        for h in handles:
            h.remove()
    report.crossings = sorted(set(report.crossings))
    report.param_backward = sorted(set(report.param_backward))
    report.trained = [n for n, p in r.named_parameters() if p.grad is not None]
    return report

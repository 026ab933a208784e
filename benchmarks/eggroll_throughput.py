"""EGGROLL training throughput vs plain batched inference of the same model (paper's 91 % claim).

A training step evaluates N members × k samples = N·k (member, sample) forward evaluations, then
forms the low-rank update and takes the Adam step. Plain inference runs the *unperturbed* model on
N·k samples in one batch. Ratio = training samples/s ÷ inference samples/s (1.0 = free training).

Modes: ``distinct`` — every member has its own k samples (the paper's setting: each member
processes its own sequence); ``shared`` — all members see the same k samples (bpfree's default
training mode; the first layer's base product x Wᵀ is then computed once).
Optional ``--es``: OpenAI-ES (full-rank, vmap over stacked weights) at the same population.

Timings: one torch thread, interleaved repeats, median. Usage:
    PYTHONPATH=src python benchmarks/eggroll_throughput.py [--widths 512,512] [--population 256]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from bpfree import Task, make_rule
from bpfree.meters import git_info
from bpfree.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="512,512")
    ap.add_argument("--population", type=int, default=256)
    ap.add_argument("--per-member", type=int, default=4, help="samples per member (k)")
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--es", action="store_true", help="also time full-rank OpenAI-ES")
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = Task((1, 28, 28), 10)
    spec = f"mlp:{args.widths}"
    N, k = args.population, args.per_member
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N * k, 1, 28, 28, generator=g)
    y = torch.randint(10, (N * k,), generator=g)
    torch.manual_seed(0)
    model = build_model(spec, task)

    def make(name: str, **opts):
        r = make_rule(name, population=N, **opts).bind(model, task, torch.Generator().manual_seed(1))
        return r, torch.optim.Adam(r.parameters(), lr=1e-4, fused=True)

    runners = {}
    for mode, share in (("distinct", False), ("shared", True)):
        r, opt = make("eggroll", rank=args.rank, share_batch=share)
        xs, ys = (x, y) if not share else (x[:k], y[:k])

        def step(r=r, opt=opt, xs=xs, ys=ys) -> None:
            opt.zero_grad(set_to_none=True)
            r.step(xs, ys)
            opt.step()
        runners[f"eggroll-{mode}"] = step
    if args.es:
        r_es, opt_es = make("es")

        def es_step() -> None:  # each member on the same k samples: N·k evaluations
            opt_es.zero_grad(set_to_none=True)
            r_es.step(x[:k], y[:k])
            opt_es.step()
        runners["es-shared"] = es_step

    @torch.no_grad()
    def infer() -> None:
        model.eval()
        model(x)
    runners = {"inference": infer, **runners}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for fn in runners.values():  # warm-up
        fn()
    for _ in range(args.repeats):  # interleaved
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(t) for n, t in times.items()}
    inf_sps = N * k / med["inference"]
    print(f"model {spec} (784 inputs), population N={N}, k={k} samples/member, rank {args.rank}, "
          f"threads=1, {args.repeats} interleaved repeats (median); machine "
          f"{platform.processor() or platform.machine()}, commit {git_info().get('commit', '?')[:10]}")
    print("| mode | step s | samples/s (N·k / step) | × inference throughput |")
    print("|---|---|---|---|")
    for n, t in med.items():
        sps = N * k / t
        print(f"| {n} | {t:.4f} | {sps:,.0f} | {sps / inf_sps:.2f} |")


if __name__ == "__main__":
    main()

"""``bpfree``: the command line. Every subcommand has ``--help``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .rule import ConfigError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


def _parse_sets(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``--set key=value`` -> rule options (types are checked by the rule)."""
    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--set expects key=value, got {p!r} (example: --set theta=2.0)")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@command
def cmd_rules(args: argparse.Namespace) -> int:
    from .rule import RULES
    from . import rules as _  # noqa: F401

    rows = [(n, c.family, c.locality, c.native_model, c.paper) for n, c in sorted(RULES.items())]
    if args.json:
        print(json.dumps([dict(zip(("name", "family", "locality", "model", "paper"), r)) for r in rows],
                         indent=2))
        return 0
    widths = [max(len(str(r[i])) for r in rows + [("name", "family", "locality", "model", "paper")])
              for i in range(5)]
    for r in [("name", "family", "locality", "model", "paper")] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


@command
def cmd_datasets(args: argparse.Namespace) -> int:
    from . import data

    if args.download:
        path = data.download(args.download)
        print(f"{args.download}: downloaded to {path}")
        return 0
    for name in data.available():
        try:
            b = data.load_dataset(name, args.data_dir)
            print(f"{name:15s} ok       train {len(b.y_train):6d}  test {len(b.y_test):6d}  "
                  f"shape {b.in_shape}  classes {b.num_classes}  from {b.source}")
        except data.DatasetNotFoundError:
            where = ", ".join(str(p) for p in data.search_paths(name, args.data_dir))
            print(f"{name:15s} missing  (looked in: {where})")
        except data.DataError as exc:
            print(f"{name:15s} BROKEN   {exc}")
    return 0


@command
def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    opts = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed", "patience",
                                          "device", "optimizer", "val_fraction", "threads", "lr_schedule")
            if getattr(args, k) is not None}
    opts["progress"] = not args.quiet
    rec = train(rule=args.rule, model=args.model, data=args.dataset, data_dir=args.data_dir,
                rule_options=_parse_sets(args.set), out=args.out, resume=not args.overwrite, **opts)
    acc = "n/a" if rec.test_acc is None else f"{100 * rec.test_acc:.2f}%"
    print(f"{rec.rule} on {rec.dataset} ({rec.model}): status {rec.status}, test acc {acc}, "
          f"{rec.epochs} epochs, median epoch {rec.epoch_time_s or 0:.2f} s"
          + (f", record in {args.out}" if args.out else ""))
    if rec.error:
        print(f"note: {rec.error}", file=sys.stderr)
    return 0 if rec.status in ("ok", "early-stopped") else 1


@command
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import load_suite, markdown_table, run_suite, summarize

    suite = load_suite(args.suite)
    out = Path(args.out or f"results/{suite.name}")
    queue_opts = dict(storage=getattr(args, "storage", None),
                      retry_failed=getattr(args, "retry_failed", False),
                      use_tuned=not getattr(args, "no_tuned", False),
                      stale_after_s=getattr(args, "stale_after", 300.0),
                      wait=getattr(args, "wait", False))
    if getattr(args, "worker", False):  # one worker of `bench --workers N`: train, no table
        from .bench.runner import work
        from .bench.queue import make_queue
        import signal

        def _term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _term)
        q = make_queue(out, suite.name, storage=queue_opts["storage"],
                       stale_after_s=queue_opts["stale_after_s"],
                       retry_failed=queue_opts["retry_failed"])
        try:
            work(suite, out, q, data_dir=args.data_dir, device=args.device, progress=False,
                 use_tuned=queue_opts["use_tuned"], storage=queue_opts["storage"],
                 wait=queue_opts["wait"])
        finally:
            q.close()
        return 0
    if getattr(args, "interleave", False):
        if getattr(args, "workers", 1) > 1 or queue_opts["storage"]:
            raise ConfigError("--interleave trains the runs in turn in one process; it cannot be "
                              "combined with --workers or --storage")
        from .bench import run_interleaved

        records = run_interleaved(suite, out, data_dir=args.data_dir, device=args.device,
                                  progress=not args.quiet, use_tuned=queue_opts["use_tuned"])
    else:
        records = run_suite(suite, out, data_dir=args.data_dir, progress=not args.quiet,
                            device=args.device, workers=getattr(args, "workers", 1), **queue_opts)
    table = markdown_table(summarize(records))
    print(f"\n## suite {suite.name}: {suite.description}\n")
    print(table)
    (out / "table.md").write_text(table + "\n")
    print(f"\nrecords and table.md in {out}/ (`bpfree report {out}` writes report.md and "
          f"report.html)")
    return 0


@command
def cmd_tune(args: argparse.Namespace) -> int:
    from .bench import load_suite
    from .bench.tune import default_storage, tune_suite

    suite = load_suite(args.suite)
    out = Path(args.out or f"results/{suite.name}")
    storage = args.storage or default_storage(out)
    results = tune_suite(suite, out, trials=args.trials, storage=storage, data_dir=args.data_dir,
                         device=args.device, progress=not args.quiet, only=args.rule,
                         seed_offset=args.worker_index)
    print(f"\n## tuned configs, suite {suite.name} ({args.trials or suite.tune.trials} trials each)\n")
    for key, best in results.items():
        if best is None:
            print(f"- {key}: no completed trial")
            continue
        val = "-" if best.get("value") is None else f"{100 * best['value']:.2f}%"
        print(f"- {key}: best val {val} with {best['params']} "
              f"(trial {best.get('trial')}, {best.get('trials_counted')} counted, "
              f"{best.get('pruned')} pruned)")
    print(f"\nstudies in {storage.split('@')[-1]}; best configs saved as .tuned.json next to the "
          f"records in {out}/ (`bpfree bench --suite {args.suite} --out {out}` uses them)")
    return 0


@command
def cmd_report(args: argparse.Namespace) -> int:
    from .bench.html import write_report

    paths = write_report(args.dir, out=args.out, storage=args.storage, suite=args.suite,
                         title=args.title)
    for p in paths:
        print(f"wrote {p}")
    return 0


@command
def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import audit

    rep = audit(args.rule, model=args.model, rule_options=_parse_sets(args.set))
    print(rep.summary())
    return 0 if rep.passed else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpfree", description=(
        "Train neural networks without end-to-end backprop and measure every rule against "
        "backprop on the same network, data and budget."))
    p.add_argument("--version", action="version", version=f"bpfree {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("rules", help="list the registered learning rules")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("datasets", help="list datasets and where they were found")
    s.add_argument("--data-dir", help="directory holding the dataset folders (or BPFREE_DATA_DIR)")
    s.add_argument("--download", metavar="NAME", help="download NAME into the cache (needs network)")

    s = sub.add_parser("train", help="train one rule on one model and dataset")
    s.add_argument("--rule", required=True, help="a rule name (see `bpfree rules`)")
    s.add_argument("--dataset", default="fashion-mnist", help="dataset name (default fashion-mnist)")
    s.add_argument("--model", default="mlp:1000,1000", help="model spec, e.g. mlp:1000,1000 or convnet:32,128,512")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--patience", type=int, help="early stopping on validation accuracy (epochs)")
    s.add_argument("--optimizer", help="adam (default, fused), adamw or sgd")
    s.add_argument("--lr-schedule", help="constant (default), cosine or linear-cooldown")
    s.add_argument("--val-fraction", type=float, help="validation split carved from train (default 0.1)")
    s.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="a rule option (repeatable)")
    s.add_argument("--out", help="directory for the run record (JSON) and checkpoint")
    s.add_argument("--overwrite", action="store_true",
                   help="retrain even if --out already holds this run's finished record")
    s.add_argument("--data-dir", help="directory holding the dataset folders (or BPFREE_DATA_DIR)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("bench", help="run a benchmark suite and print the results table")
    s.add_argument("--suite", default="quick", help="suite name (quick, paper, all) or a .toml file")
    s.add_argument("--out", help="records directory (default results/SUITE); reruns skip finished runs")
    s.add_argument("--data-dir", help="directory holding the dataset folders (or BPFREE_DATA_DIR)")
    s.add_argument("--device", default="auto")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine (default 1); each run is trained once")
    s.add_argument("--storage", help="SQLAlchemy URL (e.g. postgresql://user@host/db) of a shared "
                   "run queue: `bpfree bench` on several machines with the same URL share the suite; "
                   "tuned configs are also read from its studies")
    s.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    s.add_argument("--no-tuned", action="store_true",
                   help="ignore tuned configs (.tuned.json / studies) and use the suite's own")
    s.add_argument("--stale-after", type=float, default=300.0, metavar="S",
                   help="with --storage: a claim without heartbeat for S seconds is taken over")
    s.add_argument("--wait", action="store_true",
                   help="keep waiting for runs held by other workers (and take them over if they die)")
    s.add_argument("--interleave", action="store_true",
                   help="train each (dataset, seed)'s runs epoch by epoch in turn, so epoch-time "
                   "ratios to bp are measured under the same machine load (one process)")
    s.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal

    s = sub.add_parser("tune", help="tune every rule of a suite with the same Optuna trial budget")
    s.add_argument("--suite", default="quick", help="suite name or a .toml file")
    s.add_argument("--trials", type=int, help="trials per (dataset, model, rule) (default: suite's)")
    s.add_argument("--out", help="records directory (default results/SUITE); best configs go here")
    s.add_argument("--storage", help="SQLAlchemy URL of the studies (default sqlite:///OUT/tune.db); "
                   "several `bpfree tune` processes with one URL fill the studies together")
    s.add_argument("--rule", action="append", help="only this rule (repeatable)")
    s.add_argument("--worker-index", type=int, default=0,
                   help="distinct per parallel tuner: offsets the sampler seed")
    s.add_argument("--data-dir", help="directory holding the dataset folders (or BPFREE_DATA_DIR)")
    s.add_argument("--device", default="auto")
    s.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("report", help="write report.md and a self-contained report.html from records")
    s.add_argument("dir", help="records directory (as written by bench)")
    s.add_argument("--out", help="where to write the report (default: DIR)")
    s.add_argument("--storage", help="SQLAlchemy URL of a shared run queue: its records (from every "
                   "machine) are copied into DIR first")
    s.add_argument("--suite", help="with --storage: the suite whose records to gather")
    s.add_argument("--title", help="report title")

    s = sub.add_parser("audit", help="check that a rule's gradients stay where it declares")
    s.add_argument("rule")
    s.add_argument("--model", help="model spec for the check (default: a small MLP)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="a rule option (repeatable)")
    return p


def _version() -> str:
    from . import __version__
    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"bpfree: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:  # missing/malformed data, bad values
        print(f"bpfree: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbpfree: interrupted; finished runs are saved, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

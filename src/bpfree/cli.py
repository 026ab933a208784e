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
                                          "device", "optimizer", "val_fraction", "threads")
            if getattr(args, k) is not None}
    opts["progress"] = not args.quiet
    rec = train(rule=args.rule, model=args.model, data=args.dataset, data_dir=args.data_dir,
                rule_options=_parse_sets(args.set), out=args.out, **opts)
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
    records = run_suite(suite, out, data_dir=args.data_dir, progress=not args.quiet,
                        device=args.device)
    table = markdown_table(summarize(records))
    print(f"\n## suite {suite.name}: {suite.description}\n")
    print(table)
    (out / "table.md").write_text(table + "\n")
    print(f"\nrecords and table.md in {out}/")
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
    s.add_argument("--val-fraction", type=float, help="validation split carved from train (default 0.1)")
    s.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="a rule option (repeatable)")
    s.add_argument("--out", help="directory for the run record (JSON) and checkpoint")
    s.add_argument("--data-dir", help="directory holding the dataset folders (or BPFREE_DATA_DIR)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("bench", help="run a benchmark suite and print the results table")
    s.add_argument("--suite", default="quick", help="suite name (quick, paper, all) or a .toml file")
    s.add_argument("--out", help="records directory (default results/SUITE); reruns skip finished runs")
    s.add_argument("--data-dir", help="directory holding the dataset folders (or BPFREE_DATA_DIR)")
    s.add_argument("--device", default="auto")
    s.add_argument("--quiet", action="store_true", help="no progress bars")

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

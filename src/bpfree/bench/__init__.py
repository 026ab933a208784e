"""Benchmarks: suites as data files, fair tuning, a resumable multi-worker runner and the report."""

from .suite import Suite, load_suite, list_suites
from .runner import run_interleaved, run_suite
from .report import summarize, markdown_table

__all__ = ["Suite", "load_suite", "list_suites", "run_suite", "run_interleaved", "summarize", "markdown_table",
           "tune_suite", "write_report"]


def __getattr__(name: str):  # lazy: optuna and the HTML writer are only imported when used
    if name == "tune_suite":
        from .tune import tune_suite
        return tune_suite
    if name == "write_report":
        from .html import write_report
        return write_report
    raise AttributeError(name)

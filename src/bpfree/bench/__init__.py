"""Benchmarks: suites as data files, a resumable runner and the report."""

from .suite import Suite, load_suite, list_suites
from .runner import run_suite
from .report import summarize, markdown_table

__all__ = ["Suite", "load_suite", "list_suites", "run_suite", "summarize", "markdown_table"]

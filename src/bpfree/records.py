"""RunRecord: one self-describing JSON file per (suite, dataset, model, rule, seed).

Records are the benchmark's only state: a run whose final record exists is skipped, so an
interrupted benchmark resumes where it stopped. That only works if a record on disk is either
complete or absent, hence atomic writes (temp file in the same directory, fsync, os.replace).
Units live in field names (``train_time_s``, ``energy_j``, ``peak_mem_bytes``) so a record can be
read without this module.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import statistics
import tempfile
import types
import typing
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RECORD_VERSION = 1

STATUSES = ("ok", "diverged", "failed", "running", "early-stopped")
FINAL_STATUSES = tuple(s for s in STATUSES if s != "running")
REQUIRED = ("rule", "dataset", "model", "seed")


def _library_version() -> str:
    """bpfree.__version__, looked up lazily: bpfree/__init__ may import this module."""
    try:
        from bpfree import __version__  # type: ignore[attr-defined]
    except ImportError:
        return "0.0.0"
    return str(__version__)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def median_epoch_time(epoch_times_s: list[float]) -> float | None:
    """Median epoch time, the first (warm-up: allocator, caches, lazy init) excluded when >1."""
    if not epoch_times_s:
        return None
    steady = epoch_times_s[1:] if len(epoch_times_s) > 1 else epoch_times_s
    return float(statistics.median(steady))


@dataclass
class RunRecord:
    """Result of one run. See module docstring; ``status`` is one of STATUSES."""

    rule: str
    dataset: str
    model: str
    seed: int
    suite: str = "adhoc"
    status: str = "ok"
    test_acc: float | None = None
    val_acc: float | None = None
    best_epoch: int | None = None
    epochs: int = 0
    train_time_s: float | None = None  # total training wall time, evaluation off the clock
    epoch_time_s: float | None = None  # median epoch time, warm-up epoch excluded when >1 epoch
    epoch_times_s: list[float] = field(default_factory=list)
    peak_mem_bytes: int | None = None
    mem_method: str | None = None
    energy_j: float | None = None
    energy_method: str | None = None  # "estimate-..." means not measured
    flops_per_step: int | None = None
    params: int | None = None  # model + rule-owned extras
    time_to_target_s: float | None = None
    energy_to_target_j: float | None = None
    target_acc: float | None = None
    curve: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, val_acc, time_s, energy_j
    error: str | None = None
    extra: dict = field(default_factory=dict)  # further metrics, unit in the key (mem_delta_bytes)
    config: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    commit: str | None = None
    dirty: bool | None = None
    version: str = field(default_factory=_library_version)
    created: str = field(default_factory=_utc_now)
    record_version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        self.validate()

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        """The identity of a run: one record file per key."""
        return (self.suite, self.dataset, self.model, self.rule, self.seed)

    def validate(self) -> None:
        """Raise ValueError naming the first field with a wrong type or value."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise ValueError(f"RunRecord.{f.name}={value!r}: expected {_type_name(hints[f.name])}")
        for name in REQUIRED[:3] + ("suite",):
            if not getattr(self, name):
                raise ValueError(f"RunRecord.{name} must be a non-empty string")
        if self.status not in STATUSES:
            raise ValueError(f"RunRecord.status={self.status!r}: expected one of {STATUSES}")
        if self.record_version > RECORD_VERSION:
            raise ValueError(
                f"RunRecord.record_version={self.record_version} is newer than this bpfree "
                f"understands ({RECORD_VERSION}); upgrade bpfree"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN/inf become None, numpy/torch scalars become numbers)."""
        self.validate()
        return _jsonable(dataclasses.asdict(self), "RunRecord")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        if not isinstance(d, dict):
            raise ValueError(f"RunRecord.from_dict: expected a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"RunRecord: unknown keys {unknown}")
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise ValueError(f"RunRecord: missing required keys {missing}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# type checking of fields (typed, checked records: wrong types are errors that name the field)


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is list or hint is dict or origin is dict:
        return isinstance(value, list if hint is list else dict)
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # bool is an int subclass, but seed=True is a bug
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # JSON writes 1.0 back as 1 in some tools; ints are fine where floats are
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _jsonable(obj: Any, where: str) -> Any:
    """Recursively convert to JSON types; NaN/inf -> None (JSON has no NaN). ``where`` names
    the offending key in errors."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalar
        return _jsonable(obj.item(), where)
    raise ValueError(f"{where}: {type(obj).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------------------------
# files

_SAFE_CHARS = re.compile(r"[A-Za-z0-9_.,=+-]")
_MAX_COMPONENT = 120  # well under the 255-byte filename limit, leaves room for suffixes


def safe_name(name: str) -> str:
    """Filesystem-safe, readable and *injective* encoding of a name ("mlp:1000,1000" ->
    "mlp%3A1000,1000"): unsafe characters are %-escaped (and "%" itself), so distinct names never
    share a file. A leading dot is escaped (no hidden files, no "." / ".."), as is a trailing one
    (Windows drops it). Over-long names are truncated and suffixed with a hash of the full name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"record name component must be a non-empty string, got {name!r}")
    out = "".join(c if _SAFE_CHARS.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in name)
    if out.startswith("."):
        out = "%2E" + out[1:]
    if out.endswith("."):
        out = out[:-1] + "%2E"
    if len(out) > _MAX_COMPONENT:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        out = f"{out[: _MAX_COMPONENT - 17]}~{digest}"  # "~" never appears in escaped output
    return out


def record_path(out_dir: str | os.PathLike[str], *, suite: str, dataset: str, model: str, rule: str, seed: int) -> Path:
    """``out_dir/suite/dataset/model/rule/seed<N>.json`` with each part passed through safe_name."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r}: expected an int")
    parts = [safe_name(p) for p in (suite, dataset, model, rule)]
    return Path(out_dir).joinpath(*parts, f"seed{seed}.json")


_TMP_SUFFIX = ".tmp"


def write_record(rec: RunRecord, path: str | os.PathLike[str]) -> Path:
    """Write atomically: a crash at any point leaves either the old file or the new one, never a
    partial one, and no temp file behind (except on power loss, where load_records skips it)."""
    path = Path(path)
    text = json.dumps(rec.to_dict(), indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # includes KeyboardInterrupt: clean up, then re-raise unchanged
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself. Not possible on every OS/filesystem; the file is already whole."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        return  # e.g. filesystems that reject fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def read_record(path: str | os.PathLike[str]) -> RunRecord:
    """Load one record; a corrupt, partial or invalid file raises ValueError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt record (not valid JSON: {e})") from e
    try:
        return RunRecord.from_dict(data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: invalid record: {e}") from e


def _is_record_file(p: Path) -> bool:
    return p.is_file() and p.suffix == ".json" and not p.name.startswith(".")


def load_records(out_dir: str | os.PathLike[str]) -> list[RunRecord]:
    """All records under ``out_dir`` (recursive, sorted by path). Temp files are skipped; a
    corrupt record is skipped with a warning naming the file, so one bad file does not hide a
    whole benchmark. A missing directory is an error (likely a typo), not an empty result."""
    root = Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no records directory {root}")
    records = []
    for p in sorted(root.rglob("*.json")):
        if not _is_record_file(p):
            continue
        try:
            records.append(read_record(p))
        except ValueError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
    return records


def is_done(path: str | os.PathLike[str], *, retry_failed: bool = False) -> bool:
    """True when a record exists at ``path`` with a final status (not "running"), i.e. the run
    should be skipped on resume. ``retry_failed=True`` also re-runs "failed" records. A corrupt
    record counts as not done (with a warning): re-running it overwrites it."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        rec = read_record(path)
    except ValueError as e:
        warnings.warn(f"treating as not done: {e}", stacklevel=2)
        return False
    if retry_failed and rec.status == "failed":
        return False
    return rec.status in FINAL_STATUSES


def record_variant(rec: RunRecord) -> str:
    """The rule options of ``rec`` that differ from the defaults ("" for the default rule): the
    record's own ``config["variant"]``, or, for records written before variants were recorded,
    the difference between ``config["rule"]`` and the rule's current defaults. An option the
    rule added later (``legacy_options``) and the record lacks counts with its old value."""
    config = rec.config or {}
    from .rule import RULES, variant_of
    from . import rules as _  # noqa: F401  (populate the registry)

    cls, opts = RULES.get(rec.rule), config.get("rule") or {}
    legacy = {} if cls is None or not isinstance(opts, dict) else {
        k: v for k, v in cls.legacy_options.items() if k not in opts}
    if "variant" in config and not legacy:
        return str(config["variant"] or "")
    if cls is None or not isinstance(opts, dict):
        return ""
    return variant_of(cls, {**opts, **legacy})


def record_rule_key(rec: RunRecord) -> str:
    """``rule`` or ``rule[variant]``, as in the record's path (see :func:`bpfree.rule.rule_key`)."""
    from .rule import rule_key

    return rule_key(rec.rule, record_variant(rec))

"""Datasets: an IDX reader, a small registry of benchmark sets, user tensors, and splits.

Why this file exists: every rule must be compared on *the same* data, read the same way,
split the same way and standardized the same way. So there is exactly one place that
turns files (or a user's tensors) into tensors:

* :func:`load_dataset` / :func:`from_tensors` give a :class:`DataBundle` with *raw* values
  (uint8 pixels for image files, float32 otherwise) and the official train/test split.
* :func:`prepare` turns a bundle into :class:`Splits`: a seeded validation split carved from
  the training set only, float32, standardized with train-part statistics, on a device.

Data is found offline first (``data_dir`` argument, ``$BPFREE_DATA_DIR``,
``/usr/share/datasets/<name>``, the cache); :func:`download` touches the network only when
asked explicitly, and verifies every file against a pinned sha256.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import hashlib
import numbers
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = [
    "DataBundle",
    "DataError",
    "DatasetNotFoundError",
    "Splits",
    "available",
    "cache_dir",
    "download",
    "from_tensors",
    "load_dataset",
    "prepare",
    "read_idx",
    "search_paths",
]

ENV_DATA_DIR = "BPFREE_DATA_DIR"
ENV_CACHE_DIR = "BPFREE_CACHE_DIR"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")


class DataError(ValueError):
    """A data file or array is malformed; the message names it, says what is wrong and how to fix it."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is in none of the searched places; the message lists them and how to get the data."""


# --------------------------------------------------------------------------------------------
# IDX files (MNIST family): http://yann.lecun.com/exdb/mnist/ "FILE FORMATS"
# --------------------------------------------------------------------------------------------

# type code -> big-endian dtype, as the format specifies.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_maybe_gzip(path: Path) -> bytes:
    """Return the file's bytes, gunzipped when it *starts with* the gzip magic.

    Why by header and not by suffix: mirrors and package managers rename files (a ``.gz``
    that was already decompressed by a browser, a gzip file without a suffix).
    """
    try:
        raw = path.read_bytes()
    except IsADirectoryError as err:
        raise DataError(f"{path}: is a directory, expected an IDX file") from err
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{path}: gzip data is corrupt or truncated ({err}); copy or download the file again"
        ) from err


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX (or gzipped IDX) file into a native-endian, writable numpy array.

    The header is ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` big-endian uint32 sizes;
    the payload must be exactly ``prod(sizes) * itemsize`` bytes. Anything else is a
    :class:`DataError` naming the file, because a silently short read would shift every
    later image against its label.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    dtype, dims, header = _parse_idx_header(path, data)
    count = int(np.prod(dims, dtype=np.int64))
    expected, actual = count * dtype.itemsize, len(data) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX file {problem}: header declares dims {tuple(dims)} of {dtype.name} = "
            f"{expected} data bytes (+{header} header bytes = {expected + header} in total), "
            f"but the file holds {actual} data bytes ({len(data)} in total). "
            "The file is incomplete or corrupt: copy or download it again."
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)  # writable, native byte order


def _parse_idx_header(path: Path, data: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate the magic number; return (dtype, dims, header length in bytes)."""
    if len(data) < 4:
        raise DataError(f"{path}: only {len(data)} bytes, too short for an IDX header (4 bytes)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{path}: not an IDX file: magic starts with bytes {data[0]:#04x} {data[1]:#04x}, "
            "expected 0x00 0x00 (is this the right file, or a compressed format other than gzip?)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"{c:#04x}" for c in _IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX data type code {code:#04x}; valid codes: {known}")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path}: IDX header truncated: {ndim} dims need {header} header bytes, "
            f"the file has {len(data)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    return _IDX_DTYPES[code], dims, header


# --------------------------------------------------------------------------------------------
# Bundles and splits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DataBundle:
    """A dataset exactly as stored: raw values and the official train/test split.

    ``x_*`` is ``(N, C, H, W)`` for images (uint8 for image files) or ``(N, F)`` (float32);
    ``y_*`` is ``(N,)`` int64 in ``[0, num_classes)``. Validated on construction so that a
    malformed bundle fails here, with its name, and not inside a training step.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    source: str
    #: extras a model or rule needs, e.g. ``{"graph": Graph}`` for node classification, where the
    #: x tensors hold node indices (see :mod:`bpfree.graphs`)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate_bundle(self)

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Per-sample shape, e.g. ``(1, 28, 28)`` or ``(F,)``."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"DataBundle(name={self.name!r}, train={tuple(self.x_train.shape)} {self.x_train.dtype}, "
            f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes}, source={self.source!r})"
        )


def _validate_bundle(b: DataBundle) -> None:
    """Check shapes, dtypes and label range of a bundle; DataError naming the bundle otherwise."""
    where = f"dataset {b.name!r} ({b.source})"
    if not isinstance(b.num_classes, int) or b.num_classes < 1:
        raise DataError(f"{where}: num_classes must be a positive int, got {b.num_classes!r}")
    for split in ("train", "test"):
        x, y = getattr(b, f"x_{split}"), getattr(b, f"y_{split}")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DataError(f"{where}: x_{split} and y_{split} must be torch tensors")
        if x.ndim < 2:
            raise DataError(f"{where}: x_{split} must be (N, ...) with N samples, got shape {tuple(x.shape)}")
        if y.ndim != 1 or y.dtype != torch.int64:
            raise DataError(f"{where}: y_{split} must be 1-D int64, got {tuple(y.shape)} {y.dtype}")
        if len(x) != len(y):
            raise DataError(f"{where}: x_{split} has {len(x)} samples but y_{split} has {len(y)} labels")
        _check_label_range(y, b.num_classes, f"{where}: y_{split}")
    if len(b.x_train) == 0:
        raise DataError(f"{where}: the training set is empty")
    if b.x_test.shape[1:] != b.x_train.shape[1:]:
        raise DataError(
            f"{where}: per-sample shapes differ: train {tuple(b.x_train.shape[1:])}, "
            f"test {tuple(b.x_test.shape[1:])}"
        )


def _check_label_range(y: torch.Tensor, num_classes: int, what: str) -> None:
    if len(y) == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise DataError(
            f"{what} contains label {bad}, outside [0, {num_classes}); labels must be class "
            "indices 0..num_classes-1 (remap them, or pass a larger num_classes)"
        )


@dataclass(eq=False)
class Splits:
    """Train/val/test tensors ready for the Trainer: float32, standardized, on one device.

    ``mean``/``std`` are the train-part statistics used for standardization (``None`` when
    ``standardize=False``), kept so new inputs can be transformed the same way:
    ``(x / 255 - mean) / std`` for uint8 images, ``(x - mean) / std`` otherwise.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    in_shape: tuple[int, ...]
    name: str
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the bundle's meta (e.g. a graph)

    def to(self, device: str | torch.device) -> Splits:
        """Return a copy with every tensor on ``device`` (a no-op copy if already there)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        return (
            f"Splits(name={self.name!r}, train={tuple(self.x_train.shape)}, val={tuple(self.x_val.shape)}, "
            f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes}, device={self.x_train.device})"
        )


def prepare(
    bundle: DataBundle,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    standardize: bool = True,
) -> Splits:
    """Carve a seeded validation split from the *training* set and standardize everything.

    Why this way: the test set is never touched (no model selection on it); the validation
    split depends only on ``seed`` (``torch.Generator``), so every rule sees the same one;
    statistics come from the train part only, so nothing leaks from val/test. Images are
    standardized per channel, flat features per feature (like sklearn's StandardScaler);
    constant channels/features get std 1 instead of a division by zero.
    """
    _check_fraction("val_fraction", val_fraction)
    train_idx, val_idx = _random_split(len(bundle.y_train), val_fraction, seed)
    if len(train_idx) == 0:
        raise DataError(
            f"prepare({bundle.name!r}): val_fraction={val_fraction} leaves no training samples "
            f"out of {len(bundle.y_train)}; use a smaller val_fraction"
        )
    # Node-index inputs (graph datasets: int64 x, the graph in bundle.meta) stay integers.
    index_input = bundle.x_train.dtype == torch.int64
    as_input = torch.Tensor.clone if index_input else _to_float
    x_train = as_input(bundle.x_train[train_idx])
    x_val = as_input(bundle.x_train[val_idx])
    x_test = as_input(bundle.x_test)
    mean = std = None
    if standardize and not index_input:
        mean, std = _standardization_stats(x_train)
        for x in (x_train, x_val, x_test):
            x.sub_(mean).div_(std)
    splits = Splits(
        x_train=x_train,
        y_train=bundle.y_train[train_idx],
        x_val=x_val,
        y_val=bundle.y_train[val_idx],
        x_test=x_test,
        y_test=bundle.y_test.clone(),
        num_classes=bundle.num_classes,
        in_shape=bundle.in_shape,
        name=bundle.name,
        mean=mean,
        std=std,
        meta=dict(bundle.meta),
    )
    return splits.to(device)


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise DataError(f"{name} must be a number in [0, 1), got {value!r}")


def _random_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (rest, held-out) index split; both sorted so the original order is kept."""
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    n_held = int(round(fraction * n))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """float32 copy; uint8 pixels are mapped to [0, 1]."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32, copy=True)


def _standardization_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean/std over the sample axis (and spatial axes for images), broadcastable to ``x``."""
    dims = [0] + list(range(2, x.ndim)) if x.ndim >= 3 else [0]
    std, mean = torch.std_mean(x, dim=dims, keepdim=True, correction=0)
    # A (numerically) constant feature has std ~ float32 rounding of its mean: leave it centred
    # instead of blowing rounding noise up to unit scale.
    constant = std <= 1e-5 * mean.abs() + 1e-12
    std = torch.where(constant, torch.ones_like(std), std)
    return mean, std


def _stratified_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (rest, held-out) split taking ``round(fraction * n_c)`` samples of every class.

    Vectorized: shuffle, group by class with a stable sort (keeps the shuffled order inside a
    class), and hold out the first ``k_c`` of each group.
    """
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=generator)
    grouped = perm[torch.argsort(y[perm], stable=True)]
    counts = torch.bincount(y)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(len(y)) - starts.repeat_interleave(counts)
    held_per_class = torch.round(counts.double() * fraction).long()
    held = rank_in_class < held_per_class.repeat_interleave(counts)
    return grouped[~held].sort().values, grouped[held].sort().values


# --------------------------------------------------------------------------------------------
# User tensors
# --------------------------------------------------------------------------------------------


def from_tensors(
    x: Any,
    y: Any,
    *,
    x_test: Any = None,
    y_test: Any = None,
    name: str = "user",
    num_classes: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DataBundle:
    """Wrap a user's own data (tensors or numpy arrays) as a :class:`DataBundle`.

    ``x`` is ``(N, ...)`` with any number of features, ``y`` holds integer class labels.
    Without ``x_test``/``y_test`` a seeded, per-class (stratified) ``test_fraction`` is held
    out, so a benchmark on user data has an untouched test set like the built-in ones.
    ``num_classes`` defaults to ``max(label) + 1``.
    """
    if (x_test is None) != (y_test is None):
        raise DataError("from_tensors: pass both x_test and y_test, or neither")
    x_t, y_t = _as_features(x, "x"), _as_labels(y, "y")
    _check_same_length(x_t, y_t, "x", "y")
    if x_test is not None:
        xt_t, yt_t = _as_features(x_test, "x_test"), _as_labels(y_test, "y_test")
        _check_same_length(xt_t, yt_t, "x_test", "y_test")
        if xt_t.shape[1:] != x_t.shape[1:]:
            raise DataError(
                f"from_tensors: x_test per-sample shape {tuple(xt_t.shape[1:])} differs from "
                f"x's {tuple(x_t.shape[1:])}"
            )
    num_classes = _infer_num_classes(num_classes, y_t, None if y_test is None else yt_t)
    if x_test is None:
        _check_fraction("test_fraction", test_fraction)
        train_idx, test_idx = _stratified_split(y_t, test_fraction, seed)
        x_t, y_t, xt_t, yt_t = x_t[train_idx], y_t[train_idx], x_t[test_idx], y_t[test_idx]
    return DataBundle(name, x_t, y_t, xt_t, yt_t, num_classes, "user tensors")


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as err:
        raise DataError(f"from_tensors: {what} cannot be converted to a tensor ({err})") from err


def _as_features(value: Any, what: str) -> torch.Tensor:
    """(N, ...) tensor; uint8 stays uint8 (pixels), everything else becomes float32."""
    x = _as_tensor(value, what)
    if x.ndim < 2:
        raise DataError(
            f"from_tensors: {what} must be (N, features...) with one row per sample, got shape "
            f"{tuple(x.shape)}; for a single feature use {what}.reshape(-1, 1)"
        )
    if len(x) == 0:
        raise DataError(f"from_tensors: {what} has no samples")
    if x.is_complex():
        raise DataError(f"from_tensors: {what} is complex ({x.dtype}); pass real features")
    return x if x.dtype == torch.uint8 else x.to(torch.float32)


def _as_labels(value: Any, what: str) -> torch.Tensor:
    """1-D int64 labels; whole-number floats are accepted, one-hot or fractional ones are not."""
    y = _as_tensor(value, what)
    if y.ndim == 2 and y.shape[1] > 1:
        raise DataError(
            f"from_tensors: {what} has shape {tuple(y.shape)}; expected 1-D class indices, not "
            f"one-hot/scores (use {what}.argmax(1))"
        )
    if y.ndim != 1:
        raise DataError(f"from_tensors: {what} must be 1-D class indices, got shape {tuple(y.shape)}")
    if y.dtype == torch.bool or y.is_complex():
        raise DataError(f"from_tensors: {what} must hold integer class labels, got {y.dtype}")
    if y.is_floating_point():
        if not bool(torch.all(torch.isfinite(y) & (y == torch.round(y)))):
            raise DataError(
                f"from_tensors: {what} holds non-integer values ({y.dtype}); class labels must be "
                "whole numbers 0..C-1 (for regression targets, bpfree has no support yet)"
            )
    return y.to(torch.int64)


def _check_same_length(x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str) -> None:
    if len(x) != len(y):
        raise DataError(
            f"from_tensors: {x_name} has {len(x)} samples but {y_name} has {len(y)} labels; "
            "they must have the same length"
        )


def _infer_num_classes(num_classes: int | None, y: torch.Tensor, y_test: torch.Tensor | None) -> int:
    labels = [y] if y_test is None else [y, y_test]
    if num_classes is None:
        num_classes = max(int(t.max()) for t in labels if len(t)) + 1
    if not isinstance(num_classes, int) or num_classes < 1:
        raise DataError(f"from_tensors: num_classes must be a positive int, got {num_classes!r}")
    for t, what in zip(labels, ("y", "y_test")):
        _check_label_range(t, num_classes, f"from_tensors: {what}")
    return num_classes


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Resource:
    """One downloadable file and the digests that make it acceptable.

    ``sha256``: accepted digests of the file as downloaded. ``payload_sha256``: digest of the
    gunzipped content, which survives re-compression (the offline copies in shared/data are
    re-gzipped, so their .gz digests differ from the mirrors' while the IDX bytes agree).
    """

    filename: str
    sha256: tuple[str, ...] = ()
    payload_sha256: str | None = None


@dataclass(frozen=True)
class _Spec:
    """How to find, read and fetch one dataset. ``build`` is set for file-less datasets."""

    name: str
    folders: tuple[str, ...] = ()
    locate: Callable[[Path, list[str]], Path | None] | None = None
    read: Callable[[Path], DataBundle] | None = None
    build: Callable[[], DataBundle] | None = None
    expected: str = ""
    how_to: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    resources: tuple[_Resource, ...] = ()


_REGISTRY: dict[str, _Spec] = {}


def _register(spec: _Spec) -> _Spec:
    _REGISTRY[spec.name] = spec
    return spec


def available() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_REGISTRY)


def _spec(name: str) -> _Spec:
    """Look a name up; an unknown one is a DataError that suggests the closest known name."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    known = available()
    close = difflib.get_close_matches(str(name).lower(), known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(
        f"unknown dataset {name!r}.{hint} Available: {', '.join(known)}. "
        "For your own data use bpfree.data.from_tensors(x, y)."
    )


def cache_dir() -> Path:
    """Where downloads go: ``$BPFREE_CACHE_DIR`` or ``~/.cache/bpfree``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bpfree"


def search_paths(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The folders :func:`load_dataset` looks in, in order.

    For ``data_dir`` and each ``os.pathsep``-separated entry of ``$BPFREE_DATA_DIR``: the
    dataset's candidate folder names inside it (``mnist``, ``MNIST/raw``...), then the folder
    itself (for a ``data_dir`` that *is* the dataset folder). Then
    ``/usr/share/datasets/<name>`` (Debian's packages) and ``<cache_dir>/<name>``.
    File-less datasets (``digits``, ``synthetic``) have no search paths.
    """
    spec = _spec(name)
    if spec.build is not None:
        return []
    roots = [Path(data_dir).expanduser()] if data_dir is not None else []
    roots += [Path(p).expanduser() for p in os.environ.get(ENV_DATA_DIR, "").split(os.pathsep) if p]
    paths = [path for root in roots for path in (*(root / f for f in spec.folders), root)]
    paths += [SYSTEM_DATA_DIR / spec.name, cache_dir() / spec.name]
    return list(dict.fromkeys(paths))


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = False) -> DataBundle:
    """Load a registered dataset, offline first.

    Looks in :func:`search_paths` order and reads the first folder that holds the data.
    Only with ``download=True`` (an explicit, online choice) is anything fetched, into the
    cache. Otherwise a :class:`DatasetNotFoundError` lists every place looked and how to
    get the data.
    """
    spec = _spec(name)
    if spec.build is not None:
        return spec.build()
    assert spec.locate is not None and spec.read is not None
    notes: list[str] = []
    looked = search_paths(name, data_dir)
    for folder in looked:
        source = spec.locate(folder, notes)
        if source is not None:
            return spec.read(source)
    if download and spec.resources:
        folder = _download(spec, cache_dir() / spec.name)
        source = spec.locate(folder, notes)
        if source is not None:
            return spec.read(source)
    raise DatasetNotFoundError(_not_found_message(spec, looked, notes))


def _not_found_message(spec: _Spec, looked: Sequence[Path], notes: Sequence[str]) -> str:
    lines = [f"dataset {spec.name!r} not found. Looked in (in order):"]
    for i, path in enumerate(looked, 1):
        state = "files not there" if path.is_dir() else "does not exist"
        lines.append(f"  {i}. {path}  ({state})")
    if not looked:
        lines.append(f"  (nothing: no data_dir given, ${ENV_DATA_DIR} unset)")
    lines += [f"  note: {note}" for note in notes]
    lines.append(f"Expected: {spec.expected}")
    lines.append("To get it:")
    lines += [f"  - {step}" for step in _steps(spec)]
    return "\n".join(lines)


def _how_to(name: str, folder_hint: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    return (
        f"pass --data-dir DIR (load_dataset({name!r}, data_dir=DIR)) or set {ENV_DATA_DIR}=DIR, "
        f"where DIR/{folder_hint} (or DIR itself) holds the files",
        *extra,
    )


def _steps(spec: _Spec) -> list[str]:
    """How-to steps, plus the download step (computed now: the cache dir comes from the env)."""
    steps = list(spec.how_to)
    if spec.resources:
        steps.append(
            f"when online: `bpfree datasets --download {spec.name}` (or "
            f"load_dataset({spec.name!r}, download=True)), which saves to {cache_dir() / spec.name}"
        )
    return steps


# --------------------------------------------------------------------------------------------
# MNIST family (IDX)
# --------------------------------------------------------------------------------------------

_IDX_STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _idx_candidates(stem: str) -> tuple[str, ...]:
    """File names accepted for one IDX file: with/without .gz, and Kaggle's ``.idx3`` spelling."""
    dotted = stem.replace("-idx", ".idx")
    return (stem, f"{stem}.gz", dotted, f"{dotted}.gz")


def _find_file(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _locate_idx(folder: Path, notes: list[str]) -> Path | None:
    """``folder`` if it holds all four IDX files; a note if it holds only some of them."""
    if not folder.is_dir():
        return None
    found = {k: _find_file(folder, _idx_candidates(stem)) for k, stem in _IDX_STEMS.items()}
    missing = [_IDX_STEMS[k] for k, path in found.items() if path is None]
    if not missing:
        return folder
    if len(missing) < len(_IDX_STEMS):
        notes.append(f"{folder} holds some IDX files but lacks {', '.join(missing)} (.gz or not)")
    return None


def _read_idx_folder(name: str, num_classes: int, folder: Path) -> DataBundle:
    """Read the four IDX files; images become (N, 1, H, W) uint8, labels int64."""
    files = {k: _find_file(folder, _idx_candidates(stem)) for k, stem in _IDX_STEMS.items()}
    arrays: dict[str, torch.Tensor] = {}
    for split in ("train", "test"):
        xf, yf = files[f"x_{split}"], files[f"y_{split}"]
        assert xf is not None and yf is not None
        x, y = _read_idx_images(xf), _read_idx_labels(yf, num_classes)
        if len(x) != len(y):
            raise DataError(
                f"{xf} has {len(x)} images but {yf} has {len(y)} labels; the two files must come "
                "from the same release (copy or download both again)"
            )
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    return DataBundle(name, num_classes=num_classes, source=str(folder), **arrays)


def _read_idx_images(path: Path) -> torch.Tensor:
    x = read_idx(path)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataError(
            f"{path}: expected a 3-D ubyte image file (N, H, W), got dims {x.shape} of {x.dtype} "
            "(were images and labels swapped?)"
        )
    return torch.from_numpy(x).unsqueeze(1)


def _read_idx_labels(path: Path, num_classes: int) -> torch.Tensor:
    y = read_idx(path)
    if y.ndim != 1 or y.dtype != np.uint8:
        raise DataError(
            f"{path}: expected a 1-D ubyte label file (N,), got dims {y.shape} of {y.dtype} "
            "(were images and labels swapped?)"
        )
    labels = torch.from_numpy(y).to(torch.int64)
    _check_label_range(labels, num_classes, str(path))
    return labels


_IDX_EXPECTED = "four files {train,t10k}-{images-idx3,labels-idx1}-ubyte, each optionally .gz"

_register(
    _Spec(
        name="mnist",
        folders=("mnist", "MNIST", "MNIST/raw"),
        locate=_locate_idx,
        read=lambda folder: _read_idx_folder("mnist", 10, folder),
        expected=_IDX_EXPECTED,
        how_to=_how_to("mnist", "mnist"),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        resources=(
            # sha256: the mirrors' original .gz, then the re-gzipped copy in shared/data.
            _Resource(
                "train-images-idx3-ubyte.gz",
                ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                 "b09d8b89df4ad239afc76a323dbe9559169cd8cca365467dfe8aa1f7ca54109b"),
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            _Resource(
                "train-labels-idx1-ubyte.gz",
                ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                 "c51906e7929bbf7c824fbd16019b56297269ca82cba449c5b5d59c0a02147fed"),
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            _Resource(
                "t10k-images-idx3-ubyte.gz",
                ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                 "f72c2dff3457595ec2fe452d25d97b7f974a74ad5b006687704212bedd1486d8"),
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            _Resource(
                "t10k-labels-idx1-ubyte.gz",
                ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                 "4baf84ddd60ae342cfdd282ec3fba3249a201a4459782165496a7cbebbe49a2e"),
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        ),
    )
)

_register(
    _Spec(
        name="fashion-mnist",
        folders=("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw", "fashion"),
        locate=_locate_idx,
        read=lambda folder: _read_idx_folder("fashion-mnist", 10, folder),
        expected=_IDX_EXPECTED,
        how_to=_how_to(
            "fashion-mnist",
            "fashion-mnist",
            extra=("Debian/Ubuntu: `apt-get install dataset-fashion-mnist` (installs to "
                   f"{SYSTEM_DATA_DIR / 'fashion-mnist'}, searched automatically)",),
        ),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        resources=(
            # sha256: Debian's dataset-fashion-mnist .gz (== shared/data); the payload digest
            # (gunzipped IDX) is what the upstream mirrors' differently-compressed files match.
            _Resource(
                "train-images-idx3-ubyte.gz",
                ("b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",),
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            _Resource(
                "train-labels-idx1-ubyte.gz",
                ("0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",),
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            _Resource(
                "t10k-images-idx3-ubyte.gz",
                ("cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",),
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            _Resource(
                "t10k-labels-idx1-ubyte.gz",
                ("8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",),
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ),
    )
)


# --------------------------------------------------------------------------------------------
# CIFAR-10/100 (python pickle format: https://www.cs.toronto.edu/~kriz/cifar.html)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarLayout:
    name: str
    inner: str  # folder inside the archive
    archive: str
    train: tuple[str, ...]
    test: str
    label_key: str
    num_classes: int

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train, self.test)


_CIFAR10 = _CifarLayout(
    "cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "labels", 10,
)
_CIFAR100 = _CifarLayout(
    "cifar100", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test", "fine_labels", 100,
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and nothing else.

    Why: unpickling can run arbitrary code, and CIFAR batches only ever need these globals.
    ``numpy.core`` (what the original files name) is mapped to ``numpy._core`` (numpy >= 2).
    """

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")
        return super().find_class(module, name)


def _unpickle(stream: BinaryIO, where: str) -> dict[Any, Any]:
    try:
        # latin1: the original batches were pickled by Python 2 (numpy's recommended decoding).
        obj = _ArrayUnpickler(stream, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, zlib.error) as err:
        raise DataError(f"{where}: not a readable CIFAR python pickle ({err}); copy or download it again") from err
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict with 'data' and labels, got {type(obj).__name__}")
    return obj


def _locate_cifar(layout: _CifarLayout, folder: Path, notes: list[str]) -> Path | None:
    """A folder holding the batch files (directly or in ``<inner>/``), or the .tar.gz archive."""
    if not folder.is_dir():
        return None
    for candidate in (folder / layout.inner, folder):
        present = [m for m in layout.members if (candidate / m).is_file()]
        if len(present) == len(layout.members):
            return candidate
        if present:
            missing = sorted(set(layout.members) - set(present))
            notes.append(f"{candidate} holds some {layout.name} batches but lacks {', '.join(missing)}")
    for archive in (layout.archive, layout.archive.replace(".tar.gz", ".tgz")):
        if (folder / archive).is_file():
            return folder / archive
    return None


def _read_cifar(layout: _CifarLayout, source: Path) -> DataBundle:
    """Read batches from a folder, or straight out of the .tar.gz (no extraction to disk)."""
    batches = dict(_iter_tar_batches(layout, source) if source.is_file() else _iter_dir_batches(layout, source))
    missing = [m for m in layout.members if m not in batches]
    if missing:
        raise DataError(f"{source}: archive lacks {', '.join(missing)}; download it again")
    x_train, y_train = zip(*(batches[m] for m in layout.train))
    x_test, y_test = batches[layout.test]
    return DataBundle(
        layout.name,
        x_train=torch.cat(x_train),
        y_train=torch.cat(y_train),
        x_test=x_test,
        y_test=y_test,
        num_classes=layout.num_classes,
        source=str(source),
    )


def _iter_dir_batches(layout: _CifarLayout, folder: Path) -> Iterator[tuple[str, tuple[torch.Tensor, torch.Tensor]]]:
    for member in layout.members:
        with open(folder / member, "rb") as f:
            yield member, _parse_cifar_batch(layout, _unpickle(f, str(folder / member)), str(folder / member))


def _iter_tar_batches(layout: _CifarLayout, archive: Path) -> Iterator[tuple[str, tuple[torch.Tensor, torch.Tensor]]]:
    """One forward pass over the archive (``r|*`` streams it: no seeking back through gzip)."""
    wanted = set(layout.members)
    try:
        with tarfile.open(archive, "r|*") as tar:
            for info in tar:
                base = info.name.rsplit("/", 1)[-1]
                if info.isfile() and base in wanted:
                    where = f"{archive}:{info.name}"
                    stream = tar.extractfile(info)
                    assert stream is not None
                    yield base, _parse_cifar_batch(layout, _unpickle(stream, where), where)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataError(f"{archive}: unreadable or truncated archive ({err}); download it again") from err


def _parse_cifar_batch(layout: _CifarLayout, batch: dict[Any, Any], where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3072) uint8 rows (R, G, B planes of 32x32) -> (N, 3, 32, 32); labels -> int64."""
    data = _get_key(batch, "data", where)
    labels = _get_key(batch, layout.label_key, where)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{where}: 'data' must be (N, 3072) uint8, got {data.shape} {data.dtype}")
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if y.ndim != 1 or len(y) != len(data):
        raise DataError(f"{where}: {len(data)} images but {y.numel()} {layout.label_key!r} entries")
    _check_label_range(y, layout.num_classes, f"{where}: {layout.label_key!r}")
    if not data.flags.writeable:  # e.g. protocol-5 pickles share a read-only buffer
        data = data.copy()
    return torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32)), y


def _get_key(batch: dict[Any, Any], key: str, where: str) -> Any:
    """Batches pickled under Python 2 and loaded as latin1 have str keys; py3 ones may have bytes."""
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise DataError(f"{where}: no {key!r} entry (keys: {sorted(map(str, batch))})")


def _register_cifar(layout: _CifarLayout, folders: tuple[str, ...], sha256: str) -> None:
    _register(
        _Spec(
            name=layout.name,
            folders=folders,
            locate=lambda folder, notes: _locate_cifar(layout, folder, notes),
            read=lambda source: _read_cifar(layout, source),
            expected=(
                f"{layout.archive} (not extracted), or its folder {layout.inner}/ with "
                f"{', '.join(layout.members)}"
            ),
            how_to=_how_to(
                layout.name,
                f"{layout.name}/{layout.archive}",
                extra=(f"manually: download {layout.archive} from https://www.cs.toronto.edu/~kriz/cifar.html",),
            ),
            mirrors=("https://www.cs.toronto.edu/~kriz/",),
            resources=(_Resource(layout.archive, (sha256,)),),
        )
    )


_register_cifar(
    _CIFAR10, ("cifar10", "cifar-10", "CIFAR10", "cifar-10-batches-py"),
    "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
)
_register_cifar(
    _CIFAR100, ("cifar100", "cifar-100", "CIFAR100", "cifar-100-python"),
    "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
)


# --------------------------------------------------------------------------------------------
# File-less datasets
# --------------------------------------------------------------------------------------------


def _digits() -> DataBundle:
    """scikit-learn's bundled 8x8 digits (1797 samples, no download).

    Stored as float32 in [0, 1] (the original 0..16 counts divided by 16), shape (N, 1, 8, 8),
    so ``prepare(standardize=False)`` gives sensible values. The test split is a fixed,
    seed-0, per-class 20% (1438 train / 359 test).
    """
    from sklearn.datasets import load_digits  # lazy: sklearn costs ~1 s to import

    raw = load_digits()
    x = torch.as_tensor(raw.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.as_tensor(raw.target, dtype=torch.int64)
    train_idx, test_idx = _stratified_split(y, 0.2, seed=0)
    return DataBundle("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10, "sklearn")


def _synthetic(n_train: int = 2000, n_test: int = 500, num_classes: int = 10, seed: int = 0) -> DataBundle:
    """Gaussian blobs shaped like tiny images: (N, 1, 8, 8) float32, 10 balanced classes.

    For fast smoke tests that need no files: deterministic (fixed ``torch.Generator``),
    learnable by a linear model but not trivially (noise std 2.5 around unit-variance class
    prototypes), so an accuracy well above chance (10%) shows that a rule learns.
    """
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, 1, 8, 8, generator=generator)
    n = n_train + n_test
    y = torch.randperm(n, generator=generator) % num_classes
    x = prototypes[y] + 2.5 * torch.randn(n, 1, 8, 8, generator=generator)
    return DataBundle("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes, "generated")


_register(_Spec(name="digits", build=_digits))
_register(_Spec(name="synthetic", build=_synthetic))


# --------------------------------------------------------------------------------------------
# Download (explicit, online only)
# --------------------------------------------------------------------------------------------


def download(name: str, dest: Path | None = None) -> Path:
    """Fetch a dataset's files into ``dest`` (default ``<cache_dir>/<name>``); return the folder.

    Files already present and verified are kept. Every file is checked against pinned sha256
    digests before it is renamed into place (written to a temp file in ``dest`` first, so an
    interrupted download never leaves a half file under the real name).
    """
    spec = _spec(name)
    if not spec.resources:
        raise DataError(f"dataset {name!r} needs no download ({'built in' if spec.build else 'no mirror known'})")
    return _download(spec, Path(dest) if dest is not None else cache_dir() / spec.name)


def _download(spec: _Spec, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for resource in spec.resources:
        target = dest / resource.filename
        if target.is_file() and _digest_problem(target, resource) is None:
            continue
        _fetch(spec, resource, target)
    return dest


def _fetch(spec: _Spec, resource: _Resource, target: Path) -> None:
    """Try each mirror in turn; the first file that verifies is atomically moved to ``target``."""
    failures: list[str] = []
    for mirror in spec.mirrors:
        url = mirror + resource.filename
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{resource.filename}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _copy_url(url, out)
            problem = _digest_problem(tmp, resource)
            if problem is None:
                os.replace(tmp, target)
                return
            failures.append(f"{url}: {problem}")
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            failures.append(f"{url}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DatasetNotFoundError(
        f"could not download {resource.filename} for dataset {spec.name!r}; tried:\n"
        + "\n".join(f"  - {f}" for f in failures)
        + "\nOther ways to get it:\n"
        + "\n".join(f"  - {step}" for step in _steps(spec)[:-1])
    )


def _copy_url(url: str, out: BinaryIO, chunk: int = 1 << 20) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "bpfree"})
    with urllib.request.urlopen(request, timeout=60) as response:
        while block := response.read(chunk):
            out.write(block)


def _digest_problem(path: Path, resource: _Resource) -> str | None:
    """``None`` if the file matches a pinned digest, else a message with expected vs actual."""
    file_digest = _sha256(path, gunzip=False)
    if file_digest in resource.sha256:
        return None
    payload = _sha256(path, gunzip=True) if resource.payload_sha256 else None
    if payload is not None and payload == resource.payload_sha256:
        return None
    expected = ", ".join(resource.sha256) + (
        f" (or gunzipped content {resource.payload_sha256})" if resource.payload_sha256 else ""
    )
    return f"sha256 mismatch: got {file_digest}, expected {expected}"


def _sha256(path: Path, *, gunzip: bool) -> str | None:
    """Streaming sha256 of the file, or of its gunzipped content (``None`` if not gzip/corrupt)."""
    digest = hashlib.sha256()
    try:
        with (gzip.open(path, "rb") if gunzip else open(path, "rb")) as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except (gzip.BadGzipFile, EOFError, zlib.error):
        return None
    return digest.hexdigest()


from . import graphs as _graphs  # noqa: E402,F401  (registers karate, sbm, cora, citeseer, pubmed)

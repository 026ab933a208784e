"""Tests for bpfree.data: IDX reader, dataset registry and loaders, user tensors, splits, download.

Everything runs on tiny files generated into tmp_path; the real MNIST/Fashion-MNIST checks
run only when $BPFREE_DATA_DIR points at them (CI sets it to the shared offline copies).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from bpfree import data as d

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ------------------------------------------------------------------------------ helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array in the IDX format (big-endian payload)."""
    header = bytes([0, 0, IDX_CODES[array.dtype.type], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    payload = idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_mnist_folder(
    folder: Path,
    *,
    n_train: int = 30,
    n_test: int = 10,
    gz: bool = True,
    label_offset: int = 0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a tiny MNIST-format folder (8x8 images) and return the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 8, 8), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10 + label_offset).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 8, 8), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), array, gz=gz)
    return arrays


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may see the user's cache or data dir unless it sets them itself."""
    monkeypatch.setenv("BPFREE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BPFREE_DATA_DIR", raising=False)


# ------------------------------------------------------------------------------ read_idx


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path: Path, dtype: type, gz: bool) -> None:
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    out = d.read_idx(write_idx(tmp_path / "a.idx", array, gz=gz))
    np.testing.assert_array_equal(out, array)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.flags.writeable


def test_read_idx_detects_gzip_by_header_not_suffix(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    gz_without_suffix = write_idx(tmp_path / "labels-ubyte", array, gz=True)
    raw_with_gz_suffix = write_idx(tmp_path / "labels-ubyte.gz", array, gz=False)
    np.testing.assert_array_equal(d.read_idx(gz_without_suffix), array)
    np.testing.assert_array_equal(d.read_idx(str(raw_with_gz_suffix)), array)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_names_file_and_byte_counts(tmp_path: Path, gz: bool) -> None:
    payload = idx_bytes(np.zeros((10, 4, 4), dtype=np.uint8))[:-7]
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(d.DataError, match="truncated") as err:
        d.read_idx(path)
    message = str(err.value)
    assert str(path) in message and "160" in message and "153" in message


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "long-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)) + b"\x00\x01")
    with pytest.raises(d.DataError, match="trailing bytes") as err:
        d.read_idx(path)
    assert str(path) in str(err.value) and "7" in str(err.value)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "type code 0x07"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "header truncated"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00", "too short"),
    ],
)
def test_read_idx_bad_header(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(d.DataError, match=pattern) as err:
        d.read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_wrong_dims_declared(tmp_path: Path) -> None:
    """A header claiming 28x28 images over 8x8 data must not be silently reshaped."""
    good = idx_bytes(np.zeros((4, 8, 8), dtype=np.uint8))
    lying = good[:8] + np.asarray([28, 28], dtype=">u4").tobytes() + good[16:]
    path = tmp_path / "lying-idx3-ubyte"
    path.write_bytes(lying)
    with pytest.raises(d.DataError, match=r"\(4, 28, 28\)") as err:
        d.read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, dtype=np.uint8)))[:20])
    with pytest.raises(d.DataError, match="gzip") as err:
        d.read_idx(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------ registry


def test_available_lists_registered_sets() -> None:
    assert {"mnist", "fashion-mnist", "digits", "cifar10", "cifar100", "synthetic"} <= set(d.available())


@pytest.mark.parametrize(("typo", "suggestion"), [("fashion_mnist", "fashion-mnist"), ("MNIST", "mnist"), ("cifar-10", "cifar10")])
def test_unknown_name_suggests_near_match(typo: str, suggestion: str) -> None:
    with pytest.raises(d.DataError) as err:
        d.load_dataset(typo)
    message = str(err.value)
    assert repr(typo) in message and f"did you mean {suggestion!r}" in message.lower()


def test_search_paths_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_a, env_b = tmp_path / "env_a", tmp_path / "env_b"
    monkeypatch.setenv("BPFREE_DATA_DIR", os.pathsep.join([str(env_a), str(env_b)]))
    paths = d.search_paths("fashion-mnist", data_dir=tmp_path / "arg")
    assert paths[0] == tmp_path / "arg" / "fashion-mnist"
    assert tmp_path / "arg" / "fashion_mnist" in paths and tmp_path / "arg" / "FashionMNIST" in paths
    order = [tmp_path / "arg", env_a / "fashion-mnist", env_a, env_b / "fashion-mnist", env_b]
    assert [paths.index(p) for p in order] == sorted(paths.index(p) for p in order)
    assert paths[-2:] == [Path("/usr/share/datasets/fashion-mnist"), tmp_path / "cache" / "fashion-mnist"]
    assert d.search_paths("synthetic") == []


# ------------------------------------------------------------------------------ MNIST-format loaders


def test_load_mnist_via_data_dir(tmp_path: Path) -> None:
    arrays = make_mnist_folder(tmp_path / "root" / "mnist")
    bundle = d.load_dataset("mnist", data_dir=tmp_path / "root")
    assert bundle.x_train.shape == (30, 1, 8, 8) and bundle.x_train.dtype == torch.uint8
    assert bundle.x_test.shape == (10, 1, 8, 8) and bundle.y_test.dtype == torch.int64
    assert bundle.in_shape == (1, 8, 8) and bundle.num_classes == 10
    np.testing.assert_array_equal(bundle.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(bundle.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    assert bundle.source == str(tmp_path / "root" / "mnist")


def test_load_mnist_data_dir_is_the_dataset_folder_and_raw_files(tmp_path: Path) -> None:
    make_mnist_folder(tmp_path / "plain", gz=False)
    assert d.load_dataset("mnist", data_dir=str(tmp_path / "plain")).x_train.shape == (30, 1, 8, 8)


def test_load_via_env_and_alternative_folder_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_mnist_folder(tmp_path / "FashionMNIST" / "raw", n_train=20)
    monkeypatch.setenv("BPFREE_DATA_DIR", str(tmp_path))
    bundle = d.load_dataset("fashion-mnist")
    assert bundle.name == "fashion-mnist" and len(bundle.y_train) == 20


def test_data_dir_argument_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_mnist_folder(tmp_path / "arg" / "mnist", n_train=20)
    make_mnist_folder(tmp_path / "env" / "mnist", n_train=40)
    monkeypatch.setenv("BPFREE_DATA_DIR", str(tmp_path / "env"))
    assert len(d.load_dataset("mnist", tmp_path / "arg").y_train) == 20
    assert len(d.load_dataset("mnist").y_train) == 40


def test_missing_dataset_lists_places_and_remedies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPFREE_DATA_DIR", str(tmp_path / "env"))
    # the machine may have Debian's dataset-fashion-mnist (`make bench` installs it): look elsewhere
    monkeypatch.setattr(d, "SYSTEM_DATA_DIR", tmp_path / "system")
    (tmp_path / "arg").mkdir()
    with pytest.raises(d.DatasetNotFoundError) as err:
        d.load_dataset("fashion-mnist", data_dir=tmp_path / "arg")
    message = str(err.value)
    positions = [message.index(str(p) + " ") for p in d.search_paths("fashion-mnist", tmp_path / "arg")]
    assert positions == sorted(positions)  # every place, in search order
    for remedy in ("--data-dir", "BPFREE_DATA_DIR", "bpfree datasets --download fashion-mnist",
                   "apt-get install dataset-fashion-mnist"):
        assert remedy in message
    assert isinstance(err.value, FileNotFoundError)


def test_incomplete_folder_is_reported(tmp_path: Path) -> None:
    make_mnist_folder(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(d.DatasetNotFoundError, match="lacks t10k-labels-idx1-ubyte"):
        d.load_dataset("mnist", tmp_path)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    make_mnist_folder(folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(29, dtype=np.uint8), gz=True)
    with pytest.raises(d.DataError, match="30 images but .* 29 labels"):
        d.load_dataset("mnist", tmp_path)


def test_label_out_of_range(tmp_path: Path) -> None:
    make_mnist_folder(tmp_path / "mnist", label_offset=3)  # labels up to 12
    with pytest.raises(d.DataError, match=r"train-labels-idx1-ubyte.*label 12.*\[0, 10\)"):
        d.load_dataset("mnist", tmp_path)


def test_swapped_images_and_labels(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    make_mnist_folder(folder)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros(10, dtype=np.uint8), gz=True)
    with pytest.raises(d.DataError, match="t10k-images-idx3-ubyte.gz: expected a 3-D"):
        d.load_dataset("mnist", tmp_path)


# ------------------------------------------------------------------------------ CIFAR


def cifar_batch(n: int, label_key: str, num_classes: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    batch: dict[bytes, object] = {
        b"batch_label": b"generated",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key.encode(): [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [0] * n
    return batch


CIFAR_LAYOUTS = {
    # name: (inner folder, archive, train members, test member, label key, classes)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels", 10),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], "test", "fine_labels", 100),
}


def make_cifar(root: Path, name: str, *, archive: bool, n: int = 4) -> dict[str, dict[bytes, object]]:
    inner, archive_name, train, test, key, classes = CIFAR_LAYOUTS[name]
    batches = {m: cifar_batch(n, key, classes, seed=i) for i, m in enumerate([*train, test])}
    folder = root / name / inner
    folder.mkdir(parents=True)
    for member, batch in batches.items():
        (folder / member).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}, protocol=2))
    if archive:
        with tarfile.open(root / name / archive_name, "w:gz") as tar:
            tar.add(folder, arcname=inner)
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return batches


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("archive", [False, True])
def test_cifar_loaders(tmp_path: Path, name: str, archive: bool) -> None:
    batches = make_cifar(tmp_path, name, archive=archive)
    inner, archive_name, train, test, key, classes = CIFAR_LAYOUTS[name]
    bundle = d.load_dataset(name, data_dir=tmp_path)
    assert bundle.x_train.shape == (4 * len(train), 3, 32, 32) and bundle.x_train.dtype == torch.uint8
    assert bundle.x_test.shape == (4, 3, 32, 32) and bundle.num_classes == classes
    first = np.asarray(batches[train[0]][b"data"])[0]
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major
    np.testing.assert_array_equal(bundle.x_train[0].numpy(), first.reshape(3, 32, 32))
    expected = [v for m in train for v in batches[m][key.encode()]]  # type: ignore[union-attr]
    assert bundle.y_train.tolist() == expected
    assert bundle.y_test.tolist() == batches[test][key.encode()]
    assert bundle.source.endswith(archive_name if archive else inner)


def test_cifar_rejects_code_in_pickle(tmp_path: Path) -> None:
    """A pickle that would call a function must be refused, not executed."""
    make_cifar(tmp_path, "cifar10", archive=False)
    evil = pickle.dumps({b"data": os.getcwd, b"labels": []})  # unpickling would *call* nothing yet,
    # but any global outside numpy's array constructors must be refused before it is looked up
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    with pytest.raises(d.DataError, match="refusing to load"):
        d.load_dataset("cifar10", tmp_path)


def test_cifar_label_count_mismatch(tmp_path: Path) -> None:
    make_cifar(tmp_path, "cifar100", archive=False)
    batch = cifar_batch(4, "fine_labels", 100, seed=0)
    batch[b"fine_labels"] = [1, 2, 3]
    (tmp_path / "cifar100" / "cifar-100-python" / "test").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(d.DataError, match="4 images but 3"):
        d.load_dataset("cifar100", tmp_path)


# ------------------------------------------------------------------------------ file-less sets


def test_digits_and_synthetic_are_deterministic() -> None:
    digits = d.load_dataset("digits")
    assert digits.in_shape == (1, 8, 8) and len(digits.y_train) + len(digits.y_test) == 1797
    assert digits.x_train.dtype == torch.float32 and float(digits.x_train.max()) == 1.0
    assert torch.equal(digits.y_test, d.load_dataset("digits").y_test)
    syn, again = d.load_dataset("synthetic"), d.load_dataset("synthetic")
    assert syn.in_shape == (1, 8, 8) and syn.num_classes == 10 and syn.source == "generated"
    assert torch.equal(syn.x_train, again.x_train)
    assert torch.bincount(syn.y_train).min() >= 150  # roughly balanced


# ------------------------------------------------------------------------------ real data (CI)


def real_bundle(name: str) -> d.DataBundle:
    root = os.environ.get("BPFREE_DATA_DIR")
    if not root:
        pytest.skip(f"real {name}: set BPFREE_DATA_DIR to a folder holding {name}/ (CI: /work/shared/data)")
    try:
        return d.load_dataset(name, data_dir=root)
    except d.DatasetNotFoundError:
        pytest.skip(f"real {name}: not under BPFREE_DATA_DIR={root}")


@pytest.fixture
def real_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the isolation fixture's removal of BPFREE_DATA_DIR for the real-data tests."""
    if "BPFREE_DATA_DIR" in ORIGINAL_ENV:
        monkeypatch.setenv("BPFREE_DATA_DIR", ORIGINAL_ENV["BPFREE_DATA_DIR"])


ORIGINAL_ENV = dict(os.environ)


def test_real_mnist(real_env: None) -> None:
    bundle = real_bundle("mnist")
    assert bundle.x_train.shape == (60000, 1, 28, 28) and bundle.x_test.shape == (10000, 1, 28, 28)
    counts = torch.bincount(bundle.y_train, minlength=10).tolist()
    assert counts[:2] == [5923, 6742] and sum(counts) == 60000


def test_real_fashion_mnist(real_env: None) -> None:
    bundle = real_bundle("fashion-mnist")
    assert bundle.x_train.shape == (60000, 1, 28, 28) and bundle.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(bundle.y_train, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(bundle.y_test, minlength=10).tolist() == [1000] * 10


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_pinned_digests_accept_the_offline_copies(real_env: None, name: str, tmp_path: Path) -> None:
    """download() must accept the shared files as-is, and any re-gzipped copy via the payload digest."""
    folder = Path(real_bundle(name).source)
    for resource in d._REGISTRY[name].resources:
        assert d._digest_problem(folder / resource.filename, resource) is None, resource.filename
    labels = d._REGISTRY[name].resources[-1]  # small file: cheap to re-compress
    recompressed = tmp_path / labels.filename
    recompressed.write_bytes(gzip.compress(gzip.decompress((folder / labels.filename).read_bytes()), 1))
    assert d._digest_problem(recompressed, labels) is None


# ------------------------------------------------------------------------------ prepare


def image_bundle(n: int = 200) -> d.DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
    x[:, 2] = 7  # a constant channel: std must be guarded, not divided by zero
    y = torch.arange(n) % 5
    return d.DataBundle("img", x, y, x[:20].clone(), y[:20].clone(), 5, "test")


def test_prepare_split_is_seeded_disjoint_and_complete() -> None:
    bundle = d.from_tensors(torch.arange(100.0).reshape(100, 1), torch.arange(100) % 3,
                            x_test=torch.zeros(5, 1), y_test=torch.zeros(5, dtype=torch.long))
    a = d.prepare(bundle, val_fraction=0.2, seed=3, standardize=False)
    b = d.prepare(bundle, val_fraction=0.2, seed=3, standardize=False)
    c = d.prepare(bundle, val_fraction=0.2, seed=4, standardize=False)
    train_ids, val_ids = set(a.x_train[:, 0].tolist()), set(a.x_val[:, 0].tolist())
    assert len(val_ids) == 20 and len(train_ids) == 80
    assert not train_ids & val_ids and train_ids | val_ids == set(range(100))
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)
    assert torch.equal(a.y_val, a.x_val[:, 0].long() % 3)  # labels travel with their samples
    assert torch.equal(a.x_test, bundle.x_test) and torch.equal(a.y_test, bundle.y_test)


def test_prepare_standardizes_with_train_part_statistics() -> None:
    bundle = image_bundle()
    splits = d.prepare(bundle, val_fraction=0.25, seed=0)
    assert splits.x_train.dtype == torch.float32 and splits.in_shape == (3, 4, 4)
    mean = splits.x_train.mean(dim=(0, 2, 3))
    std = splits.x_train.std(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(std[:2], torch.ones(2), atol=1e-4, rtol=0)
    assert torch.isfinite(splits.x_val).all() and std[2] < 1e-6  # constant channel: centred, finite
    # test set is transformed with the train-part statistics, not its own
    expected_test = (bundle.x_test.float() / 255 - splits.mean) / splits.std
    torch.testing.assert_close(splits.x_test, expected_test)
    assert torch.equal(splits.y_test, bundle.y_test)


def test_prepare_no_val_and_no_standardize() -> None:
    bundle = image_bundle(50)
    splits = d.prepare(bundle, val_fraction=0.0, standardize=False)
    assert splits.x_val.shape == (0, 3, 4, 4) and splits.y_val.shape == (0,)
    assert len(splits.x_train) == 50 and float(splits.x_train.max()) <= 1.0
    torch.testing.assert_close(splits.x_train, bundle.x_train.float() / 255)
    assert splits.mean is None and splits.to("cpu").x_train.device.type == "cpu"


def test_prepare_flat_features_per_feature() -> None:
    x = torch.randn(300, 4) * torch.tensor([1.0, 10.0, 100.0, 0.0]) + 5
    bundle = d.from_tensors(x, torch.arange(300) % 2)
    splits = d.prepare(bundle, val_fraction=0.1)
    torch.testing.assert_close(splits.x_train.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(splits.x_train[:, :3].std(0, correction=0), torch.ones(3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_prepare_rejects_bad_fraction(bad: float) -> None:
    with pytest.raises(d.DataError, match="val_fraction"):
        d.prepare(image_bundle(20), val_fraction=bad)


# ------------------------------------------------------------------------------ from_tensors


def test_from_tensors_any_shape_and_classes() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((500, 7)), rng.integers(0, 3, 500)
    bundle = d.from_tensors(x, y, name="tabular", test_fraction=0.2, seed=1)
    assert bundle.in_shape == (7,) and bundle.num_classes == 3 and bundle.x_train.dtype == torch.float32
    assert len(bundle.y_train) + len(bundle.y_test) == 500
    total, held = np.bincount(y), torch.bincount(bundle.y_test, minlength=3).numpy()
    assert np.all(np.abs(held - 0.2 * total) <= 1)  # stratified: 20% of every class
    again = d.from_tensors(x, y, name="tabular", test_fraction=0.2, seed=1)
    assert torch.equal(bundle.x_test, again.x_test)
    rows = {tuple(r) for r in np.round(bundle.x_train.numpy(), 5)} | {tuple(r) for r in np.round(bundle.x_test.numpy(), 5)}
    assert len(rows) == 500  # a partition: nothing lost or duplicated


def test_from_tensors_explicit_test_set_and_num_classes() -> None:
    x = torch.randint(0, 255, (40, 2, 3, 3), dtype=torch.uint8)
    bundle = d.from_tensors(x, torch.zeros(40, dtype=torch.int32), x_test=x[:5], y_test=np.ones(5), num_classes=12)
    assert bundle.num_classes == 12 and bundle.x_train.dtype == torch.uint8 and len(bundle.y_test) == 5
    assert bundle.y_test.dtype == torch.int64 and bundle.source == "user tensors"


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"x": np.zeros((10, 3)), "y": np.zeros(9, int)}, "x has 10 samples but y has 9"),
        ({"x": np.zeros((4, 3)), "y": np.array([0, 1, 2, 5]), "num_classes": 3}, r"label 5, outside \[0, 3\)"),
        ({"x": np.zeros((4, 3)), "y": np.array([0, -1, 1, 1])}, "label -1"),
        ({"x": np.zeros((4, 3)), "y": np.eye(4)}, "one-hot"),
        ({"x": np.zeros((4, 3)), "y": np.array([0.5, 1, 0, 1])}, "non-integer"),
        ({"x": np.zeros(4), "y": np.zeros(4, int)}, r"x must be \(N, features"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(4, int), "x_test": np.zeros((2, 3))}, "both x_test and y_test"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(4, int), "x_test": np.zeros((2, 5)), "y_test": np.zeros(2, int)},
         "per-sample shape"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(4, int), "x_test": np.zeros((2, 3)), "y_test": np.array([0, 9]),
          "num_classes": 2}, "y_test contains label 9"),
    ],
)
def test_from_tensors_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(d.DataError, match=pattern):
        d.from_tensors(kwargs.pop("x"), kwargs.pop("y"), **kwargs)


# ------------------------------------------------------------------------------ download (no network)


class FakeWeb:
    """Stands in for urllib.request.urlopen: url -> bytes, or an exception to raise."""

    def __init__(self, pages: dict[str, bytes | Exception]) -> None:
        self.pages, self.calls = pages, []

    def __call__(self, request, timeout: float = 0):  # noqa: ANN001 (urllib's signature)
        url = request.full_url
        self.calls.append(url)
        page = self.pages.get(url, urllib.error.HTTPError(url, 404, "Not Found", {}, None))
        if isinstance(page, Exception):
            raise page
        return io.BytesIO(page)


def tiny_spec(tmp_path: Path) -> tuple[d._Spec, dict[str, bytes]]:
    """A registered MNIST-like dataset whose pinned digests come from generated files."""
    source = tmp_path / "upstream"
    make_mnist_folder(source, gz=False)
    served, resources = {}, []
    for stem in MNIST_STEMS:
        payload = (source / stem).read_bytes()
        gz = gzip.compress(payload, compresslevel=9, mtime=0)
        served[stem + ".gz"] = gzip.compress(payload, compresslevel=1, mtime=0)  # re-compressed copy
        resources.append(d._Resource(stem + ".gz", (hashlib.sha256(gz).hexdigest(),),
                                     hashlib.sha256(payload).hexdigest()))
    spec = d._Spec(
        name="tiny", folders=("tiny",), locate=d._locate_idx,
        read=lambda folder: d._read_idx_folder("tiny", 10, folder),
        mirrors=("https://down.invalid/", "https://mirror.invalid/"), resources=tuple(resources),
    )
    return spec, served


def test_download_verifies_and_writes_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, served = tiny_spec(tmp_path)
    monkeypatch.setitem(d._REGISTRY, "tiny", spec)
    pages: dict[str, bytes | Exception] = {f"https://mirror.invalid/{k}": v for k, v in served.items()}
    pages.update({f"https://down.invalid/{k}": urllib.error.URLError("offline") for k in served})
    web = FakeWeb(pages)
    monkeypatch.setattr(d.urllib.request, "urlopen", web)
    bundle = d.load_dataset("tiny", download=True)  # first mirror down, second serves the files
    assert bundle.x_train.shape == (30, 1, 8, 8)
    cache = tmp_path / "cache" / "tiny"
    assert bundle.source == str(cache) and sorted(p.name for p in cache.iterdir()) == sorted(served)
    calls = len(web.calls)
    assert d.download("tiny") == cache and len(web.calls) == calls  # verified files are not fetched again


def test_download_rejects_bad_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, served = tiny_spec(tmp_path)
    monkeypatch.setitem(d._REGISTRY, "tiny", spec)
    first = MNIST_STEMS[0] + ".gz"
    web = FakeWeb({f"https://down.invalid/{first}": urllib.error.URLError("offline"),
                   f"https://mirror.invalid/{first}": gzip.compress(b"tampered")})
    monkeypatch.setattr(d.urllib.request, "urlopen", web)
    dest = tmp_path / "dest"
    with pytest.raises(d.DatasetNotFoundError) as err:
        d.download("tiny", dest)
    message = str(err.value)
    assert "https://down.invalid/" in message and "offline" in message
    assert "https://mirror.invalid/" in message and "sha256 mismatch" in message
    assert list(dest.iterdir()) == []  # no partial or unverified file left behind


def test_download_of_builtin_is_an_error() -> None:
    with pytest.raises(d.DataError, match="needs no download"):
        d.download("synthetic")

"""Tests for ctep.data: real MNIST/Fashion-MNIST files, fake torchvision roots, splits, loaders."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from ctep.data import (
    ALIASES,
    DATASET_NAMES,
    DATASETS,
    DatasetNotFoundError,
    InMemoryDataset,
    expected_files,
    get_spec,
    load_dataset,
    make_loader,
    resolve_data_root,
    subset,
    synthetic_classification,
    train_val_split,
)

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _real_root() -> Path:
    env = os.environ.get("CTEP_DATA")
    return Path(env) if env else Path(__file__).parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def real_root() -> Path:
    root = _real_root()
    if not root.is_dir():
        pytest.skip(f"real data root {root} does not exist (set CTEP_DATA to a torchvision root)")
    return root


@pytest.fixture(scope="module")
def mnist_train_raw(real_root: Path) -> InMemoryDataset:
    ds = load_dataset("mnist", real_root, train=True, normalize=False, download=False)
    assert isinstance(ds, InMemoryDataset)
    return ds


def _write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">iiii", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">ii", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def _fake_mnist_root(root: Path, folder: str = "MNIST") -> dict[str, tuple[np.ndarray, ...]]:
    """Write valid IDX files for a 20-image train split and a 7-image test split."""
    rng = np.random.default_rng(1234)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    splits = {}
    for prefix, n in (("train", 20), ("t10k", 7)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        splits[prefix] = (images, labels)
    return splits


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt by torchvision to download fail the test."""

    def fail(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"{type(self).__name__}.download() was called")

    monkeypatch.setattr(tvd.MNIST, "download", fail)  # also KMNIST, FashionMNIST
    monkeypatch.setattr(tvd.CIFAR10, "download", fail)  # also CIFAR100


# --------------------------------------------------------------------------------------------
# registry and roots
# --------------------------------------------------------------------------------------------


def test_registry_contents() -> None:
    assert set(DATASETS) == {"mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100"}
    assert ALIASES["fmnist"] == "fashion-mnist"
    assert set(DATASET_NAMES) == set(DATASETS) | {"fmnist"}
    assert get_spec("fmnist") is DATASETS["fashion-mnist"]
    assert get_spec("Fashion_MNIST") is DATASETS["fashion-mnist"]
    assert DATASETS["mnist"].tv_class is tvd.MNIST
    assert DATASETS["cifar100"].tv_class is tvd.CIFAR100
    assert DATASETS["cifar100"].num_classes == 100
    assert DATASETS["cifar10"].input_shape == (3, 32, 32)
    assert DATASETS["cifar10"].input_dim == 3072
    assert DATASETS["mnist"].mean == (0.1307,) and DATASETS["mnist"].std == (0.3081,)
    assert DATASETS["kmnist"].mean == (0.1918,) and DATASETS["kmnist"].std == (0.3483,)
    for spec in DATASETS.values():
        assert len(spec.mean) == len(spec.std) == spec.input_shape[0]


def test_unknown_name_raises_value_error_listing_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset") as info:
        load_dataset("svhn", "/nonexistent")
    for name in DATASET_NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError):
        get_spec("emnist")


def test_resolve_data_root_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CTEP_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_root(str(tmp_path / "explicit")) == tmp_path / "explicit"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.setenv("CTEP_DATA", "")
    assert resolve_data_root(None) == Path("./data")
    monkeypatch.delenv("CTEP_DATA")
    assert resolve_data_root(None) == Path("./data")


def test_expected_files_follow_torchvision_layout() -> None:
    assert "MNIST/raw/train-images-idx3-ubyte" in expected_files("mnist")
    assert "FashionMNIST/raw/t10k-labels-idx1-ubyte" in expected_files("fmnist")
    assert len(expected_files("kmnist")) == 4
    assert "cifar-10-batches-py/data_batch_1" in expected_files("cifar10")
    assert "cifar-100-python/train" in expected_files("cifar100")


# --------------------------------------------------------------------------------------------
# real data (skipped only when the shared data folder is absent)
# --------------------------------------------------------------------------------------------


def test_real_mnist_train(mnist_train_raw: InMemoryDataset) -> None:
    ds = mnist_train_raw
    assert len(ds) == 60000
    assert ds.inputs.shape == (60000, 1, 28, 28)
    assert ds.inputs.dtype == torch.float32
    assert ds.targets.dtype == torch.int64
    assert int(ds.targets.min()) == 0 and int(ds.targets.max()) == 9
    assert float(ds.inputs.min()) == 0.0 and float(ds.inputs.max()) == 1.0
    assert abs(float(ds.inputs.mean()) - 0.1307) < 1e-3
    assert torch.bincount(ds.targets, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and int(y) == 5  # the first MNIST training digit is a 5


def test_real_mnist_normalized_and_flat(real_root: Path, mnist_train_raw: InMemoryDataset) -> None:
    ds = load_dataset("mnist", real_root, train=True, flatten=True, download=False)
    assert ds.inputs.shape == (60000, 784)
    assert abs(float(ds.inputs.mean())) < 1e-2
    assert abs(float(ds.inputs.std()) - 1.0) < 1e-2
    expected = (mnist_train_raw.inputs[:5].reshape(5, -1) - 0.1307) / 0.3081
    torch.testing.assert_close(ds.inputs[:5], expected)
    assert torch.equal(ds.targets, mnist_train_raw.targets)


def test_real_mnist_test_and_fashion_test(real_root: Path) -> None:
    test = load_dataset("mnist", real_root, train=False, download=False)
    assert len(test) == 10000
    assert test.inputs.shape == (10000, 1, 28, 28)
    assert 0 <= int(test.targets.min()) and int(test.targets.max()) <= 9

    fashion = load_dataset("fashion-mnist", real_root, train=False, normalize=False)
    assert len(fashion) == 10000
    assert fashion.inputs.shape == (10000, 1, 28, 28)
    assert torch.bincount(fashion.targets, minlength=10).tolist() == [1000] * 10
    alias = load_dataset("fmnist", real_root, train=False, normalize=False)
    assert torch.equal(alias.inputs, fashion.inputs)


def test_real_mnist_float64_and_loader_epoch(real_root: Path) -> None:
    ds = load_dataset("mnist", real_root, train=False, flatten=True, dtype=torch.float64)
    assert ds.inputs.dtype == torch.float64
    loader = make_loader(ds, 256, shuffle=True, seed=0)
    seen = torch.cat([y for _, y in loader])
    assert len(loader) == 40
    assert torch.equal(seen.sort().values, ds.targets.sort().values)


# --------------------------------------------------------------------------------------------
# fake roots written by the tests
# --------------------------------------------------------------------------------------------


def test_fake_mnist_round_trip(tmp_path: Path, no_download: None) -> None:
    splits = _fake_mnist_root(tmp_path)
    images, labels = splits["train"]

    raw = load_dataset("mnist", tmp_path, train=True, normalize=False)
    assert isinstance(raw, InMemoryDataset)
    assert len(raw) == 20 and raw.inputs.shape == (20, 1, 28, 28)
    assert torch.equal((raw.inputs * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(images))
    assert raw.targets.tolist() == labels.tolist()

    norm = load_dataset("mnist", tmp_path, train=True, flatten=True)
    expected = (torch.from_numpy(images).float().reshape(20, -1) / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(norm.inputs, expected)

    test_images, test_labels = splits["t10k"]
    test = load_dataset("mnist", tmp_path, train=False, normalize=False, dtype=torch.float64)
    assert len(test) == 7 and test.inputs.dtype == torch.float64
    assert torch.equal(
        (test.inputs * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(test_images)
    )
    assert test.targets.tolist() == test_labels.tolist()

    # augmentation is CIFAR-only: for MNIST it is ignored and the in-memory path is kept
    aug = load_dataset("mnist", tmp_path, train=True, augment=True, normalize=False)
    assert isinstance(aug, InMemoryDataset) and torch.equal(aug.inputs, raw.inputs)


def test_fake_root_through_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    _fake_mnist_root(tmp_path, folder="FashionMNIST")
    monkeypatch.setenv("CTEP_DATA", str(tmp_path))
    ds = load_dataset("fmnist", train=True)
    assert len(ds) == 20 and ds.num_classes == 10


def _fake_cifar10_root(root: Path, n_per_batch: int = 4) -> None:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=n_per_batch).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def test_fake_cifar10_in_memory_and_augmented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    # Fake batches cannot match torchvision's md5 list, so only the checksum test is bypassed.
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *args, **kwargs: True)
    _fake_cifar10_root(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f)

    raw = load_dataset("cifar10", tmp_path, train=True, normalize=False)
    assert isinstance(raw, InMemoryDataset)
    assert raw.inputs.shape == (20, 3, 32, 32)
    expected = torch.from_numpy(first["data"][0].reshape(3, 32, 32))
    assert torch.equal((raw.inputs[0] * 255).round().to(torch.uint8), expected)
    assert raw.targets[:4].tolist() == first["labels"]

    norm = load_dataset("cifar10", tmp_path, train=False, flatten=True)
    assert isinstance(norm, InMemoryDataset) and norm.inputs.shape == (4, 3072)

    aug = load_dataset("cifar10", tmp_path, train=True, augment=True, flatten=True)
    assert isinstance(aug, tvd.CIFAR10) and len(aug) == 20
    x, y = aug[0]
    assert x.shape == (3072,) and x.dtype == torch.float32 and y == first["labels"][0]
    x64, _ = load_dataset("cifar10", tmp_path, augment=True, dtype=torch.float64)[1]
    assert x64.shape == (3, 32, 32) and x64.dtype == torch.float64
    batch_x, batch_y = next(iter(make_loader(aug, 8, shuffle=True, seed=0)))
    assert batch_x.shape == (8, 3072) and batch_y.shape == (8,)


# --------------------------------------------------------------------------------------------
# missing data
# --------------------------------------------------------------------------------------------


def test_missing_mnist_raises_informative_error(tmp_path: Path, no_download: None) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", tmp_path, download=False)
    err = info.value
    msg = str(err)
    assert isinstance(err, FileNotFoundError)
    assert "'mnist'" in msg
    assert str(tmp_path) in msg
    assert "MNIST/raw/train-images-idx3-ubyte" in msg
    assert "--data-root" in msg and "CTEP_DATA" in msg and "download=True" in msg
    assert err.dataset == "mnist"
    assert set(err.missing) == set(expected_files("mnist"))
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing fetched


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("kmnist", "KMNIST/raw/train-images-idx3-ubyte"),
        ("fashion-mnist", "FashionMNIST/raw/t10k-images-idx3-ubyte"),
        ("cifar10", "cifar-10-batches-py/"),
        ("cifar100", "cifar-100-python/"),
    ],
)
@pytest.mark.parametrize("train", [True, False])
def test_missing_other_datasets_raise(
    tmp_path: Path, no_download: None, name: str, expected: str, train: bool
) -> None:
    with pytest.raises(DatasetNotFoundError, match="CTEP_DATA") as info:
        load_dataset(name, tmp_path, train=train, download=False, augment=True)
    assert str(tmp_path) in str(info.value)
    assert expected in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_partial_mnist_lists_missing_and_gz_hint(tmp_path: Path, no_download: None) -> None:
    splits = _fake_mnist_root(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not checked without download")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", tmp_path)
    assert info.value.missing == ("MNIST/raw/t10k-labels-idx1-ubyte",)
    assert "t10k-labels-idx1-ubyte.gz" in str(info.value)
    assert len(splits["train"][0]) == 20


def test_non_float_dtype_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="floating"):
        load_dataset("mnist", tmp_path, dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# splits and subsets
# --------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=400),
    frac=st.floats(min_value=0.0, max_value=0.95),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_train_val_split_properties(n: int, frac: float, seed: int) -> None:
    ds = synthetic_classification(n, 2, 2, seed=0)
    train, val = train_val_split(ds, frac, seed)
    again_train, again_val = train_val_split(ds, frac, seed)
    assert train.indices == again_train.indices and val.indices == again_val.indices
    assert len(val) == round(frac * n)
    assert set(train.indices).isdisjoint(val.indices)
    assert sorted(train.indices + val.indices) == list(range(n))


def test_train_val_split_depends_on_seed_only() -> None:
    a = synthetic_classification(1000, 3, 2, seed=0)
    b = synthetic_classification(1000, 5, 4, seed=9)  # other content, same length
    assert train_val_split(a, 0.2, 7)[1].indices == train_val_split(b, 0.2, 7)[1].indices
    assert train_val_split(a, 0.2, 7)[1].indices != train_val_split(a, 0.2, 8)[1].indices
    before = torch.random.get_rng_state()
    train_val_split(a, 0.2, 7)
    assert torch.equal(before, torch.random.get_rng_state())  # global RNG untouched
    with pytest.raises(ValueError):
        train_val_split(a, 1.0, 0)
    with pytest.raises(ValueError):
        train_val_split(a, -0.1, 0)


def test_subset() -> None:
    ds = synthetic_classification(100, 4, 3, seed=1)
    s1, s2, s3 = subset(ds, 30, seed=5), subset(ds, 30, seed=5), subset(ds, 30, seed=6)
    assert isinstance(s1, Subset) and len(s1) == 30
    assert s1.indices == s2.indices and s1.indices != s3.indices
    assert len(set(s1.indices)) == 30 and all(0 <= i < 100 for i in s1.indices)
    whole = subset(ds, None, seed=0)
    assert len(whole) == 100 and whole.indices == list(range(100))
    assert len(subset(ds, 100, seed=0)) == 100 and len(subset(ds, 0, seed=0)) == 0
    with pytest.raises(ValueError):
        subset(ds, 101, seed=0)
    with pytest.raises(ValueError):
        subset(ds, -1, seed=0)


# --------------------------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------------------------


def _epochs(loader: DataLoader, n_epochs: int = 2) -> list[torch.Tensor]:
    return [torch.cat([x for x, _ in loader]) for _ in range(n_epochs)]


def test_loader_reproducible_across_instances_and_epochs() -> None:
    ds = synthetic_classification(203, 5, 3, seed=0)
    a = _epochs(make_loader(ds, 16, shuffle=True, seed=42))
    b = _epochs(make_loader(ds, 16, shuffle=True, seed=42))
    c = _epochs(make_loader(ds, 16, shuffle=True, seed=43))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # a new permutation each epoch
    for epoch in a:  # every epoch is a permutation of the dataset
        torch.testing.assert_close(epoch.sum(0), ds.inputs.sum(0))
        assert epoch.shape == ds.inputs.shape


def test_loader_without_shuffle_and_drop_last() -> None:
    ds = synthetic_classification(50, 2, 2, seed=3)
    loader = make_loader(ds, 16, shuffle=False, seed=0)
    assert torch.equal(torch.cat([x for x, _ in loader]), ds.inputs)
    dropped = make_loader(ds, 16, shuffle=True, seed=0, drop_last=True)
    assert len(dropped) == 3 and all(len(y) == 16 for _, y in dropped)
    with pytest.raises(ValueError):
        make_loader(ds, 0, shuffle=False, seed=0)


def test_loader_with_external_sampler() -> None:
    ds = synthetic_classification(40, 2, 2, seed=0)
    parts = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        loader = make_loader(ds, 8, shuffle=True, seed=0, sampler=sampler)
        parts.append(torch.cat([y for _, y in loader]))
        assert loader.sampler is sampler
    assert len(parts[0]) == len(parts[1]) == 20
    assert torch.equal(torch.cat(parts).sort().values, ds.targets.sort().values)


def test_batched_fetch_matches_per_item() -> None:
    ds = synthetic_classification(64, 3, 4, seed=2)
    sub = subset(ds, 20, seed=0)
    x, y = next(iter(make_loader(sub, 20, shuffle=False, seed=0)))
    per_item = [sub[i] for i in range(20)]
    assert torch.equal(x, torch.stack([p[0] for p in per_item]))
    assert torch.equal(y, torch.stack([p[1] for p in per_item]))


# --------------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------------


def test_synthetic_shapes_and_determinism() -> None:
    ds = synthetic_classification(300, 7, 3, seed=11, dtype=torch.float64)
    assert isinstance(ds, InMemoryDataset)
    assert ds.inputs.shape == (300, 7) and ds.inputs.dtype == torch.float64
    assert ds.targets.dtype == torch.int64 and ds.num_classes == 3
    assert torch.bincount(ds.targets).tolist() == [100, 100, 100]
    same = synthetic_classification(300, 7, 3, seed=11, dtype=torch.float64)
    other = synthetic_classification(300, 7, 3, seed=12, dtype=torch.float64)
    assert torch.equal(ds.inputs, same.inputs) and torch.equal(ds.targets, same.targets)
    assert not torch.equal(ds.inputs, other.inputs)
    f32 = synthetic_classification(300, 7, 3, seed=11)
    assert f32.inputs.dtype == torch.float32
    torch.testing.assert_close(f32.inputs, ds.inputs.float())
    with pytest.raises(ValueError):
        synthetic_classification(0, 2, 2, seed=0)


def test_synthetic_is_learnable() -> None:
    """A nearest-class-mean (linear) classifier fits held-out blobs well."""
    ds = synthetic_classification(1200, 10, 5, seed=0)
    train, test = train_val_split(ds, 0.25, seed=0)
    xtr, ytr = ds.inputs[train.indices], ds.targets[train.indices]
    xte, yte = ds.inputs[test.indices], ds.targets[test.indices]
    means = torch.stack([xtr[ytr == k].mean(0) for k in range(5)])
    accuracy = (torch.cdist(xte, means).argmin(1) == yte).float().mean()
    assert accuracy > 0.95

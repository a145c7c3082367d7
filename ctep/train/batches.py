"""Training data as tensors, and the seeded batch order shared by every process.

The order of epoch e is ``randperm(N)`` from a generator seeded with ``(seed, e)``, so it does
not depend on what ran before: a run resumed in the middle of epoch e skips the batches it has
done and sees exactly the batches an uninterrupted run sees. Under data parallelism every rank
draws the same global batch and takes its own contiguous shard of it (a distributed sampler
whose shards together are the single-process batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .. import data as ctep_data
from ..models import model_options
from .config import DataConfig, ModelConfig

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


@dataclass
class Split:
    """One split: either tensors (``inputs``, ``targets``) or a per-item dataset (augmented
    CIFAR), whose items are stacked per batch."""

    name: str
    inputs: Tensor | None
    targets: Tensor | None
    dataset: Dataset | None = None

    def __len__(self) -> int:
        return len(self.targets) if self.targets is not None else len(self.dataset)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs and targets of the samples ``idx``."""
        if self.inputs is not None:
            return self.inputs[idx], self.targets[idx]
        items = [self.dataset[int(i)] for i in idx]
        return (torch.stack([x for x, _ in items]),
                torch.as_tensor([int(y) for _, y in items], dtype=torch.int64))


@dataclass
class TrainData:
    """Train, (optional) validation and test splits, and what the model needs to know."""

    train: Split
    val: Split | None
    test: Split
    input_shape: tuple[int, ...]
    n_classes: int


def load_train_data(cfg: DataConfig, model: ModelConfig) -> TrainData:
    """Load the splits named by ``cfg`` (inputs flattened for dense models)."""
    dtype = DTYPES[model.dtype]
    if dtype == torch.bfloat16:
        dtype = torch.float32  # inputs are cast when the model runs in bf16
    flatten = "sizes" in model_options(model.kind)
    if cfg.name == "synthetic":
        n_train, n_test = cfg.synthetic_train, cfg.synthetic_test
        full = ctep_data.synthetic_classification(n_train + n_test, cfg.synthetic_features,
                                                  cfg.synthetic_classes, seed=cfg.seed,
                                                  dtype=dtype)
        train_ds = ctep_data.InMemoryDataset(full.inputs[:n_train], full.targets[:n_train],
                                             full.num_classes, "synthetic")
        test_ds = ctep_data.InMemoryDataset(full.inputs[n_train:], full.targets[n_train:],
                                            full.num_classes, "synthetic")
        n_classes = cfg.synthetic_classes
    else:
        spec = ctep_data.get_spec(cfg.name)
        root = cfg.root or None
        train_ds = ctep_data.load_dataset(cfg.name, root, train=True, normalize=cfg.normalize,
                                          flatten=flatten, augment=cfg.augment, dtype=dtype)
        test_ds = ctep_data.load_dataset(cfg.name, root, train=False, normalize=cfg.normalize,
                                         flatten=flatten, dtype=dtype)
        n_classes = spec.num_classes
    train_idx = torch.arange(len(train_ds))
    val = None
    if cfg.val_fraction > 0:
        tr, va = ctep_data.train_val_split(train_ds, cfg.val_fraction, seed=cfg.seed)
        train_idx = torch.as_tensor(tr.indices)
        val = _split("val", train_ds, torch.as_tensor(va.indices))
    if cfg.train_subset:
        keep = ctep_data.subset(range(len(train_idx)), cfg.train_subset, seed=cfg.seed).indices
        train_idx = train_idx[torch.as_tensor(keep)]
    test_idx = torch.arange(len(test_ds))
    if cfg.test_subset:
        test_idx = torch.as_tensor(ctep_data.subset(test_ds, cfg.test_subset,
                                                    seed=cfg.seed + 1).indices)
    train = _split("train", train_ds, train_idx)
    test = _split("test", test_ds, test_idx)
    x0, _ = train.batch(torch.arange(1))
    return TrainData(train, val, test, tuple(x0.shape[1:]), n_classes)


def _split(name: str, dataset: Dataset, idx: Tensor) -> Split:
    if isinstance(dataset, ctep_data.InMemoryDataset):
        return Split(name, dataset.inputs[idx], dataset.targets[idx])
    return Split(name, None, None, torch.utils.data.Subset(dataset, idx.tolist()))


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The sample order of ``epoch``: a permutation seeded by ``(seed, epoch)`` only."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen)


def n_batches(n: int, batch_size: int) -> int:
    """Batches per epoch (the last one may be smaller)."""
    return (n + batch_size - 1) // batch_size


def shard(idx: Tensor, rank: int, world: int) -> Tensor:
    """Rank ``rank``'s contiguous share of a global batch (sizes differ by at most one)."""
    bounds = [len(idx) * r // world for r in range(world + 1)]
    return idx[bounds[rank]:bounds[rank + 1]]


def train_batches(n: int, batch_size: int, seed: int, epoch: int, start: int = 0, *,
                  rank: int = 0, world: int = 1) -> Iterator[tuple[int, Tensor]]:
    """``(batch index, this rank's sample indices)`` for the batches of ``epoch`` from
    ``start`` on."""
    order = epoch_order(n, seed, epoch)
    for b in range(start, n_batches(n, batch_size)):
        yield b, shard(order[b * batch_size:(b + 1) * batch_size], rank, world)


def eval_batches(n: int, batch_size: int, *, rank: int = 0,
                 world: int = 1) -> Iterator[Tensor]:
    """This rank's share of the evaluation set, in order, in batches."""
    mine = shard(torch.arange(n), rank, world)
    for start in range(0, len(mine), batch_size):
        yield mine[start:start + batch_size]

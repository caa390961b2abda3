"""DataLoaders over a prepared (packed) image dataset, for training and evaluation.

The API the trainer uses::

    from symm.data.loaders import read_labels, make_train_loader, make_eval_loader
    from symm.samplers import NPairBatchSampler            # or MPerClassBatchSampler

    labels = read_labels(prepared_dir, "train")             # int64 (N,), official class ids
    sampler = NPairBatchSampler(labels, classes_per_batch=64, seed=seed)
    train = make_train_loader(prepared_dir, "train", batch_sampler=sampler, augmentation="official",
                              steps=10_000, seed=seed, num_workers=8, device="cuda")
    for images, labels in train:          # float32 (128, 3, 227, 227) normalised, on the device
        ...                               # one batch per step; train.step counts consumed batches
    state = train.state_dict()            # {"step", "sampler"}: save with the checkpoint
    train.load_state_dict(state)          # before iterating again: continues with the same batches

    val = make_eval_loader(prepared_dir, "val", augmentation="official", batch_size=256, device="cuda")
    for images, labels in val: ...        # every image once, in index order; val.labels: all labels

Workers decode/crop/resize/flip and return uint8; the float conversion and normalisation run on
``device`` (see :mod:`symm.data.augment`). Every random choice of a training sample comes from a
generator seeded with ``(seed, step, position in batch)``, so batches are bit-identical for any
``num_workers`` and after a resume.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from symm.data.augment import Preset, Transform, get_preset
from symm.data.packed import PackedSplit, verify_prepared
from symm.samplers import StepBatchSampler


class PackedDataset(Dataset):
    """One split of a prepared dataset with a transform; items are ``(uint8 image, label)``.

    An item key is either an index (no randomness: evaluation) or ``(index, seed_key)`` from a
    :class:`~symm.samplers.StepBatchSampler`, where ``seed_key`` seeds the sample's augmentation.
    """

    def __init__(self, prepared_dir: Path | str, split: str, transform: Transform, *, verify: bool = True,
                 normalize: Preset | None = None) -> None:
        self.images = PackedSplit(prepared_dir, split, verify=verify)
        self.transform = transform
        self.normalize = normalize  # set: items are normalised float32 (done in the worker)
        self.labels = self.images.labels

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def _parse(key: Any) -> tuple[int, np.random.Generator | None]:
        if isinstance(key, tuple):
            index, seed_key = key
            return int(index), np.random.default_rng(list(seed_key))
        return int(key), None

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, int]:
        index, rng = self._parse(key)
        image = self.transform(self.images.image(index), rng)
        if self.normalize is not None:
            image = self.normalize.normalize(image)
        return image, int(self.labels[index])

    def __getitems__(self, keys: list[Any]) -> Batch:
        """A whole batch, each sample written straight into one (shared-memory) batch tensor.

        Saves the per-sample output tensor and the collate copy: in a worker, the batch is
        allocated in shared memory, so it also reaches the main process without another copy.
        """
        size = self.transform.size
        dtype = torch.float32 if self.normalize is not None else torch.uint8
        images = _new_batch((len(keys), 3, size, size), dtype)
        labels = torch.empty(len(keys), dtype=torch.int64)
        for j, key in enumerate(keys):
            index, rng = self._parse(key)
            view = self.transform.apply(self.images.image(index), rng)
            if self.normalize is not None:
                self.normalize.normalize_into(view, images[j])
            else:
                images[j].copy_(view)
            labels[j] = int(self.labels[index])
        return Batch(images, labels)


class Batch(tuple):
    """``(images, labels)`` already batched by ``PackedDataset.__getitems__``."""

    def __new__(cls, images: torch.Tensor, labels: torch.Tensor) -> "Batch":
        return super().__new__(cls, (images, labels))


def collate(data: Any) -> Any:
    """Batches made by ``__getitems__`` pass through; anything else gets torch's default collate."""
    if isinstance(data, Batch):
        return tuple(data)
    return default_collate(data)


def _new_batch(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker it is allocated in shared memory, as torch's
    own default_collate does, so sending it to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = math.prod(shape)
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(numel, device=proto.device)
    return proto.new(storage).view(shape)


def read_labels(prepared_dir: Path | str, split: str, *, verify: bool = True) -> np.ndarray:
    """The labels of a split (int64, official class ids) without touching the images."""
    return PackedSplit(prepared_dir, split, verify=verify).labels


def _pin(pin_memory: bool | None, device: torch.device) -> bool:
    if pin_memory is None:
        return device.type == "cuda" and torch.cuda.is_available()
    return pin_memory


def _normalize_in_workers(normalize_in: str, device: torch.device) -> bool:
    if normalize_in not in ("auto", "device", "workers"):
        raise ValueError(f"normalize_in must be 'auto', 'device' or 'workers', got {normalize_in!r}")
    if normalize_in == "auto":
        return device.type == "cpu"
    return normalize_in == "workers"


def _loader_kwargs(num_workers: int, pin_memory: bool, prefetch_factor: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory, "collate_fn": collate}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor or 4
        kwargs["persistent_workers"] = False
    return kwargs


class TrainLoader:
    """Iterable of ``(images, labels)`` on ``device``: one batch per training step, resumable."""

    def __init__(self, dataset: PackedDataset, batch_sampler: Any, preset: Preset, *, steps: int | None,
                 seed: int, num_workers: int, pin_memory: bool, device: torch.device,
                 prefetch_factor: int | None) -> None:
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.preset = preset
        self.steps = steps
        self.seed = seed
        self.device = device
        self.step = 0
        self._kwargs = _loader_kwargs(num_workers, pin_memory, prefetch_factor)
        self._batches: StepBatchSampler | None = None

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless TrainLoader has no length (pass steps)")
        return max(0, self.steps - self.step)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._rewind()
        batches = self._batches = StepBatchSampler(self.batch_sampler, self.steps, self.seed, start_step=self.step)
        loader = DataLoader(self.dataset, batch_sampler=batches, **self._kwargs)
        non_blocking = self._kwargs["pin_memory"]
        for images, labels in loader:
            batches.snapshots.pop(self.step, None)
            self.step += 1
            images = images.to(self.device, non_blocking=non_blocking)
            labels = labels.to(self.device, non_blocking=non_blocking)
            yield (images if self.dataset.normalize is not None else self.preset.normalize(images)), labels

    def _rewind(self) -> None:
        """After an interrupted iteration the sampler ran ahead (prefetch): step it back."""
        if self._batches is not None and self.step in self._batches.snapshots:
            self.batch_sampler.load_state_dict(self._batches.snapshots[self.step])
        self._batches = None

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out: ``{"step", "sampler"}``."""
        if self._batches is not None and self.step in self._batches.snapshots:
            sampler_state = self._batches.snapshots[self.step]
        else:
            sampler_state = self.batch_sampler.state_dict()
        return {"step": self.step, "sampler": sampler_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._batches = None
        self.step = int(state["step"])
        self.batch_sampler.load_state_dict(state["sampler"])


class EvalLoader:
    """Iterable of ``(images, labels)`` on ``device``: every image of the split once, in order."""

    def __init__(self, dataset: PackedDataset, preset: Preset, *, batch_size: int, num_workers: int,
                 pin_memory: bool, device: torch.device, prefetch_factor: int | None) -> None:
        self.dataset = dataset
        self.preset = preset
        self.device = device
        self.labels = torch.as_tensor(dataset.labels, dtype=torch.int64)
        self._loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                  **_loader_kwargs(num_workers, pin_memory, prefetch_factor))

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self._loader.pin_memory
        for images, labels in self._loader:
            images = images.to(self.device, non_blocking=non_blocking)
            if self.dataset.normalize is None:
                images = self.preset.normalize(images)
            yield images, labels.to(self.device, non_blocking=non_blocking)


def make_train_loader(
    prepared_dir: Path | str,
    split: str = "train",
    *,
    batch_sampler: Any,
    augmentation: str | Preset = "official",
    steps: int | None = None,
    seed: int = 0,
    num_workers: int = 2,
    pin_memory: bool | None = None,
    device: str | torch.device = "cpu",
    prefetch_factor: int | None = 4,
    normalize_in: str = "auto",
    verify: bool = True,
) -> TrainLoader:
    """Training batches from ``batch_sampler`` (``NPairBatchSampler`` / ``MPerClassBatchSampler``
    built on :func:`read_labels` of the same split) with the preset's train augmentation.

    ``normalize_in``: ``"device"`` - workers ship uint8, the float conversion runs on ``device``
    (best on a GPU); ``"workers"`` - workers ship float32; ``"auto"`` - workers for a CPU device,
    else the device."""
    preset = get_preset(augmentation)
    device = torch.device(device)
    in_workers = _normalize_in_workers(normalize_in, device)
    dataset = PackedDataset(prepared_dir, split, preset.train, verify=verify, normalize=preset if in_workers else None)
    return TrainLoader(dataset, batch_sampler, preset, steps=steps, seed=seed, num_workers=num_workers,
                       pin_memory=_pin(pin_memory, device), device=device, prefetch_factor=prefetch_factor)


def make_eval_loader(
    prepared_dir: Path | str,
    split: str,
    *,
    augmentation: str | Preset = "official",
    batch_size: int = 256,
    num_workers: int = 2,
    pin_memory: bool | None = None,
    device: str | torch.device = "cpu",
    prefetch_factor: int | None = 4,
    normalize_in: str = "auto",
    verify: bool = True,
) -> EvalLoader:
    """Every image of ``split`` once, in index order, with the preset's eval transform."""
    preset = get_preset(augmentation)
    device = torch.device(device)
    in_workers = _normalize_in_workers(normalize_in, device)
    dataset = PackedDataset(prepared_dir, split, preset.eval, verify=verify, normalize=preset if in_workers else None)
    return EvalLoader(dataset, preset, batch_size=batch_size, num_workers=num_workers,
                      pin_memory=_pin(pin_memory, device), device=device, prefetch_factor=prefetch_factor)


def check_prepared(prepared_dir: Path | str, *, full: bool = False) -> dict[str, Any]:
    """Verify a prepared dataset against its manifest (``full`` re-hashes the images)."""
    return verify_prepared(prepared_dir, full=full)

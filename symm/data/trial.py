"""A prepared dataset as one trial sees it: resumable training batches and per-split embeddings.

Two kinds behind one interface, so the trainer has a single code path:

- :class:`InMemoryData` — small datasets held as tensors (glyphs: ``symm.data.prepared.load_split``);
  batches are tensor indexing plus the glyph-sized random affine on the device (no DataLoader:
  keeps the CPU default fast);
- :class:`PackedData` — the image benchmarks (CUB-200-2011, CARS196, SOP) in the packed format,
  read through :mod:`symm.data.loaders` with an augmentation preset (``official`` 227 px,
  ``standard`` 224 px) and DataLoader workers.

Both give ``train_loader(sampler, steps=, seed=, device=)`` — an iterable of ``(images, labels)``
on the device, one batch per step, with ``state_dict()`` / ``load_state_dict()`` holding the step,
the sampler and the augmentation RNG — and ``embed(model, split, batch_size=, device=)``.
:func:`open_prepared` picks the kind from the prepared directory.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from symm.samplers import MPerClassBatchSampler, NPairBatchSampler

Split = tuple[torch.Tensor, torch.Tensor]  # images (N, C, H, W) float in [0, 1], labels (N,)
SPLITS = ("train", "val", "test")
IN_MEMORY_AUGMENTATIONS = ("affine", "none")
PRESET_AUGMENTATIONS = ("official", "standard")


class TrainBatches(Protocol):
    step: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_sampler(labels: np.ndarray, classes_per_batch: int, images_per_class: int, seed: int) -> Any:
    """N-pair batches for 2 images per class, m-per-class batches otherwise (same seed, same stream)."""
    if images_per_class == 2:
        return NPairBatchSampler(labels, classes_per_batch, seed=seed)
    return MPerClassBatchSampler(labels, images_per_class, classes_per_batch, seed=seed)


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small random shifts, scales and rotations: glyph-sized augmentation, on-device and seeded."""
    n = images.shape[0]
    rand = torch.rand(n, 4, generator=generator).to(images.device)
    angle = (rand[:, 0] - 0.5) * (2 * math.radians(8))
    scale = 0.9 + 0.2 * rand[:, 1]
    shift = (rand[:, 2:] - 0.5) * 0.15
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


@torch.no_grad()
def embed_tensors(model: nn.Module, images: torch.Tensor, batch_size: int, progress: bool | None = None) -> torch.Tensor:
    """Embeddings of in-memory images in eval mode (the model's train/eval mode is restored); a
    progress bar on a terminal by default when there is more than one batch."""
    from symm.progress import progress_bar

    was_training = model.training
    model.eval()
    starts = range(0, len(images), batch_size)
    if progress is None:
        progress = None if len(starts) > 1 else False
    out = torch.cat([model(images[i : i + batch_size])
                     for i in progress_bar(starts, desc="embedding", unit="batch", enabled=progress, leave=False)])
    model.train(was_training)
    return out


class TensorTrainLoader:
    """Training batches from in-memory tensors: the sampler's indices, then the affine augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sampler: Any, *, steps: int, seed: int,
                 augmentation: str, device: torch.device) -> None:
        self.images, self.labels = images.to(device), labels.to(device)
        self.sampler, self.steps, self.device = sampler, steps, device
        self.augmentation = augmentation
        self.rng = torch.Generator().manual_seed(seed)
        self.step = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while self.step < self.steps:
            batch = torch.as_tensor(self.sampler.sample(), device=self.device)
            images, labels = self.images[batch], self.labels[batch]
            if self.augmentation == "affine":
                images = random_affine(images, self.rng)
            self.step += 1
            yield images, labels

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "sampler": self.sampler.state_dict(), "augment_rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.rng.set_state(state["augment_rng"])


class InMemoryData:
    """Train/val/test splits as tensors (images float in [0, 1], N×C×H×W)."""

    kind = "in_memory"

    def __init__(self, splits: dict[str, Split], augmentation: str = "affine") -> None:
        for split in SPLITS:
            if split not in splits:
                raise ValueError(f"data has no {split!r} split; prepared datasets need train, val and test")
        if augmentation not in IN_MEMORY_AUGMENTATIONS:
            raise ValueError(f"augmentation {augmentation!r} is for image benchmarks; in-memory data take "
                             f"{' or '.join(IN_MEMORY_AUGMENTATIONS)} (train.augmentation)")
        self.splits, self.augmentation = splits, augmentation
        self.in_channels = int(splits["train"][0].shape[1])
        self.train_labels = splits["train"][1].cpu().numpy()

    def train_loader(self, sampler: Any, *, steps: int, seed: int, device: torch.device) -> TensorTrainLoader:
        images, labels = self.splits["train"]
        return TensorTrainLoader(images, labels, sampler, steps=steps, seed=seed, augmentation=self.augmentation,
                                 device=device)

    def embed(self, model: nn.Module, split: str, *, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.splits[split]
        return embed_tensors(model, images.to(device), batch_size), labels

    def example(self, n: int = 2) -> np.ndarray:
        return self.splits["test"][0][:n].numpy()


def model_input_preset(name: str) -> Any:
    """The preset's geometry with the normalisation every backbone here takes (ImageNet mean/std on
    [0, 1] RGB; each backbone's input adapter converts that to its own weights' convention, e.g.
    GoogLeNet's ``transform_input``). The ``official`` preset's own caffe-style normalisation is what
    the release's TensorFlow network took; feeding it to these models would be off by a factor 255."""
    from symm.data.augment import get_preset
    from symm.models import IMAGENET_MEAN, IMAGENET_STD

    preset = get_preset(name)
    return dataclasses.replace(preset, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=1.0 / 255.0, _cache={})


class PackedData:
    """A packed image benchmark: training batches from DataLoader workers with the preset's augmentation."""

    kind = "packed"
    in_channels = 3

    def __init__(self, prepared_dir: Path | str, augmentation: str = "official", *, num_workers: int = 2) -> None:
        from symm.data.loaders import read_labels

        if augmentation not in PRESET_AUGMENTATIONS:
            raise ValueError(f"augmentation {augmentation!r} is for in-memory data; image benchmarks take "
                             f"{' or '.join(PRESET_AUGMENTATIONS)} (train.augmentation)")
        self.prepared_dir, self.num_workers = Path(prepared_dir), num_workers
        self.preset = model_input_preset(augmentation)
        self.train_labels = read_labels(self.prepared_dir, "train")
        self._eval: dict[tuple[str, int, str], Any] = {}

    def train_loader(self, sampler: Any, *, steps: int, seed: int, device: torch.device) -> Any:
        from symm.data.loaders import make_train_loader

        return make_train_loader(self.prepared_dir, "train", batch_sampler=sampler, augmentation=self.preset,
                                 steps=steps, seed=seed, num_workers=self.num_workers, device=device)

    def _eval_loader(self, split: str, batch_size: int, device: torch.device) -> Any:
        from symm.data.loaders import make_eval_loader

        key = (split, batch_size, str(device))
        if key not in self._eval:
            self._eval[key] = make_eval_loader(self.prepared_dir, split, augmentation=self.preset, batch_size=batch_size,
                                               num_workers=self.num_workers, device=device)
        return self._eval[key]

    @torch.no_grad()
    def embed(self, model: nn.Module, split: str, *, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        loader = self._eval_loader(split, batch_size, device)
        was_training = model.training
        model.eval()
        out = torch.cat([model(images) for images, _ in loader])
        model.train(was_training)
        return out, loader.labels

    def example(self, n: int = 2) -> np.ndarray:
        """The first ``n`` test images as the model takes them (eval transform, normalised)."""
        from symm.data.loaders import PackedDataset

        dataset = PackedDataset(self.prepared_dir, "test", self.preset.eval, normalize=self.preset)
        return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))]).numpy()


def open_prepared(prepared_dir: Path | str, augmentation: str, *, num_workers: int = 2) -> InMemoryData | PackedData:
    """The prepared dataset at ``prepared_dir``: packed image benchmark or in-memory ``.npz`` splits."""
    from symm.data.packed import is_packed
    from symm.data.prepared import load_split

    if is_packed(prepared_dir):
        return PackedData(prepared_dir, augmentation, num_workers=num_workers)
    return InMemoryData({split: load_split(prepared_dir, split) for split in SPLITS}, augmentation)

"""Loading a prepared dataset directory (train/val/test ``.npz`` files + ``manifest.json``).

This is the in-memory path of small datasets (glyphs). The image benchmarks (CUB, CARS196, SOP)
are prepared in the packed format (:mod:`symm.data.packed`) and read through
:mod:`symm.data.loaders`; ``load_split`` says so when pointed at one.

Why a separate module: training code only needs tensors, not the renderer; keeping this tiny
means loaders don't pull in fontTools/PIL, and the error for a missing file tells the user the
one command that creates it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPLITS = ("train", "val", "test")


def _dataset_hint(prepared_dir: Path) -> str:
    """Dataset name for the error message: from the manifest if present, else the dir name."""
    manifest = prepared_dir / "manifest.json"
    if manifest.is_file():
        try:
            return str(json.loads(manifest.read_text(encoding="utf-8"))["dataset"])
        except (OSError, ValueError, KeyError):
            pass
    return prepared_dir.name or "<dataset>"


def _is_packed_images(prepared_dir: Path) -> bool:
    from symm.data.packed import is_packed

    return is_packed(prepared_dir)


def load_split(prepared_dir: Path | str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 (N, 1, H, W) in [0, 1] and labels as int64 (N,) for one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / f"{split}.npz"
    if not path.is_file() and _is_packed_images(prepared_dir):
        raise ValueError(
            f"{prepared_dir} is a packed image dataset ({_dataset_hint(prepared_dir)}): it is too large to "
            "load as one tensor; read it with symm.data.loaders.make_train_loader / make_eval_loader"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"prepared split not found: {path}. Create it with "
            f"`dvc repro prepare@{_dataset_hint(prepared_dir)}`."
        )
    with np.load(path, allow_pickle=False) as data:
        images = np.asarray(data["images"])
        labels = np.asarray(data["labels"])
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def read_manifest(prepared_dir: Path | str) -> dict[str, Any]:
    """The manifest written next to the splits (parameters, classes, fonts, file hashes)."""
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest not found: {path}. Create it with "
            f"`dvc repro prepare@{_dataset_hint(prepared_dir)}`."
        )
    return json.loads(path.read_text(encoding="utf-8"))

"""What a raw-dataset reader returns, shared by the CUB, CARS196 and SOP readers.

A reader turns the official index files of one dataset into a list of :class:`Record` (one per
image: its path, official class id, optional box) and the official class split. It never decodes
images; :mod:`symm.data.build` does that. Index lines that cannot be parsed become entries of
``RawIndex.skipped`` (with the file, line number and text), so they are counted against the
dataset's ``max_skipped_fraction`` and listed in the manifest like unreadable images.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from symm.data.sources import Source

Box = tuple[float, float, float, float]  # (left, top, right, bottom), 0-based, right/bottom exclusive


@dataclass(frozen=True)
class Record:
    image_id: int      # the dataset's own id (CUB image id, CARS annotation number, SOP image_id)
    path: str          # relative to the dataset's top folder, as written in the index
    class_id: int      # the official class id (1-based, as in the index files)
    box: Box | None = None


@dataclass
class RawIndex:
    records: list[Record]
    train_pool: list[int]                  # official training classes (train + val come from these)
    test: list[int]                        # official test classes
    class_ranges: dict[str, list[int]]     # {"train_pool": [lo, hi], "test": [lo, hi]}
    index_files: dict[str, str]            # index file name -> sha256 of its bytes
    skipped: list[dict[str, Any]] = field(default_factory=list)  # malformed index entries
    n_entries: int = 0                     # index entries seen (records + malformed ones)


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, read and describe one raw dataset."""

    name: str
    title: str
    marker: str                            # a file (or "dir/") at the dataset's top folder
    archive_names: tuple[str, ...]         # archives a folder root may hold instead
    env_var: str                           # per-dataset root override, e.g. SYMM_CUB_ROOT
    data_root_names: tuple[str, ...]       # names looked up under SYMM_DATA_ROOT
    layout: str                            # expected layout + where to get it (error messages)
    read_index: Callable[..., RawIndex]    # (source, crop_to_bbox=...) -> RawIndex
    has_boxes: bool


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def malformed(file: str, line_no: int, text: str, why: str) -> dict[str, Any]:
    return {
        "path": None,
        "image_id": None,
        "class_id": None,
        "reason": "malformed_index_line",
        "detail": f"{file}:{line_no}: {why}: {text.strip()[:120]!r}",
    }


def read_index_file(source: Source, name: str, layout: str) -> tuple[list[str], str]:
    """Lines of an index file (and its sha256); a missing file names the expected layout."""
    from symm.data.sources import DatasetNotFound

    if not source.exists(name):
        raise DatasetNotFound(f"index file {name} missing in {source.description}.\n{layout}")
    data = source.read_bytes(name)
    return data.decode("utf-8", errors="replace").splitlines(), sha256_bytes(data)


def class_range(ids: list[int]) -> list[int]:
    return [min(ids), max(ids)] if ids else []

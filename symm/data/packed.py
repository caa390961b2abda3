"""The packed image format: one data file + one index per split, memory-mapped for random access.

Layout of a prepared image dataset (``data/prepared/<dataset>/``)::

    manifest.json            counts, class ids per split, skipped files, parameters, sha256 of every file
    train.images.bin         the images of the split, back to back
    train.index.npz          offsets (N+1,) int64, shapes (N, 2) int32 (h, w), labels (N,) int64,
                             image_ids (N,) int64, paths (N,) str (relative to the dataset's top folder)
    val.images.bin, val.index.npz, test.images.bin, test.index.npz

Two codecs for the ``.images.bin`` payloads (``manifest["parameters"]["storage"]``):

- ``raw``: uint8 RGB pixels, row-major (h, w, 3). Reading an image is a slice of a memory map
  (no decoding); about 0.26 MB per CUB image at short side 256 (CUB ≈ 3 GB, CARS196 ≈ 4.6 GB).
- ``jpeg``: each image re-encoded as JPEG (libjpeg-turbo via Pillow), ≈ 6-9× smaller
  (SOP ≈ 4 GB instead of ≈ 28 GB raw), decoded per read with torchvision's libjpeg-turbo
  decoder (≈ 0.35 ms at 256 px).

Why this format: one file per split (no per-image ``open``), random access through ``np.memmap``
(the OS page cache shares it between DataLoader workers), and nothing to decode for ``raw``.
Every file is deterministic (the ``.npz`` is written with fixed zip timestamps), so re-running
prepare on unchanged inputs gives byte-identical files and DVC sees no change.

Opening a split checks it against the manifest (sizes, the index's sha256, counts, class ids) and
names the command that re-creates it; :func:`verify_prepared` with ``full=True`` also re-hashes the
image files.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

FORMAT = "packed-images"
FORMAT_VERSION = 1
CODECS = ("raw", "jpeg")
SPLITS = ("train", "val", "test")


class PreparedDataMismatch(ValueError):
    """The prepared files do not match their manifest (partial copy, interrupted run, edited file)."""


def data_name(split: str) -> str:
    return f"{split}.images.bin"


def index_name(split: str) -> str:
    return f"{split}.index.npz"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deterministic ``.npz``: sorted members, fixed timestamps and attributes, stored."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a unique temp file beside ``path``, fsync, then os.replace (atomic on
    POSIX): a crash midway leaves the previous ``path`` intact and no temp file behind."""
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:  # plain open() so the file gets the usual umask permissions
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


class SplitWriter:
    """Streams one split to temporary files; :meth:`finish` returns them for an atomic commit."""

    def __init__(self, out_dir: Path, split: str) -> None:
        self.split = split
        self.data_path = Path(out_dir) / data_name(split)
        self.index_path = Path(out_dir) / index_name(split)
        self.data_tmp = temp_name(self.data_path)
        self.index_tmp = temp_name(self.index_path)
        self._f: BinaryIO = open(self.data_tmp, "wb")
        self._hash = hashlib.sha256()
        self._offset = 0
        self.offsets: list[int] = [0]
        self.shapes: list[tuple[int, int]] = []
        self.labels: list[int] = []
        self.image_ids: list[int] = []
        self.paths: list[str] = []

    def add(self, payload: bytes, height: int, width: int, label: int, image_id: int, path: str) -> None:
        self._f.write(payload)
        self._hash.update(payload)
        self._offset += len(payload)
        self.offsets.append(self._offset)
        self.shapes.append((height, width))
        self.labels.append(label)
        self.image_ids.append(image_id)
        self.paths.append(path)

    def finish(self) -> dict[str, dict[str, Any]]:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        arrays = {
            "offsets": np.asarray(self.offsets, dtype=np.int64),
            "shapes": np.asarray(self.shapes, dtype=np.int32).reshape(-1, 2),
            "labels": np.asarray(self.labels, dtype=np.int64),
            "image_ids": np.asarray(self.image_ids, dtype=np.int64),
            "paths": np.asarray(self.paths, dtype=np.str_) if self.paths else np.zeros(0, dtype="<U1"),
        }
        data = npz_bytes(arrays)
        with open(self.index_tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return {
            data_name(self.split): {"sha256": self._hash.hexdigest(), "bytes": self._offset},
            index_name(self.split): {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
        }

    def commit(self) -> None:
        os.replace(self.data_tmp, self.data_path)
        os.replace(self.index_tmp, self.index_path)

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.data_tmp.unlink(missing_ok=True)
        self.index_tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _recreate_hint(dataset: str) -> str:
    return (f"re-create it with `dvc repro prepare@{dataset}` "
            f"(or `python -m pipelines.prepare --dataset {dataset} --root PATH`)")


def read_packed_manifest(prepared_dir: Path | str) -> dict[str, Any]:
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}; {_recreate_hint(prepared_dir.name or '<dataset>')}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise PreparedDataMismatch(f"{path} is not valid JSON ({err}); {_recreate_hint(prepared_dir.name)}") from None
    if manifest.get("format") != FORMAT:
        raise PreparedDataMismatch(
            f"{prepared_dir} is not a packed image dataset (format {manifest.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PreparedDataMismatch(
            f"{prepared_dir} has packed format version {manifest.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}; {_recreate_hint(manifest.get('dataset', prepared_dir.name))}"
        )
    return manifest


def is_packed(prepared_dir: Path | str) -> bool:
    path = Path(prepared_dir) / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def verify_prepared(prepared_dir: Path | str, *, full: bool = False, splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """Check the prepared files against ``manifest.json``; return the manifest.

    Always: every listed file exists with the recorded size, each index hashes to its recorded
    sha256 and agrees with the recorded counts and class ids. ``full=True`` also re-hashes the
    image files (reads everything: ~1 s per GB).
    """
    prepared_dir = Path(prepared_dir)
    manifest = read_packed_manifest(prepared_dir)
    dataset = manifest.get("dataset", prepared_dir.name)
    problems: list[str] = []
    files = manifest.get("files", {})
    for split in splits:
        for name in (data_name(split), index_name(split)):
            rec = files.get(name)
            path = prepared_dir / name
            if rec is None:
                problems.append(f"{name} is not in the manifest")
            elif not path.is_file():
                problems.append(f"{name} is missing")
            elif path.stat().st_size != rec["bytes"]:
                problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {rec['bytes']}")
            elif (name.endswith(".npz") or full) and sha256_file(path) != rec["sha256"]:
                problems.append(f"{name} does not match its sha256 in the manifest")
        if problems:
            continue
        with np.load(prepared_dir / index_name(split), allow_pickle=False) as d:
            labels, offsets = d["labels"], d["offsets"]
        counts = manifest["counts"][split]
        if len(labels) != counts["images"]:
            problems.append(f"{split}: {len(labels)} images in the index, the manifest says {counts['images']}")
        if sorted(np.unique(labels).tolist()) != manifest["class_ids"][split]:
            problems.append(f"{split}: the class ids in the index differ from the manifest's")
        if int(offsets[-1]) != files[data_name(split)]["bytes"]:
            problems.append(f"{split}: the index covers {int(offsets[-1])} bytes, the data file has "
                            f"{files[data_name(split)]['bytes']}")
    if problems:
        raise PreparedDataMismatch(
            f"prepared data in {prepared_dir} does not match its manifest:\n  - " + "\n  - ".join(problems)
            + f"\n{_recreate_hint(dataset)}"
        )
    return manifest


class PackedSplit:
    """Random access to the images of one prepared split.

    ``image(i)`` returns a uint8 tensor (3, h, w). For ``raw`` storage it is a view into the
    memory map with channels-last strides (no copy; torch's uint8 resize kernels are fastest on
    exactly this layout). The memory map is opened lazily in each process, so the object is cheap
    to pickle into DataLoader workers.
    """

    def __init__(self, prepared_dir: Path | str, split: str, *, verify: bool = True) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.prepared_dir = Path(prepared_dir)
        self.split = split
        self.manifest = verify_prepared(self.prepared_dir, splits=(split,)) if verify else read_packed_manifest(self.prepared_dir)
        self.codec = self.manifest["parameters"]["storage"]
        if self.codec not in CODECS:
            raise PreparedDataMismatch(f"{self.prepared_dir}: unknown storage {self.codec!r}")
        with np.load(self.prepared_dir / index_name(split), allow_pickle=False) as d:
            self.offsets = d["offsets"]
            self.shapes = d["shapes"]
            self.labels = d["labels"]
            self.image_ids = d["image_ids"]
            self.paths = d["paths"]
        self._data: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_data"] = None
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def _buffer(self) -> np.ndarray:
        if self._data is None:
            path = self.prepared_dir / data_name(self.split)
            if path.stat().st_size == 0:
                self._data = np.zeros(0, dtype=np.uint8)
            else:
                # copy-on-write: a writable view (torch.from_numpy needs one); nothing is ever written
                self._data = np.memmap(path, dtype=np.uint8, mode="c")
        return self._data

    def payload(self, i: int) -> np.ndarray:
        return self._buffer()[self.offsets[i] : self.offsets[i + 1]]

    def image(self, i: int) -> torch.Tensor:
        h, w = (int(v) for v in self.shapes[i])
        buf = self.payload(i)
        if self.codec == "raw":
            return torch.from_numpy(buf.reshape(h, w, 3)).permute(2, 0, 1)
        return decode_jpeg(buf)


def decode_jpeg(buf: np.ndarray) -> torch.Tensor:
    """JPEG bytes -> uint8 (3, h, w) (torchvision's libjpeg-turbo decoder; Pillow as fallback)."""
    try:
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as tv_decode_jpeg
    except ImportError:  # pragma: no cover - torchvision is a pinned dependency
        tv_decode_jpeg = None
    if tv_decode_jpeg is not None:
        return tv_decode_jpeg(torch.from_numpy(buf), mode=ImageReadMode.RGB)
    from PIL import Image

    with Image.open(io.BytesIO(buf.tobytes())) as im:
        arr = np.array(im.convert("RGB"))
    return torch.from_numpy(arr).permute(2, 0, 1)

"""CARS196 reader: ``car_ims/<000001>.jpg`` plus ``cars_annos.mat``.

Split (method.md §1): by class, 1-98 train (8,054 images), 99-196 test (8,131) — not the mat
file's ``test`` flag (that is the classification split). Boxes in the mat file are 1-based and
inclusive (``bbox_x1 .. bbox_x2``); as a 0-based half-open box that is
``(x1 - 1, y1 - 1, x2, y2)``. ``crop_to_bbox`` (default off) crops to it: the official Symm
release cropped CARS images, DAML/HDML used full images.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from symm.data.base import DatasetSpec, RawIndex, Record, class_range, malformed, sha256_bytes
from symm.data.sources import DatasetNotFound, Source, find_top_folder

N_CLASSES = 196
TRAIN_CLASSES = list(range(1, 99))
TEST_CLASSES = list(range(99, 197))
ANNOS = "cars_annos.mat"

LAYOUT = """\
Expected layout (CARS196 / Stanford Cars, "all images" release: car_ims.tgz + cars_annos.mat):
  <root>/cars_annos.mat      annotations: relative_im_path, bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, test
  <root>/car_ims/000001.jpg ... 016185.jpg   (or the unextracted <root>/car_ims.tgz)
Point --root, SYMM_CARS196_ROOT or data.cars196.root at <root> (or at car_ims.tgz with
cars_annos.mat beside it). The dataset was published by Stanford
(https://ai.stanford.edu/~jkrause/cars/car_dataset.html; this project never downloads it)."""


def _scalar(value: Any) -> Any:
    """loadmat(squeeze_me=True) gives numpy scalars / 0-d arrays; unwrap to a Python value."""
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"expected one value, got shape {arr.shape}")
    return arr.reshape(()).item()


def _find_annos(source: Source, root: Path | None) -> bytes:
    """cars_annos.mat: beside car_ims/ in the source, else in the root folder, else beside the archive."""
    if source.exists(ANNOS):
        return source.read_bytes(ANNOS)
    if root is not None:
        root = Path(root)
        folder = find_top_folder(root, ANNOS) if root.is_dir() else (root.parent if (root.parent / ANNOS).is_file() else None)
        if folder is not None:
            return (folder / ANNOS).read_bytes()
    raise DatasetNotFound(f"{ANNOS} not found (looked beside car_ims/ in {source.description} and in/beside the root).\n{LAYOUT}")


def read_index(source: Source, *, crop_to_bbox: bool = False, root: Path | None = None) -> RawIndex:
    from scipy.io import loadmat

    annos_bytes = _find_annos(source, root)
    try:
        mat = loadmat(io.BytesIO(annos_bytes), squeeze_me=True, struct_as_record=True)
        annotations = np.atleast_1d(mat["annotations"])
    except Exception as err:  # scipy raises several types for a damaged file
        raise DatasetNotFound(f"{ANNOS} could not be read ({type(err).__name__}: {err}).\n{LAYOUT}") from None
    names = annotations.dtype.names or ()
    needed = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class")
    missing = [n for n in needed if n not in names]
    if missing:
        raise DatasetNotFound(f"{ANNOS} annotations lack the fields {missing} (has {list(names)}).\n{LAYOUT}")

    records: list[Record] = []
    skipped: list[dict[str, Any]] = []
    for number, ann in enumerate(annotations, 1):
        try:
            path = str(_scalar(ann["relative_im_path"]))
            class_id = int(_scalar(ann["class"]))
            x1, y1, x2, y2 = (float(_scalar(ann[k])) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
        except (ValueError, TypeError) as err:
            skipped.append(malformed(ANNOS, number, repr(ann)[:120], f"annotation {number}: {err}"))
            continue
        if not 1 <= class_id <= N_CLASSES:
            skipped.append({"path": path, "image_id": number, "class_id": class_id, "reason": "bad_class_id",
                            "detail": f"class {class_id} outside 1..{N_CLASSES}"})
            continue
        box = (x1 - 1.0, y1 - 1.0, x2, y2) if crop_to_bbox else None
        records.append(Record(image_id=number, path=path, class_id=class_id, box=box))
    return RawIndex(
        records=records,
        train_pool=TRAIN_CLASSES,
        test=TEST_CLASSES,
        class_ranges={"train_pool": class_range(TRAIN_CLASSES), "test": class_range(TEST_CLASSES)},
        index_files={ANNOS: sha256_bytes(annos_bytes)},
        skipped=skipped,
        n_entries=len(annotations),
    )


SPEC = DatasetSpec(
    name="cars196",
    title="CARS196",
    marker="car_ims/",
    archive_names=("car_ims.tgz", "car_ims.tar.gz", "car_ims.tar", "car_ims.zip"),
    env_var="SYMM_CARS196_ROOT",
    data_root_names=("cars196", "CARS196", "stanford_cars", "car_ims.tgz"),
    layout=LAYOUT,
    read_index=read_index,
    has_boxes=True,
)

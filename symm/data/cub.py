"""CUB-200-2011 reader: ``images.txt``, ``image_class_labels.txt``, ``bounding_boxes.txt``.

Split (method.md §1): classes 1-100 train (5,864 images), 101-200 test (5,924). Class ids are kept
as in ``image_class_labels.txt`` (1-based). Boxes (``<id> <x> <y> <w> <h>``, pixels) are read only
when ``crop_to_bbox`` is on (off by default: the DML literature uses full CUB images).
"""
from __future__ import annotations

from symm.data.base import DatasetSpec, RawIndex, Record, class_range, malformed, read_index_file
from symm.data.sources import Source

N_CLASSES = 200
TRAIN_CLASSES = list(range(1, 101))
TEST_CLASSES = list(range(101, 201))

LAYOUT = """\
Expected layout (CUB-200-2011, the CUB_200_2011.tgz archive or the folder it extracts to):
  CUB_200_2011/images.txt               <image_id> <class_folder>/<file>.jpg (relative to images/)
  CUB_200_2011/image_class_labels.txt   <image_id> <class_id 1..200>
  CUB_200_2011/bounding_boxes.txt       <image_id> <x> <y> <width> <height>   (only for crop_to_bbox)
  CUB_200_2011/classes.txt, CUB_200_2011/images/<NNN.Name>/<file>.jpg
Point --root, SYMM_CUB_ROOT or data.cub.root at the folder or at the .tgz. The dataset is
distributed by Caltech: https://www.vision.caltech.edu/datasets/cub_200_2011/ (this project never
downloads it)."""


def _parse_pairs(lines: list[str], file: str, value_type: type, n_values: int, skipped: list) -> dict[int, list]:
    out: dict[int, list] = {}
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 1 + n_values:
            skipped.append(malformed(file, no, line, f"expected {1 + n_values} fields, got {len(parts)}"))
            continue
        try:
            key = int(parts[0])
            values = [value_type(p) for p in parts[1:]]
        except ValueError:
            skipped.append(malformed(file, no, line, "not a number"))
            continue
        if key in out:
            skipped.append(malformed(file, no, line, f"duplicate image id {key}"))
            continue
        out[key] = values
    return out


def read_index(source: Source, *, crop_to_bbox: bool = False, root: object = None) -> RawIndex:
    index_files: dict[str, str] = {}
    skipped: list = []
    lines, index_files["images.txt"] = read_index_file(source, "images.txt", LAYOUT)
    labels_lines, index_files["image_class_labels.txt"] = read_index_file(source, "image_class_labels.txt", LAYOUT)
    paths = _parse_pairs(lines, "images.txt", str, 1, skipped)
    labels = _parse_pairs(labels_lines, "image_class_labels.txt", int, 1, skipped)
    boxes: dict[int, list] = {}
    if crop_to_bbox:
        box_lines, index_files["bounding_boxes.txt"] = read_index_file(source, "bounding_boxes.txt", LAYOUT)
        boxes = _parse_pairs(box_lines, "bounding_boxes.txt", float, 4, skipped)
    n_malformed_images = sum(1 for s in skipped if s["detail"].startswith("images.txt:"))

    records: list[Record] = []
    for image_id, (path,) in paths.items():
        if image_id not in labels:
            skipped.append({"path": path, "image_id": image_id, "class_id": None, "reason": "no_class_label",
                            "detail": f"image id {image_id} is not in image_class_labels.txt"})
            continue
        class_id = labels[image_id][0]
        if not 1 <= class_id <= N_CLASSES:
            skipped.append({"path": path, "image_id": image_id, "class_id": class_id, "reason": "bad_class_id",
                            "detail": f"class {class_id} outside 1..{N_CLASSES}"})
            continue
        box = None
        if crop_to_bbox:
            if image_id not in boxes:
                skipped.append({"path": path, "image_id": image_id, "class_id": class_id, "reason": "no_box",
                                "detail": f"image id {image_id} is not in bounding_boxes.txt"})
                continue
            x, y, w, h = boxes[image_id]
            box = (x, y, x + w, y + h)
        records.append(Record(image_id=image_id, path=f"images/{path}", class_id=class_id, box=box))
    records.sort(key=lambda r: r.image_id)
    return RawIndex(
        records=records,
        train_pool=TRAIN_CLASSES,
        test=TEST_CLASSES,
        class_ranges={"train_pool": class_range(TRAIN_CLASSES), "test": class_range(TEST_CLASSES)},
        index_files=index_files,
        skipped=skipped,
        n_entries=len(paths) + n_malformed_images,
    )


SPEC = DatasetSpec(
    name="cub",
    title="CUB-200-2011",
    marker="images.txt",
    archive_names=("CUB_200_2011.tgz", "CUB_200_2011.tar.gz", "CUB_200_2011.tar", "CUB_200_2011.zip"),
    env_var="SYMM_CUB_ROOT",
    data_root_names=("CUB_200_2011", "CUB_200_2011.tgz", "CUB_200_2011.tar.gz", "cub"),
    layout=LAYOUT,
    read_index=read_index,
    has_boxes=True,
)

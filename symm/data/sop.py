"""Stanford Online Products reader: ``Ebay_train.txt`` / ``Ebay_test.txt``.

Split (method.md §1): the two files *are* the split — 11,318 training classes (59,551 images),
11,316 test classes (60,502). Each file has a header line, then ``image_id class_id
super_class_id path``. Class ids are kept as written (1..22,634). Many classes have only 2-12
images; that is why the samplers handle small classes explicitly.
"""
from __future__ import annotations

from typing import Any

from symm.data.base import DatasetSpec, RawIndex, Record, class_range, malformed, read_index_file
from symm.data.sources import DatasetNotFound, Source

LAYOUT = """\
Expected layout (Stanford_Online_Products.zip or the folder it extracts to):
  Stanford_Online_Products/Ebay_train.txt   header, then: image_id class_id super_class_id path
  Stanford_Online_Products/Ebay_test.txt    same columns
  Stanford_Online_Products/<super_class>_final/<file>.JPG
Point --root, SYMM_SOP_ROOT or data.sop.root at the folder or at the .zip (read in place, not
extracted). The dataset is distributed by Stanford: https://cvgl.stanford.edu/projects/lifted_struct/
(this project never downloads it)."""

HEADER = ["image_id", "class_id", "super_class_id", "path"]


def _parse(lines: list[str], file: str, skipped: list[dict[str, Any]]) -> tuple[list[Record], int]:
    records: list[Record] = []
    n_entries = 0
    seen: set[int] = set()
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if no == 1 and [p.lower() for p in parts] == HEADER:
            continue
        n_entries += 1
        if len(parts) != 4:
            skipped.append(malformed(file, no, line, f"expected 4 fields, got {len(parts)}"))
            continue
        try:
            image_id, class_id = int(parts[0]), int(parts[1])
            int(parts[2])
        except ValueError:
            skipped.append(malformed(file, no, line, "not a number"))
            continue
        if image_id in seen:
            skipped.append(malformed(file, no, line, f"duplicate image id {image_id}"))
            continue
        seen.add(image_id)
        records.append(Record(image_id=image_id, path=parts[3], class_id=class_id))
    return records, n_entries


def read_index(source: Source, *, crop_to_bbox: bool = False, root: object = None) -> RawIndex:
    if crop_to_bbox:
        raise ValueError("SOP has no bounding boxes: set data.sop.crop_to_bbox to false")
    skipped: list[dict[str, Any]] = []
    index_files: dict[str, str] = {}
    train_lines, index_files["Ebay_train.txt"] = read_index_file(source, "Ebay_train.txt", LAYOUT)
    test_lines, index_files["Ebay_test.txt"] = read_index_file(source, "Ebay_test.txt", LAYOUT)
    train, n_train = _parse(train_lines, "Ebay_train.txt", skipped)
    test, n_test = _parse(test_lines, "Ebay_test.txt", skipped)
    train_classes = sorted({r.class_id for r in train})
    test_classes = sorted({r.class_id for r in test})
    overlap = set(train_classes) & set(test_classes)
    if overlap:
        raise DatasetNotFound(
            f"Ebay_train.txt and Ebay_test.txt share {len(overlap)} class ids (e.g. {sorted(overlap)[:5]}); "
            f"the SOP split must be class-disjoint - are the index files from the same release?\n{LAYOUT}"
        )
    ids = [r.image_id for r in train] + [r.image_id for r in test]
    if len(set(ids)) != len(ids):
        raise DatasetNotFound(f"an image id appears in both Ebay_train.txt and Ebay_test.txt.\n{LAYOUT}")
    return RawIndex(
        records=train + test,
        train_pool=train_classes,
        test=test_classes,
        class_ranges={"train_pool": class_range(train_classes), "test": class_range(test_classes)},
        index_files=index_files,
        skipped=skipped,
        n_entries=n_train + n_test,
    )


SPEC = DatasetSpec(
    name="sop",
    title="Stanford Online Products",
    marker="Ebay_train.txt",
    archive_names=("Stanford_Online_Products.zip", "Stanford_Online_Products.tar.gz", "Stanford_Online_Products.tgz"),
    env_var="SYMM_SOP_ROOT",
    data_root_names=("Stanford_Online_Products", "Stanford_Online_Products.zip", "sop"),
    layout=LAYOUT,
    read_index=read_index,
    has_boxes=False,
)

"""Tiny fake datasets in the exact official layouts of CUB-200-2011, CARS196 and SOP.

For tests and benchmarks only: the real archives are never downloaded. Each builder writes
generated JPEGs plus the index files the real release has, and can plant the defects prepare must
survive: a corrupt JPEG, a truncated JPEG, a listed-but-missing file, a truncated index line and
a class with a single image. Images are a noisy colour field with the object's box drawn in a
second colour, so a crop to the box is visible in the pixels. Returns a description of what was
planted (for the tests' expected counts).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BOX_COLOUR = (235, 225, 215)
BACKGROUND = (30, 40, 60)


@dataclass
class FakeInfo:
    root: Path                                   # what to pass as --root
    classes: list[int]
    n_listed: int                                # index entries (including broken ones)
    n_good: int                                  # images prepare should pack
    per_class: dict[int, int] = field(default_factory=dict)   # good images per class
    defects: dict[str, int] = field(default_factory=dict)     # reason -> count


def fake_jpeg(rng: np.random.Generator, width: int, height: int,
              box: tuple[int, int, int, int] | None = None, quality: int = 90, smooth: bool = False) -> bytes:
    """A JPEG: noisy background colour, the box (left, top, right, bottom) in BOX_COLOUR."""
    from PIL import Image

    if smooth:  # natural-image-like statistics (realistic JPEG size and decode cost)
        coarse = rng.integers(0, 256, size=(height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
        img += rng.integers(-12, 13, size=img.shape, dtype=np.int16)
    else:
        img = np.empty((height, width, 3), dtype=np.int16)
        img[:] = BACKGROUND
        img += rng.integers(-8, 9, size=img.shape, dtype=np.int16)
    if box is not None:
        left, top, right, bottom = box
        img[top:bottom, left:right] = BOX_COLOUR
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _box_for(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    left = int(rng.integers(2, width // 4))
    top = int(rng.integers(2, height // 4))
    return left, top, int(rng.integers(width // 2, width - 2)), int(rng.integers(height // 2, height - 2))


def make_fake_cub(
    parent: Path,
    classes: tuple[int, ...] = (1, 2, 3, 4, 5, 101, 102, 103),
    per_class: int = 3,
    size: tuple[int, int] = (64, 48),
    defects: bool = True,
    seed: int = 0,
    smooth: bool = False,
) -> FakeInfo:
    """``parent/CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, bounding_boxes.txt, images/}``.

    Defects (``defects=True``): class ``classes[0]`` gets one extra corrupt JPEG and one extra
    listed-but-missing file; class ``classes[1]`` an extra truncated JPEG; one extra
    ``images.txt`` line is truncated (id only); class ``classes[-1]`` has a single image.
    """
    rng = np.random.default_rng(seed)
    top = Path(parent) / "CUB_200_2011"
    (top / "images").mkdir(parents=True, exist_ok=True)
    images, labels, boxes, names = [], [], [], []
    info = FakeInfo(root=top, classes=list(classes), n_listed=0, n_good=0)
    image_id = 0
    for c in classes:
        folder = f"{c:03d}.Bird_{c}"
        names.append(f"{c} {folder}")
        (top / "images" / folder).mkdir(exist_ok=True)
        n = 1 if (defects and c == classes[-1]) else per_class
        for k in range(n):
            image_id += 1
            w, h = size
            box = _box_for(rng, w, h)
            rel = f"{folder}/Bird_{c}_{k:04d}.jpg"
            (top / "images" / rel).write_bytes(fake_jpeg(rng, w, h, box, smooth=smooth))
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            boxes.append(f"{image_id} {box[0]}.0 {box[1]}.0 {box[2] - box[0]}.0 {box[3] - box[1]}.0")
        info.per_class[c] = n
        info.n_good += n
    if defects:
        c0, c1 = classes[0], classes[1]
        folder0, folder1 = f"{c0:03d}.Bird_{c0}", f"{c1:03d}.Bird_{c1}"
        image_id += 1  # corrupt: not a JPEG at all
        (top / "images" / folder0 / "corrupt.jpg").write_bytes(b"this is not a jpeg" * 10)
        images.append(f"{image_id} {folder0}/corrupt.jpg")
        labels.append(f"{image_id} {c0}")
        boxes.append(f"{image_id} 1 1 10 10")
        image_id += 1  # listed but missing
        images.append(f"{image_id} {folder0}/missing.jpg")
        labels.append(f"{image_id} {c0}")
        boxes.append(f"{image_id} 1 1 10 10")
        image_id += 1  # truncated JPEG: header and half the data
        data = fake_jpeg(rng, *size)
        (top / "images" / folder1 / "truncated.jpg").write_bytes(data[: len(data) // 2])
        images.append(f"{image_id} {folder1}/truncated.jpg")
        labels.append(f"{image_id} {c1}")
        boxes.append(f"{image_id} 1 1 10 10")
        image_id += 1  # truncated index line
        images.append(f"{image_id}")
        labels.append(f"{image_id} {c1}")
        boxes.append(f"{image_id} 1 1 10 10")
        info.defects = {"unreadable": 2, "missing": 1, "malformed_index_line": 1}
    info.n_listed = len(images)
    (top / "images.txt").write_text("\n".join(images) + "\n")
    (top / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (top / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (top / "classes.txt").write_text("\n".join(names) + "\n")
    return info


def make_fake_cars196(
    parent: Path,
    classes: tuple[int, ...] = (1, 2, 3, 4, 5, 99, 100, 101),
    per_class: int = 3,
    size: tuple[int, int] = (80, 48),
    defects: bool = True,
    seed: int = 0,
) -> FakeInfo:
    """``parent/cars196/{cars_annos.mat, car_ims/000001.jpg ...}`` (mat written with scipy).

    Defects: one corrupt JPEG (class ``classes[0]``), one missing file (``classes[1]``), and the
    ``test`` flag set at random (it must be ignored: the split is by class).
    """
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    top = Path(parent) / "cars196"
    (top / "car_ims").mkdir(parents=True, exist_ok=True)
    rows: list[tuple] = []
    info = FakeInfo(root=top, classes=list(classes), n_listed=0, n_good=0)
    number = 0
    for c in classes:
        for _ in range(per_class):
            number += 1
            w, h = size
            box = _box_for(rng, w, h)
            rel = f"car_ims/{number:06d}.jpg"
            (top / rel).write_bytes(fake_jpeg(rng, w, h, box))
            # the mat file's boxes are 1-based and inclusive
            rows.append((rel, box[0] + 1, box[1] + 1, box[2], box[3], c, int(rng.integers(0, 2))))
        info.per_class[c] = per_class
        info.n_good += per_class
    if defects:
        number += 1
        rel = f"car_ims/{number:06d}.jpg"
        (top / rel).write_bytes(b"\xff\xd8\xff\xe0 garbage")
        rows.append((rel, 1, 1, 10, 10, classes[0], 0))
        number += 1
        rows.append((f"car_ims/{number:06d}.jpg", 1, 1, 10, 10, classes[1], 1))
        info.defects = {"unreadable": 1, "missing": 1}
    info.n_listed = len(rows)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        annotations[0, i] = (
            np.array([row[0]]),
            *(np.array([[v]], dtype=np.uint16 if k < 4 else np.uint8) for k, v in enumerate(row[1:5])),
            np.array([[row[5]]], dtype=np.uint8),
            np.array([[row[6]]], dtype=np.uint8),
        )
    class_names = np.zeros((1, max(classes)), dtype=object)
    for c in range(1, max(classes) + 1):
        class_names[0, c - 1] = f"Car Model {c}"
    savemat(top / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return info


def make_fake_sop(
    parent: Path,
    train_classes: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
    test_classes: tuple[int, ...] = (7, 8, 9),
    per_class: tuple[int, ...] = (2, 3, 4, 5),
    size: tuple[int, int] = (60, 60),
    defects: bool = True,
    seed: int = 0,
) -> FakeInfo:
    """``parent/Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <super>_final/*.JPG}``.

    Classes get 2-5 images (cycling ``per_class``), like SOP's small classes. Defects: one
    truncated index line in Ebay_train.txt, one corrupt JPEG, one missing file.
    """
    rng = np.random.default_rng(seed)
    top = Path(parent) / "Stanford_Online_Products"
    supers = ["bicycle", "chair", "lamp"]
    for s in supers:
        (top / f"{s}_final").mkdir(parents=True, exist_ok=True)
    info = FakeInfo(root=top, classes=[*train_classes, *test_classes], n_listed=0, n_good=0)
    image_id = 0
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for part, cls in (("train", train_classes), ("test", test_classes)):
        for k, c in enumerate(cls):
            s = supers[c % len(supers)]
            n = per_class[k % len(per_class)]
            for j in range(n):
                image_id += 1
                rel = f"{s}_final/{100000 + c}_{j}.JPG"
                (top / rel).write_bytes(fake_jpeg(rng, *size))
                lines[part].append(f"{image_id} {c} {supers.index(s) + 1} {rel}")
            info.per_class[c] = n
            info.n_good += n
    if defects:
        c = train_classes[0]
        image_id += 1
        (top / "bicycle_final" / "corrupt.JPG").write_bytes(b"\x00" * 100)
        lines["train"].append(f"{image_id} {c} 1 bicycle_final/corrupt.JPG")
        image_id += 1
        lines["train"].append(f"{image_id} {c} 1 bicycle_final/missing.JPG")
        image_id += 1
        lines["train"].append(f"{image_id} {c} 1")  # truncated line
        info.defects = {"unreadable": 1, "missing": 1, "malformed_index_line": 1}
    header = "image_id class_id super_class_id path"
    (top / "Ebay_train.txt").write_text("\n".join([header, *lines["train"]]) + "\n")
    (top / "Ebay_test.txt").write_text("\n".join([header, *lines["test"]]) + "\n")
    info.n_listed = len(lines["train"]) + len(lines["test"])
    return info

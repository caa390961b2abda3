"""Prepare a real image dataset (CUB-200-2011, CARS196, SOP) into the packed format.

``prepare_image_dataset`` is what the DVC stage ``prepare@<dataset>`` runs:

1. find the dataset (folder, parent folder, or unextracted archive; :mod:`symm.data.sources`);
2. read the official index (:mod:`symm.data.cub`, ``cars196``, ``sop``) and split the classes:
   the official training half minus ``val_classes`` classes held out for model selection
   (seeded choice) -> train / val; the official test half -> test;
3. decode every image (worker processes, results consumed in index order so the output does not
   depend on the number of workers), optionally crop it to its box, convert to RGB, shrink it so
   its short side is ``short_side`` (never enlarged; Pillow bicubic with antialiasing; large
   JPEGs are first reduced in the DCT domain to no less than twice the target), and append it
   to the split's packed file (:mod:`symm.data.packed`);
4. skip what cannot be used - a missing file, an undecodable or truncated image, an empty box, a
   malformed index line - recording each with its reason. If more than ``max_skipped_fraction``
   of the index entries were skipped, stop with an error and leave any previous output untouched;
5. write ``manifest.json`` last: counts and class ids per split, the official class ranges,
   classes with fewer than 2 images, the skipped entries, the parameters and sha256 of every
   output file and of the source index files and image bytes. No timestamps or absolute paths,
   so unchanged inputs give byte-identical outputs (a no-op for DVC).

EXIF orientation is ignored (the images are used as stored, like the official release and
torchvision's loaders).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from symm.data.base import DatasetSpec, RawIndex, Record, sha256_bytes
from symm.data.packed import CODECS, FORMAT, FORMAT_VERSION, SPLITS, SplitWriter, write_bytes_atomic
from symm.data.sources import DatasetNotFound, Source, open_source

MIN_SIDE = 8
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # smaller images (after the box crop) are skipped as "too_small"


class TooManySkipped(ValueError):
    pass


class _Skip(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# --------------------------------------------------------------------------------------------
# Finding the root
# --------------------------------------------------------------------------------------------


def resolve_root(spec: DatasetSpec, root: Path | str | None, settings_root: str | None) -> Path:
    """Where the raw dataset lies: ``--root`` > ``$SYMM_<NAME>_ROOT`` > ``data.<name>.root`` >
    ``$SYMM_DATA_ROOT/<usual name>``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(spec.env_var):
        return Path(os.environ[spec.env_var]).expanduser()
    if settings_root:
        return Path(settings_root).expanduser()
    data_root = os.environ.get("SYMM_DATA_ROOT")
    if data_root:
        for name in spec.data_root_names:
            candidate = Path(data_root).expanduser() / name
            if candidate.exists():
                return candidate
        raise DatasetNotFound(
            f"SYMM_DATA_ROOT={data_root} holds none of {', '.join(spec.data_root_names)} for {spec.title}.\n"
            f"{spec.layout}"
        )
    raise DatasetNotFound(
        f"no location given for {spec.title}: pass --root PATH, or set {spec.env_var}=PATH, or "
        f"data.{spec.name}.root in params.yaml, or SYMM_DATA_ROOT=<folder holding "
        f"{spec.data_root_names[0]}>.\n{spec.layout}"
    )


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def split_classes(train_pool: list[int], test: list[int], val_classes: int, seed: int) -> dict[str, list[int]]:
    """Official train half minus ``val_classes`` seeded-random classes; official test half."""
    if not 0 <= val_classes <= len(train_pool) - 2:
        raise ValueError(
            f"val_classes={val_classes} must be between 0 and {len(train_pool) - 2} (the training half has "
            f"{len(train_pool)} classes and training needs at least 2)"
        )
    perm = np.random.default_rng(seed).permutation(np.asarray(train_pool, dtype=np.int64))
    val = sorted(int(c) for c in perm[:val_classes])
    val_set = set(val)
    return {"train": [c for c in sorted(train_pool) if c not in val_set], "val": val, "test": sorted(test)}


# --------------------------------------------------------------------------------------------
# One image (runs in worker processes)
# --------------------------------------------------------------------------------------------


def process_image(data: bytes, box: tuple[float, float, float, float] | None, short_side: int,
                  storage: str, jpeg_quality: int) -> tuple[bytes, int, int]:
    """Decode, crop, convert to RGB, shrink; return (payload, height, width). Raises _Skip."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning etc.: judged below
            im = Image.open(io.BytesIO(data))
            width0, height0 = im.size
            region = (box[2] - box[0], box[3] - box[1]) if box is not None else (width0, height0)
            if im.format == "JPEG" and min(region) > 0:
                # DCT-domain reduction (fast) down to no less than 2x the final size
                scale = min(1.0, 2.0 * short_side / min(region))
                if scale <= 0.5:
                    im.draft("RGB", (math.ceil(width0 * scale), math.ceil(height0 * scale)))
            im.load()
            im = im.convert("RGB")
    except Exception as err:  # PIL raises many types for corrupt/truncated files
        # no object addresses in the manifest ("<_io.BytesIO object at 0x7f..>"): it must be deterministic
        message = _ADDRESS.sub("<image bytes>", str(err))
        raise _Skip("unreadable", f"{type(err).__name__}: {message}") from None
    if box is not None:
        sx, sy = im.size[0] / width0, im.size[1] / height0
        left = max(0, math.floor(box[0] * sx))
        top = max(0, math.floor(box[1] * sy))
        right = min(im.size[0], math.ceil(box[2] * sx))
        bottom = min(im.size[1], math.ceil(box[3] * sy))
        if right - left < MIN_SIDE or bottom - top < MIN_SIDE:
            raise _Skip("bad_box", f"box {tuple(round(v, 1) for v in box)} is empty or tiny in a "
                                   f"{width0}x{height0} image")
        im = im.crop((left, top, right, bottom))
    w, h = im.size
    if min(w, h) < MIN_SIDE:
        raise _Skip("too_small", f"{w}x{h} pixels")
    if min(w, h) > short_side:
        if w <= h:
            size = (short_side, max(1, round(h * short_side / w)))
        else:
            size = (max(1, round(w * short_side / h)), short_side)
        im = im.resize(size, Image.Resampling.BICUBIC)
        w, h = im.size
    if storage == "raw":
        payload = np.asarray(im, dtype=np.uint8).tobytes()
    else:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=jpeg_quality, subsampling=2, optimize=False)
        payload = buf.getvalue()
    return payload, h, w


_WORKER: dict[str, Any] = {}


def _init_worker(source: Source, options: dict[str, Any]) -> None:
    _WORKER["source"], _WORKER["options"] = source, options


def _work(record: Record) -> tuple:
    source: Source = _WORKER["source"]
    opts = _WORKER["options"]
    try:
        data = source.read_bytes(record.path)
    except (FileNotFoundError, KeyError):
        return ("skip", "missing", f"{record.path} not found", None)
    except OSError as err:  # strerror only: the full message may hold a machine-specific path
        return ("skip", "unreadable", f"{type(err).__name__}: {err.strerror or 'read error'}", None)
    digest = sha256_bytes(data)
    try:
        payload, h, w = process_image(data, record.box, **opts)
    except _Skip as skip:
        return ("skip", skip.reason, skip.detail, digest)
    return ("ok", payload, h, w, digest)


# --------------------------------------------------------------------------------------------
# The whole dataset
# --------------------------------------------------------------------------------------------


def _validate(short_side: int, storage: str, jpeg_quality: int, max_skipped_fraction: float) -> None:
    if short_side < 32:
        raise ValueError(f"short_side={short_side} is too small; use >= 32 (default 256)")
    if storage not in CODECS:
        raise ValueError(f"storage must be one of {CODECS}, got {storage!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if not 0.0 <= max_skipped_fraction <= 1.0:
        raise ValueError(f"max_skipped_fraction must be in [0, 1], got {max_skipped_fraction}")


def _skip_summary(skipped: list[dict[str, Any]], limit: int = 8) -> str:
    lines = [f"{s['reason']}: {s['path'] or ''} {s['detail']}".strip() for s in skipped[:limit]]
    more = f"\n  ... and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return "\n  ".join(lines) + more


def _clean_leftovers(out: Path) -> None:
    """Temporary files and extraction folders of an interrupted earlier run."""
    for p in out.glob(".*.tmp"):
        p.unlink(missing_ok=True)
    for p in out.glob(".extract-*"):
        shutil.rmtree(p, ignore_errors=True)


def prepare_image_dataset(
    spec: DatasetSpec,
    out_dir: Path | str,
    *,
    root: Path | str,
    short_side: int = 256,
    crop_to_bbox: bool = False,
    val_classes: int = 20,
    seed: int = 0,
    storage: str = "raw",
    jpeg_quality: int = 95,
    max_skipped_fraction: float = 0.01,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare ``spec``'s dataset found at ``root`` into ``out_dir``; return the manifest."""
    from PIL import __version__ as pillow_version

    _validate(short_side, storage, jpeg_quality, max_skipped_fraction)
    if crop_to_bbox and not spec.has_boxes:
        raise ValueError(f"{spec.title} has no bounding boxes: set data.{spec.name}.crop_to_bbox to false")
    workers = max(1, workers if workers is not None else min(os.cpu_count() or 1, 8))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out)
    t0 = time.perf_counter()
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)

    with open_source(Path(root), spec.marker, scratch_parent=out, what=spec.layout,
                     archive_names=spec.archive_names) as source:
        log(f"{spec.name}: reading {source.description}")
        index: RawIndex = spec.read_index(source, crop_to_bbox=crop_to_bbox, root=Path(root))
        if index.n_entries == 0:
            raise DatasetNotFound(f"the index of {spec.title} in {source.description} lists no images.\n{spec.layout}")
        # validation classes are drawn among the training classes the index actually lists
        listed = {r.class_id for r in index.records}
        classes = split_classes([c for c in index.train_pool if c in listed], index.test, val_classes, seed)
        split_of = {c: s for s in SPLITS for c in classes[s]}
        split_of.update({c: "train" for c in index.train_pool if c not in split_of})
        skipped: list[dict[str, Any]] = [{"split": None, **s} for s in index.skipped]
        per_split: dict[str, list[Record]] = {s: [] for s in SPLITS}
        for rec in index.records:
            per_split[split_of[rec.class_id]].append(rec)

        # fail fast when the root is wrong (most listed files absent) before decoding anything
        missing = [r for r in index.records if not source.exists(r.path)]
        if len(missing) > max_skipped_fraction * index.n_entries and missing:
            raise TooManySkipped(
                f"{len(missing)} of {index.n_entries} images listed by the index are missing in "
                f"{source.description} (e.g. {missing[0].path}); max_skipped_fraction="
                f"{max_skipped_fraction}. Is the root the complete dataset?\n{spec.layout}"
            )

        options = {"short_side": short_side, "storage": storage, "jpeg_quality": jpeg_quality}
        writers: dict[str, SplitWriter] = {}
        files: dict[str, dict[str, Any]] = {}
        source_hash = hashlib.sha256()
        pool = None
        try:
            if workers > 1:
                pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, (source, options))

                def run(recs: list[Record]) -> Any:
                    # ordered results; submitted in blocks so finished images never pile up in memory
                    for start in range(0, len(recs), 512):
                        yield from pool.imap(_work, recs[start : start + 512], chunksize=8)
            else:
                _init_worker(source, options)

                def run(recs: list[Record]) -> Any:
                    return map(_work, recs)
            for split in SPLITS:
                records = per_split[split]
                writer = writers[split] = SplitWriter(out, split)
                bar = _progress(len(records), f"{spec.name} {split}", progress)
                for rec, result in zip(records, run(records)):
                    if result[0] == "ok":
                        _, payload, h, w, digest = result
                        writer.add(payload, h, w, rec.class_id, rec.image_id, rec.path)
                        source_hash.update(f"{rec.path}\0{digest}\n".encode())
                    else:
                        _, reason, detail, digest = result
                        skipped.append({"path": rec.path, "image_id": rec.image_id, "class_id": rec.class_id,
                                        "reason": reason, "detail": detail, "split": split})
                        if digest is not None:
                            source_hash.update(f"{rec.path}\0{digest}\n".encode())
                    bar.update(1)
                bar.close()
                files.update(writer.finish())
            n_packed = sum(len(w.labels) for w in writers.values())
            n_lost = index.n_entries - n_packed
            if n_lost > max_skipped_fraction * index.n_entries:
                raise TooManySkipped(
                    f"{spec.title}: {n_lost} of {index.n_entries} index entries could not be used "
                    f"({n_lost / index.n_entries:.2%} > max_skipped_fraction={max_skipped_fraction:.2%}); "
                    f"nothing was written. First ones:\n  {_skip_summary(skipped)}\n"
                    f"Fix or re-extract the dataset, or raise data.{spec.name}.max_skipped_fraction."
                )
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        source_desc = source.description

    counts: dict[str, dict[str, int]] = {}
    class_ids: dict[str, list[int]] = {}
    below_two: dict[str, list[int]] = {}
    without_images: dict[str, list[int]] = {}
    for split in SPLITS:
        labels = np.asarray(writers[split].labels, dtype=np.int64)
        ids, n = np.unique(labels, return_counts=True)
        class_ids[split] = ids.tolist()
        counts[split] = {"images": int(len(labels)), "classes": int(len(ids))}
        below_two[split] = ids[n < 2].tolist()
    official = {"train": sorted(set(index.train_pool) - set(classes["val"])), "val": classes["val"], "test": index.test}
    for split in SPLITS:
        without_images[split] = sorted(set(official[split]) - set(class_ids[split]))
    by_reason = Counter(s["reason"] for s in skipped)
    manifest: dict[str, Any] = {
        "dataset": spec.name,
        "title": spec.title,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "parameters": {
            "short_side": short_side,
            "crop_to_bbox": crop_to_bbox,
            "val_classes": val_classes,
            "seed": seed,
            "storage": storage,
            "jpeg_quality": jpeg_quality if storage == "jpeg" else None,
            "max_skipped_fraction": max_skipped_fraction,
            "resize": "shrink so the short side is short_side (never enlarge), Pillow bicubic; JPEG draft to >= 2x",
            "color": "RGB",
            "exif_orientation": "ignored",
            "pillow": pillow_version,
        },
        "class_id_base": "official ids as in the dataset's index files (1-based)",
        "class_ranges": index.class_ranges,
        "class_ids": class_ids,
        "counts": counts,
        "n_index_entries": index.n_entries,
        "n_images": int(sum(c["images"] for c in counts.values())),
        "n_skipped": index.n_entries - int(sum(c["images"] for c in counts.values())),
        "skipped_by_reason": dict(sorted(by_reason.items())),
        "skipped": skipped,
        "classes_below_2_images": below_two,
        "classes_without_images": without_images,
        "source": {"index_files": dict(sorted(index.index_files.items())), "images_sha256": source_hash.hexdigest()},
        "files": dict(sorted(files.items())),
    }
    # commit: drop the old manifest first, so a crash in between never leaves a manifest that
    # describes other files than the ones present
    (out / "manifest.json").unlink(missing_ok=True)
    for w in writers.values():
        w.commit()
    text = manifest_text(manifest)
    write_bytes_atomic(out / "manifest.json", text.encode("utf-8"))

    dt = time.perf_counter() - t0
    log(
        f"{spec.name}: {manifest['n_images']} images from {source_desc} in {dt:.1f}s "
        f"({1000 * dt / max(1, index.n_entries):.1f} s per 1,000) -> "
        + ", ".join(f"{s} {counts[s]['images']} img/{counts[s]['classes']} cl" for s in SPLITS)
        + (f"; skipped {manifest['n_skipped']} ({dict(by_reason)})" if skipped else "")
    )
    for split in SPLITS:
        if below_two[split]:
            log(f"{spec.name}: {split} has {len(below_two[split])} classes with a single image "
                f"(excluded from pair sampling): {below_two[split][:10]}")
    return manifest


# --------------------------------------------------------------------------------------------
# The params.yaml entry point
# --------------------------------------------------------------------------------------------

# keys of data.<name> in params.yaml; `augmentation` is read by the trainer, not by prepare
SETTINGS_KEYS = {"root", "short_side", "crop_to_bbox", "val_classes", "seed", "storage", "jpeg_quality",
                 "max_skipped_fraction", "augmentation"}


def real_dataset_specs() -> dict[str, DatasetSpec]:
    from symm.data import cars196, cub, sop

    return {s.name: s for s in (cub.SPEC, cars196.SPEC, sop.SPEC)}


def prepare_from_settings(name: str, out_dir: Path | str, settings: dict[str, Any], *, root: Path | str | None = None,
                          workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """``prepare_image_dataset`` driven by the ``data.<name>`` section of params.yaml."""
    specs = real_dataset_specs()
    if name not in specs:
        raise ValueError(f"unknown image dataset {name!r}; known: {sorted(specs)}")
    unknown = sorted(set(settings) - SETTINGS_KEYS)
    if unknown:
        raise ValueError(f"data.{name} has unknown keys {unknown} (typo?); allowed: {sorted(SETTINGS_KEYS)}")
    if "augmentation" in settings:
        from symm.data.augment import get_preset

        get_preset(settings["augmentation"])  # unknown preset -> ValueError naming the known ones
    spec = specs[name]
    options = {k: v for k, v in settings.items() if k not in ("root", "augmentation")}
    return prepare_image_dataset(spec, out_dir, root=resolve_root(spec, root, settings.get("root")),
                                 workers=workers, progress=progress, **options)


_NUMBER_LIST = re.compile(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]")


def manifest_text(manifest: dict[str, Any]) -> str:
    """Sorted, indented JSON with lists of numbers kept on one line (SOP has 22,634 class ids)."""
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]", text) + "\n"


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from symm.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="img")

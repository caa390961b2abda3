"""CUB-200-2011, CARS196 and SOP: readers, prepare, the packed format, loaders and samplers.

Every test builds tiny fake datasets in the exact official layouts (symm.data.fakes: generated
JPEGs, the real index files, a cars_annos.mat written with scipy) with planted defects - a corrupt
JPEG, a truncated JPEG, a listed-but-missing file, a truncated index line, a one-image class.
The references are the official split rules of method.md §1 and the planted defects.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from symm.data import packed
from symm.data.augment import OfficialTrain, StandardEval, StandardTrain, get_preset
from symm.data.build import TooManySkipped, prepare_from_settings, split_classes
from symm.data.fakes import BACKGROUND, BOX_COLOUR, make_fake_cars196, make_fake_cub, make_fake_sop
from symm.data.loaders import make_eval_loader, make_train_loader, read_labels
from symm.data.packed import PackedSplit, PreparedDataMismatch, verify_prepared
from symm.data.prepared import load_split
from symm.data.sources import DatasetNotFound
from symm.samplers import MPerClassBatchSampler, NPairBatchSampler

SPLITS = ("train", "val", "test")
BASE = {"short_side": 40, "val_classes": 1, "seed": 0, "storage": "raw", "max_skipped_fraction": 0.5}


def prepare(name: str, out: Path, root: Path, **overrides) -> dict:
    return prepare_from_settings(name, out, {**BASE, **overrides}, root=root, workers=1, progress=False)


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory):
    raw = tmp_path_factory.mktemp("cub_raw")
    info = make_fake_cub(raw)
    out = tmp_path_factory.mktemp("cub_out")
    return info, out, prepare("cub", out, info.root)


# ------------------------------------------------------------------------------- counts & split


def test_cub_counts_split_and_skipped(cub) -> None:
    info, out, m = cub
    assert m["dataset"] == "cub" and m["format"] == packed.FORMAT
    assert m["n_index_entries"] == info.n_listed
    assert m["n_images"] == info.n_good == sum(m["counts"][s]["images"] for s in SPLITS)
    assert m["skipped_by_reason"] == info.defects
    assert m["n_skipped"] == sum(info.defects.values())
    assert all(s["reason"] and s["detail"] for s in m["skipped"])
    assert any("images.txt:" in s["detail"] for s in m["skipped"] if s["reason"] == "malformed_index_line")
    # official split: classes 1-100 -> train pool (val held out of it), 101-200 -> test
    ids = {s: set(m["class_ids"][s]) for s in SPLITS}
    assert ids["train"] | ids["val"] == {c for c in info.classes if c <= 100}
    assert ids["test"] == {c for c in info.classes if c > 100}
    assert len(ids["val"]) == 1 and not ids["train"] & ids["val"]
    assert m["class_ranges"] == {"train_pool": [1, 100], "test": [101, 200]}
    assert m["classes_below_2_images"]["test"] == [info.classes[-1]]
    for split in SPLITS:
        s = PackedSplit(out, split)
        assert len(s) == m["counts"][split]["images"]
        for c in np.unique(s.labels):
            assert (s.labels == c).sum() == info.per_class[int(c)]
        for i in range(len(s)):
            img = s.image(i)
            assert img.dtype == torch.uint8 and img.shape[0] == 3
            assert min(img.shape[1:]) == 40  # 64x48 shrunk to short side 40
    assert not list(out.glob(".*")), "temporary files left behind"


def test_manifest_hashes_match_files(cub) -> None:
    _, out, m = cub
    assert set(m["files"]) == {f"{s}.{k}" for s in SPLITS for k in ("images.bin", "index.npz")}
    for name, rec in m["files"].items():
        data = (out / name).read_bytes()
        assert len(data) == rec["bytes"] and hashlib.sha256(data).hexdigest() == rec["sha256"]
    assert set(m["source"]["index_files"]) == {"images.txt", "image_class_labels.txt"}
    assert verify_prepared(out, full=True) == m


def test_val_classes_are_a_seeded_subset_of_the_training_half() -> None:
    pool, test = list(range(1, 101)), list(range(101, 201))
    a = split_classes(pool, test, 20, seed=0)
    assert a == split_classes(pool, test, 20, seed=0) and a != split_classes(pool, test, 20, seed=1)
    assert len(a["val"]) == 20 and sorted(a["train"] + a["val"]) == pool and a["test"] == test
    with pytest.raises(ValueError, match="val_classes=99"):
        split_classes(pool, test, 99, seed=0)


def test_cars196_split_by_class_not_test_flag_and_bbox_crop(tmp_path: Path) -> None:
    info = make_fake_cars196(tmp_path / "raw")
    full = prepare("cars196", tmp_path / "full", info.root)
    ids = {s: set(full["class_ids"][s]) for s in SPLITS}
    assert ids["train"] | ids["val"] == {c for c in info.classes if c <= 98}
    assert ids["test"] == {c for c in info.classes if c >= 99}
    assert full["skipped_by_reason"] == info.defects and full["n_images"] == info.n_good
    assert full["source"]["index_files"].keys() == {"cars_annos.mat"}

    crop = prepare("cars196", tmp_path / "crop", info.root, crop_to_bbox=True, short_side=256)
    assert crop["parameters"]["crop_to_bbox"] is True
    full_split, crop_split = PackedSplit(tmp_path / "full", "test"), PackedSplit(tmp_path / "crop", "test")
    box, bg = torch.tensor(BOX_COLOUR).view(3, 1), torch.tensor(BACKGROUND).view(3, 1)
    for i in range(len(crop_split)):
        cropped = crop_split.image(i).reshape(3, -1).float()
        whole = full_split.image(i).reshape(3, -1).float()
        # every pixel of the crop is the box colour (JPEG noise aside); the full image shows background too
        assert (cropped - box).abs().amax(0).float().quantile(0.9) < 40
        assert ((whole - bg).abs().amax(0) < 40).float().mean() > 0.2
    # the 1-based inclusive mat box (x1, y1, x2, y2) becomes a (x2 - x1 + 1) x (y2 - y1 + 1) crop
    from scipy.io import loadmat

    ann = loadmat(info.root / "cars_annos.mat", squeeze_me=True)["annotations"]
    first = ann[0]
    h, w = (int(v) for v in PackedSplit(tmp_path / "crop", "train").shapes[0])
    assert (w, h) == (int(first["bbox_x2"]) - int(first["bbox_x1"]) + 1, int(first["bbox_y2"]) - int(first["bbox_y1"]) + 1)


def test_sop_split_from_index_files_small_classes_and_zip_root(tmp_path: Path) -> None:
    info = make_fake_sop(tmp_path / "raw")
    folder = prepare("sop", tmp_path / "a", info.root, storage="jpeg")
    ids = {s: set(folder["class_ids"][s]) for s in SPLITS}
    assert ids["train"] | ids["val"] == {1, 2, 3, 4, 5, 6} and ids["test"] == {7, 8, 9}
    assert folder["skipped_by_reason"] == info.defects
    assert folder["parameters"]["storage"] == "jpeg"
    assert min(info.per_class.values()) == 2 and not any(folder["classes_below_2_images"].values())
    # the unextracted zip archive gives byte-identical output
    archive = tmp_path / "Stanford_Online_Products.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(info.root.rglob("*")):
            zf.write(p, p.relative_to(info.root.parent).as_posix())
    zipped = prepare("sop", tmp_path / "b", archive, storage="jpeg")
    assert zipped == folder and files_of(tmp_path / "a") == files_of(tmp_path / "b")
    img = PackedSplit(tmp_path / "b", "test").image(0)
    assert img.shape == (3, 40, 40) and img.dtype == torch.uint8


def test_tgz_root_env_variables_and_worker_count_give_identical_output(cub, tmp_path: Path, monkeypatch) -> None:
    info, out, m = cub
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(info.root, arcname="CUB_200_2011")
    monkeypatch.setenv("SYMM_CUB_ROOT", str(archive))
    m_env = prepare_from_settings("cub", tmp_path / "env", {**BASE, "root": "/nonexistent"},
                                  workers=2, progress=False)
    assert m_env == m and files_of(tmp_path / "env") == files_of(out)
    assert not list(tmp_path.glob("env/.extract-*")), "extraction folder left behind"
    monkeypatch.delenv("SYMM_CUB_ROOT")
    monkeypatch.setenv("SYMM_DATA_ROOT", str(tmp_path))  # holds CUB_200_2011.tgz
    m_data = prepare_from_settings("cub", tmp_path / "data_root", dict(BASE), workers=1, progress=False)
    assert m_data == m


def test_rerun_is_byte_identical(cub, tmp_path: Path) -> None:
    """DVC no-op: unchanged inputs -> identical files (hashes, sizes, manifest)."""
    info, out, m = cub
    before = files_of(out)
    again = prepare("cub", out, info.root)
    assert again == m and files_of(out) == before


# ------------------------------------------------------------------------------------- errors


def test_missing_root_and_index_name_the_layout(tmp_path: Path, monkeypatch) -> None:
    for var in ("SYMM_CUB_ROOT", "SYMM_DATA_ROOT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DatasetNotFound, match="no location given.*SYMM_CUB_ROOT") as err:
        prepare_from_settings("cub", tmp_path / "o", dict(BASE), progress=False)
    assert "images.txt" in str(err.value) and "caltech.edu" in str(err.value)
    with pytest.raises(DatasetNotFound, match="does not exist"):
        prepare("cub", tmp_path / "o", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFound, match="Ebay_train.txt not found"):
        prepare("sop", tmp_path / "o", tmp_path)
    info = make_fake_cub(tmp_path / "raw")
    (info.root / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetNotFound, match="image_class_labels.txt missing.*\n.*Expected layout"):
        prepare("cub", tmp_path / "o", info.root)
    cars = make_fake_cars196(tmp_path / "cars")
    (cars.root / "cars_annos.mat").unlink()
    with pytest.raises(DatasetNotFound, match="cars_annos.mat not found"):
        prepare("cars196", tmp_path / "o", cars.root)


def test_too_many_skipped_fails_and_keeps_the_previous_output(cub, tmp_path: Path) -> None:
    info, out, _ = cub
    target = tmp_path / "out"
    shutil.copytree(out, target)
    before = files_of(target)
    with pytest.raises(TooManySkipped, match="max_skipped_fraction") as err:
        prepare("cub", target, info.root, max_skipped_fraction=0.05)
    assert "unreadable" in str(err.value)
    assert files_of(target) == before and not list(target.glob(".*"))
    # a root whose images are absent fails before decoding anything
    bare = tmp_path / "bare" / "CUB_200_2011"
    bare.mkdir(parents=True)
    for name in ("images.txt", "image_class_labels.txt"):
        shutil.copy(info.root / name, bare / name)
    with pytest.raises(TooManySkipped, match="missing in folder"):
        prepare("cub", tmp_path / "o2", bare)


def test_bad_settings_are_named(cub, tmp_path: Path) -> None:
    info, _, _ = cub
    with pytest.raises(ValueError, match="unknown keys \\['shortside'\\]"):
        prepare("cub", tmp_path / "o", info.root, shortside=10)
    with pytest.raises(ValueError, match="unknown augmentation preset 'offical'"):
        prepare("cub", tmp_path / "o", info.root, augmentation="offical")
    with pytest.raises(ValueError, match="storage must be one of"):
        prepare("cub", tmp_path / "o", info.root, storage="png")
    with pytest.raises(ValueError, match="no bounding boxes"):
        prepare("sop", tmp_path / "o", info.root, crop_to_bbox=True)


def test_manifest_that_does_not_match_the_data_is_detected(cub, tmp_path: Path) -> None:
    _, out, _ = cub
    target = tmp_path / "p"
    shutil.copytree(out, target)
    data = target / "train.images.bin"
    raw = bytearray(data.read_bytes())
    raw[5] ^= 0xFF  # same size, different content: only the full check sees it
    data.write_bytes(bytes(raw))
    PackedSplit(target, "train")
    with pytest.raises(PreparedDataMismatch, match="train.images.bin does not match its sha256"):
        verify_prepared(target, full=True)
    data.write_bytes(bytes(raw[:-10]))  # truncated copy
    with pytest.raises(PreparedDataMismatch, match="bytes, the manifest says.*\n.*dvc repro prepare@cub"):
        make_eval_loader(target, "train")
    (target / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_labels(target, "test")


def test_load_split_points_image_datasets_to_the_loaders(cub) -> None:
    _, out, _ = cub
    with pytest.raises(ValueError, match="make_train_loader"):
        load_split(out, "train")


def test_cli(cub, tmp_path: Path, capsys) -> None:
    from pipelines.prepare import PREPARE_RULES, main

    assert {"glyphs", "cub", "cars196", "sop"} <= set(PREPARE_RULES)
    info, out, m = cub
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"data": {"cub": BASE}}))
    assert main(["--dataset", "cub", "--root", str(info.root), "--out", str(tmp_path / "cli"),
                 "--params", str(params), "--workers", "1"]) == 0
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text()) == m
    assert main(["--dataset", "cub", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "x"),
                 "--params", str(params)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_params_yaml_declares_the_benchmarks_but_runs_glyphs_only() -> None:
    import yaml

    from pipelines.settings import REPO_ROOT

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert params["datasets"] == ["glyphs"]
    for name in ("cub", "cars196", "sop"):
        entry = params["data"][name]
        assert entry["root"] is None and entry["short_side"] == 256 and entry["crop_to_bbox"] is False
        assert "augmentation" not in entry  # a train setting now (train.augmentation), not a prepare one


# -------------------------------------------------------------------------------- samplers


def sop_like_labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(300), rng.integers(2, 13, size=300))  # SOP: 2-12 images per class
    return np.concatenate([labels, [1000]])  # one single-image class


@pytest.mark.parametrize("m", [2, 4])
def test_m_per_class_batches(m: int) -> None:
    labels = sop_like_labels()
    sampler = MPerClassBatchSampler(labels, m=m, classes_per_batch=16, seed=0)
    assert sampler.excluded_classes == [1000]
    for _ in range(300):
        batch = sampler.sample()
        assert len(batch) == 16 * m
        groups = labels[batch].reshape(16, m)
        assert (groups == groups[:, :1]).all() and len(set(groups[:, 0].tolist())) == 16
        for group_idx in np.asarray(batch).reshape(16, m):
            n_class = int((labels == labels[group_idx[0]]).sum())
            assert len(set(group_idx.tolist())) == min(m, n_class)  # distinct when the class has enough
    if m == 2:  # N-pair shape: the loss contract (every label exactly twice)
        from symm.losses import split_pairs

        split_pairs(torch.zeros(32, 2), torch.as_tensor(labels[sampler.sample()]))
    excl = MPerClassBatchSampler(labels, m=m, classes_per_batch=16, seed=0, small_classes="exclude")
    counts = dict(zip(*np.unique(labels, return_counts=True)))
    assert all(counts[c] < m for c in excl.excluded_classes)
    for _ in range(50):
        batch = excl.sample()
        assert len(set(batch)) == len(batch)


def test_m_per_class_seeded_and_resumable() -> None:
    labels = sop_like_labels()
    a = MPerClassBatchSampler(labels, 4, 8, seed=3)
    b = MPerClassBatchSampler(labels, 4, 8, seed=3)
    assert [a.sample() for _ in range(5)] == [b.sample() for _ in range(5)]
    state = a.state_dict()
    expected = [a.sample() for _ in range(5)]
    c = MPerClassBatchSampler(labels, 4, 8, seed=99)
    c.load_state_dict(state)
    assert [c.sample() for _ in range(5)] == expected
    with pytest.raises(ValueError, match="only 300 classes"):
        MPerClassBatchSampler(labels, 2, 301)


def test_npair_sampler_on_sop_like_small_classes() -> None:
    labels = sop_like_labels()
    sampler = NPairBatchSampler(labels, classes_per_batch=64, seed=0)
    for _ in range(200):
        batch = sampler.sample()
        pairs = labels[batch].reshape(64, 2)
        assert len(set(batch)) == 128 and (pairs[:, 0] == pairs[:, 1]).all()
        assert len(set(pairs[:, 0].tolist())) == 64
    assert sampler.excluded_classes == [1000]


# ------------------------------------------------------------------------ loaders & augmentation


def _batches(loader, n: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for k, (x, y) in enumerate(loader):
        out.append((x.clone(), y.clone()))
        if n is not None and k + 1 == n:
            break
    return out


def test_train_loader_deterministic_across_workers_and_resumable(cub) -> None:
    _, out, _ = cub
    labels = read_labels(out, "train")

    def loader(workers: int, normalize_in: str = "auto"):
        return make_train_loader(out, "train", batch_sampler=NPairBatchSampler(labels, 3, seed=5),
                                 augmentation="official", steps=6, seed=5, num_workers=workers,
                                 normalize_in=normalize_in)

    ref = _batches(loader(0))
    assert len(ref) == 6
    x, y = ref[0]
    assert x.shape == (6, 3, 227, 227) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert (y[0::2] == y[1::2]).all() and len(set(y[0::2].tolist())) == 3
    assert -124 <= x.min() and x.max() <= 256 - 103  # caffe-style: 0..255 minus the channel mean
    two = _batches(loader(2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, two))
    # uint8 shipped and normalised on the "device" gives the same values as normalising in workers
    on_device = _batches(loader(2, normalize_in="device"))
    assert all(torch.allclose(a[0], b[0]) for a, b in zip(ref, on_device))
    # interrupt after 2 batches (the workers have prefetched more), save, resume elsewhere
    first = loader(2)
    _batches(first, n=2)
    state = first.state_dict()
    assert state["step"] == 2
    resumed = loader(0)
    resumed.load_state_dict(state)
    rest = _batches(resumed)
    assert len(rest) == 4 and all(torch.equal(a[0], b[0]) for a, b in zip(ref[2:], rest))
    # iterating the interrupted loader again also continues where it stopped
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ref[2:], _batches(first)))


def test_eval_loader_order_and_presets(cub) -> None:
    _, out, m = cub
    for preset, size in (("official", 227), ("standard", 224)):
        loader = make_eval_loader(out, "test", augmentation=preset, batch_size=4, num_workers=0)
        got = _batches(loader)
        assert torch.equal(torch.cat([y for _, y in got]), loader.labels)
        assert loader.labels.tolist() == PackedSplit(out, "test").labels.tolist()
        assert all(x.shape[1:] == (3, size, size) for x, _ in got)
        assert sum(len(y) for _, y in got) == m["counts"]["test"]["images"]
    std = get_preset("standard")
    white = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(std.normalize(white)[0, :, 0, 0],
                          torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))


def test_augmentations_are_seeded_and_shaped() -> None:
    img = torch.randint(0, 256, (3, 256, 341), dtype=torch.uint8)
    for tf, size in ((OfficialTrain(), 227), (StandardTrain(), 224)):
        a = tf(img, np.random.default_rng(0))
        assert a.shape == (3, size, size) and a.dtype == torch.uint8 and a.is_contiguous()
        assert torch.equal(a, tf(img, np.random.default_rng(0)))
        assert not torch.equal(a, tf(img, np.random.default_rng(1)))
        with pytest.raises(ValueError, match="Generator"):
            tf(img)
    # standard eval: short side 256 (already), centre crop 224
    out = StandardEval()(img)
    assert torch.equal(out, img[:, 16:240, 58:282])
    # official train on a tiny image (border range empty) still works
    assert OfficialTrain()(img[:, :30, :30], np.random.default_rng(0)).shape == (3, 227, 227)
    # the RandomResizedCrop box stays inside the image and respects scale/ratio bounds
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = StandardTrain().crop_box(256, 341, rng)
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 341

"""Tests for the embedded "glyphs" dataset: counts, splits, determinism, the font filter, loading.

The full default dataset is rendered once per module (a few seconds) and shared by the tests.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fontTools.ttLib import TTFont

from symm.data import glyphs
from symm.data.glyphs import (
    DEFAULT_CHARACTERS,
    FontExcluded,
    FontSource,
    discover_fonts,
    filter_and_render,
    prepare_glyphs,
    render_font,
)
from symm.data.prepared import load_split, read_manifest

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("glyphs_a")
    manifest = prepare_glyphs(out, progress=False)
    return out, manifest


def _load(out: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(out / f"{split}.npz", allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def _dejavu() -> FontSource:
    """matplotlib's DejaVuSans: always installed, so a safe base for constructed test fonts."""
    for f in discover_fonts():
        if f.path.name == "DejaVuSans.ttf":
            return f
    pytest.skip("matplotlib's DejaVuSans.ttf not found")


def _source(path: Path) -> FontSource:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return FontSource(path, "test", "test", "0", digest)


# ---------------------------------------------------------------------------------- counts


def test_counts(prepared: tuple[Path, dict]) -> None:
    out, m = prepared
    assert m["dataset"] == "glyphs"
    assert m["n_classes"] == len(DEFAULT_CHARACTERS) >= 62
    n_fonts = m["n_fonts_used"]
    assert n_fonts == len(m["fonts_used"]) >= 40
    total_classes = 0
    for split in SPLITS:
        d = _load(out, split)
        assert d["images"].dtype == np.uint8 and d["images"].shape[1:] == (32, 32)
        assert d["labels"].dtype == np.int64 and d["fonts"].dtype == np.int32
        assert len(d["images"]) == len(d["labels"]) == len(d["fonts"])
        classes, per_class = np.unique(d["labels"], return_counts=True)
        assert (per_class == n_fonts).all(), "every class needs one image per font"
        assert sorted(classes.tolist()) == m["class_ids"][split]
        for c in classes:  # each font exactly once per class
            assert sorted(d["fonts"][d["labels"] == c].tolist()) == list(range(n_fonts))
        assert m["counts"][split] == {"images": len(d["images"]), "classes": len(classes)}
        assert m["characters"][split] == "".join(DEFAULT_CHARACTERS[c] for c in classes)
        assert d["images"].reshape(len(d["images"]), -1).max(axis=1).min() > 0, "blank image"
        total_classes += len(classes)
    assert total_classes == 62
    # every font excluded by the filter says why
    for rec in m["fonts_excluded"]:
        assert rec["reason"] and rec["detail"] and rec["file"]
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_splits_disjoint_and_val_from_train_pool(prepared: tuple[Path, dict]) -> None:
    _, m = prepared
    ids = {s: set(m["class_ids"][s]) for s in SPLITS}
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert len(ids["val"]) == 6
    perm = np.random.default_rng(0).permutation(62)
    pool, test = set(perm[:31].tolist()), set(perm[31:].tolist())
    assert ids["val"] <= pool and ids["train"] <= pool and ids["train"] | ids["val"] == pool
    assert ids["test"] == test
    # a permutation, not sorted halves: test mixes digits, capitals and lowercase
    test_chars = m["characters"]["test"]
    assert any(c.isdigit() for c in test_chars) and any(c.isupper() for c in test_chars)
    assert any(c.islower() for c in test_chars)


def test_deterministic(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    out_a, m_a = prepared
    m_b = prepare_glyphs(tmp_path, progress=False)
    assert m_a == m_b
    for name in ("train.npz", "val.npz", "test.npz", "manifest.json"):
        assert (out_a / name).read_bytes() == (tmp_path / name).read_bytes(), name
    for name, digest in m_a["files"].items():
        assert hashlib.sha256((out_a / name).read_bytes()).hexdigest() == digest


def test_discover_fonts_is_pinned_packages_only() -> None:
    fonts = discover_fonts()
    assert fonts == discover_fonts()
    assert all(f.package.startswith("fontpkg-") or f.package == "matplotlib" for f in fonts)
    assert not any(glyphs.is_symbol_font(f.path.name) for f in fonts)
    per_family: dict[tuple[str, str], list[str]] = {}
    for f in fonts:
        per_family.setdefault((f.package, f.family), []).append(f.path.name)
    assert max(len(v) for v in per_family.values()) <= 3
    lato = per_family.get(("fontpkg-lato", "Lato"))
    if lato is not None:
        assert lato == ["Lato-Regular.ttf", "Lato-Italic.ttf", "Lato-Bold.ttf"]
    assert len(discover_fonts(max_fonts_per_family=1)) == len(per_family)


# ---------------------------------------------------------------------------------- filter


def test_all_caps_font_is_excluded(prepared: tuple[Path, dict]) -> None:
    _, m = prepared
    used = {f["file"] for f in m["fonts_used"]}
    excluded = {f["file"]: f for f in m["fonts_excluded"]}
    if not any(f.package == "fontpkg-bebas-neue" for f in discover_fonts()):
        pytest.skip("fontpkg-bebas-neue not installed")
    assert "BebasNeue-Regular.ttf" not in used
    assert excluded["BebasNeue-Regular.ttf"]["reason"] == "lowercase_equals_uppercase"


def test_filter_rejects_lowercase_mapped_to_uppercase_glyph(tmp_path: Path) -> None:
    base = _dejavu()
    tt = TTFont(str(base.path))
    for table in tt["cmap"].tables:
        if table.isUnicode() and ord("a") in table.cmap:
            table.cmap[ord("a")] = table.cmap[ord("A")]
    path = tmp_path / "AllCapsA.ttf"
    tt.save(str(path))
    with pytest.raises(FontExcluded) as err:
        render_font(path)
    assert err.value.reason == "shared_glyph" and "aA" in err.value.detail.replace("Aa", "aA")
    kept, images, excluded = filter_and_render([base, _source(path)])
    assert [f.path for f in kept] == [base.path] and images.shape[:2] == (1, 62)
    assert excluded[0]["reason"] == "shared_glyph" and excluded[0]["file"] == "AllCapsA.ttf"


def test_filter_rejects_lowercase_drawn_like_uppercase(tmp_path: Path) -> None:
    """Separate glyph names but the same outline (what Bebas Neue does) is caught by pixels."""
    tt = TTFont(str(_dejavu().path))
    cmap = tt.getBestCmap()
    upper, lower = cmap[ord("B")], cmap[ord("b")]
    tt["glyf"][lower] = tt["glyf"][upper]
    tt["hmtx"][lower] = tt["hmtx"][upper]
    path = tmp_path / "CapB.ttf"
    tt.save(str(path))
    with pytest.raises(FontExcluded) as err:
        render_font(path)
    assert err.value.reason == "lowercase_equals_uppercase" and err.value.detail.endswith("b")


def test_filter_rejects_missing_character() -> None:
    with pytest.raises(FontExcluded) as err:
        render_font(_dejavu().path, characters="AB\u4e2d")
    assert err.value.reason == "missing_characters"


def test_render_fixed_size_keeps_case_apart() -> None:
    """c/C, o/O, s/S differ only by size: the renderer must not normalise each glyph's size."""
    chars = "cCoOsSxX"
    imgs = render_font(_dejavu().path, characters=chars)
    assert imgs.dtype == np.uint8 and imgs.shape == (8, 32, 32)
    rows = lambda im: np.flatnonzero(im.max(axis=1) > 64)  # noqa: E731
    for lo, up in zip(chars[0::2], chars[1::2]):
        r_lo, r_up = rows(imgs[chars.index(lo)]), rows(imgs[chars.index(up)])
        assert r_lo[0] > r_up[0], f"{lo} should start lower than {up}"
        assert abs(int(r_lo[-1]) - int(r_up[-1])) <= 1, "same baseline"
    assert np.array_equal(imgs, render_font(_dejavu().path, characters=chars))


# ---------------------------------------------------------------------------------- errors


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicates"):
        prepare_glyphs(tmp_path, characters="ABCA", progress=False)
    with pytest.raises(ValueError, match="at least 4"):
        prepare_glyphs(tmp_path, characters="ABC", progress=False)
    with pytest.raises(ValueError, match="val_classes"):
        prepare_glyphs(tmp_path, characters="ABCDEFGH", val_classes=3, progress=False)
    with pytest.raises(ValueError, match="min_fonts"):
        prepare_glyphs(
            tmp_path, characters="ABab", val_classes=0, min_fonts=100_000, progress=False
        )
    assert not list(tmp_path.iterdir()), "a failed run must not leave files"


def test_small_subset(tmp_path: Path) -> None:
    m = prepare_glyphs(tmp_path, characters="0Aa1Bb", val_classes=1, seed=3, progress=False)
    assert m["counts"]["val"]["classes"] == 1 and m["counts"]["train"]["classes"] == 2
    assert m["counts"]["test"]["classes"] == 3
    assert read_manifest(tmp_path) == m
    assert json.loads((tmp_path / "manifest.json").read_text())["parameters"]["seed"] == 3


# ---------------------------------------------------------------------------------- loading


def test_load_split(prepared: tuple[Path, dict]) -> None:
    out, m = prepared
    for split in SPLITS:
        x, y = load_split(out, split)
        n = m["counts"][split]["images"]
        assert x.dtype == torch.float32 and x.shape == (n, 1, 32, 32)
        assert y.dtype == torch.int64 and y.shape == (n,)
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert sorted(set(y.tolist())) == m["class_ids"][split]
    assert read_manifest(out) == m


def test_load_split_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_split(tmp_path / "glyphs", "train")
    msg = str(err.value)
    assert "train.npz" in msg and "dvc repro prepare@glyphs" in msg
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_manifest(tmp_path)


def test_module_has_no_heavy_imports() -> None:
    source = Path(glyphs.__file__).read_text()
    for name in ("ray", "mlflow", "dvc"):
        assert f"import {name}" not in source and f"from {name}" not in source

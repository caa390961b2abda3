"""The embedded default dataset "glyphs": an Omniglot-like zero-shot benchmark built from fonts.

Why this exists: the project needs a dataset that is available offline, small, and identical on
every machine. Fonts shipped by pinned pip packages (the ``fontpkg-*`` distributions and
matplotlib's bundled fonts) give exactly that: class = character, sample = font. Because the
classes of the test split are never seen in training, it is a zero-shot (metric-learning)
benchmark in the spirit of Omniglot.

Pipeline
--------
1. :func:`discover_fonts` finds font files in installed packages (optionally system fonts),
   drops symbol/math fonts by name, and keeps at most ``max_fonts_per_family`` files per family
   (regular, then italic, then bold, then the rest), all deterministically.
2. :func:`filter_and_render` renders every character of every font and excludes a whole font
   (recording a reason code and a detail string) when any character is missing, maps to
   ``.notdef``, has an empty outline or renders blank, shares a glyph with another character,
   is clipped by the canvas, or when a lowercase letter renders (near-)identically to its
   uppercase letter. Excluding the whole font keeps every class at exactly one image per font.
3. :func:`prepare_glyphs` splits classes with a seeded permutation into train / val / test
   (disjoint by class) and writes ``train.npz``, ``val.npz``, ``test.npz`` and ``manifest.json``.

Rendering
---------
Each font is scaled so that its capital ``H`` is ``CAP_HEIGHT_FRACTION`` of the supersampled
canvas (2x ``image_size``); characters are drawn horizontally centred on their advance width on a
fixed baseline (PIL anchor ``"ms"``) so that size and vertical position stay informative
(c/C, o/O, s/S, x/X differ only by size). The supersampled image is then area-averaged (BOX) down
to ``image_size``. Images are uint8, white glyph on black. PIL's BASIC layout engine is forced so
that the result does not depend on whether libraqm happens to be installed.

Determinism of the files
------------------------
``np.savez`` stamps every zip member with the current local time, so two runs would differ in
bytes. We therefore write the ``.npz`` zip ourselves (:func:`_write_npz`): uncompressed
(``ZIP_STORED``, like ``np.savez``), with a fixed member date (1980-01-01), fixed attributes and
a fixed member order. The result is a normal ``.npz`` that ``np.load`` reads, and re-running gives
byte-identical files. ``manifest.json`` contains no timestamps or absolute paths. Every file is
written to a temporary name in the output directory and then moved into place with
``os.replace``, so an interrupted run never leaves a half-written file behind.

This module deliberately imports only the standard library, numpy, PIL and fontTools (plus tqdm
lazily for the progress bar); it must stay usable without ray, mlflow or dvc.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fontTools.pens.boundsPen import BoundsPen
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

from symm.data.packed import write_bytes_atomic

DATASET_NAME = "glyphs"
DEFAULT_CHARACTERS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SPLITS = ("train", "val", "test")

#: Cap height of ``H`` as a fraction of the (supersampled) canvas height.
CAP_HEIGHT_FRACTION = 0.5
#: Baseline position as a fraction of the canvas height, measured from the top. Leaves room
#: below for descenders (g, j, p, q, y) and above for ascenders taller than the cap height.
BASELINE_FRACTION = 0.72
#: Supersampling factor used before area-averaging down to ``image_size``.
SUPERSAMPLE = 2
#: A lowercase letter whose final uint8 image differs from its uppercase counterpart by at most
#: this much in every pixel counts as a copy of it (the font is then excluded).
CASE_MAX_ABS_DIFF = 24

#: Variable fonts are rendered at this weight (clamped to the font's range), because their
#: default instance is sometimes Thin (Montserrat, Josefin Sans) or Black (Fraunces).
VARIABLE_WEIGHT = 400.0

FONT_SUFFIXES = (".ttf", ".otf")
SYSTEM_FONT_DIR = Path("/usr/share/fonts")

#: Symbol / math / fallback fonts that have no usable Latin letters (or only odd ones).
_SYMBOL_NAME_PATTERNS = (
    re.compile(r"^LastResortHE", re.I),
    re.compile(r"^cmex10", re.I),
    re.compile(r"^cmsy10", re.I),
    re.compile(r"^D050000L", re.I),
    re.compile(r"^StandardSymbolsPS", re.I),
    re.compile(r"^STIXSiz", re.I),  # STIXSizes* (STIXSizOneSymReg.ttf, ...)
    re.compile(r"^DejaVu.*Display", re.I),
    re.compile(r"Symbol", re.I),
)


@dataclass(frozen=True)
class FontSource:
    """One font file and where it came from (recorded in the manifest for provenance)."""

    path: Path
    family: str
    package: str
    package_version: str
    sha256: str


class FontExcluded(Exception):
    """Raised internally when a font fails a check; carries a reason code and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_fonttools() -> Any:
    """fontTools logs harmless warnings (e.g. odd 'head' timestamps) for many fonts; hide them."""
    logger = logging.getLogger("fontTools")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_symbol_font(file_name: str) -> bool:
    """True for fonts excluded by name because they hold symbols rather than letters."""
    return any(p.search(file_name) for p in _SYMBOL_NAME_PATTERNS)


def _name_record(font: TTFont, name_id: int) -> str | None:
    name_table = font["name"] if "name" in font else None
    if name_table is None:
        return None
    rec = name_table.getDebugName(name_id)
    return rec.strip() if rec else None


@dataclass(frozen=True)
class _Candidate:
    path: Path
    family: str
    package: str
    package_version: str


def _style_rank(path: Path, font: TTFont | None) -> tuple[Any, ...]:
    """Sort key that prefers upright regular, then italic, then bold, then the rest.

    File names are the primary signal (``-Regular``, ``-Italic``, ``-Bold``, variable fonts
    ``Name[wght].ttf``); the font's own subfamily name and weight class decide when the file
    name is silent (e.g. matplotlib's ``DejaVuSans.ttf``).
    """
    stem = path.stem
    base = re.sub(r"\[.*\]$", "", stem)  # drop variable-axis suffix
    variable = stem != base
    italic = bool(re.search(r"italic|oblique|ita$", base, re.I))
    sub = ""
    weight = 400
    if font is not None:
        sub = (_name_record(font, 17) or _name_record(font, 2) or "").lower()
        if "OS/2" in font and not variable:  # variable fonts are rendered at VARIABLE_WEIGHT
            weight = int(font["OS/2"].usWeightClass)
            italic = italic or bool(font["OS/2"].fsSelection & 1)
        italic = italic or "italic" in sub or "oblique" in sub
    style_tokens = re.split(r"[-_ ]", base)
    last = style_tokens[-1].lower() if len(style_tokens) > 1 else ""
    if not italic and (
        "regular" in base.lower() or variable or sub in ("regular", "book", "roman", "normal")
    ):
        rank = 0
    elif italic and (
        re.search(r"(^|[-_])(italic|oblique)$", base, re.I) or sub in ("italic", "oblique")
    ) and weight == 400:
        rank = 1
    elif not italic and (last == "bold" or sub == "bold"):
        rank = 2
    elif not italic and weight == 400 and not re.search(
        r"thin|light|medium|semi|demi|bold|black|heavy|extra|ultra", base, re.I
    ):
        rank = 0  # plain upright file without a style word, e.g. ShadowsIntoLight.ttf
    else:
        rank = 3
    return (rank, abs(weight - 400), italic, path.name)


def _open_meta(path: Path) -> TTFont | None:
    try:
        with _quiet_fonttools():
            font = TTFont(str(path), lazy=True, fontNumber=0)
            font["name"]  # force parsing while warnings are silenced
            if "OS/2" in font:
                font["OS/2"]
        return font
    except Exception:  # unreadable files are reported later by the filter
        return None


def _fontpkg_candidates() -> list[_Candidate]:
    """Font files of installed ``fontpkg-*`` distributions (their ``fontpkg_x/files/`` dir)."""
    seen: set[str] = set()
    out: list[_Candidate] = []
    dists = sorted(
        importlib.metadata.distributions(),
        key=lambda d: (d.metadata["Name"] or "").lower(),
    )
    for dist in dists:
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name.startswith("fontpkg-") or name in seen:
            continue
        seen.add(name)
        version = dist.version
        module = "fontpkg_" + name[len("fontpkg-"):].replace("-", "_").replace(".", "_")
        family = name[len("fontpkg-"):]
        paths: list[Path] = []
        for f in dist.files or []:
            parts = Path(str(f)).parts
            if (
                len(parts) >= 3
                and parts[0] == module
                and parts[1] == "files"
                and str(f).lower().endswith(FONT_SUFFIXES)
            ):
                paths.append(Path(str(dist.locate_file(f))).resolve())
        if not paths:  # RECORD missing or unusual layout: fall back to the package directory
            base = Path(str(dist.locate_file(module))) / "files"
            if base.is_dir():
                paths = [p.resolve() for p in base.iterdir() if p.suffix.lower() in FONT_SUFFIXES]
        meta_json = Path(str(dist.locate_file(module))) / "metadata.json"
        if meta_json.is_file():
            try:
                family = json.loads(meta_json.read_text(encoding="utf-8")).get("family", family)
            except (OSError, ValueError):
                pass
        for p in sorted(set(paths)):
            out.append(_Candidate(p, family, name, version))
    return out


def _family_from_font(path: Path) -> str:
    font = _open_meta(path)
    fam = None
    if font is not None:
        fam = _name_record(font, 16) or _name_record(font, 1)
        font.close()
    return fam or path.stem


def _matplotlib_candidates() -> list[_Candidate]:
    """matplotlib's bundled TTFs; family = the font's own family name (DejaVu Sans, cmr10, ...)."""
    try:
        dist = importlib.metadata.distribution("matplotlib")
    except importlib.metadata.PackageNotFoundError:
        return []
    ttf_dir = Path(str(dist.locate_file("matplotlib"))) / "mpl-data" / "fonts" / "ttf"
    if not ttf_dir.is_dir():
        return []
    return [
        _Candidate(p.resolve(), _family_from_font(p), "matplotlib", dist.version)
        for p in sorted(ttf_dir.glob("*.ttf"))
    ]


def _system_candidates() -> list[_Candidate]:
    if not SYSTEM_FONT_DIR.is_dir():
        return []
    paths = sorted(
        p.resolve()
        for p in SYSTEM_FONT_DIR.rglob("*")
        if p.is_file() and p.suffix.lower() in FONT_SUFFIXES
    )
    return [_Candidate(p, _family_from_font(p), "system", "") for p in paths]


def _discover(
    system_fonts: bool, max_fonts_per_family: int
) -> tuple[list[FontSource], dict[str, Any]]:
    """Discovery plus bookkeeping (what was skipped and why) for the manifest."""
    if max_fonts_per_family < 1:
        raise ValueError(f"max_fonts_per_family must be >= 1, got {max_fonts_per_family}")
    candidates = _fontpkg_candidates() + _matplotlib_candidates()
    if system_fonts:
        candidates += _system_candidates()
    found = len(candidates)
    symbol = sorted({c.path.name for c in candidates if is_symbol_font(c.path.name)})
    candidates = [c for c in candidates if not is_symbol_font(c.path.name)]

    groups: dict[tuple[str, str], list[_Candidate]] = {}
    for c in candidates:
        groups.setdefault((c.package, c.family), []).append(c)
    selected: list[FontSource] = []
    seen_ids: set[str] = set()
    duplicates: list[str] = []
    capped = 0
    for key in sorted(groups):
        ranked = []
        for c in groups[key]:
            meta = _open_meta(c.path)
            rank = _style_rank(c.path, meta)
            ps_name = _name_record(meta, 6) if meta is not None else None
            if meta is not None:
                meta.close()
            ranked.append((rank, ps_name, c))
        ranked.sort(key=lambda r: r[0])
        kept = 0
        for _, ps_name, c in ranked:
            if kept >= max_fonts_per_family:
                capped += 1
                continue
            digest = _sha256(c.path)
            # The same font twice (e.g. DejaVu Sans from matplotlib and from /usr/share/fonts,
            # possibly another version) would leak near-copies across samples: keep the first,
            # which is the pinned package's since packages sort before "system".
            ids = {digest} | ({f"ps:{ps_name}"} if ps_name else set())
            if ids & seen_ids:
                duplicates.append(f"{c.package}:{c.path.name}")
                continue
            seen_ids |= ids
            selected.append(FontSource(c.path, c.family, c.package, c.package_version, digest))
            kept += 1
    info = {
        "font_files_found": found,
        "skipped_symbol_fonts": symbol,
        "skipped_by_family_cap": capped,
        "skipped_duplicate_files": sorted(duplicates),
    }
    return selected, info


def discover_fonts(system_fonts: bool = False, max_fonts_per_family: int = 3) -> list[FontSource]:
    """Font files from pinned packages (fontpkg-*, matplotlib), at most N per family.

    A family is one ``fontpkg-*`` package, or for matplotlib / system fonts the font's own
    family name (DejaVu Sans, DejaVu Serif, cmr10, ...). Within a family the upright regular
    comes first, then the italic, then the bold, then the other styles (closest to weight 400
    first); symbol fonts are dropped by file name and byte-identical files are kept once.
    ``system_fonts=True`` also scans /usr/share/fonts; it is off by default because system
    fonts differ between machines and would make the dataset machine-dependent.
    """
    return _discover(system_fonts, max_fonts_per_family)[0]


# --------------------------------------------------------------------------------------------
# Filtering and rendering
# --------------------------------------------------------------------------------------------


def _glyph_bounds(glyph_set: Any, glyph_name: str) -> tuple[float, float, float, float] | None:
    pen = BoundsPen(glyph_set)
    glyph_set[glyph_name].draw(pen)
    return pen.bounds


def _render_char(
    font: ImageFont.FreeTypeFont, ch: str, canvas: int, baseline: float
) -> tuple[np.ndarray, bool]:
    """Render on a 3x canvas so ink that would be clipped can be detected, then crop."""
    big = Image.new("L", (3 * canvas, 3 * canvas), 0)
    ImageDraw.Draw(big).text(
        (canvas + canvas / 2, canvas + baseline), ch, fill=255, font=font, anchor="ms"
    )
    arr = np.asarray(big)
    inner = arr[canvas : 2 * canvas, canvas : 2 * canvas]
    clipped = int(arr.sum(dtype=np.int64)) != int(inner.sum(dtype=np.int64))
    return np.ascontiguousarray(inner), clipped


def render_font(
    source: FontSource | Path | str,
    characters: str = DEFAULT_CHARACTERS,
    image_size: int = 32,
) -> np.ndarray:
    """Render ``characters`` with one font and check it; returns uint8 (len(chars), S, S).

    Raises :class:`FontExcluded` with a reason code when the font is unusable for this dataset.
    """
    path = Path(source.path if isinstance(source, FontSource) else source)
    with _quiet_fonttools():
        return _render_font(path, characters, image_size)


def _variable_location(tt: TTFont) -> list[tuple[str, float]]:
    """(axis tag, user value) in fvar order: weight set to VARIABLE_WEIGHT, others default."""
    if "fvar" not in tt:
        return []
    loc = []
    for axis in tt["fvar"].axes:
        value = axis.defaultValue
        if axis.axisTag == "wght":
            value = min(max(VARIABLE_WEIGHT, axis.minValue), axis.maxValue)
        loc.append((axis.axisTag, float(value)))
    return loc


def _render_font(path: Path, characters: str, image_size: int) -> np.ndarray:
    try:
        tt = TTFont(str(path), fontNumber=0, lazy=True)
    except Exception as e:  # noqa: BLE001 - any parse error means we cannot use the font
        raise FontExcluded("unreadable", f"fontTools cannot read it: {e}") from e
    try:
        cmap = tt.getBestCmap() or {}
        location = _variable_location(tt)
        glyph_set = tt.getGlyphSet(location=dict(location) if location else None)
        upem = int(tt["head"].unitsPerEm)
        missing = [c for c in characters if ord(c) not in cmap]
        if missing:
            raise FontExcluded("missing_characters", "cmap lacks " + "".join(missing))
        names = {c: cmap[ord(c)] for c in characters}
        notdef = [c for c in characters if names[c] == ".notdef"]
        if notdef:
            raise FontExcluded("notdef", "maps to .notdef: " + "".join(notdef))
        by_glyph: dict[str, list[str]] = {}
        for c in characters:
            by_glyph.setdefault(names[c], []).append(c)
        shared = sorted(("".join(cs), g) for g, cs in by_glyph.items() if len(cs) > 1)
        if shared:
            detail = ", ".join(f"{cs} -> {g}" for cs, g in shared)
            raise FontExcluded("shared_glyph", "different characters share a glyph: " + detail)
        empty = [c for c in characters if _glyph_bounds(glyph_set, names[c]) is None]
        if empty:
            raise FontExcluded("empty_outline", "empty outline for " + "".join(empty))
        if ord("H") not in cmap or cmap[ord("H")] == ".notdef":
            raise FontExcluded("no_cap_height", "no 'H' glyph to set the cap height from")
        h_bounds = _glyph_bounds(glyph_set, cmap[ord("H")])
        if h_bounds is None or h_bounds[3] <= 0:
            raise FontExcluded("no_cap_height", "'H' has no ink above the baseline")
        cap_units = float(h_bounds[3])
    except FontExcluded:
        raise
    except Exception as e:  # noqa: BLE001 - broken glyph data
        raise FontExcluded("unreadable", f"glyph data cannot be read: {e}") from e
    finally:
        tt.close()

    canvas = SUPERSAMPLE * image_size
    size_px = CAP_HEIGHT_FRACTION * canvas * upem / cap_units
    try:
        pil_font = ImageFont.truetype(
            str(path), size=size_px, layout_engine=ImageFont.Layout.BASIC
        )
        if location:  # FreeType reports axes in fvar order, like fontTools
            pil_font.set_variation_by_axes([v for _, v in location])
    except Exception as e:  # noqa: BLE001
        raise FontExcluded("unreadable", f"PIL/FreeType cannot load it: {e}") from e

    baseline = BASELINE_FRACTION * canvas
    images = np.zeros((len(characters), image_size, image_size), dtype=np.uint8)
    clipped: list[str] = []
    blank: list[str] = []
    for i, c in enumerate(characters):
        hi, was_clipped = _render_char(pil_font, c, canvas, baseline)
        if was_clipped:
            clipped.append(c)
        if hi.max() == 0:
            blank.append(c)
        small = Image.fromarray(hi).resize((image_size, image_size), Image.Resampling.BOX)
        images[i] = np.asarray(small)
        if images[i].max() == 0:
            blank.append(c)
    if blank:
        raise FontExcluded("blank_render", "renders blank: " + "".join(sorted(set(blank))))
    if clipped:
        raise FontExcluded("clipped", "does not fit the canvas: " + "".join(clipped))

    index = {c: i for i, c in enumerate(characters)}
    same_case: list[str] = []
    for c in characters:
        u = c.upper()
        if c.islower() and u != c and u in index:
            diff = np.abs(images[index[c]].astype(np.int16) - images[index[u]].astype(np.int16))
            if int(diff.max()) <= CASE_MAX_ABS_DIFF:
                same_case.append(c)
    if same_case:
        raise FontExcluded(
            "lowercase_equals_uppercase",
            f"lowercase renders like uppercase (max abs diff <= {CASE_MAX_ABS_DIFF}): "
            + "".join(same_case),
        )
    # Any other pair of classes that cannot be told apart (e.g. 'I' and 'l' drawn as the same
    # bar) would be label noise, so the font goes too.
    flat = images.reshape(len(characters), -1).astype(np.int16)
    twins: list[str] = []
    for i in range(len(characters) - 1):
        close = np.abs(flat[i + 1 :] - flat[i]).max(axis=1) <= CASE_MAX_ABS_DIFF
        twins += [characters[i] + characters[i + 1 + j] for j in np.flatnonzero(close)]
    if twins:
        raise FontExcluded(
            "indistinguishable_characters",
            f"different characters render alike (max abs diff <= {CASE_MAX_ABS_DIFF}): "
            + ", ".join(twins),
        )
    return images


def filter_and_render(
    fonts: Sequence[FontSource],
    characters: str = DEFAULT_CHARACTERS,
    image_size: int = 32,
    progress: bool = False,
) -> tuple[list[FontSource], np.ndarray, list[dict[str, str]]]:
    """Render every font; returns (kept fonts, uint8 (F, C, S, S), excluded records)."""
    iterable: Iterable[FontSource] = fonts
    if progress:
        from symm.progress import progress_bar

        iterable = progress_bar(fonts, desc="glyphs: rendering fonts", unit="font")
    kept: list[FontSource] = []
    stacks: list[np.ndarray] = []
    excluded: list[dict[str, str]] = []
    for src in iterable:
        try:
            imgs = render_font(src, characters, image_size)
        except FontExcluded as e:
            excluded.append({**_font_record(src), "reason": e.reason, "detail": e.detail})
            continue
        kept.append(src)
        stacks.append(imgs)
    if stacks:
        all_images = np.stack(stacks)
    else:
        all_images = np.zeros((0, len(characters), image_size, image_size), np.uint8)
    return kept, all_images, excluded


def _font_record(src: FontSource) -> dict[str, str]:
    return {
        "family": src.family,
        "package": src.package,
        "package_version": src.package_version,
        "file": src.path.name,
        "sha256": src.sha256,
    }


# --------------------------------------------------------------------------------------------
# Splits and files
# --------------------------------------------------------------------------------------------


def split_classes(n_classes: int, val_classes: int, seed: int) -> dict[str, list[int]]:
    """Seeded class permutation: first half -> train pool (minus val), second half -> test.

    A permutation rather than sorted halves so that train and test each mix digits, capitals
    and lowercase letters.
    """
    perm = np.random.default_rng(seed).permutation(n_classes)
    n_pool = n_classes // 2
    pool, test = perm[:n_pool], perm[n_pool:]
    val, train = pool[:val_classes], pool[val_classes:]
    return {
        "train": sorted(int(c) for c in train),
        "val": sorted(int(c) for c in val),
        "test": sorted(int(c) for c in test),
    }


def _validate_args(characters: str, val_classes: int, image_size: int) -> None:
    if len(set(characters)) != len(characters):
        dups = sorted({c for c in characters if characters.count(c) > 1})
        raise ValueError(
            f"characters contains duplicates {''.join(dups)!r}; each class must appear once "
            "- remove the repeated characters."
        )
    if len(characters) < 4:
        raise ValueError(
            f"characters has {len(characters)} classes; need at least 4 so that train and "
            "test each get 2 - pass more characters."
        )
    n_pool = len(characters) // 2
    if val_classes < 0 or n_pool - val_classes < 2:
        raise ValueError(
            f"val_classes={val_classes} leaves {n_pool - val_classes} training classes out of "
            f"a train pool of {n_pool}; need >= 2 - lower val_classes (0..{n_pool - 2}) or pass "
            "more characters."
        )
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small to render glyphs; use >= 8.")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Deterministic .npz (the packed format's writer), atomic replace."""
    from symm.data.packed import npz_bytes

    write_bytes_atomic(path, npz_bytes(arrays))


def prepare_glyphs(
    out_dir: Path | str,
    *,
    image_size: int = 32,
    characters: str = DEFAULT_CHARACTERS,
    val_classes: int = 6,
    seed: int = 0,
    max_fonts_per_family: int = 3,
    system_fonts: bool = False,
    min_fonts: int = 40,
    progress: bool = True,
) -> dict[str, Any]:
    """Render the dataset into ``out_dir`` (three .npz splits + manifest.json); return the manifest.

    Each npz holds ``images`` uint8 (N, S, S), ``labels`` int64 (index into ``characters``) and
    ``fonts`` int32 (index into ``manifest["fonts_used"]``); rows are ordered by class, then font.
    """
    _validate_args(characters, val_classes, image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    fonts, discovery = _discover(system_fonts, max_fonts_per_family)
    kept, images, excluded = filter_and_render(fonts, characters, image_size, progress=progress)
    if len(kept) < min_fonts:
        reasons: dict[str, int] = {}
        for e in excluded:
            reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
        raise ValueError(
            f"only {len(kept)} fonts survived filtering (need min_fonts={min_fonts}; "
            f"{len(fonts)} candidates, excluded by reason: {reasons}). Install the pinned font "
            "packages (pip install -r requirements.txt), pass fewer/more common characters, "
            "raise max_fonts_per_family, or lower min_fonts."
        )

    splits = split_classes(len(characters), val_classes, seed)
    n_fonts = len(kept)
    files_sha: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        classes = splits[split]
        # images[f, c] -> rows ordered by class then font
        block = images[:, classes] if classes else images[:, :0]
        split_images = np.ascontiguousarray(block.transpose(1, 0, 2, 3)).reshape(
            -1, image_size, image_size
        )
        labels = np.repeat(np.asarray(classes, dtype=np.int64), n_fonts)
        font_ids = np.tile(np.arange(n_fonts, dtype=np.int32), len(classes))
        path = out / f"{split}.npz"
        _write_npz(path, {"images": split_images, "labels": labels, "fonts": font_ids})
        files_sha[f"{split}.npz"] = _sha256(path)
        counts[split] = {"images": int(split_images.shape[0]), "classes": len(classes)}

    reason_counts: dict[str, int] = {}
    for e in excluded:
        reason_counts[e["reason"]] = reason_counts.get(e["reason"], 0) + 1
    manifest: dict[str, Any] = {
        "dataset": DATASET_NAME,
        "parameters": {
            "image_size": image_size,
            "characters": characters,
            "val_classes": val_classes,
            "seed": seed,
            "max_fonts_per_family": max_fonts_per_family,
            "system_fonts": system_fonts,
            "min_fonts": min_fonts,
            "cap_height_fraction": CAP_HEIGHT_FRACTION,
            "baseline_fraction": BASELINE_FRACTION,
            "supersample": SUPERSAMPLE,
            "case_max_abs_diff": CASE_MAX_ABS_DIFF,
        },
        "n_classes": len(characters),
        "characters": {s: "".join(characters[c] for c in splits[s]) for s in SPLITS},
        "class_ids": splits,
        "counts": counts,
        "n_fonts_used": n_fonts,
        "fonts_used": [_font_record(f) for f in kept],
        "n_fonts_excluded": len(excluded),
        "excluded_by_reason": dict(sorted(reason_counts.items())),
        "fonts_excluded": excluded,
        "discovery": {**discovery, "fonts_considered": len(fonts)},
        "files": files_sha,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes_atomic(out / "manifest.json", text.encode("utf-8"))
    if progress:
        dt = time.perf_counter() - t0
        print(
            f"glyphs: {n_fonts} fonts x {len(characters)} classes -> "
            + ", ".join(f"{s} {counts[s]['images']} images/{counts[s]['classes']} classes"
                        for s in SPLITS)
            + f" in {dt:.1f}s ({out})"
        )
    return manifest

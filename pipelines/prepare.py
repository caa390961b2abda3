"""DVC stage `prepare@<dataset>`: build one prepared dataset under data/prepared/<dataset>.

Usable alone:
    python -m pipelines.prepare --dataset glyphs --out data/prepared/glyphs
    python -m pipelines.prepare --dataset cub|cars196|sop --root PATH [--out DIR] [--workers N]

For the image benchmarks, PATH is the dataset's folder, a folder holding it, or the unextracted
archive. Without --root: $SYMM_<NAME>_ROOT (SYMM_CUB_ROOT, SYMM_CARS196_ROOT, SYMM_SOP_ROOT), then
data.<name>.root in params.yaml, then $SYMM_DATA_ROOT/<usual folder or archive name>.
--workers (or $SYMM_PREPARE_WORKERS) sets the decoding processes; it never changes the output.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.settings import REPO_ROOT, read_params


def _prepare_glyphs(out: Path, settings: dict[str, Any], root: Path | None) -> dict[str, Any]:
    from symm.data.glyphs import prepare_glyphs

    if root is not None:
        raise ValueError("the glyphs dataset is rendered from installed font packages; it takes no --root")
    return prepare_glyphs(out, progress=True, **settings)


def _prepare_workers() -> int | None:
    value = os.environ.get("SYMM_PREPARE_WORKERS")
    return int(value) if value else None


def _image_rule(name: str) -> Callable[[Path, dict[str, Any], Path | None], dict[str, Any]]:
    def rule(out: Path, settings: dict[str, Any], root: Path | None) -> dict[str, Any]:
        from symm.data.build import prepare_from_settings

        return prepare_from_settings(name, out, settings, root=root, workers=_prepare_workers(), progress=True)

    rule.__name__ = f"_prepare_{name}"
    return rule


# dataset name -> function(out_dir, data.<name> settings, root) writing out_dir/manifest.json
PREPARE_RULES: dict[str, Callable[[Path, dict[str, Any], Path | None], dict[str, Any]]] = {
    "glyphs": _prepare_glyphs,
    "cub": _image_rule("cub"),
    "cars196": _image_rule("cars196"),
    "sop": _image_rule("sop"),
}


def prepare(dataset: str, out: Path, params_path: Path, root: Path | None = None) -> dict[str, Any]:
    if dataset not in PREPARE_RULES:
        raise ValueError(
            f"no prepare rule for dataset {dataset!r}; known datasets: {', '.join(sorted(PREPARE_RULES))}"
        )
    settings = (read_params(params_path).get("data") or {}).get(dataset)
    if settings is None:
        raise ValueError(f"{params_path} has no data.{dataset} section (the dataset's prepare settings)")
    return PREPARE_RULES[dataset](out, dict(settings), root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", type=Path, default=None, help="default: data/prepared/<dataset>")
    parser.add_argument("--root", type=Path, default=None, help="where the raw dataset lies (real datasets)")
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    parser.add_argument("--workers", type=int, default=None,
                        help="image decoding processes (default: $SYMM_PREPARE_WORKERS or min(cores, 8))")
    args = parser.parse_args(argv)
    if args.workers is not None:
        os.environ["SYMM_PREPARE_WORKERS"] = str(args.workers)
    out = args.out or REPO_ROOT / "data" / "prepared" / args.dataset
    try:
        manifest = prepare(args.dataset, out, args.params, args.root)
    except (ValueError, FileNotFoundError) as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return 2
    counts = manifest.get("counts", {})
    print(f"prepared {args.dataset} -> {out} {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

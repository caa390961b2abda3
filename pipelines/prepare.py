"""DVC stage `prepare@<dataset>`: build one prepared dataset under data/prepared/<dataset>.

Usable alone: python -m pipelines.prepare --dataset glyphs --out data/prepared/glyphs
"""
from __future__ import annotations

import argparse
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


# dataset name -> function(out_dir, data.<name> settings, root) writing out_dir/manifest.json
PREPARE_RULES: dict[str, Callable[[Path, dict[str, Any], Path | None], dict[str, Any]]] = {
    "glyphs": _prepare_glyphs,
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
    args = parser.parse_args(argv)
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

"""Command line: ``python -m pipelines.analyses <name>|all [--smoke-test] [--dataset D] [--out DIR]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from pipelines.analyses import ANALYSES, __doc__ as DOC
from pipelines.analyses.common import analysis_run
from pipelines.settings import REPO_ROOT, read_params


def load_config(name: str, params: Path, smoke_test: bool):
    module = ANALYSES.get(name)
    raw = (read_params(params).get("analyses") or {}).get(name) or {}
    try:
        cfg = module.Config.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{params}: analyses.{name} is invalid ({problems})") from None
    return module, (cfg.smoke() if smoke_test else cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=ANALYSES.names() + ["all"])
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    parser.add_argument("--dataset", default=None, help="a prepared dataset (default: analyses.dataset)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the prepared dataset's folder (default data/prepared/<dataset>)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default reports/analyses/<name>; "
                                                                  "with `all`, its subfolders)")
    parser.add_argument("--smoke-test", action="store_true", help="a few steps, one seed: checks the wiring")
    args = parser.parse_args(argv)
    names = ANALYSES.names() if args.name == "all" else [args.name]
    try:  # every config is checked before any compute
        configs = {name: load_config(name, args.params, args.smoke_test) for name in names}
    except (ValueError, FileNotFoundError) as err:
        print(f"analyses: error: {err}", file=sys.stderr)
        return 2
    for name, (module, cfg) in configs.items():
        out = None if args.out is None else (args.out / name if args.name == "all" else args.out)
        try:
            with analysis_run(name, args.params, args.dataset, out, args.smoke_test, cfg.model_dump(),
                              data_dir=args.data_dir) as ctx:
                module.run(ctx, cfg)
        except (ValueError, FileNotFoundError) as err:
            print(f"analyses {name}: error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

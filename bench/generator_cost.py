"""Per-trial cost of the generator baselines (DAML, HDML) vs plain N-pair on the glyphs default.

Trials run interleaved in one process (round-robin, rotating order each round, one torch
thread as in a sweep trial), so machine load hits every method alike. Reports the median CPU
and wall seconds per trial and their ratio to ``npair``; the default sweep's budget
(``train.steps``) is sized from these ratios.

    python -m bench.generator_cost [--steps 200] [--rounds 2] [--data data/prepared/glyphs]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from pipelines.settings import REPO_ROOT, load_science
from symm.data.prepared import load_split
from symm.training import train_trial

METHODS = ("npair", "daml_triplet", "daml_npair", "hdml_triplet", "hdml_npair")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "prepared" / "glyphs")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    science = load_science(REPO_ROOT / "params.yaml")
    train_cfg = science.train.model_copy(update={"steps": args.steps, "eval_every": min(science.train.eval_every, args.steps)})
    data = {s: load_split(args.data, s) for s in ("train", "val", "test")}
    methods = args.methods.split(",")
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    wall: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(args.rounds):
        for i in range(len(methods)):
            name = methods[(i + r) % len(methods)]
            c0, w0 = time.process_time(), time.perf_counter()
            train_trial(method_spec=science.methods[name].model_dump(), model_cfg=science.model, train_cfg=train_cfg,
                        eval_cfg=science.eval, data=data, seed=r)
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
            print(f"round {r} {name}: cpu {cpu[name][-1]:.1f} s, wall {wall[name][-1]:.1f} s", flush=True)
    base = statistics.median(cpu["npair"]) if "npair" in cpu else None
    print(f"\n{args.steps} steps/trial, eval every {train_cfg.eval_every}, {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    print("| method | CPU s/trial (median) | wall s/trial | CPU ratio to npair |")
    print("|---|---|---|---|")
    for name in methods:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"| {name} | {c:.1f} | {w:.1f} | {c / base:.2f} |" if base else f"| {name} | {c:.1f} | {w:.1f} | - |")


if __name__ == "__main__":
    main()

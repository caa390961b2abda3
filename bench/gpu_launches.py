"""Kernels one forward+backward of each logit loss launches on a GPU, counted without a GPU.

At the paper's batch (N = 64 pairs) a GPU finishes each of these small kernels in about the
time it takes to launch it, so the loss's time there is roughly its number of launches — the
cost this project's CUDA path (``symm.losses.triton_kernels``) was built to cut. Counted on the
CPU: torch's profiler lists the aten kernels of the same code path the GPU runs (views and
allocations excluded: they launch nothing; every matmul counted once); the Triton node's own
kernels are counted at their launch, with the kernels replaced by counters (in Triton's
interpreter mode, so that the CPU tensors take the GPU path). A count, not a time: when a
GPU is lent, ``python -m bench.loss_overhead --device cuda`` measures the times.

    TRITON_INTERPRET=1 python -m bench.gpu_launches [--pairs 64] [--dim 512] [--markdown docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from symm.losses import create_loss, triton_kernels

# aten ops that launch no kernel on a GPU (views, metadata, allocations, host reads)
NO_LAUNCH = {
    "aten::as_strided", "aten::view", "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::resolve_conj",
    "aten::resolve_neg", "aten::resize_", "aten::t", "aten::transpose", "aten::select", "aten::slice", "aten::expand",
    "aten::unsqueeze", "aten::squeeze", "aten::reshape", "aten::_reshape_alias", "aten::diagonal", "aten::alias",
    "aten::detach", "aten::permute", "aten::lift_fresh", "aten::unbind", "aten::to", "aten::_to_copy",
    "aten::result_type", "aten::contiguous", "aten::numpy_T", "aten::item", "aten::_local_scalar_dense",
    "aten::_unsafe_view",
}
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"}
ROWS = [("npair", None), ("npair", "official"), ("npair", "point4"), ("npair", "pair16"),
        ("angular", None), ("angular", "official"), ("angular", "point4")]
TRITON_NAMES = ("coefficients", "forward", "backward", "finish")


class _CountedLaunch:
    """Stands in for one Triton kernel: counts its launches, runs nothing (the outputs are not read)."""

    def __init__(self, name: str, launches: list[str]) -> None:
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(self.name)


def count(loss_name: str, mode: str | None, path: str, n_pairs: int, dim: int) -> tuple[int, int, Counter]:
    """(aten kernels, Triton kernels, aten kernels by name) of one forward+backward on ``path``."""
    os.environ["SYMM_COMPILED_KERNELS"] = "0" if path == "torch node" else "1"
    options = {} if mode is None else dict(negatives="symm", symm_mode=mode)
    loss = create_loss(loss_name, **options)
    embeddings = torch.randn(2 * n_pairs, dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n_pairs).repeat_interleave(2)
    launches: list[str] = []
    kernels = triton_kernels._kernels
    triton_kernels._kernels = lambda: tuple(_CountedLaunch(name, launches) for name in TRITON_NAMES)
    try:
        x = embeddings.clone().requires_grad_(True)
        loss(x, labels).backward()  # warm-up: plans, caches
        launches.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            x = embeddings.clone().requires_grad_(True)
            loss(x, labels).backward()
    finally:
        triton_kernels._kernels = kernels
        os.environ.pop("SYMM_COMPILED_KERNELS", None)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    # a matmul counts once (its children are views and the BLAS call); other ops where they launch
    leaves = [e for e in events if not _inside_matmul(e) and (e.name in MATMULS or (
        e.name not in NO_LAUNCH and not any(c.name.startswith("aten::") for c in e.cpu_children)))]
    names = Counter(e.name for e in leaves)
    return sum(names.values()), len(launches), names


def _inside_matmul(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in MATMULS:
            return True
        parent = parent.cpu_parent
    return False


def table(n_pairs: int, dim: int) -> list[str]:
    lines = [f"Kernel launches per forward+backward, N = {n_pairs} pairs, d = {dim} (torch {torch.__version__}; "
             "`TRITON_INTERPRET=1 python -m bench.gpu_launches`):", "",
             "| loss | path on a GPU | aten kernels (of them matmuls) | Triton kernels | launches | × base loss |",
             "|---|---|---|---|---|---|"]
    base: dict[str, int] = {}
    for loss_name, mode in ROWS:
        paths = ["base"] if mode is None else ["Triton node", "torch node"]
        for path in paths:
            aten, launched, names = count(loss_name, mode, path, n_pairs, dim)
            total = aten + launched
            label = loss_name if mode is None else f"symm_{loss_name} {mode}"
            if mode is None:
                base[loss_name] = total
            matmuls = sum(names[m] for m in MATMULS)
            ratio = "" if mode is None else f"{total / base[loss_name]:.2f}"
            lines.append(f"| {label} | {path if mode else 'torch'} | {aten} ({matmuls}) | {launched} | {total} | {ratio} |")
    return lines


def write_results(path: Path, text: str) -> None:
    begin, end = "<!-- gpu_launches results: begin -->", "<!-- gpu_launches results: end -->"
    content = path.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"{path} has no '{begin}' ... '{end}' block to rewrite: add the two markers where the table goes")
    head, rest = content.split(begin, 1)
    path.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--markdown", type=Path, help="rewrite this file's gpu_launches results block")
    args = parser.parse_args()
    if not triton_kernels.load():
        raise SystemExit("triton is not importable: it ships with torch's CUDA wheels (pip install triton)")
    if not triton_kernels.interpreting():
        raise SystemExit("run with TRITON_INTERPRET=1 in the environment (the CPU tensors then take the GPU path): "
                         "TRITON_INTERPRET=1 python -m bench.gpu_launches")
    text = "\n".join(table(args.pairs, args.dim))
    print(text)
    if args.markdown:
        write_results(args.markdown, text)


if __name__ == "__main__":
    main()

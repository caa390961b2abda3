"""The matrix products of the Symm logit losses, quickly: each loss's products timed alone.

The products are the ones the loss's code path really runs (``bench.products`` records them:
aten products forward and backward, and the BLAS syrk of the Symm Gram), so the numbers follow
the code. Plain N-pair / angular run 3 N²d multiply-adds; Symm ``official`` / ``pair16`` and
angular ``official`` one triangle of the (2N, 2N) Gram (syrk, ≈ 2 N²d) and one (2N, 2N)·(2N, d)
product backward (4 N²d); N-pair ``point4`` 5 N²d; angular ``point4`` 6 N²d. The products
estimate, (base − base's products + the Symm loss's products) / base, is the ratio if everything
but the matrix products cost what it costs in the base loss: how much of a ratio the products
explain on this CPU's BLAS. It is not a bound: a Symm node can do the rest in less time than its
base loss does (Symm+angular does at N = 64). ``bench.loss_overhead`` reports the same estimate
per run beside the verdict (the numbers to quote); this script is the quick look at these losses
alone, in interleaved rounds.

    python -m bench.matmul_floor [--repeats 200] [--threads 1]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch

from bench.products import multiply_adds, record_products, replay
from symm.losses import create_loss

LOSSES = {"npair": ("official", "point4", "pair16"), "angular": ("official", "point4")}


def cpu_ms(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median CPU ms of each call, timed in interleaved rounds (a new seeded order each round: what ran
    just before a call changes its time)."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order, rng = list(calls), random.Random(0)
    for round_index in range(repeats + 10):  # the first 10 rounds warm up
        rng.shuffle(order)
        for name in order:
            start = time.process_time()
            calls[name]()
            if round_index >= 10:
                samples[name].append(time.process_time() - start)
    return {name: 1000 * statistics.median(values) for name, values in samples.items()}


def estimates(n: int, dim: int, repeats: int) -> list[str]:
    """One line per loss: its time, its products' time and multiply-adds, and (Symm) the products estimate."""
    torch.manual_seed(0)
    embeddings, labels = torch.randn(2 * n, dim), torch.arange(n).repeat_interleave(2)
    calls, units = {}, {}
    for name, modes in LOSSES.items():
        for mode in (None, *modes):
            loss = create_loss(name, **({"negatives": "symm", "symm_mode": mode} if mode else {}))
            row = f"symm_{name} {mode}" if mode else name

            def step(loss=loss) -> None:
                loss(embeddings.detach().requires_grad_(True), labels).backward()

            products = record_products(loss, embeddings, labels)
            calls[row], calls[f"products: {row}"] = step, replay(products)
            units[row] = multiply_adds(products) / (n * n * dim)
    ms = cpu_ms(calls, repeats)
    lines = []
    for name, modes in LOSSES.items():
        base, base_products = ms[name], ms[f"products: {name}"]
        lines.append(f"  {name}: {base:.3f} ms, products {base_products:.3f} ms ({units[name]:.2f} N²d)")
        for mode in modes:
            row = f"symm_{name} {mode}"
            total, products = ms[row], ms[f"products: {row}"]
            lines.append(f"  {row}: {total:.3f} ms (× {total / base:.2f}), products {products:.3f} ms "
                         f"({units[row]:.2f} N²d): products estimate × {(base - base_products + products) / base:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as bench.loss_overhead does by default
    for n, dim in ((64, 512), (256, 128)):
        print(f"N={n} d={dim} (CPU medians of interleaved rounds):")
        print("\n".join(estimates(n, dim, args.repeats)))


if __name__ == "__main__":
    main()

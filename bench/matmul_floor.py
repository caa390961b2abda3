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
per run beside the verdict (the numbers to quote); this script is the quick look: one process,
``loss_overhead.measure`` on the N-pair and angular rows only, with the multiply-adds.

    python -m bench.matmul_floor [--repeats 60] [--threads 1]
"""
from __future__ import annotations

import argparse

import torch

from bench import loss_overhead
from bench.products import multiply_adds, record_products


def estimates(n: int, dim: int, repeats: int) -> list[str]:
    """One line per Symm logit row: its ratio, its products estimate (``loss_overhead.products_estimates``,
    from ``loss_overhead.measure``'s interleaved rounds) and its products' multiply-adds against its base's."""
    torch.manual_seed(0)
    embeddings, labels = torch.randn(2 * n, dim), torch.arange(n).repeat_interleave(2)
    lines = []
    for base in ("npair", "angular"):
        medians = loss_overhead.measure(n, dim, repeats, "cpu", only=base)
        estimate = loss_overhead.products_estimates(medians)
        for row, row_base, loss, opts in loss_overhead.ROWS:
            if row_base != base or row not in estimate or "env" in opts:  # the default code path only
                continue
            units = [multiply_adds(record_products(loss_overhead.make_row_loss(loss, o), embeddings, labels)) / (n * n * dim)
                     for o in (opts, {})]
            lines.append(f"  {row}: × {medians[row][1] / medians[base][1]:.2f} its base, products estimate "
                         f"× {estimate[row]:.2f}; products {units[0]:.2f} N²d against the base's {units[1]:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as bench.loss_overhead does by default
    for n, dim in loss_overhead.SIZES:
        print(f"N={n} d={dim} (CPU-time medians of bench.loss_overhead's interleaved rounds, its rows for this loss):")
        print("\n".join(estimates(n, dim, args.repeats)))


if __name__ == "__main__":
    main()

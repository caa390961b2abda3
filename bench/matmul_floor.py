"""The matmul floor of the Symm logit losses: Gram products each loss needs, timed alone.

Plain N-pair needs A·Pᵀ forward and two N×N×d products backward (3 N²d multiply-adds). Symm
needs Gram blocks of the real points: ``official`` / ``pair16`` (and angular, whose rows mix
a_i and p_i) the 2N×2N Gram [A; P]·[A; P]ᵀ forward and one 2N×2N×d product backward (8 N²d);
``point4`` for N-pair A·[A; P]ᵀ forward and two products backward (6 N²d). Whatever else the
loss does, its time is at least the base loss's time plus the extra matmul time; dividing
gives a floor for the ratio to the base loss (the base losses are timed here too, forward +
backward, as in ``bench.loss_overhead``).

    python -m bench.matmul_floor [--repeats 200] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from symm.losses import create_loss


def cpu_ms(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    for _ in range(10):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        samples.append(time.process_time() - start)
    return 1000 * statistics.median(samples)


def loss_ms(name: str, n: int, dim: int, repeats: int) -> float:
    """Median CPU ms of one forward+backward of a plain loss on random embeddings."""
    torch.manual_seed(0)
    embeddings = torch.randn(2 * n, dim)
    labels = torch.arange(n).repeat_interleave(2)
    loss = create_loss(name)

    def step() -> torch.Tensor:
        x = embeddings.detach().requires_grad_(True)
        loss(x, labels).backward()
        return x

    return cpu_ms(step, repeats)


def floors(n: int, dim: int, repeats: int) -> dict[str, float]:
    """Median CPU ms of the matmuls each loss needs (forward + backward)."""
    torch.manual_seed(0)
    a, p = torch.randn(n, dim), torch.randn(n, dim)
    points = torch.cat([a, p])
    g_nn, g_n2n, g_2n2n = torch.randn(n, n), torch.randn(n, 2 * n), torch.randn(2 * n, 2 * n)
    return {
        "npair": cpu_ms(lambda: a @ p.T, repeats) + cpu_ms(lambda: g_nn @ p, repeats) + cpu_ms(lambda: g_nn.T @ a, repeats),
        "gram_2n": cpu_ms(lambda: points @ points.T, repeats) + cpu_ms(lambda: g_2n2n @ points, repeats),
        "anchor_gram": cpu_ms(lambda: a @ points.T, repeats) + cpu_ms(lambda: g_n2n.T @ a, repeats) + cpu_ms(lambda: g_n2n @ points, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for n, dim in ((64, 512), (256, 128)):
        f = floors(n, dim, args.repeats)
        print(f"N={n} d={dim}: N-pair matmuls {f['npair']:.3f} ms, 2N×2N Gram fwd+bwd {f['gram_2n']:.3f} ms, "
              f"A·[A;P]ᵀ fwd+bwd {f['anchor_gram']:.3f} ms (CPU, medians)")
        for name in ("npair", "angular"):
            base = loss_ms(name, n, dim, args.repeats)
            full = (base + f["gram_2n"] - f["npair"]) / base
            line = f"  {name} {base:.3f} ms; ratio floor: official" + (f"/pair16 × {full:.2f}" if name == "npair" else f"/point4 × {full:.2f}")
            if name == "npair":
                line += f", point4 × {(base + f['anchor_gram'] - f['npair']) / base:.2f}"
            print(line)


if __name__ == "__main__":
    main()

"""Cost of symmetrical synthesis: N-pair vs Symm+N-pair loss, measured side by side.

The paper (Tesla P40, batch 64 classes × 2, 512-d) reports 0.2454 ms vs 0.2497 ms for the loss
alone (+1.8%). This times forward+backward of the loss only, interleaving the two losses so
machine noise hits both, and reports the median ratio.

    python -m bench.loss_cost [--classes 64] [--dim 512] [--repeats 200] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from symm.losses import create_loss


def time_once(loss_fn: torch.nn.Module, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    x = embeddings.detach().requires_grad_(True)
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss_fn(x, labels).backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=64)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    embeddings = torch.randn(2 * args.classes, args.dim, device=args.device)
    labels = torch.arange(args.classes, device=args.device).repeat_interleave(2)
    losses = {
        "npair": create_loss("npair"),
        "symm_npair (official)": create_loss("npair", negatives="symm", symm_mode="official"),
        "symm_npair (pair16)": create_loss("npair", negatives="symm", symm_mode="pair16"),
    }
    times: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(10):  # warm-up
        for fn in losses.values():
            time_once(fn, embeddings, labels)
    for _ in range(args.repeats):
        for name, fn in losses.items():
            times[name].append(time_once(fn, embeddings, labels))
    base = statistics.median(times["npair"])
    print(f"device={args.device} batch={args.classes}x2 dim={args.dim} repeats={args.repeats} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'loss':<24}{'median ms':>10}{'ratio':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24}{1000 * median:>10.3f}{median / base:>8.2f}")
    print("paper (Tesla P40): npair 0.2454 ms, symm_npair 0.2497 ms, ratio 1.02")


if __name__ == "__main__":
    main()

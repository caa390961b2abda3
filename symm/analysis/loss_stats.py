"""Per-step statistics of the metric losses, without touching the trainer.

The trainer averages a loss's ``last_stats`` over each evaluation interval; the "ratio of feature
points" analysis wants every step. A global module forward hook sees each call of a pair-based
loss (one per training step) and copies its ``last_stats`` right after the forward.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from symm.losses.base import PairLoss


@contextmanager
def record_loss_stats() -> Iterator[list[dict[str, float]]]:
    """Yield a list that receives ``dict(loss.last_stats)`` after every PairLoss forward in the block."""
    calls: list[dict[str, float]] = []

    def hook(module: torch.nn.Module, inputs: object, output: object) -> None:
        if isinstance(module, PairLoss):
            calls.append(dict(module.last_stats))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()

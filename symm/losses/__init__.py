"""Metric-learning losses chosen by name: ``create_loss(name, negatives=..., **options)``.

Every loss is an ``nn.Module`` called as ``loss(embeddings, labels)``. Losses that use
synthetic negatives expose ``last_stats`` (e.g. the share of selected negatives that are
synthetic) for the trainer to log.
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from symm.losses.npair import NPairLoss
from symm.losses.pairs import split_pairs
from symm.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")
LOSSES.register("npair")(NPairLoss)


def create_loss(name: str, negatives: str = "none", **options: Any) -> nn.Module:
    """Build a registered loss; unknown names or options raise a ValueError naming them."""
    factory = LOSSES.get(name)
    accepted = {
        p.name for p in inspect.signature(factory).parameters.values() if p.kind is p.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for loss {name!r}; accepted: {sorted(accepted - {'negatives'})}"
        )
    return factory(negatives=negatives, **options)


__all__ = ["LOSSES", "NPairLoss", "create_loss", "split_pairs"]

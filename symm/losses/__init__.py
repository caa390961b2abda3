"""Metric-learning losses chosen by name: ``create_loss(name, negatives=..., **options)``.

Every loss is an ``nn.Module`` called as ``loss(embeddings, labels)`` on an N-pair batch (each
label exactly twice: anchor first, positive second). Losses using synthetic negatives expose
``last_stats["synthetic_share"]`` for the trainer to log.
"""
from __future__ import annotations

import inspect
from typing import Any

from symm.losses.base import NEGATIVE_STRATEGIES, PairLoss
from symm.losses.distance import ContrastiveLoss, LiftedStructureLoss, SemiHardTripletLoss, TripletLoss
from symm.losses.npair import AngularLoss, NPairLoss
from symm.losses.pairs import split_pairs
from symm.registry import Registry

LOSSES: Registry[PairLoss] = Registry("loss")
for _cls in (NPairLoss, AngularLoss, TripletLoss, SemiHardTripletLoss, LiftedStructureLoss, ContrastiveLoss):
    LOSSES.register(_cls.name)(_cls)


def _accepted_options(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names |= {p.name for p in inspect.signature(klass.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}
    return names


def create_loss(name: str, negatives: str = "none", **options: Any) -> PairLoss:
    """Build a registered loss; unknown names, options or combinations raise a ValueError naming them."""
    cls = LOSSES.get(name)
    accepted = _accepted_options(cls)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for loss {name!r}; accepted: {sorted(accepted - {'negatives'})}")
    return cls(negatives=negatives, **options)


def supported_combinations() -> list[tuple[str, str, str | None]]:
    """Every (loss, negatives, symm_mode) the registry defines — for docs and generic tests."""
    combos = []
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        for negatives in cls.negative_strategies:
            for mode in (cls.symm_modes if negatives == "symm" else (None,)):
                combos.append((name, negatives, mode))
    return combos


__all__ = ["LOSSES", "NEGATIVE_STRATEGIES", "create_loss", "split_pairs", "supported_combinations"]

"""Training methods chosen by kind: ``create_method(kind, **options)``.

Every method implements one interface (``symm.methods.base.TrainingMethod``), so the trainer
has no per-method branches: plain metric losses (``metric_loss``) and the generator baselines
DAML (``daml``) and HDML (``hdml``), which own extra modules, optimisers, phases and running
statistics.
"""
from __future__ import annotations

from typing import Any

from symm.methods.base import TrainingMethod
from symm.methods.daml import DAMLMethod
from symm.methods.hdml import HDMLMethod
from symm.methods.metric_loss import MetricLossMethod
from symm.registry import Registry

METHOD_KINDS: Registry[TrainingMethod] = Registry("method kind")
METHOD_KINDS.register("metric_loss")(MetricLossMethod)
METHOD_KINDS.register("daml")(DAMLMethod)
METHOD_KINDS.register("hdml")(HDMLMethod)


def create_method(kind: str, **options: Any) -> TrainingMethod:
    """Build a method from its params.yaml spec, e.g. kind=metric_loss, loss=npair, negatives=symm."""
    return METHOD_KINDS.create(kind, **options)


__all__ = ["METHOD_KINDS", "DAMLMethod", "HDMLMethod", "MetricLossMethod", "TrainingMethod", "create_method"]

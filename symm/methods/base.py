"""The one interface every training method implements, so the trainer has no per-method branches.

A method owns its loss and any extra modules (generators, classifiers), its optimisers, its
phases and running statistics. The trainer calls, in order: ``setup`` (once, with the model and
the training labels), ``configure_optimizers``, then ``training_step`` every step;
``checkpoint_state`` / ``load_checkpoint_state`` carry everything beyond the model's weights.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


class TrainingMethod(nn.Module):
    """Base class: owns the loss (and any extra modules) and the optimisers."""

    def setup(self, model: nn.Module, *, total_steps: int, train_labels: torch.Tensor) -> None:
        """Build what depends on the model or the data (generators, classifiers, phase lengths).

        Called once before ``configure_optimizers`` (and before the method is moved to the
        device). Plain losses need nothing.
        """

    def configure_optimizers(self, model: nn.Module, lr: float, weight_decay: float) -> None:
        raise NotImplementedError

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, step: int) -> dict[str, float]:
        """Run one optimisation step; return scalar logs (loss terms, synthetic share...)."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything beyond the backbone needed to continue exactly (optimisers, running stats)."""
        raise NotImplementedError

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


def make_optimizer(groups: Sequence[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam over parameter groups; a group's own ``lr`` (a multiple of the recipe's) wins."""
    return torch.optim.Adam([dict(g) for g in groups], lr=lr, weight_decay=weight_decay)


def route_gradients(routes: Iterable[tuple[torch.Tensor, Sequence[nn.Parameter]]]) -> None:
    """Give each parameter list the gradient of its own loss only (TF ``var_list`` semantics).

    ``routes`` pairs a loss with the parameters it trains; all gradients come from the same
    forward pass, so the order of the routes does not matter. Parameters in no route keep
    ``grad=None`` and are not moved by their optimiser.
    """
    routes = [(loss, [p for p in params if p.requires_grad]) for loss, params in routes]
    for loss, params in routes:
        if not params:
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        for param, grad in zip(params, grads):
            if grad is None:
                continue
            param.grad = grad.detach().clone() if param.grad is None else param.grad + grad


def check_finite(step: int, **losses: torch.Tensor) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value):
            raise FloatingPointError(f"{name} became {value.item()} at step {step}; lower train.lr in params.yaml")


class RunningMean:
    """The HDML release's loss collector: a window mean refreshed every ``window`` values.

    ``read()`` returns ``initial`` until the first window is full, then the mean of the last
    full window (not a moving average); non-finite values are skipped, as in the release.
    """

    def __init__(self, window: int = 64, initial: float = 1e6) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window, self.initial = window, initial
        self.values: list[float] = []
        self.mean = initial

    def update(self, value: float) -> None:
        if value != value or value in (float("inf"), float("-inf")):
            return
        self.values.append(float(value))
        if len(self.values) >= self.window:
            self.mean = sum(self.values) / len(self.values)
            self.values = []

    def read(self) -> float:
        return self.mean

    def state_dict(self) -> dict[str, Any]:
        return {"values": list(self.values), "mean": self.mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values, self.mean = list(state["values"]), state["mean"]

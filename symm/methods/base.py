"""The one interface every training method implements, so the trainer has no per-method branches.

A method owns its loss and any extra modules (generators, classifiers), its optimisers, its
phases and running statistics. The trainer calls, in order: ``setup`` (once, with the model and
the training labels), ``configure_optimizers``, then ``training_step`` every step;
``checkpoint_state`` / ``load_checkpoint_state`` carry everything beyond the model's weights.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from symm.config import OptimizerConfig
from symm.optim import build_optimizer, build_scheduler


class TrainingMethod(nn.Module):
    """Base class: owns the loss (and any extra modules) and the optimisers."""

    def setup(self, model: nn.Module, *, total_steps: int, train_labels: torch.Tensor | Any) -> None:
        """Build what depends on the model or the data (generators, classifiers, phase lengths).

        Called once before ``configure_optimizers`` (and before the method is moved to the
        device). ``model`` is the raw model (with ``features``, ``embedding``, ``feature_dim``);
        ``train_labels`` every training label (tensor or array). Plain losses need nothing.
        """

    def configure_optimizers(self, model: nn.Module, optim_cfg: OptimizerConfig) -> None:
        """Build optimisers and lr schedulers with symm.optim (same semantics for every method)."""
        raise NotImplementedError

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, step: int) -> dict[str, float]:
        """Run one optimisation step; return scalar logs (loss terms, synthetic share...)."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything beyond the backbone needed to continue exactly (optimisers, schedulers, running stats)."""
        raise NotImplementedError

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class OptimizerSet:
    """Named optimisers, each with its lr schedule, built by symm.optim; one state_dict for all."""

    def __init__(self) -> None:
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}

    def add(self, name: str, groups: Sequence[dict[str, Any]], cfg: OptimizerConfig) -> None:
        """``groups``: param-group dicts; a group's own ``lr`` (e.g. a multiple of the recipe's) wins."""
        self.optimizers[name] = build_optimizer([dict(g) for g in groups], cfg)
        self.schedulers[name] = build_scheduler(self.optimizers[name], cfg)

    def __bool__(self) -> bool:
        return bool(self.optimizers)

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def step(self, *names: str) -> None:
        """Step the named optimisers, then every schedule: lr schedules follow the global step
        even for an optimiser idle in this phase (DAML's joint optimisers during the warm-up)."""
        for name in names:
            self.optimizers[name].step()
        with warnings.catch_warnings():  # torch warns when a schedule steps before its optimiser ever did
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            for scheduler in self.schedulers.values():
                scheduler.step()

    def lr(self, name: str) -> float:
        return self.optimizers[name].param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.optimizers:
            self.optimizers[name].load_state_dict(state["optimizers"][name])
            self.schedulers[name].load_state_dict(state["schedulers"][name])


def constant_adam(lr: float) -> OptimizerConfig:
    """Adam at a fixed lr, no weight decay: the HDML release's generator and classifier optimisers."""
    return OptimizerConfig(name="adam", lr=lr, weight_decay=0.0)


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
            raise FloatingPointError(f"{name} became {value.item()} at step {step}; lower train.optimizer.lr in params.yaml")


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

"""Optimisers and learning-rate schedules built from ``OptimizerConfig`` (params.yaml ``train.optimizer``).

One place decides how a recipe's words become torch objects, so every method (plain metric
losses, DAML, HDML) gets the same optimiser semantics:

- ``weight_decay_mode: coupled`` is an L2 term added to the loss, λ/2·‖w‖² on every parameter
  given (TensorFlow's ``tf.nn.l2_loss`` convention, the official release's): its gradient λ·w is
  added to the gradient before the optimiser's update, which is torch's ``weight_decay=λ`` for
  Adam, RMSprop and SGD.
- ``weight_decay_mode: decoupled`` shrinks the weights directly (Loshchilov & Hutter, AdamW);
  defined for Adam only.
- ``schedule.name: step`` multiplies the learning rate by ``gamma`` every ``every`` training
  steps (the release's "halved every 5,000 steps": ``every: 5000, gamma: 0.5``); the scheduler
  is stepped once per optimiser step, so steps 0..every-1 use the base rate.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from symm.config import OptimizerConfig

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def build_optimizer(params: Params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg`` names over ``params`` (tensors, or param-group dicts whose own keys win)."""
    params = list(params)
    common: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.name == "adam":
        cls = torch.optim.AdamW if cfg.weight_decay_mode == "decoupled" else torch.optim.Adam
        return cls(params, betas=tuple(cfg.betas), eps=cfg.eps, **common)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, alpha=cfg.rmsprop_alpha, eps=cfg.eps, momentum=cfg.momentum, **common)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
    raise ValueError(f"unknown optimizer {cfg.name!r}; known: adam, rmsprop, sgd")  # config validation stops this earlier


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule ``cfg.schedule`` names; its state_dict goes into checkpoints."""
    schedule = cfg.schedule
    if schedule.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.every, gamma=schedule.gamma)
    if schedule.name == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"unknown schedule {schedule.name!r}; known: constant, step")

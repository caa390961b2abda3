"""Plain metric losses (with or without mining or symmetrical synthesis): one loss, one optimiser."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from symm.config import OptimizerConfig
from symm.losses import create_loss
from symm.losses.m_per_class import mean_over_pair_sub_batches
from symm.methods.base import TrainingMethod
from symm.optim import build_optimizer, build_scheduler


class MetricLossMethod(TrainingMethod):
    """A plain metric loss (with or without mining/synthesis), one optimiser and its lr schedule."""

    def __init__(self, loss: str, negatives: str = "none", **loss_options: Any) -> None:
        super().__init__()
        self.loss = create_loss(loss, negatives=negatives, **loss_options)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def configure_optimizers(self, model: nn.Module, optim_cfg: OptimizerConfig) -> None:
        params = list(model.parameters()) + list(self.loss.parameters())
        self.optimizer = build_optimizer(params, optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, optim_cfg)

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, step: int) -> dict[str, float]:
        assert self.optimizer is not None and self.scheduler is not None, "call configure_optimizers first"
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        # m-per-class batches (m > 2) are read as m/2 N-pair sub-batches (symm.losses.m_per_class)
        loss, stats = mean_over_pair_sub_batches(self.loss, model(images), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower train.optimizer.lr in params.yaml")
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.item(), "lr": lr, **stats}

    def checkpoint_state(self) -> dict[str, Any]:
        assert self.optimizer is not None and self.scheduler is not None
        return {"loss": self.loss.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        assert self.optimizer is not None, "call configure_optimizers before loading a checkpoint"
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

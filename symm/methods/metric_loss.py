"""Plain metric losses (with or without mining or symmetrical synthesis): one loss, one optimiser."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from symm.losses import create_loss
from symm.methods.base import TrainingMethod


class MetricLossMethod(TrainingMethod):
    """A plain metric loss (with or without mining/synthesis) and one Adam optimiser."""

    def __init__(self, loss: str, negatives: str = "none", **loss_options: Any) -> None:
        super().__init__()
        self.loss = create_loss(loss, negatives=negatives, **loss_options)
        self.optimizer: torch.optim.Optimizer | None = None

    def configure_optimizers(self, model: nn.Module, lr: float, weight_decay: float) -> None:
        params = list(model.parameters()) + list(self.loss.parameters())
        self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, step: int) -> dict[str, float]:
        assert self.optimizer is not None, "call configure_optimizers first"
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(model(images), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower train.lr in params.yaml")
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), **getattr(self.loss, "last_stats", {})}

    def checkpoint_state(self) -> dict[str, Any]:
        assert self.optimizer is not None
        return {"loss": self.loss.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        assert self.optimizer is not None, "call configure_optimizers before loading a checkpoint"
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])

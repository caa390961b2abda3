"""One trial: train a method on one dataset with one seed, select on validation, test once.

Orchestration (Ray, MLflow) stays outside: the caller passes ``on_eval`` to report metrics
and save checkpoints, and ``resume_state`` to continue a trial that was interrupted.
"""
from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from symm.config import EvalConfig, ModelConfig, TrainConfig
from symm.evaluation import evaluate
from symm.methods import TrainingMethod, create_method
from symm.models import create_model
from symm.samplers import NPairBatchSampler

Split = tuple[torch.Tensor, torch.Tensor]  # images (N, C, H, W) float in [0, 1], labels (N,)


@dataclass
class EvalEvent:
    """What the trainer tells its caller after each validation pass ('epoch')."""

    step: int
    epoch: int
    train: dict[str, float]
    val: dict[str, float]
    is_best: bool
    checkpoint: Callable[[], dict[str, Any]]


@dataclass
class TrialResult:
    best_step: int
    best_val: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]]
    model: nn.Module = field(repr=False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small random shifts, scales and rotations: glyph-sized augmentation, on-device and seeded."""
    n = images.shape[0]
    rand = torch.rand(n, 4, generator=generator).to(images.device)
    angle = (rand[:, 0] - 0.5) * (2 * math.radians(8))
    scale = 0.9 + 0.2 * rand[:, 1]
    shift = (rand[:, 2:] - 0.5) * 0.15
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return out


def train_trial(
    *,
    method_spec: dict[str, Any],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    eval_cfg: EvalConfig,
    data: dict[str, Split],
    seed: int,
    device: str | torch.device = "cpu",
    on_eval: Callable[[EvalEvent], None] | None = None,
    resume_state: dict[str, Any] | None = None,
) -> TrialResult:
    """Train, keep the best-on-validation weights, and evaluate them on the test classes."""
    for split in ("train", "val", "test"):
        if split not in data:
            raise ValueError(f"data has no {split!r} split; prepared datasets need train, val and test")
    seed_everything(seed)
    device = torch.device(device)
    train_images, train_labels = (t.to(device) for t in data["train"])
    in_channels = train_images.shape[1]
    model = create_model(model_cfg.backbone, embedding_dim=model_cfg.embedding_dim, in_channels=in_channels, **model_cfg.options).to(device)
    method: TrainingMethod = create_method(method_spec["kind"], **method_spec.get("options", {}))
    method.setup(model, total_steps=train_cfg.steps, train_labels=train_labels)
    method.to(device)
    method.configure_optimizers(model, train_cfg.optimizer)
    sampler = NPairBatchSampler(train_labels.cpu().numpy(), train_cfg.classes_per_batch, seed=seed)
    augment_rng = torch.Generator().manual_seed(seed)

    step, best_score, best_step = 0, -math.inf, 0
    best_weights = copy.deepcopy(model.state_dict())
    best_val: dict[str, float] = {}
    history: list[dict[str, Any]] = []
    if resume_state is not None:
        resume_state = copy.deepcopy(resume_state)
        model.load_state_dict(resume_state["model"])
        method.load_checkpoint_state(resume_state["method"])
        sampler.load_state_dict(resume_state["sampler"])
        augment_rng.set_state(resume_state["augment_rng"])
        torch.set_rng_state(resume_state["torch_rng"])
        step, best_score, best_step = resume_state["step"], resume_state["best_score"], resume_state["best_step"]
        best_weights, best_val, history = resume_state["best_weights"], resume_state["best_val"], resume_state["history"]

    def checkpoint() -> dict[str, Any]:
        """A snapshot (deep copy): later steps must not change a checkpoint already taken."""
        return copy.deepcopy({
            "model": model.state_dict(), "method": method.checkpoint_state(), "sampler": sampler.state_dict(),
            "augment_rng": augment_rng.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
            "best_score": best_score, "best_step": best_step, "best_weights": best_weights,
            "best_val": best_val, "history": history,
        })

    val_images, val_labels = data["val"]
    running: dict[str, list[float]] = {}
    model.train()
    while step < train_cfg.steps:
        batch = torch.as_tensor(sampler.sample(), device=device)
        images, labels = train_images[batch], train_labels[batch]
        if train_cfg.augment:
            images = random_affine(images, augment_rng)
        for key, value in method.training_step(model, images, labels, step).items():
            running.setdefault(key, []).append(value)
        step += 1
        if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
            val = evaluate(embed(model, val_images.to(device), eval_cfg.batch_size), val_labels, ks=eval_cfg.ks, seed=seed)
            score = val[eval_cfg.selection_metric]
            is_best = score > best_score
            if is_best:
                best_score, best_step, best_val = score, step, val
                best_weights = copy.deepcopy(model.state_dict())
            train_logs = {k: float(np.mean(v)) for k, v in running.items()}
            running = {}
            epoch = math.ceil(step / train_cfg.eval_every)
            history.append({"step": step, "epoch": epoch, "train": train_logs, "val": val})
            if on_eval is not None:
                on_eval(EvalEvent(step, epoch, train_logs, val, is_best, checkpoint))

    model.load_state_dict(best_weights)
    test_images, test_labels = data["test"]
    test = evaluate(embed(model, test_images.to(device), eval_cfg.batch_size), test_labels, ks=eval_cfg.ks, seed=seed)
    return TrialResult(best_step=best_step, best_val=best_val, test=test, history=history, model=model)

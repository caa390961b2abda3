"""DAML — Deep Adversarial Metric Learning (Duan et al., CVPR 2018), method.md §6.

A generator G maps (anchor, positive, negative) embeddings to a synthetic negative ñ; its
objective is ‖ñ − a‖² (hardness) + λ1‖ñ − n‖² (stay near the real negative) +
λ2[D²(ñ,a) − D²(p,a) − m]₊ (adversarial). The metric is trained with the base loss on the
synthetic negatives. Schedule: the metric alone at the recipe's lr for the first
``warmup_fraction`` of training, then joint training with separate optimisers (backbone at
lr/1000, embedding head at lr, generator at lr/10).

``update='joint'`` (default, the released Chainer code): both objectives are back-propagated
into every module before the three optimisers step. ``update='separate'``: the generator only
gets J_gen's gradient and the metric only J_m's (the two-player reading). See docs/generators.md.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from symm.losses import create_loss
from symm.losses.base import check_non_negative, check_positive
from symm.config import OptimizerConfig
from symm.methods.base import OptimizerSet, TrainingMethod, check_finite, route_gradients
from symm.methods.tuples import npair_rows, pair_order, sq_dist, triplet_hinge, triplet_indices

BASE_LOSSES = ("npair", "triplet")
UPDATES = ("joint", "separate")


class DAMLGenerator(nn.Sequential):
    """(a, p, n) concatenated (3d) → ñ (d): Linear(3d→d)+ReLU, Linear(d→d)+ReLU, N(0, 0.02) weights (the release's)."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__(nn.Linear(3 * embedding_dim, embedding_dim), nn.ReLU(), nn.Linear(embedding_dim, embedding_dim), nn.ReLU())
        for layer in (self[0], self[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([anchor, positive, negative], dim=-1))


def split_model_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, embedding head) parameters: the head is ``model.embedding``."""
    head = {id(p) for p in model.embedding.parameters()}
    return [p for p in model.parameters() if id(p) not in head], list(model.embedding.parameters())


class DAMLMethod(TrainingMethod):
    """DAML on top of N-pair or triplet (``base_loss``); options as in method.md §6."""

    def __init__(
        self,
        base_loss: str = "npair",
        *,
        update: str = "joint",
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        adv_margin: float = 1.0,
        warmup_fraction: float = 0.2,
        warmup_steps: int | None = None,
        backbone_lr_scale: float = 1e-3,
        head_lr_scale: float = 1.0,
        generator_lr_scale: float = 0.1,
        **loss_options: Any,
    ) -> None:
        super().__init__()
        if base_loss not in BASE_LOSSES:
            raise ValueError(f"DAML plugs into base_loss {list(BASE_LOSSES)}, got {base_loss!r}")
        if update not in UPDATES:
            raise ValueError(f"unknown DAML update {update!r}; choose from {list(UPDATES)}")
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if warmup_steps is not None and warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        check_non_negative(lambda1=lambda1, lambda2=lambda2, adv_margin=adv_margin)
        check_positive(backbone_lr_scale=backbone_lr_scale, head_lr_scale=head_lr_scale,
                       generator_lr_scale=generator_lr_scale)
        self.base_name, self.update = base_loss, update
        self.base = create_loss(base_loss, negatives="none", **loss_options)
        self.lambda1, self.lambda2, self.adv_margin = lambda1, lambda2, adv_margin
        self.warmup_fraction, self.warmup_steps = warmup_fraction, warmup_steps
        self.lr_scales = {"backbone": backbone_lr_scale, "head": head_lr_scale, "generator": generator_lr_scale}
        self.generator: DAMLGenerator | None = None
        self.optimizers = OptimizerSet()

    def setup(self, model: nn.Module, *, total_steps: int, train_labels: torch.Tensor) -> None:
        self.generator = DAMLGenerator(model.embedding.out_features)
        if self.warmup_steps is None:
            self.warmup_steps = round(self.warmup_fraction * total_steps)

    def configure_optimizers(self, model: nn.Module, optim_cfg: OptimizerConfig) -> None:
        """Every optimiser follows the recipe (kind, weight decay, schedule); lrs are multiples of its lr."""
        assert self.generator is not None, "call setup first"
        backbone, head = split_model_params(model)
        lr = optim_cfg.lr
        self.optimizers = OptimizerSet()
        # the release builds a separate optimiser for the warm-up: the joint phase starts with fresh state
        self.optimizers.add("warmup", [{"params": backbone + head}], optim_cfg)
        for name, params in (("backbone", backbone), ("head", head), ("generator", list(self.generator.parameters()))):
            self.optimizers.add(name, [{"params": params, "lr": lr * self.lr_scales[name]}], optim_cfg)

    def phase(self, step: int) -> str:
        return "warmup" if step < (self.warmup_steps or 0) else "joint"

    def losses(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The joint phase's terms from one forward pass (the tests check each one)."""
        assert self.generator is not None, "call setup first"
        order, _ = pair_order(labels)
        z = model(images)[order]  # [anchors, positives]
        x = F.normalize(z, dim=1) if self.base.normalize else z  # the metric's space
        n = z.shape[0] // 2
        if self.base_name == "npair":
            a, p = x[:n], x[n:]
            rows, cols = (~torch.eye(n, dtype=torch.bool, device=z.device)).nonzero(as_tuple=True)
            anchor, positive, negative = a[rows], p[rows], p[cols]  # each other-class positive p_j with (a_i, p_i)
            fake = self.generator(anchor, positive, negative)
            candidates = p.unsqueeze(0).repeat(n, 1, 1).index_put((rows, cols), fake)
            reg = self.base.reg_lambda / 4 * (a.pow(2).sum(1).mean() + p.pow(2).sum(1).mean())
            j_m = npair_rows(a, candidates) + reg
            fake_metric = fake
        else:
            u, v, w = triplet_indices(n, z.device)
            anchor, positive, negative = x[u], x[v], x[w]
            fake = self.generator(anchor, positive, negative)
            j_m = triplet_hinge(anchor, positive, fake, margin=self.base.margin, normalize=self.base.normalize,
                                squared=self.base.squared)
            fake_metric = F.normalize(fake, dim=1) if self.base.normalize else fake
        j_hard = sq_dist(fake, anchor).mean()
        j_reg = sq_dist(fake, negative).mean()
        j_adv = torch.relu(sq_dist(fake_metric, anchor) - sq_dist(positive, anchor) - self.adv_margin).mean()
        return {"j_m": j_m, "j_hard": j_hard, "j_reg": j_reg, "j_adv": j_adv,
                "j_gen": j_hard + self.lambda1 * j_reg + self.lambda2 * j_adv}

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, step: int) -> dict[str, float]:
        assert self.optimizers, "call configure_optimizers first"
        self.optimizers.zero_grad()
        if self.phase(step) == "warmup":
            loss = self.base(model(images), labels)
            check_finite(step, loss=loss)
            loss.backward()
            lr = self.optimizers.lr("warmup")
            self.optimizers.step("warmup")
            return {"loss": loss.item(), "joint_phase": 0.0, "lr": lr}
        terms = self.losses(model, images, labels)
        check_finite(step, j_m=terms["j_m"], j_gen=terms["j_gen"])
        metric_params, gen_params = list(model.parameters()), list(self.generator.parameters())
        if self.update == "joint":
            route_gradients([(terms["j_m"] + terms["j_gen"], metric_params + gen_params)])
        else:
            route_gradients([(terms["j_m"], metric_params), (terms["j_gen"], gen_params)])
        lr = self.optimizers.lr("head")
        self.optimizers.step("backbone", "head", "generator")
        return {"loss": terms["j_m"].item(), **{k: terms[k].item() for k in ("j_gen", "j_hard", "j_reg", "j_adv")},
                "joint_phase": 1.0, "lr": lr}

    def checkpoint_state(self) -> dict[str, Any]:
        return {"modules": self.state_dict(), "warmup_steps": self.warmup_steps,
                "optimizers": self.optimizers.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        assert self.optimizers, "call configure_optimizers before loading a checkpoint"
        self.load_state_dict(state["modules"])
        self.warmup_steps = state["warmup_steps"]
        self.optimizers.load_state_dict(state["optimizers"])

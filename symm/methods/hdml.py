"""HDML — Hardness-Aware Deep Metric Learning (Zheng et al., CVPR 2019), method.md §6.

Per step: each negative embedding is pulled toward its anchor by the hardness-aware
interpolation (λ0 from d⁺, d⁻, α and the running metric loss J_avg); a generator maps
embeddings back to backbone-feature space (reconstruction + softmax terms); the synthetic
features go through the model's own embedding head and give the synthetic metric loss J_syn;
the metric is trained on e^(−β/J_gen)·J_real + (1 − e^(−β/J_gen))·J_syn. Three optimisers, each
stepped only by its own loss (the release's TF ``var_list``s): metric (backbone + head) by
J_metric, generator by J_gen, softmax classifier by cross-entropy on the real features.

``variant='released'`` (default) follows wzzheng/HDML; ``variant='paper'`` the paper's text
where the two differ (docs/generators.md lists the differences).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from symm.losses import create_loss
from symm.losses.base import check_positive
from symm.config import OptimizerConfig
from symm.methods.base import OptimizerSet, RunningMean, TrainingMethod, check_finite, constant_adam, route_gradients
from symm.methods.tuples import npair_rows, pair_order, triplet_hinge, triplet_indices

BASE_LOSSES = ("npair", "triplet")
ALPHA = {"npair": 90.0, "triplet": 7.0}  # method.md §6 / the release's flags
PRESETS = {"cars196": {"beta": 1e4}, "cub": {"beta": 5e3}, "sop": {"beta": 5e4}}  # β per dataset
VARIANTS = ("released", "paper")


def hardness_aware_pull(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, j_avg: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ẑ⁻ = z + λ0(z⁻ − z), λ0 = [d⁺ + (d⁻ − d⁺)e^(−α/J_avg)] / d⁻ if d⁺ < d⁻, else ẑ⁻ = z⁻.

    Euclidean d⁺ = ‖z − z⁺‖, d⁻ = ‖z − z⁻‖ (the release's ``distance``). Returns the pulled
    negatives, λ0 (1 where nothing is pulled) and the mask of pulled ones. Not detached.
    """
    d_pos = (anchor - positive).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    d_neg = (negative - anchor).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    pulled = d_pos < d_neg
    lam = (d_pos + (d_neg - d_pos) * math.exp(-alpha / j_avg)) / d_neg
    lam = torch.where(pulled, lam, torch.ones_like(lam))
    return anchor + lam.unsqueeze(-1) * (negative - anchor), lam, pulled


class HDMLGenerator(nn.Sequential):
    """Embedding → backbone-feature space: FC(d→hidden)+ReLU+BN, FC(hidden→feature_dim) (the release's)."""

    def __init__(self, embedding_dim: int, feature_dim: int, hidden_dim: int = 512) -> None:
        super().__init__(
            nn.Linear(embedding_dim, hidden_dim), nn.ReLU(), nn.BatchNorm1d(hidden_dim), nn.Linear(hidden_dim, feature_dim)
        )
        for layer in (self[0], self[3]):  # glorot weights, zero bias, as the release's fc_block
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class HDMLMethod(TrainingMethod):
    """HDML on top of N-pair or triplet (``base_loss``); options as in method.md §6."""

    def __init__(
        self,
        base_loss: str = "npair",
        *,
        variant: str = "released",
        preset: str | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        gen_lambda: float = 0.5,
        softmax_scale: float = 1e4,
        generator_lr: float = 1e-2,
        classifier_lr: float = 1e-3,
        hidden_dim: int = 512,
        window: int = 64,
        initial_mean: float = 1e6,
        **loss_options: Any,
    ) -> None:
        super().__init__()
        if base_loss not in BASE_LOSSES:
            raise ValueError(f"HDML plugs into base_loss {list(BASE_LOSSES)}, got {base_loss!r}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown HDML variant {variant!r}; choose from {list(VARIANTS)}")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown HDML preset {preset!r}; known: {sorted(PRESETS)} (or set beta)")
        if not 0 <= gen_lambda <= 1:
            raise ValueError(f"gen_lambda must be in [0, 1], got {gen_lambda}")
        check_positive(softmax_scale=softmax_scale, generator_lr=generator_lr, classifier_lr=classifier_lr,
                       initial_mean=initial_mean, hidden_dim=hidden_dim)
        self.base_name, self.variant = base_loss, variant
        self.base = create_loss(base_loss, negatives="none", **loss_options)
        self.alpha = ALPHA[base_loss] if alpha is None else float(alpha)
        self.beta = float(beta if beta is not None else PRESETS.get(preset or "", {}).get("beta", 1e4))
        if self.alpha <= 0 or self.beta <= 0:
            raise ValueError(f"alpha and beta must be > 0, got alpha={self.alpha}, beta={self.beta}")
        self.gen_lambda, self.softmax_scale = gen_lambda, softmax_scale
        self.generator_lr, self.classifier_lr, self.hidden_dim = generator_lr, classifier_lr, hidden_dim
        self.j_avg = RunningMean(window, initial_mean)  # drives λ0
        self.j_gen = RunningMean(window, initial_mean)  # drives the real/synthetic weights
        self.generator: HDMLGenerator | None = None
        self.classifier: nn.Linear | None = None
        self.optimizers = OptimizerSet()

    def setup(self, model: nn.Module, *, total_steps: int, train_labels: torch.Tensor) -> None:
        feature_dim, embedding_dim = model.feature_dim, model.embedding.out_features
        self.generator = HDMLGenerator(embedding_dim, feature_dim, self.hidden_dim)
        class_ids = torch.unique(torch.as_tensor(train_labels).cpu())  # a tensor or a numpy array
        self.register_buffer("class_ids", class_ids)
        self.classifier = nn.Linear(feature_dim, len(class_ids))  # softmax over the training classes
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def configure_optimizers(self, model: nn.Module, optim_cfg: OptimizerConfig) -> None:
        """Metric: the recipe (its weight decay and schedule); generator and classifier: the release's
        fixed-lr Adam without weight decay (its L2 term covers the metric's weights only)."""
        assert self.generator is not None and self.classifier is not None, "call setup first"
        self.optimizers = OptimizerSet()
        self.optimizers.add("metric", [{"params": list(model.parameters())}], optim_cfg)
        self.optimizers.add("generator", [{"params": list(self.generator.parameters())}], constant_adam(self.generator_lr))
        self.optimizers.add("classifier", [{"params": list(self.classifier.parameters())}], constant_adam(self.classifier_lr))

    def class_index(self, labels: torch.Tensor) -> torch.Tensor:
        index = torch.searchsorted(self.class_ids, labels)
        if bool((index >= len(self.class_ids)).any()) or bool((self.class_ids[index.clamp_max(len(self.class_ids) - 1)] != labels).any()):
            raise ValueError("HDML got a label that was not among the training labels given to setup()")
        return index

    def losses(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """Every term of one step, from one forward pass (the tests check each one); real_weight is a float."""
        assert self.generator is not None and self.classifier is not None, "call setup first"
        order, _ = pair_order(labels)
        feats = model.features(images)[order]  # (2N, F): [anchors, positives]
        z = model.embedding(feats)
        point_labels = labels[order]
        n = z.shape[0] // 2
        cls = self.class_index(point_labels)
        j_real = self.base(z, point_labels)
        j_avg, j_gen_avg = self.j_avg.read(), self.j_gen.read()
        if self.base_name == "npair":
            a, p = z[:n], z[n:]
            d = z.shape[1]
            anc, pos, neg = a[:, None].expand(n, n, d), p[:, None].expand(n, n, d), p[None].expand(n, n, d)
            pulled, lam, mask = hardness_aware_pull(anc, pos, neg, j_avg, self.alpha)  # (N, N, d), row i: anchor i
            y = self.generator(torch.cat([z, a, pulled.reshape(n * n, d)]))
            recon, y_syn = y[: 2 * n], y[2 * n :]
            syn_labels = torch.cat([cls[:n], cls[n:].repeat(n)])  # gen(a_i): i; gen(ẑ_ij): j
            zq = model.embedding(y_syn)
            zq_anc, zq_neg = zq[:n], zq[n:].reshape(n, n, d)
            reg = self.base.reg_lambda / 4 * (zq_anc.pow(2).sum(1).mean() + zq_neg.pow(2).sum(-1).mean())
            j_syn = npair_rows(zq_anc, zq_neg) + reg
            logits = self.classifier(y_syn)
            ce_syn = F.cross_entropy(logits[n:], syn_labels[n:]) + F.cross_entropy(logits[:n], syn_labels[:n])
            off = ~torch.eye(n, dtype=torch.bool, device=z.device)
            lam, mask = lam[off], mask[off]  # the diagonal is the positive, never pulled
        else:
            u, v, w = triplet_indices(n, z.device)
            pulled, lam, mask = hardness_aware_pull(z[u], z[v], z[w], j_avg, self.alpha)
            y = self.generator(torch.cat([z, z, pulled]))  # the release regenerates anchors and positives too
            recon, y_syn = y[: 2 * n], y[2 * n :]
            syn_labels = torch.cat([cls, cls[w]])
            zq = model.embedding(y_syn)
            zq_pts, zq_neg = zq[: 2 * n], zq[2 * n :]
            j_syn = triplet_hinge(zq_pts[u], zq_pts[v], zq_neg, margin=self.base.margin,
                                  normalize=self.base.normalize, squared=self.base.squared)
            ce_syn = F.cross_entropy(self.classifier(y_syn), syn_labels)
        sq_err = (recon - feats).pow(2).sum(1)
        if self.variant == "released":
            j_recon = (1 - self.gen_lambda) * sq_err.sum()
            j_soft = self.softmax_scale * self.gen_lambda * ce_syn
        else:
            j_recon = sq_err.mean()
            j_soft = self.gen_lambda * ce_syn
        real_weight = math.exp(-self.beta / j_gen_avg)
        return {
            "j_metric": real_weight * j_real + (1 - real_weight) * j_syn,
            "j_real": j_real, "j_syn": j_syn, "j_recon": j_recon, "j_soft": j_soft, "j_gen": j_recon + j_soft,
            "classifier_ce": F.cross_entropy(self.classifier(feats), cls),
            "real_weight": real_weight, "lambda0": lam, "pulled": mask,
        }

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, step: int) -> dict[str, float]:
        assert self.optimizers, "call configure_optimizers first"
        j_avg, j_gen_avg = self.j_avg.read(), self.j_gen.read()
        terms = self.losses(model, images, labels)
        check_finite(step, j_metric=terms["j_metric"], j_gen=terms["j_gen"], classifier_ce=terms["classifier_ce"])
        lr = self.optimizers.lr("metric")
        self.optimizers.zero_grad()
        route_gradients([
            (terms["j_metric"], list(model.parameters())),
            (terms["j_gen"], list(self.generator.parameters())),
            (terms["classifier_ce"], list(self.classifier.parameters())),
        ])
        self.optimizers.step("metric", "generator", "classifier")
        real_weight = terms["real_weight"]
        # the release collects the *weighted* real loss for J_avg (its J_m tensor is rebound); the paper the loss itself
        metric_value = terms["j_real"].item() * (real_weight if self.variant == "released" else 1.0)
        self.j_avg.update(metric_value)
        self.j_gen.update(terms["j_gen"].item())
        logs = {k: terms[k].item() for k in ("j_metric", "j_real", "j_syn", "j_recon", "j_soft", "j_gen", "classifier_ce")}
        return {
            "loss": logs.pop("j_metric"), **logs, "real_weight": real_weight, "synthetic_weight": 1 - real_weight,
            "lambda0": terms["lambda0"].mean().item(), "pulled_share": terms["pulled"].float().mean().item(),
            "j_avg": j_avg, "j_gen_avg": j_gen_avg, "lr": lr,
        }

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "modules": self.state_dict(),
            "optimizers": self.optimizers.state_dict(),
            "running": {"j_avg": self.j_avg.state_dict(), "j_gen": self.j_gen.state_dict()},
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        assert self.optimizers, "call configure_optimizers before loading a checkpoint"
        self.load_state_dict(state["modules"])
        self.optimizers.load_state_dict(state["optimizers"])
        self.j_avg.load_state_dict(state["running"]["j_avg"])
        self.j_gen.load_state_dict(state["running"]["j_gen"])

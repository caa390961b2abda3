"""One trial: train a method on one dataset with one seed, select a checkpoint, test once.

One code path for every dataset: the data object (symm.data.trial: in-memory glyph tensors or a
packed image benchmark with DataLoader workers) hands out resumable training batches and
embeddings; the recipe (model + train settings) picks the backbone, optimiser, schedule,
sampler and augmentation.

Selection: by default on the validation classes (carved from the training classes); the test
split is used once, for the selected weights. ``eval.selection: best_on_test_diagnostic`` is the
official release's best-on-TEST pick, kept only as a diagnostic and labelled as such in the result.

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
from torch import nn

from symm.config import EvalConfig, ModelConfig, TrainConfig
from symm.data.trial import InMemoryData, PackedData, Split, embed_tensors, make_sampler, random_affine
from symm.evaluation import evaluate
from symm.methods import TrainingMethod, create_method
from symm.models import create_model

__all__ = ["EvalEvent", "TrialResult", "embed", "random_affine", "seed_everything", "train_trial", "Split"]
BEST_ON_TEST = "best_on_test_diagnostic"
embed = embed_tensors  # kept for callers that embed in-memory tensors


@dataclass
class EvalEvent:
    """What the trainer tells its caller after each evaluation pass ('epoch')."""

    step: int
    epoch: int
    train: dict[str, float]
    val: dict[str, float]
    is_best: bool
    checkpoint: Callable[[], dict[str, Any]]
    test: dict[str, float] | None = None  # only in the best-on-test diagnostic mode


@dataclass
class TrialResult:
    best_step: int
    best_val: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]]
    model: nn.Module = field(repr=False)
    selection: str = "validation"
    runner: nn.Module | None = field(default=None, repr=False)  # the model as evaluated (GPU switches applied)
    # the final pass's test embeddings and labels (None when the trial ran with final_test=False)
    test_embeddings: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """Every global RNG a step may draw from (dropout, drop-connect...), in weights_only-safe types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class _Runner(nn.Module):
    """The model as the training step calls it: channels-last input and bf16 autocast, fp32 out.

    Only built when a switch is on, so the default path calls the model directly. The wrapped
    model's parameters and state_dict are the model's own (checkpoints do not change).
    """

    def __init__(self, model: nn.Module, *, amp: bool, channels_last: bool, device: torch.device) -> None:
        super().__init__()
        self.model, self.amp, self.channels_last, self.device_type = model, amp, channels_last, device.type

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.model(images)
        return out.float()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled backbone features under the same switches (methods such as HDML that work in
        feature space call ``features`` and ``embedding`` separately)."""
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.model.features(images)
        return out.float()

    @property
    def embedding(self) -> nn.Module:
        return self.model.embedding


def build_runner(model: nn.Module, *, amp: bool = False, channels_last: bool = False, compile: bool = False,
                 device: torch.device | str = "cpu") -> nn.Module:
    """``model`` with the GPU switches applied (all off: ``model`` itself).

    ``amp``: bf16 autocast of the forward pass (losses are computed in fp32 on the fp32 output);
    a CUDA device without bf16 support is an error, not a silent fallback. ``channels_last``: the
    model's weights and inputs in NHWC (faster convolutions on tensor cores). ``compile``:
    ``torch.compile`` of the model.
    """
    device = torch.device(device)
    if amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError("train.amp: this GPU has no bf16 support; set train.amp: false")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    runner: nn.Module = torch.compile(model) if compile else model
    if amp or channels_last:
        runner = _Runner(runner, amp=amp, channels_last=channels_last, device=device)
    return runner


def _as_data(data: Any, train_cfg: TrainConfig) -> InMemoryData | PackedData:
    if isinstance(data, (InMemoryData, PackedData)):
        return data
    if isinstance(data, dict):
        return InMemoryData(data, augmentation=train_cfg.augmentation)
    raise TypeError(f"data must be a dict of splits or a symm.data.trial dataset, got {type(data).__name__}")


def train_trial(
    *,
    method_spec: dict[str, Any],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    eval_cfg: EvalConfig,
    data: dict[str, Split] | InMemoryData | PackedData,
    seed: int,
    device: str | torch.device = "cpu",
    on_eval: Callable[[EvalEvent], None] | None = None,
    resume_state: dict[str, Any] | None = None,
    channels_last: bool = False,
    compile: bool = False,
    final_test: bool = True,
) -> TrialResult:
    """Train, keep the selected weights (best on validation by default), evaluate them on the test classes.

    ``channels_last`` and ``compile`` are execution switches (same arithmetic up to rounding);
    ``train_cfg.amp`` (bf16) changes the arithmetic and is a science setting. ``final_test=False``
    (a hyperparameter search's trials) never embeds a test image: ``test`` is then empty.
    """
    data = _as_data(data, train_cfg)
    seed_everything(seed)
    device = torch.device(device)
    model = create_model(model_cfg.backbone, embedding_dim=model_cfg.embedding_dim, pretrained=model_cfg.pretrained,
                         freeze_bn=model_cfg.freeze_bn, pretrained_strict=model_cfg.pretrained_strict,
                         in_channels=data.in_channels, **model_cfg.options).to(device)
    # before the optimiser: channels-last conversion must not leave it holding stale tensors
    runner = build_runner(model, amp=train_cfg.amp, channels_last=channels_last, compile=compile, device=device)
    method: TrainingMethod = create_method(method_spec["kind"], **method_spec.get("options", {}))
    method.setup(model, total_steps=train_cfg.steps, train_labels=torch.as_tensor(data.train_labels))
    method.to(device)
    method.configure_optimizers(model, train_cfg.optimizer)
    sampler = make_sampler(data.train_labels, train_cfg.classes_per_batch, train_cfg.images_per_class, seed)
    batches = data.train_loader(sampler, steps=train_cfg.steps, seed=seed, device=device)
    selection = eval_cfg.selection
    select_split = "test" if selection == BEST_ON_TEST else "val"

    step, best_score, best_step = 0, -math.inf, 0
    best_weights = copy.deepcopy(model.state_dict())
    best_val: dict[str, float] = {}
    history: list[dict[str, Any]] = []
    if resume_state is not None:
        resume_state = copy.deepcopy(resume_state)
        model.load_state_dict(resume_state["model"])
        method.load_checkpoint_state(resume_state["method"])
        batches.load_state_dict(resume_state["loader"])
        _set_rng_state(resume_state["rng"], device)
        step, best_score, best_step = resume_state["step"], resume_state["best_score"], resume_state["best_step"]
        best_weights, best_val, history = resume_state["best_weights"], resume_state["best_val"], resume_state["history"]

    def checkpoint() -> dict[str, Any]:
        """A snapshot (deep copy): later steps must not change a checkpoint already taken."""
        return copy.deepcopy({
            "model": model.state_dict(), "method": method.checkpoint_state(), "loader": batches.state_dict(),
            "rng": _rng_state(device), "step": step, "selection": selection,
            "best_score": best_score, "best_step": best_step, "best_weights": best_weights,
            "best_val": best_val, "history": history,
        })

    def embed_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return data.embed(runner, split, batch_size=eval_cfg.batch_size, device=device)

    def evaluate_split(split: str) -> dict[str, float]:
        return evaluate(*embed_split(split), ks=eval_cfg.ks, seed=seed, progress=False)

    running: dict[str, list[float]] = {}
    model.train()
    for images, labels in batches:
        for key, value in method.training_step(runner, images, labels, step).items():
            running.setdefault(key, []).append(value)
        step += 1
        if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
            val = evaluate_split("val")
            test = evaluate_split("test") if select_split == "test" else None
            score = (test if test is not None else val)[eval_cfg.selection_metric]
            is_best = score > best_score
            if is_best:
                best_score, best_step, best_val = score, step, val
                best_weights = copy.deepcopy(model.state_dict())
            train_logs = {k: float(np.mean(v)) for k, v in running.items()}
            running = {}
            epoch = math.ceil(step / train_cfg.eval_every)
            history.append({"step": step, "epoch": epoch, "train": train_logs, "val": val,
                            **({"test_diagnostic": test} if test is not None else {})})
            if on_eval is not None:
                on_eval(EvalEvent(step, epoch, train_logs, val, is_best, checkpoint, test))

    model.load_state_dict(best_weights)
    test_embeddings, test = None, {}
    if final_test:
        test_embeddings = embed_split("test")
        # a progress bar on a terminal (not in Ray's worker logs)
        test = evaluate(*test_embeddings, ks=eval_cfg.ks, seed=seed, progress=None)
    return TrialResult(best_step=best_step, best_val=best_val, test=test, history=history, model=model,
                       selection=selection, runner=runner, test_embeddings=test_embeddings)

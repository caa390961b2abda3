"""The science settings of an experiment, validated before any compute starts.

These are the values that change results (DVC stage params). Where a run executes (Ray
address, CPUs/GPUs per trial, MLflow URI) lives in the pipelines' execution settings instead,
so moving to a cluster does not invalidate results.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    backbone: str
    embedding_dim: int = Field(gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class ScheduleConfig(_Strict):
    """Learning-rate schedule, stepped once per training step (symm.optim.build_scheduler)."""

    name: Literal["constant", "step"] = "constant"
    every: int = Field(5000, gt=0, description="step: multiply the lr by gamma every this many steps")
    gamma: float = Field(0.5, gt=0, le=1)


class OptimizerConfig(_Strict):
    """An optimiser and its schedule (symm.optim.build_optimizer); see symm/optim.py for the semantics."""

    name: Literal["adam", "rmsprop", "sgd"] = "adam"
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0)
    weight_decay_mode: Literal["coupled", "decoupled"] = Field(
        "coupled", description="coupled: L2 term λ/2·‖w‖² in the loss; decoupled: AdamW (adam only)"
    )
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float = Field(1e-8, gt=0)  # adam, rmsprop
    momentum: float = Field(0.0, ge=0, lt=1)  # rmsprop, sgd
    rmsprop_alpha: float = Field(0.99, gt=0, lt=1)  # rmsprop's squared-gradient smoothing
    nesterov: bool = False  # sgd
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @model_validator(mode="after")
    def _check_combination(self) -> "OptimizerConfig":
        if self.weight_decay_mode == "decoupled" and self.name != "adam":
            raise ValueError(
                f"weight_decay_mode 'decoupled' is defined for adam (AdamW) only, not {self.name!r}; "
                "use weight_decay_mode: coupled"
            )
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs name: sgd and momentum > 0")
        return self


class TrainConfig(_Strict):
    steps: int = Field(gt=0)
    eval_every: int = Field(gt=0, description="steps between validation evaluations (one 'epoch' in logs)")
    optimizer: OptimizerConfig
    classes_per_batch: int = Field(ge=2)
    augment: bool


class EvalConfig(_Strict):
    ks: list[int] = Field(min_length=1)
    batch_size: int = Field(gt=0)
    selection_metric: str = "recall_at_1"


class MethodSpec(_Strict):
    """A named method of the grid: a method kind plus its options (loss, negatives, ...)."""

    kind: str = "metric_loss"
    options: dict[str, Any] = Field(default_factory=dict)


class SweepConfig(_Strict):
    methods: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    datasets: list[str] = Field(min_length=1)


class ScienceParams(_Strict):
    datasets: list[str] = Field(min_length=1)
    data: dict[str, dict[str, Any]]
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    methods: dict[str, MethodSpec]
    sweep: SweepConfig

    @model_validator(mode="after")
    def _check_names(self) -> "ScienceParams":
        from symm.methods import create_method
        from symm.models import BACKBONES

        BACKBONES.get(self.model.backbone)  # unknown backbone -> ValueError listing known ones
        for name in self.sweep.methods:
            if name not in self.methods:
                raise ValueError(
                    f"sweep.methods lists {name!r} but methods has no such entry; defined: {sorted(self.methods)}"
                )
        for name, spec in self.methods.items():
            try:
                create_method(spec.kind, **spec.options)
            except (ValueError, TypeError) as err:
                raise ValueError(f"methods.{name}: {err}") from None
        for name in self.sweep.datasets:
            if name not in self.datasets:
                raise ValueError(f"sweep.datasets lists {name!r}, which is not in datasets {self.datasets}")
        for name in self.datasets:
            if name not in self.data:
                raise ValueError(f"datasets lists {name!r} but data.{name} (its prepare settings) is missing")
        return self


def parse_science_params(raw: dict[str, Any], source: str = "params.yaml") -> ScienceParams:
    """Validate a params mapping, turning pydantic's report into one readable message."""
    science = {k: v for k, v in raw.items() if k != "execution"}
    try:
        return ScienceParams.model_validate(science)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            if e["type"] == "missing":
                problems.append(f"missing key '{where}'")
            elif e["type"] == "extra_forbidden":
                problems.append(f"unknown key '{where}' (typo?)")
            else:
                problems.append(f"'{where}': {e['msg']}")
        raise ValueError(f"{source} is invalid:\n  - " + "\n  - ".join(problems)) from None

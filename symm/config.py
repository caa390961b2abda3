"""The science settings of an experiment, validated before any compute starts.

These are the values that change results (DVC stage params). Where a run executes (Ray
address, CPUs/GPUs per trial, MLflow URI) lives in the pipelines' execution settings instead,
so moving to a cluster does not invalidate results.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    backbone: str
    embedding_dim: int = Field(gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Strict):
    steps: int = Field(gt=0)
    eval_every: int = Field(gt=0, description="steps between validation evaluations (one 'epoch' in logs)")
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
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
    science = {k: v for k, v in raw.items() if k not in ("execution", "hpo")}  # validated by pipelines/
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

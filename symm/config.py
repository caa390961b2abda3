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
    """symm.models.create_model arguments: backbone by name, embedding size, local pretrained weights."""

    backbone: str
    embedding_dim: int = Field(gt=0)
    pretrained: str | None = Field(None, description="null | imagenet (torch hub cache) | a local .pth path")
    pretrained_strict: bool = True
    freeze_bn: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_backbone(self) -> "ModelConfig":
        from symm.models import BACKBONES

        BACKBONES.get(self.backbone)  # unknown backbone -> ValueError listing known ones
        return self


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


AUGMENTATIONS = ("affine", "official", "standard", "none")


class TrainConfig(_Strict):
    steps: int = Field(gt=0)
    eval_every: int = Field(gt=0, description="steps between validation evaluations (one 'epoch' in logs)")
    optimizer: OptimizerConfig
    classes_per_batch: int = Field(ge=2)
    images_per_class: int = Field(2, ge=2, description="2: N-pair batches; more: m-per-class batches")
    augmentation: Literal["affine", "official", "standard", "none"] = Field(
        "affine", description="affine: glyph-sized random affine (in-memory datasets); official (227 px) | "
        "standard (224 px): symm.data.augment presets (image benchmarks); none"
    )
    amp: bool = Field(False, description="bf16 autocast for the forward pass (changes the arithmetic: a science key)")


SELECTIONS = ("validation", "best_on_test_diagnostic")


class EvalConfig(_Strict):
    ks: list[int] = Field(min_length=1)
    batch_size: int = Field(gt=0)
    selection_metric: str = "recall_at_1"
    selection: Literal["validation", "best_on_test_diagnostic"] = Field(
        "validation", description="validation: best checkpoint on the validation classes (fair); "
        "best_on_test_diagnostic: the official release's best-on-TEST pick, labelled as such everywhere"
    )


class MethodSpec(_Strict):
    """A named method of the grid: a method kind plus its options (loss, negatives, ...)."""

    kind: str = "metric_loss"
    options: dict[str, Any] = Field(default_factory=dict)


class SweepConfig(_Strict):
    methods: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    datasets: list[str] = Field(min_length=1)


class Recipe(_Strict):
    """A named training recipe (params.yaml ``recipes.<name>``): full model and train settings."""

    model: ModelConfig
    train: TrainConfig


class ScienceParams(_Strict):
    recipe: str | None = None
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
        for name, settings in self.data.items():
            if isinstance(settings, dict) and "augmentation" in settings:
                raise ValueError(
                    f"data.{name}.augmentation is not read (prepare does not use it and the sweep does not depend "
                    "on data.*): set train.augmentation (official | standard) instead"
                )
        for name in self.sweep.datasets:
            in_memory = name in IN_MEMORY_DATASETS
            if in_memory and self.train.augmentation in ("official", "standard"):
                raise ValueError(
                    f"train.augmentation {self.train.augmentation!r} is an image-benchmark preset but {name!r} is "
                    "an in-memory dataset: use affine or none"
                )
            if not in_memory and self.train.augmentation == "affine":
                raise ValueError(
                    f"train.augmentation 'affine' is the in-memory glyph augmentation; for {name!r} use "
                    "official (227 px, the paper's) or standard (224 px)"
                )
        if self.train.images_per_class != 2:
            m = self.train.images_per_class
            if m % 2:
                raise ValueError(
                    f"train.images_per_class={m}: the losses read an m-per-class batch as m/2 (anchor, positive) "
                    "pair sub-batches, so m must be even (2: N-pair batches; 4: MLRC's 8 x 4)"
                )
            generators = sorted(m_name for m_name in self.sweep.methods if self.methods[m_name].kind != "metric_loss")
            if generators:
                raise ValueError(
                    f"train.images_per_class={m}: methods {generators} (DAML/HDML) generate from N-pair batches "
                    "only; set train.images_per_class: 2 (e.g. classes_per_batch: 16 for a batch of 32) or remove "
                    "them from sweep.methods"
                )
        return self


# Top-level params.yaml sections that are not the training grid's: where things run, and the
# analyses' and the fair search mode's own settings (validated by pipelines.analyses / pipelines.hpo).
OTHER_SECTIONS = ("execution", "analyses", "hpo")


# Datasets held in memory as tensors (symm.data.prepared.load_split); every other dataset is a
# packed image benchmark read through symm.data.loaders.
IN_MEMORY_DATASETS = frozenset({"glyphs"})


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, recursively for nested mappings (lists are replaced)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_recipe(raw: dict[str, Any]) -> dict[str, Any]:
    """Science params with ``model`` / ``train`` = ``recipes[recipe]`` overridden by the top-level sections.

    ``recipe: paper`` starts from ``recipes.paper``; any key set in the top-level ``model:`` /
    ``train:`` (params.yaml, ``dvc exp run -S ++train.steps=2000``) wins. Without ``recipe`` the
    top-level sections must be complete. ``recipes`` itself is dropped after validation.
    """
    raw = {k: v for k, v in raw.items() if k not in OTHER_SECTIONS}
    recipes = raw.pop("recipes", None) or {}
    name = raw.get("recipe")
    if not isinstance(recipes, dict):
        raise ValueError("recipes must be a mapping of recipe name -> {model: ..., train: ...}")
    for recipe_name, recipe in recipes.items():
        _validate(Recipe, recipe, f"recipes.{recipe_name}")
    if name is None:
        return raw
    if name not in recipes:
        raise ValueError(f"recipe {name!r} is not defined; defined recipes: {sorted(recipes)} "
                         "(add it under recipes: or pick one of these)")
    for section in ("model", "train"):
        override = raw.get(section) or {}
        if not isinstance(override, dict):
            raise ValueError(f"{section} must be a mapping of overrides of recipes.{name}.{section}")
        raw[section] = deep_merge(recipes[name][section], override)
    return raw


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at ``loc`` (for the fix in an unknown-key message)."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def _validate(model: type[BaseModel], data: Any, source: str) -> Any:
    """Validate, turning pydantic's report into one readable message naming each key and its fix."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            if e["type"] == "missing":
                problems.append(f"missing key '{where}'")
            elif e["type"] == "extra_forbidden":
                allowed = _allowed_keys(model, e["loc"])
                problems.append(f"unknown key '{where}' (typo?)" + (f"; allowed here: {', '.join(allowed)}" if allowed else ""))
            else:
                problems.append(f"'{where}': {e['msg']}")
        raise ValueError(f"{source} is invalid:\n  - " + "\n  - ".join(problems)) from None


def parse_science_params(raw: dict[str, Any], source: str = "params.yaml") -> ScienceParams:
    """Validate a params mapping (recipe resolved first), with one readable message for all problems."""
    try:
        science = resolve_recipe(raw)
    except ValueError as err:
        raise ValueError(f"{source} is invalid: {err}") from None
    return _validate(ScienceParams, science, source)

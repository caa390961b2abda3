"""Optional fair hyperparameter search (params.yaml `hpo`, off by default).

The "Metric Learning Reality Check" protocol (Musgrave et al. 2020): every method gets the same
trial budget and the same search algorithm (Optuna TPE through Ray Tune), trials are scored on
the VALIDATION classes only (the test classes are not even loaded), then the best configuration
of each method is re-trained with several seeds and evaluated on the test classes once.
"""
from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")


class HpoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    trials_per_method: int = Field(8, ge=1, description="the same search budget for every method")
    search_seed: int = 0
    final_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    # dotted path into the science params -> {distribution: arguments}; `method.<opt>` is the
    # searched method's own option (e.g. method.margin)
    space: dict[str, dict[str, list[Any]]] = Field(default_factory=dict)

    @field_validator("space")
    @classmethod
    def _known_distributions(cls, space: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
        for key, spec in space.items():
            if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
                raise ValueError(f"hpo.space.{key} must be one of {{{', '.join(DISTRIBUTIONS)}: [args]}}, got {spec}")
            if key.split(".")[0] not in ("train", "model", "method"):
                raise ValueError(f"hpo.space.{key}: only train.*, model.* and method.* can be searched")
        return space


def load_hpo(raw_params: dict[str, Any]) -> HpoSettings:
    try:
        return HpoSettings.model_validate(raw_params.get("hpo") or {})
    except ValueError as err:
        raise ValueError(f"params.yaml hpo settings are invalid: {err}") from None


def search_space(space: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """{'train.lr': {'loguniform': [1e-4, 1e-2]}} -> {'train.lr': tune.loguniform(1e-4, 1e-2)}."""
    from ray import tune

    out = {}
    for key, spec in space.items():
        (dist, args), = spec.items()
        out[key] = tune.choice(args) if dist == "choice" else getattr(tune, dist)(*args)
    return out


def apply_overrides(science: dict[str, Any], method: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw science params with dotted-path values set (`method.x` -> methods.<method>.options.x)."""
    science = copy.deepcopy(science)
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] == "method":
            parts = ["methods", method, "options", *parts[1:]]
        node = science
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return science


def best_overrides(results: Any, metric: str) -> tuple[dict[str, Any], float]:
    """The searched values of the trial with the best VALIDATION score (never a test number)."""
    best, best_score = None, float("-inf")
    for result in results:
        score = (result.metrics or {}).get(f"best_val/{metric}")
        if result.error is None and score is not None and score > best_score:
            best, best_score = result, score
    if best is None:
        raise RuntimeError("every search trial failed: no configuration to re-train")
    return dict(best.config["overrides"]), best_score

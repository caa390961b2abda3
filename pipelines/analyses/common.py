"""Shared parts of the analysis entry points: settings, in-process trials, tables, MLflow.

Each analysis trains its trials in this process, one after another (seeded, like the sweep's
trials), writes reports/analyses/<name>/ and records one MLflow parent run (tag kind=analysis)
with a child run per trial.
"""
from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pipelines.settings import REPO_ROOT, code_version, data_hash, flatten, load_execution, prepared_dir, read_params

REPORTS = REPO_ROOT / "reports" / "analyses"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnalysisConfig(Strict):
    """Common keys: the trainer overrides (fewer steps than the main grid) and the seeds."""

    train: dict[str, Any] = {}
    seeds: list[int] = [0]

    def smoke(self) -> "AnalysisConfig":
        """A few steps and one seed: checks the wiring end to end."""
        return self.model_copy(update={"train": {**self.train, "steps": 6, "eval_every": 3, "classes_per_batch": 8},
                                       "seeds": self.seeds[:1]})


@dataclass
class Context:
    name: str
    params_path: Path
    raw: dict[str, Any]
    dataset: str
    out_dir: Path
    smoke_test: bool
    data_dir: Path | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False)
    data_hash: str = ""
    code_version: str = ""
    mlflow_run: Any = None

    @property
    def science(self):
        from symm.config import parse_science_params

        return parse_science_params(self.raw, source=str(self.params_path))

    def load_data(self) -> None:
        from symm.data.prepared import load_split

        directory = self.data_dir or prepared_dir(self.dataset)
        self.data_hash = data_hash(self.dataset, directory=directory)  # a clear error naming `dvc repro prepare@<name>`
        self.data = {split: load_split(directory, split) for split in ("train", "val", "test")}

    def method_options(self, method: str, **overrides: Any) -> dict[str, Any]:
        methods = self.raw.get("methods", {})
        if method not in methods:
            raise ValueError(f"analyses.{self.name}.method {method!r} is not in `methods`; defined: {sorted(methods)}")
        spec = methods[method]
        return {"kind": spec.get("kind", "metric_loss"), "options": {**spec.get("options", {}), **overrides}}

    def train_config(self, overrides: dict[str, Any]):
        from symm.config import TrainConfig

        try:
            return TrainConfig.model_validate({**self.science.train.model_dump(), **overrides})
        except ValidationError as err:
            raise ValueError(f"analyses.{self.name}.train is invalid: {err}") from None

    def train(self, method_spec: dict[str, Any], seed: int, overrides: dict[str, Any],
              on_eval: Callable[[Any], None] | None = None, label: str = ""):
        """One seeded trial in this process (selection on validation, as in the sweep), logged as a child run."""
        import torch

        from symm.training import train_trial

        science = self.science
        start = time.perf_counter()
        result = train_trial(method_spec=method_spec, model_cfg=science.model, train_cfg=self.train_config(overrides),
                             eval_cfg=science.eval, data=self.data, seed=seed,
                             device="cuda" if torch.cuda.is_available() else "cpu", on_eval=on_eval)
        seconds = time.perf_counter() - start
        print(f"analyses {self.name}: {label or method_spec['options']} seed {seed}: test R@1 "
              f"{result.test['recall_at_1']:.4f} ({seconds:.0f} s)", flush=True)
        self.log_child(label, {"seed": seed, **flatten({"method": method_spec, "train": overrides})},
                       {**{f"test/{k}": v for k, v in result.test.items()}, "best_step": result.best_step,
                        "seconds": seconds})
        return result

    def log_child(self, label: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.mlflow_run is None:
            return
        import mlflow

        tags = {"kind": "analysis-trial", "analysis": self.name,
                "code_version": self.code_version, "data_hash": self.data_hash, "dataset": self.dataset}
        with mlflow.start_run(run_name=f"{self.name}-{label}", nested=True, tags=tags):
            mlflow.log_params(params)
            mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)})


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def write_table(out_dir: Path, stem: str, rows: list[dict[str, Any]], columns: list[str]) -> list[Path]:
    """The same rows as markdown (for the README), csv and json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.csv", out_dir / f"{stem}.json"]
    paths[0].write_text("\n".join(md) + "\n")
    with paths[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    paths[2].write_text(json.dumps(rows, indent=1, sort_keys=True))
    return paths


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def analysis_run(name: str, params_path: Path, dataset: str | None, out_dir: Path | None, smoke_test: bool,
                 config: dict[str, Any], data_dir: Path | None = None) -> Iterator[Context]:
    """Context of one analysis: data loaded, MLflow parent run open; writes summary.json at the end."""
    import mlflow

    raw = read_params(params_path)
    dataset = dataset or (raw.get("analyses") or {}).get("dataset") or raw["datasets"][0]
    ctx = Context(name=name, params_path=params_path, raw=raw, dataset=dataset,
                  out_dir=out_dir or REPORTS / name, smoke_test=smoke_test, data_dir=data_dir)
    ctx.science  # validates params.yaml before any compute
    ctx.load_data()
    ctx.code_version = code_version()
    settings = load_execution(params_path)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.experiment_name)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tags = {"kind": "analysis", "analysis": name, "code_version": ctx.code_version, "data_hash": ctx.data_hash,
            "dataset": dataset, "smoke_test": str(smoke_test)}
    with mlflow.start_run(run_name=f"analysis-{name}-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags) as run:
        ctx.mlflow_run = run
        mlflow.log_params(flatten({"analysis": config, "model": raw["model"], "train": raw["train"], "dataset": dataset}))
        yield ctx
        summary = {"analysis": name, "dataset": dataset, "data_dir": str(ctx.data_dir or prepared_dir(dataset)), "data_hash": ctx.data_hash, "code_version": ctx.code_version,
                   "smoke_test": smoke_test, "config": config, "mlflow_run_id": run.info.run_id,
                   "mlflow_tracking_uri": settings.mlflow_tracking_uri, "seconds": round(time.perf_counter() - start, 1)}
        (ctx.out_dir / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        for path in sorted(ctx.out_dir.iterdir()):
            if path.is_file():
                mlflow.log_artifact(str(path), artifact_path=f"analyses/{name}")
    print(f"analyses {name}: {summary['seconds']:.0f} s -> {ctx.out_dir}", flush=True)

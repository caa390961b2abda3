"""Loading params.yaml: science settings (validated by symm.config) and execution settings.

Execution settings say where things run; each has an environment override so a cluster or CI
can change them without touching params.yaml (and without invalidating DVC results).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from symm.config import OTHER_SECTIONS, ScienceParams, parse_science_params

REPO_ROOT = Path(__file__).resolve().parent.parent


class ExecutionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ray_address: str | None = None
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)
    max_concurrent_trials: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)
    storage_path: str = "ray_results"
    prepared_root: str = "data/prepared"
    resume: bool = True
    preflight_timeout_s: float = Field(60, gt=0)
    autoscale_wait_s: float = Field(0, ge=0)
    mlflow_tracking_uri: str | None = None
    experiment_name: str = "symm-dml"
    # GPU speed switches: the same arithmetic up to rounding, so execution settings, not science
    # (bf16 autocast changes the arithmetic: it is the science key train.amp)
    channels_last: bool = False
    compile: bool = False
    # DataLoader workers per trial for the image benchmarks: batches are bit-identical for any number
    loader_workers: int = Field(2, ge=0)


# key -> environment variables that override it, first match wins
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "ray_address": ("SYMM_RAY_ADDRESS", "RAY_ADDRESS"),
    "cpus_per_trial": ("SYMM_CPUS_PER_TRIAL",),
    "gpus_per_trial": ("SYMM_GPUS_PER_TRIAL",),
    "max_concurrent_trials": ("SYMM_MAX_CONCURRENT_TRIALS",),
    "max_failures": ("SYMM_MAX_FAILURES",),
    "storage_path": ("SYMM_STORAGE_PATH",),
    "prepared_root": ("SYMM_PREPARED_ROOT",),
    "resume": ("SYMM_RESUME",),
    "preflight_timeout_s": ("SYMM_PREFLIGHT_TIMEOUT_S",),
    "autoscale_wait_s": ("SYMM_AUTOSCALE_WAIT_S",),
    "mlflow_tracking_uri": ("MLFLOW_TRACKING_URI",),
    "experiment_name": ("SYMM_EXPERIMENT_NAME",),
    "channels_last": ("SYMM_CHANNELS_LAST",),
    "compile": ("SYMM_COMPILE",),
    "loader_workers": ("SYMM_LOADER_WORKERS",),
}


def read_params(path: Path | str = REPO_ROOT / "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run from the repository root or pass --params")
    with path.open() as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must be a YAML mapping of settings")
    return raw


# Top-level params.yaml sections that pipelines validate themselves (not symm.config's business).
PIPELINE_SECTIONS = OTHER_SECTIONS  # params.yaml sections that are not science (symm.config)


def load_science(path: Path | str = REPO_ROOT / "params.yaml") -> ScienceParams:
    raw = {k: v for k, v in read_params(path).items() if k not in PIPELINE_SECTIONS}
    return parse_science_params(raw, source=str(path))


def load_execution(path: Path | str = REPO_ROOT / "params.yaml") -> ExecutionSettings:
    values = dict(read_params(path).get("execution") or {})
    for key, names in ENV_OVERRIDES.items():
        for name in names:
            if os.environ.get(name):
                values[key] = os.environ[name]
                break
    try:
        settings = ExecutionSettings.model_validate(values)
    except ValidationError as err:
        raise ValueError(f"{path} execution settings are invalid: {err}") from None
    if settings.mlflow_tracking_uri is None:
        settings.mlflow_tracking_uri = f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
    for key in ("storage_path", "prepared_root"):  # relative = inside the repository; absolute for workers
        value = getattr(settings, key)
        if not Path(value).is_absolute() and "://" not in value:
            setattr(settings, key, str(REPO_ROOT / value))
    return settings


def code_version() -> str:
    """The git commit of the code, with '+dirty' when the work tree has uncommitted changes.

    A `ray job submit` working dir has no .git: pass SYMM_CODE_VERSION=$(git rev-parse HEAD) then.
    """
    if os.environ.get("SYMM_CODE_VERSION"):
        return os.environ["SYMM_CODE_VERSION"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def code_hash() -> str:
    """sha256 of the library and pipeline sources: a sweep only resumes into the same code."""
    digest = hashlib.sha256()
    for path in sorted([*(REPO_ROOT / "symm").rglob("*.py"), *(REPO_ROOT / "pipelines").rglob("*.py")]):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def prepared_dir(dataset: str, root: str | Path | None = None) -> Path:
    """Where the prepare stage wrote `dataset`; on a cluster `root` (execution.prepared_root) is shared storage."""
    return Path(root) / dataset if root is not None else REPO_ROOT / "data" / "prepared" / dataset


def data_hash(dataset: str, root: str | Path | None = None, *, directory: Path | None = None) -> str:
    """A hash of the prepared dataset's manifest, which itself records every file's sha256.

    The dataset is ``directory`` when given, else ``prepared_dir(dataset, root)``."""
    manifest = (Path(directory) if directory is not None else prepared_dir(dataset, root)) / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(
            f"prepared dataset {dataset!r} not found ({manifest} missing): run `dvc repro prepare@{dataset}`"
            + ("" if root is None else " or point SYMM_PREPARED_ROOT at the shared copy")
        )
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b': value}, for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return flat

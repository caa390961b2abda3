"""Resuming a sweep whose driver died: the same command again picks up where it stopped.

A sweep is identified by a key (science params, seeds, data hashes, code hash). Its MLflow parent
run carries the key and the Tune experiment name; when the latest parent run with this key did
not finish, the next run of the same command restores its Tune experiments from `storage_path`
(Tuner.restore: finished trials are kept, unfinished and errored ones continue from their last
checkpoint) and keeps logging into the same parent run.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from pipelines.settings import code_hash


def sweep_key(raw_science: dict[str, Any], seeds: list[int], data_hashes: dict[str, str], extra: Any = None) -> str:
    payload = json.dumps({"science": raw_science, "seeds": seeds, "data": data_hashes, "extra": extra,
                          "code": code_hash()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class SweepIdentity:
    name: str
    key: str
    parent_run_id: str | None  # set when resuming


def find_unfinished(experiment_id: str, key: str) -> SweepIdentity | None:
    """The latest parent run of this sweep key, when it did not finish (driver died or trials failed)."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.sweep_key = '{key}' and tags.kind = 'sweep'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs or runs[0].info.status == "FINISHED" or "sweep_name" not in runs[0].data.tags:
        return None
    return SweepIdentity(runs[0].data.tags["sweep_name"], key, runs[0].info.run_id)


def identify(experiment_id: str, key: str, resume: bool) -> SweepIdentity:
    if resume and (found := find_unfinished(experiment_id, key)) is not None:
        return found
    return SweepIdentity(time.strftime(f"sweep-%Y%m%d-%H%M%S-{key[:6]}"), key, None)


def fit_or_resume(storage_path: str, name: str, trainable: Any, new_tuner: Callable[[], Any],
                  resuming: bool) -> tuple[Any, bool]:
    """Tuner.restore when this experiment exists in storage_path (and we are resuming), else a new Tuner."""
    from ray import tune

    path = storage_path.rstrip("/") + "/" + name
    if resuming and tune.Tuner.can_restore(path):
        print(f"sweep: resuming {path} (finished trials are kept)", flush=True)
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True), True
    return new_tuner(), False

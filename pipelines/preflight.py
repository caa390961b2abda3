"""Checks before a sweep starts: fail in seconds with a message saying what to fix.

Without them a trial asking for resources no node has stays PENDING forever, an unreadable data
root or a missing MLflow server fails every trial one by one after minutes of start-up.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Iterable


class PreflightError(RuntimeError):
    """The cluster, the data or the tracking server cannot run this sweep as configured."""


def check_mlflow(uri: str, timeout_s: float = 10.0) -> None:
    """A tracking server must answer /health and accept our credentials; a sqlite file must be creatable."""
    if not uri.startswith(("http://", "https://")):
        return  # sqlite:/// or file store: checked by mlflow.set_experiment on the driver
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except (urllib.error.URLError, OSError) as err:
        raise PreflightError(
            f"MLflow tracking server {uri} is unreachable ({err}); start it (infra/mlflow/) or set "
            "MLFLOW_TRACKING_URI to a running server"
        ) from None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except MlflowException as err:
        raise PreflightError(
            f"MLflow server {uri} refused the request ({str(err).splitlines()[0][:200]}); with basic auth set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        ) from None


def largest_node(nodes: Iterable[dict[str, Any]]) -> dict[str, float]:
    """The most CPUs and GPUs any single alive node offers (a trial must fit on one node)."""
    largest = {"CPU": 0.0, "GPU": 0.0}
    for node in nodes:
        if node.get("Alive"):
            for key in largest:
                largest[key] = max(largest[key], float(node.get("Resources", {}).get(key, 0.0)))
    return largest


def resource_problem(nodes: Iterable[dict[str, Any]], cpus: float, gpus: float) -> str | None:
    """Why no node can run one trial with (cpus, gpus), or None when one can."""
    if gpus > 1 and gpus != int(gpus):
        return f"gpus_per_trial={gpus}: Ray accepts fractions below 1 (e.g. 0.25, 0.5) or whole numbers"
    largest = largest_node(nodes)
    if gpus > largest["GPU"]:
        return (f"gpus_per_trial={gpus} but no Ray node has that many GPUs (largest: {largest['GPU']:g}); "
                "set SYMM_GPUS_PER_TRIAL=0 or connect to a GPU cluster")
    if cpus > largest["CPU"]:
        return (f"cpus_per_trial={cpus} but the largest Ray node has {largest['CPU']:g} CPUs; "
                "lower SYMM_CPUS_PER_TRIAL")
    return None


def check_resources(cpus: float, gpus: float, wait_s: float = 0.0) -> None:
    """Fail now rather than leave trials PENDING; with wait_s > 0 ask the autoscaler and wait for a node."""
    import ray

    problem = resource_problem(ray.nodes(), cpus, gpus)
    if problem and wait_s > 0 and "accepts fractions" not in problem:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"CPU": cpus, **({"GPU": gpus} if gpus else {})}])
        deadline = time.monotonic() + wait_s
        while problem and time.monotonic() < deadline:
            time.sleep(5)
            problem = resource_problem(ray.nodes(), cpus, gpus)
        if problem:
            problem += f" (waited {wait_s:g} s for the autoscaler)"
    if problem:
        raise PreflightError(problem)


def check_workers(read_paths: dict[str, str], storage_path: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """On every alive node, a tiny task reads each data manifest, writes into storage_path, imports the code.

    The task is defined inside this function so it is shipped by value: it runs even where our
    package is not importable, and reports that instead of dying.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def probe(paths: dict[str, str], storage: str) -> dict[str, Any]:
        import os
        import socket
        import uuid

        problems = []
        for name, path in paths.items():
            manifest = os.path.join(path, "manifest.json")
            try:
                with open(manifest, "rb") as f:
                    f.read(1)
            except OSError as err:
                problems.append(f"data {name!r}: cannot read {manifest} ({err.strerror or err})")
        if "://" not in storage:
            try:
                os.makedirs(storage, exist_ok=True)
                probe_file = os.path.join(storage, f".symm-preflight-{uuid.uuid4().hex}")
                with open(probe_file, "w") as f:
                    f.write("ok")
                os.remove(probe_file)
            except OSError as err:
                problems.append(f"storage_path {storage}: not writable ({err.strerror or err})")
        try:
            import pipelines.sweep  # noqa: F401  (the trainable's module)
        except Exception as err:  # noqa: BLE001  any import failure is the message
            problems.append(f"cannot import pipelines.sweep ({err!r}): submit with --working-dir . "
                            "or put the repository at the same path on every node")
        return {"host": socket.gethostname(), "problems": problems}

    remote = ray.remote(num_cpus=0)(probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {n["NodeID"]: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(read_paths, storage_path) for n in nodes}
    addresses = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
    ready, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    problems, reports = [], []
    for node_id, ref in refs.items():
        where = f"node {addresses[node_id]} ({node_id[:8]})"
        if ref in pending:
            problems.append(f"{where}: the check task did not finish within {timeout_s:g} s "
                            "(node busy or its worker cannot start; see `ray status`)")
            ray.cancel(ref, force=True)
            continue
        try:
            report = ray.get(ref)
        except Exception as err:  # noqa: BLE001  a dead worker is a finding, not a crash
            problems.append(f"{where}: the check task failed: {err!r}")
            continue
        reports.append({"node_id": node_id, "ip": addresses[node_id], **report})
        problems.extend(f"{where}: {p}" for p in report["problems"])
    if problems:
        raise PreflightError("workers cannot run trials:\n  - " + "\n  - ".join(problems)
                             + "\nTrials need the prepared data and storage_path at the same path on every node "
                               "(shared storage: README 'Running on a cluster').")
    return reports


def describe(reports: list[dict[str, Any]]) -> str:
    return json.dumps([{k: r[k] for k in ("ip", "host")} for r in reports])

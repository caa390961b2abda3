"""Scale-out on a real 2-node Ray cluster on loopback and a real `mlflow server` (no mocks).

Head on 127.0.0.2, worker on 127.0.0.3, 1 CPU each, private ports and temp dirs; every process
started here is stopped by PID in a finalizer, also when a test fails (tests/loopback.py).
References: Ray's own job/Tune bookkeeping (job status, Tune's node_ip / iterations_since_restore
/ result.json), the MLflow server's REST answers, and an uninterrupted twin trial for equality.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from loopback import HEAD_IP, WORKER_IP, VENV_BIN, LoopbackCluster, MlflowServer, free_ports

REPO = Path(__file__).resolve().parent.parent
SKIP_TOP = {".git", ".venv", "data", "results", "reports", "ray_results", "mlflow.db", "mlartifacts", "mlruns"}
pytestmark = pytest.mark.cluster


def _skip(directory, names):
    skipped = {n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".pyc")}
    return skipped | (SKIP_TOP & set(names) if Path(directory) == REPO else set())


def tiny_params(methods, seeds, steps=30, eval_every=10, extra_methods=None):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(steps=steps, eval_every=eval_every, classes_per_batch=8)
    params["model"]["options"] = {"width": 8}
    params["methods"].update(extra_methods or {})
    params["sweep"].update(methods=methods, seeds=seeds)
    params["execution"]["max_concurrent_trials"] = 2
    return params


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def prepared(work):
    """The glyphs dataset prepared once, outside any repository: the 'shared storage' both nodes read."""
    out = work / "prepared" / "glyphs"
    run = subprocess.run([sys.executable, "-m", "pipelines.prepare", "--dataset", "glyphs", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return out.parent


@pytest.fixture(scope="module")
def cluster(request):
    c = LoopbackCluster(cpus_per_node=1, workers=1)
    request.addfinalizer(c.stop)  # registered before start: a half-started cluster is stopped too
    return c.start()


@pytest.fixture(scope="module")
def mlflow_server(request, work):
    server = MlflowServer(work / "mlflow")
    request.addfinalizer(server.stop)
    return server.start()


def driver_env(cluster, mlflow_server, prepared, storage, experiment):
    """What a user on the head node sets: RAY_ADDRESS plus the execution overrides."""
    env = cluster.full_env()
    env.update(RAY_ADDRESS=cluster.gcs_address, MLFLOW_TRACKING_URI=mlflow_server.uri,
               SYMM_PREPARED_ROOT=str(prepared), SYMM_STORAGE_PATH=str(storage), SYMM_EXPERIMENT_NAME=experiment,
               PYTHONDONTWRITEBYTECODE="1")
    return env


def write_params(path, params):
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def trial_results(storage, method):
    """Tune's own per-trial result.json lines (written by the driver as results arrive)."""
    found = []
    for result_file in Path(storage).glob(f"*/*method={method}*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        found.append((result_file, lines))
    return found


def test_job_submit_runs_trials_on_both_nodes_and_logs_to_the_server(cluster, mlflow_server, prepared, work):
    from mlflow.tracking import MlflowClient

    repo = work / "job_repo"
    shutil.copytree(REPO, repo, ignore=_skip)
    write_params(repo / "params.yaml", tiny_params(["npair", "symm_npair"], [0]))
    out = work / "job_sweep.json"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server.uri, "SYMM_PREPARED_ROOT": str(prepared),
                                "SYMM_STORAGE_PATH": str(work / "job_storage"), "SYMM_EXPERIMENT_NAME": "job",
                                "SYMM_CODE_VERSION": "test-job"}}
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", ".",
           "--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", "pipelines.sweep", "--out", str(out)]
    job = subprocess.run(cmd, cwd=repo, env=cluster.full_env(), capture_output=True, text=True, timeout=300)
    assert job.returncode == 0 and "succeeded" in job.stdout.lower(), job.stdout[-5000:] + job.stderr[-3000:]

    summary = json.loads(out.read_text())
    assert [t["status"] for t in summary["trials"]] == ["ok", "ok"]
    assert {t["node_ip"] for t in summary["trials"]} == {HEAD_IP, WORKER_IP}  # placed on both nodes
    assert {n["ip"] for n in summary["nodes"]} == {HEAD_IP, WORKER_IP}  # preflight probed both
    assert summary["code_version"] == "test-job"

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("job")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["method"] for r in children) == ["npair", "symm_npair"]
    for run in children:
        assert run.info.status == "FINISHED" and "test/recall_at_1" in run.data.metrics
        assert "embeddings" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # uploaded by the remote workers through the server's artifact proxy into --artifacts-destination
    assert len(list((work / "mlflow" / "artifacts").rglob("MLmodel"))) == 2
    assert len(list((work / "mlflow" / "artifacts").rglob("test.npz"))) == 2
    import mlflow
    import torch

    mlflow.set_tracking_uri(mlflow_server.uri)
    for run in children:  # each trial's model, logged from its worker, loads back through the server
        model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 64)


def test_killed_worker_resumes_from_checkpoint_with_the_uninterrupted_result(cluster, mlflow_server, prepared, work):
    """Twin methods (identical specs, same seed) run side by side; one twin's worker process is killed."""
    twin = {"npair_twin": {"kind": "metric_loss", "options": {"loss": "npair", "negatives": "none"}}}
    params = write_params(work / "kill_params.yaml",
                          tiny_params(["npair", "npair_twin"], [0], steps=60, eval_every=10, extra_methods=twin))
    storage = work / "kill_storage"
    env = driver_env(cluster, mlflow_server, prepared, storage, "kill")
    out = work / "kill_sweep.json"
    driver = subprocess.Popen([sys.executable, "-m", "pipelines.sweep", "--params", str(params), "--out", str(out)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        deadline, killed = time.monotonic() + 240, None
        while killed is None and time.monotonic() < deadline and driver.poll() is None:
            for _, lines in trial_results(storage, "npair_twin"):
                if lines and not lines[-1].get("done_training"):  # a checkpoint exists, training goes on
                    pid = lines[-1]["pid"]
                    assert pid in cluster.worker_pids()  # only ever a process of our own cluster
                    os.kill(pid, signal.SIGKILL)
                    killed = lines[-1]["training_iteration"]
            time.sleep(0.05)
        output, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert killed is not None, "never saw the twin mid-run: " + output[-3000:]
    assert driver.returncode == 0, output[-5000:]
    records = {t["method"]: t for t in json.loads(out.read_text())["trials"]}
    assert records["npair_twin"]["restored"] and not records["npair"]["restored"]
    assert records["npair_twin"]["test"] == records["npair"]["test"]  # exact: same seed, same batches
    assert records["npair_twin"]["best_val"] == records["npair"]["best_val"]
    assert records["npair_twin"]["best_step"] == records["npair"]["best_step"]


def test_killed_driver_resumes_without_redoing_finished_trials(cluster, mlflow_server, prepared, work):
    from mlflow.tracking import MlflowClient

    params = write_params(work / "resume_params.yaml", tiny_params(["npair"], [0, 1, 2], steps=30))
    storage = work / "resume_storage"
    env = driver_env(cluster, mlflow_server, prepared, storage, "resume")
    out = work / "resume_sweep.json"
    cmd = [sys.executable, "-m", "pipelines.sweep", "--params", str(params), "--out", str(out)]
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    finished_before = {}
    try:
        deadline = time.monotonic() + 240
        while not finished_before and time.monotonic() < deadline and first.poll() is None:
            for method in ("npair",):
                for path, lines in trial_results(storage, method):
                    if lines and lines[-1].get("done_training"):
                        finished_before[path] = lines
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)  # the driver dies without any clean-up
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert finished_before, "no trial finished before the driver was killed"
    assert first.returncode == -signal.SIGKILL  # it really was killed mid-sweep, not finished
    time.sleep(2)
    finished_before = {p: [json.loads(x) for x in p.read_text().splitlines() if x.strip()] for p in finished_before}

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "resuming" in second.stdout
    summary = json.loads(out.read_text())
    assert sorted((t["method"], t["seed"], t["status"]) for t in summary["trials"]) == [
        ("npair", 0, "ok"), ("npair", 1, "ok"), ("npair", 2, "ok")]
    for path, lines in finished_before.items():  # not re-run: Tune's result log is untouched
        assert [json.loads(x) for x in path.read_text().splitlines() if x.strip()] == lines
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent run, resumed
    assert parents[0].info.run_id == summary["parent_run_id"]


def test_preflight_gpu_request_on_a_gpu_less_cluster_fails_fast(cluster, mlflow_server, prepared, work):
    params = write_params(work / "gpu_params.yaml", tiny_params(["npair"], [0]))
    env = {**driver_env(cluster, mlflow_server, prepared, work / "gpu_storage", "gpu"), "SYMM_GPUS_PER_TRIAL": "0.5"}
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pipelines.sweep", "--params", str(params), "--out", str(work / "g.json")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "gpus_per_trial=0.5 but no Ray node has that many GPUs (largest: 0)" in run.stderr
    assert time.monotonic() - start < 60  # fails fast instead of pending forever
    assert not (work / "g.json").exists()


def test_preflight_unreadable_data_root_is_reported_per_worker(cluster, work):
    script = (
        "import ray, sys; from pipelines.preflight import check_workers, PreflightError\n"
        f"ray.init(address={cluster.gcs_address!r}, logging_level='ERROR', "
        f"runtime_env={{'env_vars': {{'PYTHONPATH': {str(REPO)!r}}}}})\n"
        f"try: check_workers({{'glyphs': '/nonexistent/prepared/glyphs'}}, {str(work / 'probe_storage')!r}, 60)\n"
        "except PreflightError as e: print(e); sys.exit(3)\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=cluster.full_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stdout[-2000:] + run.stderr[-2000:]
    for ip in (HEAD_IP, WORKER_IP):
        assert f"node {ip}" in run.stdout and "cannot read /nonexistent/prepared/glyphs/manifest.json" in run.stdout


def test_preflight_unreachable_mlflow_server_fails_before_ray(prepared, work):
    port = free_ports(1)[0]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "SYMM_PREPARED_ROOT": str(prepared)}
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pipelines.sweep", "--out", str(work / "m.json")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in run.stderr
    assert time.monotonic() - start < 60


def test_mlflow_basic_auth_refuses_anonymous_writes_and_accepts_credentials(request, work, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    server = MlflowServer(work / "mlflow_auth", auth=True)
    request.addfinalizer(server.stop)
    server.start()
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    client = MlflowClient(tracking_uri=server.uri)
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        client.create_experiment("anonymous")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        client.create_experiment("wrong-password")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin_password)
    experiment_id = client.create_experiment("authenticated")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "m", 1.5)
    client.set_terminated(run.info.run_id)
    landed = client.get_run(run.info.run_id)
    assert landed.data.metrics["m"] == 1.5 and landed.info.status == "FINISHED"
    # the sweep's preflight names the fix when credentials are missing
    from pipelines.preflight import PreflightError, check_mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    with pytest.raises(PreflightError, match="MLFLOW_TRACKING_USERNAME"):
        check_mlflow(server.uri)


def test_fair_search_mode_same_budget_selects_on_validation_and_tests_the_final_runs_once(
        cluster, mlflow_server, prepared, work):
    from mlflow.tracking import MlflowClient

    params = tiny_params(["npair", "symm_npair"], [0], steps=20)
    params["hpo"] = {"enabled": True, "trials_per_method": 2, "search_seed": 0, "final_seeds": [0],
                     "space": {"train.optimizer.lr": {"loguniform": [0.0003, 0.003]}}}
    path = write_params(work / "hpo_params.yaml", params)
    out = work / "hpo_sweep.json"
    run = subprocess.run([sys.executable, "-m", "pipelines.sweep", "--params", str(path), "--out", str(out)],
                         cwd=REPO, env=driver_env(cluster, mlflow_server, prepared, work / "hpo_storage", "hpo"),
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = json.loads(out.read_text())
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("hpo").experiment_id])
    search = [r for r in runs if r.data.tags.get("phase") == "search"]
    final = [r for r in runs if r.data.tags.get("phase") == "final"]
    for method in ("npair", "symm_npair"):
        mine = [r for r in search if r.data.params["method"] == method]
        assert len(mine) == 2 == summary["hpo"]["selected"][f"glyphs/{method}"]["trials"]  # the same budget
        assert not any(k.startswith("test/") for r in mine for k in r.data.metrics)  # search never sees test
        best = max(mine, key=lambda r: r.data.metrics["best_val/recall_at_1"])  # chosen on validation
        chosen = summary["hpo"]["selected"][f"glyphs/{method}"]["overrides"]["train.optimizer.lr"]
        assert float(best.data.params["hpo.train.optimizer.lr"]) == pytest.approx(chosen)
        (final_run,) = [r for r in final if r.data.params["method"] == method]  # one seed -> one test run
        assert float(final_run.data.params["train.optimizer.lr"]) == pytest.approx(chosen)
        assert "test/recall_at_1" in final_run.data.metrics
    assert sorted((t["method"], t["seed"]) for t in summary["trials"]) == [("npair", 0), ("symm_npair", 0)]

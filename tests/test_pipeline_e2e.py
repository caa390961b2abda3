"""End to end: the real `dvc repro` in a temporary git copy of the repository, on a tiny config.

Real DVC stages, a real local Ray cluster, a real MLflow sqlite store; asserts the report and
the MLflow runs, and that a second `dvc repro` does no work.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TOP_LEVEL_SKIP = {".git", ".venv", "data", "results", "reports", "ray_results", "mlflow.db", "mlartifacts"}


def skip(directory: str, names: list[str]) -> set[str]:
    """Leave out the environment, git and everything a previous run produced."""
    skipped = {n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".pyc")}
    if Path(directory) == REPO:
        skipped |= TOP_LEVEL_SKIP & set(names)
    if Path(directory) == REPO / ".dvc":
        skipped |= {"tmp", "cache"} & set(names)
    return skipped


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("e2e") / "repo"
    shutil.copytree(REPO, repo, ignore=skip)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(steps=24, eval_every=12, classes_per_batch=8)
    params["sweep"]["seeds"] = [0, 1, 2]
    params["sweep"]["methods"] = ["npair", "symm_npair"]
    params["execution"]["storage_path"] = str(repo / "ray_results")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONDONTWRITEBYTECODE": "1", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "SYMM_RAY_ADDRESS", "SYMM_STORAGE_PATH"):
        env.pop(key, None)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "e2e"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    first = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    return repo, env, first


@pytest.mark.e2e
def test_report_has_every_metric_for_both_methods_over_three_seeds(pipeline_repo):
    repo, _, _ = pipeline_repo
    report = (repo / "reports" / "results.md").read_text()
    for column in ("R@1", "R@2", "R@4", "R@8", "NMI", "F1"):
        assert f" {column} |" in report
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    for method in ("npair", "symm_npair"):
        assert f"| {method} | 3 |" in report
        for key in ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "nmi", "f1"):
            assert 0.0 <= metrics["glyphs"][method][key] <= 1.0
    assert (repo / "reports" / "comparison.png").stat().st_size > 10_000
    assert (repo / "reports" / "embedding_map.png").stat().st_size > 20_000  # a real t-SNE, not the placeholder
    manifest = json.loads((repo / "data" / "prepared" / "glyphs" / "manifest.json").read_text())
    assert manifest["dataset"] == "glyphs"


@pytest.mark.e2e
def test_mlflow_has_a_parent_run_and_one_child_per_trial(pipeline_repo):
    import mlflow
    from mlflow.tracking import MlflowClient

    repo, _, _ = pipeline_repo
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("symm-dml")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted((r.data.params["method"], r.data.params["seed"]) for r in children) == sorted(
        (m, str(s)) for m in ("npair", "symm_npair") for s in (0, 1, 2))
    for run in children:
        assert run.info.status == "FINISHED"
        assert {"test/recall_at_1", "test/recall_at_8", "test/nmi", "test/f1", "val/recall_at_1", "train/loss"} <= set(run.data.metrics)
        assert run.data.tags["code_version"] != "unknown" and run.data.tags["data_hash"]
        assert run.data.params["loss"] == "npair" and run.data.params["negatives"] in ("none", "symm")
        history = client.get_metric_history(run.info.run_id, "val/recall_at_1")
        assert [m.step for m in history] == [1, 2]  # one value per epoch (validation pass)
        if run.data.params["method"] == "symm_npair":
            assert 0.0 <= run.data.metrics["train/synthetic_share"] <= 1.0
        model_uri = f"runs:/{run.info.run_id}/model"
    best = client.get_model_version_by_alias("symm-glyphs", "best-val")
    best_run = next(r for r in children if r.info.run_id == best.run_id)
    # registered by validation, never by test
    assert best_run.data.metrics["best_val/recall_at_1"] == max(r.data.metrics["best_val/recall_at_1"] for r in children)
    assert {"results.md", "index.html"} <= {a.path.split("/")[-1] for a in client.list_artifacts(parents[0].info.run_id, "report")}
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(model_uri)
    import torch

    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 64)


@pytest.mark.e2e
def test_second_repro_does_no_work(pipeline_repo):
    repo, env, _ = pipeline_repo
    before = (repo / "results" / "sweep.json").stat().st_mtime_ns
    second = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "Running stage" not in second.stdout, second.stdout
    assert (repo / "results" / "sweep.json").stat().st_mtime_ns == before


@pytest.mark.e2e
def test_every_logged_model_has_a_signature(pipeline_repo):
    import mlflow
    from mlflow.tracking import MlflowClient

    repo, _, _ = pipeline_repo
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("symm-dml").experiment_id])
            if r.data.tags.get("kind") != "sweep"]
    assert len(runs) == 6  # one model per trial
    mlflow.set_tracking_uri(uri)
    for run in runs:
        signature = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model").signature
        assert signature is not None, run.info.run_name
        assert tuple(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 1, 32, 32)
        assert tuple(signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 64)


@pytest.mark.e2e
def test_dvc_plots_render_offline(pipeline_repo, tmp_path):
    """`dvc plots show` of the declared plots: a page that fetches nothing from the network."""
    from html.parser import HTMLParser

    repo, env, _ = pipeline_repo
    shown = subprocess.run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    declared = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["report"]["plots"]

    class Fetches(HTMLParser):
        def __init__(self):
            super().__init__()
            self.urls = []

        def handle_starttag(self, tag, attrs):
            self.urls += [v for k, v in attrs if k in ("src", "href") and v]
            if tag == "script" and not dict(attrs).get("src"):
                self.urls.append("inline script")  # vega plots would need vega's CDN scripts

    page = Fetches()
    page.feed((tmp_path / "plots" / "index.html").read_text())
    assert page.urls and all(u.startswith("static/") for u in page.urls), page.urls  # local files only
    assert len(page.urls) == len(declared)
    for url in page.urls:
        assert (tmp_path / "plots" / url).stat().st_size > 10_000


@pytest.mark.e2e
def test_mlflow_compare_view_in_a_real_browser(pipeline_repo, tmp_path):
    """Headless Debian Chromium on a real `mlflow server` over the tiny sweep's store.

    Reference: the tracking store's own values (MlflowClient) against what the page displays.
    Screenshot: $SYMM_TEST_ARTIFACTS/mlflow-compare.png (default: this test's tmp dir).
    """
    from pipelines import screenshots

    problem = screenshots.browser_missing()
    if problem:
        pytest.skip(f"no headless browser: {problem}")
    repo, _, _ = pipeline_repo
    db = tmp_path / "mlflow.db"
    shutil.copy2(repo / "mlflow.db", db)  # the server may migrate the schema
    sweep = screenshots.latest_sweep(f"sqlite:///{db}")
    assert sorted(r["method"] for r in sweep.runs) == sorted(["npair", "symm_npair"] * 3)
    artifacts = Path(os.environ.get("SYMM_TEST_ARTIFACTS", tmp_path))
    with screenshots.chromium(tmp_path, 1800, 2000) as driver, screenshots.mlflow_server(db, tmp_path) as url:
        shown = screenshots.show_comparison(driver, url, sweep, artifacts / "mlflow-compare.png")
    assert screenshots.mismatches(sweep, shown) == []
    assert set(shown) == {r["run_name"] for r in sweep.runs}  # every method's run, each in its own column
    assert (artifacts / "mlflow-compare.png").stat().st_size > 20_000

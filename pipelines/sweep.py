"""DVC stage `sweep`: a Ray Tune grid over dataset × method × seed, recorded in MLflow.

Local Ray by default; RAY_ADDRESS (or execution.ray_address) runs the same grid on a cluster, and
`ray job submit --working-dir . -- python -m pipelines.sweep` runs it as a cluster job. Preflight
checks fail fast (pipelines.preflight); a dead driver is resumed by the same command
(pipelines.resume); `--hpo` is the optional fair search mode (pipelines.hpo).
Writes results/sweep.json (one record per trial) for the report stage.

    python -m pipelines.sweep [--smoke-test] [--fresh] [--hpo]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import preflight
from pipelines.hpo import HpoSettings, apply_overrides, best_overrides, load_hpo, search_space
from pipelines.resume import fit_or_resume, identify, sweep_key
from pipelines.settings import (
    PIPELINE_SECTIONS,
    REPO_ROOT,
    ExecutionSettings,
    code_version,
    data_hash,
    flatten,
    load_execution,
    load_science,
    prepared_dir,
    read_params,
)
from symm.config import parse_science_params

RESULTS_PATH = REPO_ROOT / "results" / "sweep.json"


def run_trial(config: dict[str, Any]) -> None:
    """The Ray Tune trainable: one (dataset, method, seed), logged to its own MLflow child run."""
    import logging

    import mlflow
    import numpy as np
    import torch
    from ray import tune

    from symm.checkpoint import load_checkpoint, save_checkpoint
    from symm.data.trial import open_prepared
    from symm.training import EvalEvent, train_trial

    # one "Checkpoint successfully created at: ..." INFO line per epoch and trial buries the progress lines
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    dataset, method, seed = config["dataset"], config["method"], config["seed"]
    science = parse_science_params(apply_overrides(config["science"], method, config.get("overrides") or {}))
    searching = config.get("phase") == "search"  # HPO search: validation only, test classes never embedded
    torch.set_num_threads(max(1, int(config["cpus_per_trial"])))
    device = torch.device("cuda" if torch.cuda.is_available() and config["gpus_per_trial"] > 0 else "cpu")
    data = open_prepared(config["data_dirs"][dataset], science.train.augmentation,
                         num_workers=config["loader_workers"])
    method_spec = science.methods[method].model_dump()
    selection = science.eval.selection
    diagnostic = selection == "best_on_test_diagnostic"

    resume_state = None
    run_id = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            resume_state = load_checkpoint(Path(ckpt_dir) / "state.pt")
        run_id = resume_state.pop("mlflow_run_id", None)

    mlflow.set_tracking_uri(config["mlflow_uri"])
    mlflow.set_experiment(experiment_id=config["experiment_id"])
    tags = {
        "mlflow.parentRunId": config["parent_run_id"], "phase": config.get("phase", "grid"),
        "code_version": config["code_version"],
        "data_hash": config["data_hashes"][dataset],
        "dataset": dataset, "method": method, "seed": str(seed), "recipe": str(science.recipe),
        "selection": (f"DIAGNOSTIC: best TEST {science.eval.selection_metric} (the official release's pick; "
                      "not a fair result)") if diagnostic else f"best validation {science.eval.selection_metric}",
        "selection_mode": selection,
    }
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else
                          f"{dataset}-{method}-seed{seed}" + ("-BEST-ON-TEST-DIAGNOSTIC" if diagnostic else ""),
                          tags=tags) as run:
        if run_id is None:
            options = method_spec.get("options", {})
            mlflow.log_params({f"hpo.{k}": v for k, v in (config.get("overrides") or {}).items()})
            mlflow.log_params({"dataset": dataset, "method": method, "seed": seed, "recipe": str(science.recipe),
                               "kind": method_spec["kind"], "loss": options.get("loss", options.get("base_loss", "-")),
                               "negatives": options.get("negatives", method_spec["kind"] if method_spec["kind"] != "metric_loss" else "-"),
                               "symm_mode": options.get("symm_mode", "-"), **flatten({
                "method": method_spec, "model": science.model.model_dump(), "train": science.train.model_dump(),
                "eval": science.eval.model_dump(), "data": science.data[dataset],
                "execution": {"channels_last": config["channels_last"], "compile": config["compile"],
                              "loader_workers": config["loader_workers"]},
            })})

        # best validation score so far, in every Tune result: a search algorithm (hpo) reads it each epoch
        metric = science.eval.selection_metric
        best_so_far = [resume_state["best_score"] if resume_state else float("-inf")]

        def on_eval(event: EvalEvent) -> None:
            metrics = {f"train/{k}": v for k, v in event.train.items()}
            metrics.update({f"val/{k}": v for k, v in event.val.items()})
            if event.test is not None:  # only in the diagnostic mode; named so it cannot pass for a val curve
                metrics.update({f"test_diagnostic/{k}": v for k, v in event.test.items()})
            mlflow.log_metrics(metrics, step=event.epoch)
            best_so_far[0] = max(best_so_far[0], event.val[metric])
            with tempfile.TemporaryDirectory() as tmp:
                state = event.checkpoint()
                state["mlflow_run_id"] = run.info.run_id
                save_checkpoint(state, Path(tmp) / "state.pt")
                tune.report({"epoch": event.epoch, "step": event.step, "search_score": best_so_far[0], **metrics},
                            checkpoint=tune.Checkpoint.from_directory(tmp))

        result = train_trial(method_spec=method_spec, model_cfg=science.model, train_cfg=science.train,
                             eval_cfg=science.eval, data=data, seed=seed, device=device,
                             on_eval=on_eval, resume_state=resume_state,
                             channels_last=config["channels_last"], compile=config["compile"],
                             final_test=not searching)  # a search trial never embeds a test image
        if searching:
            best_val = {f"best_val/{k}": v for k, v in result.best_val.items()}
            mlflow.log_metrics({**best_val, "best_step": result.best_step})
            tune.report({"done_training": True, "best_step": result.best_step, "mlflow_run_id": run.info.run_id,
                         "search_score": result.best_val[metric], **best_val})
            return
        test = {f"test/{k}": v for k, v in result.test.items()}
        best_val = {f"best_val/{k}": v for k, v in result.best_val.items()}
        mlflow.log_metrics({**test, **best_val, "best_step": result.best_step})
        with tempfile.TemporaryDirectory() as tmp:  # test embeddings of the selected model, for the report's map
            test_embeddings, test_labels = result.test_embeddings  # as evaluated (amp, channels-last)
            np.savez(Path(tmp) / "test.npz", embeddings=test_embeddings.cpu().numpy(), labels=test_labels.cpu().numpy())
            mlflow.log_artifact(str(Path(tmp) / "test.npz"), artifact_path="embeddings")
        example = data.example(2)
        model = result.model.cpu().eval()
        mlflow.pytorch.log_model(model, name="model", input_example=example,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        tune.report({"epoch": result.history[-1]["epoch"] if result.history else 0, "done_training": True,
                     "best_step": result.best_step, "mlflow_run_id": run.info.run_id, "selection": result.selection,
                     "search_score": result.best_val[metric], **test, **best_val})


def _init_ray(settings: ExecutionSettings) -> None:
    import ray

    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # inside `ray job submit`: the job's runtime env (working_dir) already reaches every worker
        ray.init(address=settings.ray_address or "auto", logging_level="WARNING")
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
                 logging_level="WARNING")
        return
    # local Ray: loopback only, no usage stats, no auth token written to ~/.ray
    for key, value in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                       "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(key, value)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(include_dashboard=False, configure_logging=True, logging_level="WARNING")


def _trial_record(result: Any) -> dict[str, Any]:
    config, metrics = result.config, dict(result.metrics or {})
    history = []
    if result.metrics_dataframe is not None:
        frame = result.metrics_dataframe
        for _, row in frame.iterrows():
            if "val/recall_at_1" in row and row.get("val/recall_at_1") == row.get("val/recall_at_1"):
                history.append({k: (None if v != v else v) for k, v in row.items()
                                if isinstance(k, str) and (k.startswith(("val/", "train/")) or k in ("epoch", "step"))})
    iterations = metrics.get("training_iteration") or 0
    return {
        "dataset": config["dataset"], "method": config["method"], "seed": config["seed"],
        "status": "error" if result.error else "ok",
        "error": repr(result.error) if result.error else None,
        "test": {k[5:]: v for k, v in metrics.items() if k.startswith("test/")},
        "best_val": {k[9:]: v for k, v in metrics.items() if k.startswith("best_val/")},
        "best_step": metrics.get("best_step"),
        "mlflow_run_id": metrics.get("mlflow_run_id"),
        "overrides": config.get("overrides") or {},
        "selection": config["science"].get("eval", {}).get("selection", "validation"),
        # where the last result came from, and whether the trial was resumed from a checkpoint
        "node_ip": metrics.get("node_ip"), "trial_id": metrics.get("trial_id"),
        "restored": bool(iterations) and metrics.get("iterations_since_restore", iterations) < iterations,
        "history": history,
    }


def register_best_models(records: list[dict[str, Any]]) -> None:
    """Register each dataset's best model by VALIDATION Recall@1 as `symm-<dataset>`, alias `best-val`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for dataset in sorted({r["dataset"] for r in records}):
        finished = [r for r in records if r["dataset"] == dataset and r["status"] == "ok" and r["mlflow_run_id"]
                    and r.get("selection", "validation") == "validation"]  # never a test-selected model
        if not finished:
            continue
        best = max(finished, key=lambda r: r["best_val"].get("recall_at_1", float("-inf")))
        version = mlflow.register_model(f"runs:/{best['mlflow_run_id']}/model", f"symm-{dataset}")
        client.set_registered_model_alias(f"symm-{dataset}", "best-val", version.version)
        client.set_model_version_tag(f"symm-{dataset}", version.version, "method", best["method"])


@dataclass
class SweepContext:
    """Everything the grid and the HPO mode share: settings, the trial config, the MLflow parent."""

    args: argparse.Namespace
    settings: ExecutionSettings
    name: str
    resuming: bool
    base_config: dict[str, Any]
    datasets: list[str]
    methods: list[str]
    seeds: list[int]
    progress_metric: str = "val/recall_at_1"

    def trainable(self) -> Any:
        from ray import tune

        return tune.with_resources(run_trial, {"cpu": self.settings.cpus_per_trial, "gpu": self.settings.gpus_per_trial})

    def fit(self, experiment: str, param_space: dict[str, Any], total: int, **tune_config: Any) -> Any:
        """One Tune experiment under storage_path, restored instead when a previous driver died in it."""
        from ray import tune

        from pipelines.progress import SweepProgress

        trainable = self.trainable()

        def new_tuner() -> Any:
            return tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(max_concurrent_trials=self.settings.max_concurrent_trials,
                                             reuse_actors=True, **tune_config),  # no torch re-import per trial
                run_config=tune.RunConfig(
                    name=experiment,
                    storage_path=self.settings.storage_path,
                    failure_config=tune.FailureConfig(max_failures=self.settings.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[SweepProgress(total=total, metric=self.progress_metric)],
                    verbose=0,  # SweepProgress prints a compact status instead of Tune's trial tables
                ),
            )

        tuner, _ = fit_or_resume(self.settings.storage_path, experiment, trainable, new_tuner, self.resuming)
        return tuner.fit()


def run_grid(ctx: SweepContext) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The published comparison: every (dataset, method, seed), FIFO (no early stopping across datasets)."""
    from ray import tune

    param_space = {**ctx.base_config, "dataset": tune.grid_search(ctx.datasets),
                   "method": tune.grid_search(ctx.methods), "seed": tune.grid_search(ctx.seeds)}
    total = len(ctx.datasets) * len(ctx.methods) * len(ctx.seeds)
    return [_trial_record(r) for r in ctx.fit(ctx.name, param_space, total)], {}


def run_hpo(ctx: SweepContext, hpo: HpoSettings, metric: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Same budget per method, Optuna through Tune, selection on validation, then re-train over seeds, test once."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    records, chosen = [], {}
    for dataset in ctx.datasets:
        for method in ctx.methods:
            # search_score: the trial's best validation score so far (reported every epoch, never test)
            searcher = OptunaSearch(metric="search_score", mode="max", seed=hpo.search_seed)
            space = {**ctx.base_config, "dataset": dataset, "method": method, "seed": hpo.search_seed,
                     "phase": "search", "overrides": search_space(hpo.space)}
            results = ctx.fit(f"{ctx.name}-search-{dataset}-{method}", space, hpo.trials_per_method, search_alg=searcher,
                              num_samples=hpo.trials_per_method)
            overrides, score = best_overrides(results, metric)
            chosen[f"{dataset}/{method}"] = {"overrides": overrides, f"val_{metric}": score,
                                             "trials": len(results)}
            print(f"sweep: hpo {dataset}/{method}: best validation {metric} {score:.4f} with {overrides}", flush=True)
    chosen_overrides = {k: v["overrides"] for k, v in chosen.items()}
    final_space = {**ctx.base_config, "phase": "final",
                   "seed": tune.grid_search(hpo.final_seeds),
                   "dm": tune.grid_search([[d, m] for d in ctx.datasets for m in ctx.methods]),
                   "dataset": tune.sample_from(lambda config: config["dm"][0]),
                   "method": tune.sample_from(lambda config: config["dm"][1]),
                   "overrides": tune.sample_from(lambda config: chosen_overrides["/".join(config["dm"])])}
    records = [_trial_record(r) for r in ctx.fit(f"{ctx.name}-final", final_space,
                                                       len(hpo.final_seeds) * len(ctx.datasets) * len(ctx.methods))]
    return records, {"protocol": "same budget per method; Optuna TPE; selected on validation; "
                                 "best config re-trained per seed, tested once", "selected": chosen,
                     "trials_per_method": hpo.trials_per_method, "space": hpo.space}


def _parse_inputs(args: argparse.Namespace) -> tuple[Any, ExecutionSettings, HpoSettings, dict[str, str], dict[str, Any]]:
    """Everything that can be wrong with the inputs fails here, before Ray or any training starts."""
    science = load_science(args.params)
    settings = load_execution(args.params)
    raw = read_params(args.params)
    hpo = load_hpo(raw)
    if args.hpo:
        hpo.enabled = True
    hashes = {name: data_hash(name, settings.prepared_root) for name in science.sweep.datasets}
    raw_science = {k: v for k, v in raw.items() if k not in PIPELINE_SECTIONS}
    return science, settings, hpo, hashes, raw_science


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    parser.add_argument("--smoke-test", action="store_true", help="one seed, a few steps: checks the wiring")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    parser.add_argument("--fresh", action="store_true", help="start a new sweep even if an unfinished one can resume")
    parser.add_argument("--hpo", action="store_true", help="fair search mode (params.yaml hpo), same as hpo.enabled")
    args = parser.parse_args(argv)

    try:
        science, settings, hpo, hashes, raw_science = _parse_inputs(args)
        preflight.check_mlflow(settings.mlflow_tracking_uri)
    except (ValueError, FileNotFoundError, preflight.PreflightError) as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    seeds = science.sweep.seeds
    if args.smoke_test:
        raw_science["train"] = {**raw_science["train"], "steps": 20, "eval_every": 10}
        seeds = seeds[:1]

    # Tune warns on every forced experiment snapshot (num_to_keep): noise for short trials.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import mlflow
    import ray

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment = mlflow.set_experiment(settings.experiment_name)
    version = code_version()
    key = sweep_key(raw_science, seeds, hashes, extra=hpo.model_dump() if hpo.enabled else None)
    identity = identify(experiment.experiment_id, key, resume=settings.resume and not args.fresh)
    data_dirs = {name: str(prepared_dir(name, settings.prepared_root)) for name in science.sweep.datasets}
    _init_ray(settings)
    try:
        try:
            preflight.check_resources(settings.cpus_per_trial, settings.gpus_per_trial, settings.autoscale_wait_s)
            nodes = preflight.check_workers(data_dirs, settings.storage_path, settings.preflight_timeout_s)
        except preflight.PreflightError as err:
            print(f"sweep: error: {err}", file=sys.stderr)
            return 2
        print(f"sweep: {identity.name} on {len(nodes)} node(s) {preflight.describe(nodes)}"
              + (" (resuming)" if identity.parent_run_id else ""), flush=True)
        tags = {"code_version": version, "kind": "sweep", "sweep_key": key, "sweep_name": identity.name,
                "mode": "hpo" if hpo.enabled else "grid"}
        parent = mlflow.start_run(run_id=identity.parent_run_id, tags=None if identity.parent_run_id else tags,
                                  run_name=None if identity.parent_run_id else identity.name)
        status = "FAILED"  # anything but FINISHED lets the same command resume this sweep
        try:
            if identity.parent_run_id is None:
                resolved = parse_science_params(raw_science).model_dump(exclude={"data", "datasets"})
                mlflow.log_params(flatten(resolved))  # the recipe as resolved (preset + overrides)
                mlflow.log_params({f"data_hash.{k}": v for k, v in hashes.items()})
            ctx = SweepContext(
                args=args, settings=settings, name=identity.name, resuming=identity.parent_run_id is not None,
                base_config={
                    "science": raw_science, "data_dirs": data_dirs, "data_hashes": hashes,
                    "mlflow_uri": settings.mlflow_tracking_uri, "experiment_id": experiment.experiment_id,
                    "parent_run_id": parent.info.run_id, "code_version": version,
                    "cpus_per_trial": settings.cpus_per_trial, "gpus_per_trial": settings.gpus_per_trial,
                    "channels_last": settings.channels_last, "compile": settings.compile,
                    "loader_workers": settings.loader_workers,
                },
                datasets=science.sweep.datasets, methods=science.sweep.methods, seeds=seeds,
                progress_metric=f"val/{science.eval.selection_metric}")
            records, hpo_summary = (run_hpo(ctx, hpo, science.eval.selection_metric) if hpo.enabled
                                    else run_grid(ctx))
            failed = [r for r in records if r["status"] != "ok"]
            summary = {
                "sweep": identity.name, "code_version": version, "data_hashes": hashes,
                "mlflow_tracking_uri": settings.mlflow_tracking_uri, "experiment": settings.experiment_name,
                "parent_run_id": parent.info.run_id, "smoke_test": args.smoke_test,
                "ray_storage": settings.storage_path.rstrip("/") + "/" + identity.name, "trials": records,
                "nodes": nodes, **({"hpo": hpo_summary} if hpo_summary else {}),
                # what the report needs to label results not comparable to the paper
                "recipe": science.recipe, "model": science.model.model_dump(),
                "selection": {"split": "test" if science.eval.selection == "best_on_test_diagnostic" else "val",
                              "mode": science.eval.selection, "metric": science.eval.selection_metric},
                "methods": {m: raw_science["methods"][m] for m in science.sweep.methods},  # Symm's baselines by loss
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
            os.replace(tmp, args.out)
            mlflow.log_artifact(str(args.out))
            register_best_models(records)
            status = "FAILED" if failed else "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            mlflow.end_run(status=status)
    finally:
        ray.shutdown()
    print(f"sweep: {len(records) - len(failed)}/{len(records)} trials finished -> {args.out}")
    if failed:
        for r in failed:
            print(f"sweep: trial {r['dataset']}/{r['method']}/seed{r['seed']} failed: {r['error']}", file=sys.stderr)
        print(f"sweep: finished trials are kept in {args.out} and MLflow; Ray state in {summary['ray_storage']} "
              "(run the same command again to retry only the failed ones)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""DVC stage `sweep`: a Ray Tune grid over dataset × method × seed, recorded in MLflow.

Local Ray by default; RAY_ADDRESS (or execution.ray_address) runs the same grid on a cluster.
Writes results/sweep.json (one record per trial) for the report stage.

    python -m pipelines.sweep [--smoke-test]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from symm.config import parse_science_params

from pipelines.settings import (
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
from symm.config import OTHER_SECTIONS

RESULTS_PATH = REPO_ROOT / "results" / "sweep.json"


def run_trial(config: dict[str, Any]) -> None:
    """The Ray Tune trainable: one (dataset, method, seed), logged to its own MLflow child run."""
    import mlflow
    import numpy as np
    import torch
    from ray import tune

    from symm.checkpoint import load_checkpoint, save_checkpoint
    from symm.config import parse_science_params
    from symm.data.trial import open_prepared
    from symm.training import EvalEvent, train_trial

    science = parse_science_params(config["science"])
    dataset, method, seed = config["dataset"], config["method"], config["seed"]
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
        "mlflow.parentRunId": config["parent_run_id"],
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
            mlflow.log_params({"dataset": dataset, "method": method, "seed": seed, "recipe": str(science.recipe),
                               "kind": method_spec["kind"], "loss": options.get("loss", options.get("base_loss", "-")),
                               "negatives": options.get("negatives", method_spec["kind"] if method_spec["kind"] != "metric_loss" else "-"),
                               "symm_mode": options.get("symm_mode", "-"), **flatten({
                "method": method_spec, "model": science.model.model_dump(), "train": science.train.model_dump(),
                "eval": science.eval.model_dump(), "data": science.data[dataset],
                "execution": {"channels_last": config["channels_last"], "compile": config["compile"],
                              "loader_workers": config["loader_workers"]},
            })})

        def on_eval(event: EvalEvent) -> None:
            metrics = {f"train/{k}": v for k, v in event.train.items()}
            metrics.update({f"val/{k}": v for k, v in event.val.items()})
            if event.test is not None:  # only in the diagnostic mode; named so it cannot pass for a val curve
                metrics.update({f"test_diagnostic/{k}": v for k, v in event.test.items()})
            mlflow.log_metrics(metrics, step=event.epoch)
            with tempfile.TemporaryDirectory() as tmp:
                state = event.checkpoint()
                state["mlflow_run_id"] = run.info.run_id
                save_checkpoint(state, Path(tmp) / "state.pt")
                tune.report({"epoch": event.epoch, "step": event.step, **metrics},
                            checkpoint=tune.Checkpoint.from_directory(tmp))

        result = train_trial(method_spec=method_spec, model_cfg=science.model, train_cfg=science.train,
                             eval_cfg=science.eval, data=data, seed=seed, device=device,
                             on_eval=on_eval, resume_state=resume_state,
                             channels_last=config["channels_last"], compile=config["compile"])
        test = {f"test/{k}": v for k, v in result.test.items()}
        best_val = {f"best_val/{k}": v for k, v in result.best_val.items()}
        mlflow.log_metrics({**test, **best_val, "best_step": result.best_step})
        with tempfile.TemporaryDirectory() as tmp:  # test embeddings of the selected model, for the report's map
            test_embeddings, test_labels = data.embed(result.runner, "test", batch_size=science.eval.batch_size,
                                                      device=device)  # as evaluated (amp, channels-last)
            np.savez(Path(tmp) / "test.npz", embeddings=test_embeddings.cpu().numpy(), labels=test_labels.cpu().numpy())
            mlflow.log_artifact(str(Path(tmp) / "test.npz"), artifact_path="embeddings")
        example = data.example(2)
        model = result.model.cpu().eval()
        mlflow.pytorch.log_model(model, name="model", input_example=example,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        tune.report({"epoch": result.history[-1]["epoch"] if result.history else 0, "done_training": True,
                     "best_step": result.best_step, "mlflow_run_id": run.info.run_id, "selection": result.selection,
                     **test, **best_val})


def _init_ray(settings: ExecutionSettings) -> None:
    import ray

    if settings.ray_address:
        ray.init(address=settings.ray_address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
        return
    # local Ray: loopback only, no usage stats, no auth token written to ~/.ray
    for key, value in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                       "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(key, value)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(include_dashboard=False, configure_logging=True, logging_level="WARNING")


def _check_resources(settings: ExecutionSettings) -> None:
    """A trial asking for more than any node has would stay PENDING forever: fail now instead."""
    import ray

    largest = {"CPU": 0.0, "GPU": 0.0}
    for node in ray.nodes():
        if node.get("Alive"):
            for key in largest:
                largest[key] = max(largest[key], node["Resources"].get(key, 0.0))
    if settings.gpus_per_trial > largest["GPU"]:
        raise RuntimeError(
            f"gpus_per_trial={settings.gpus_per_trial} but no Ray node has that many GPUs "
            f"(largest: {largest['GPU']}); set SYMM_GPUS_PER_TRIAL=0 or connect to a GPU cluster"
        )
    if settings.cpus_per_trial > largest["CPU"]:
        raise RuntimeError(
            f"cpus_per_trial={settings.cpus_per_trial} but the largest Ray node has {largest['CPU']} CPUs; "
            "lower SYMM_CPUS_PER_TRIAL"
        )


def _trial_record(result: Any) -> dict[str, Any]:
    config, metrics = result.config, dict(result.metrics or {})
    history = []
    if result.metrics_dataframe is not None:
        frame = result.metrics_dataframe
        for _, row in frame.iterrows():
            if "val/recall_at_1" in row and row.get("val/recall_at_1") == row.get("val/recall_at_1"):
                history.append({k: (None if v != v else v) for k, v in row.items()
                                if isinstance(k, str) and (k.startswith(("val/", "train/")) or k in ("epoch", "step"))})
    return {
        "dataset": config["dataset"], "method": config["method"], "seed": config["seed"],
        "status": "error" if result.error else "ok",
        "selection": config["science"].get("eval", {}).get("selection", "validation"),
        "error": repr(result.error) if result.error else None,
        "test": {k[5:]: v for k, v in metrics.items() if k.startswith("test/")},
        "best_val": {k[9:]: v for k, v in metrics.items() if k.startswith("best_val/")},
        "best_step": metrics.get("best_step"),
        "mlflow_run_id": metrics.get("mlflow_run_id"),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    parser.add_argument("--smoke-test", action="store_true", help="one seed, a few steps: checks the wiring")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)

    # Everything that can be wrong with the inputs fails here, before Ray or any training starts.
    try:
        science = load_science(args.params)
        settings = load_execution(args.params)
        hashes = {name: data_hash(name) for name in science.sweep.datasets}
    except (ValueError, FileNotFoundError) as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    raw_science = {k: v for k, v in read_params(args.params).items() if k not in OTHER_SECTIONS}
    seeds = science.sweep.seeds
    if args.smoke_test:
        raw_science["train"] = {**(raw_science.get("train") or {}), "steps": 20, "eval_every": 10}
        seeds = seeds[:1]

    # Tune warns on every forced experiment snapshot (num_to_keep): noise for short trials.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import mlflow
    from ray import tune

    from pipelines.progress import SweepProgress

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment = mlflow.set_experiment(settings.experiment_name)
    version = code_version()
    sweep_name = time.strftime("sweep-%Y%m%d-%H%M%S")
    _init_ray(settings)
    try:
        _check_resources(settings)
        with mlflow.start_run(run_name=sweep_name, tags={"code_version": version, "kind": "sweep"}) as parent:
            resolved = parse_science_params(raw_science).model_dump(exclude={"data", "datasets"})
            mlflow.log_params(flatten(resolved))  # the recipe as resolved (preset + overrides)
            mlflow.log_params({f"data_hash.{k}": v for k, v in hashes.items()})
            param_space = {
                "dataset": tune.grid_search(science.sweep.datasets),
                "method": tune.grid_search(science.sweep.methods),
                "seed": tune.grid_search(seeds),
                "science": raw_science,
                "data_dirs": {name: str(prepared_dir(name)) for name in science.sweep.datasets},
                "data_hashes": hashes,
                "mlflow_uri": settings.mlflow_tracking_uri,
                "experiment_id": experiment.experiment_id,
                "parent_run_id": parent.info.run_id,
                "code_version": version,
                "cpus_per_trial": settings.cpus_per_trial,
                "gpus_per_trial": settings.gpus_per_trial,
                "channels_last": settings.channels_last,
                "compile": settings.compile,
                "loader_workers": settings.loader_workers,
            }
            trainable = tune.with_resources(run_trial, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(max_concurrent_trials=settings.max_concurrent_trials,
                                             reuse_actors=True),  # skip re-importing torch per trial
                run_config=tune.RunConfig(
                    name=sweep_name,
                    storage_path=settings.storage_path,
                    failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[SweepProgress(total=len(science.sweep.datasets) * len(science.sweep.methods) * len(seeds),
                                             metric=f"val/{science.eval.selection_metric}")],
                    verbose=0,  # SweepProgress prints a compact status instead of Tune's trial tables
                ),
            )
            results = tuner.fit()
            records = [_trial_record(r) for r in results]
            failed = [r for r in records if r["status"] != "ok"]
            summary = {
                "sweep": sweep_name, "code_version": version, "data_hashes": hashes,
                "mlflow_tracking_uri": settings.mlflow_tracking_uri, "experiment": settings.experiment_name,
                "parent_run_id": parent.info.run_id, "smoke_test": args.smoke_test,
                "recipe": science.recipe, "selection": science.eval.selection,
                "ray_storage": str(Path(settings.storage_path) / sweep_name), "trials": records,
                # what the report needs to label results not comparable to the paper
                "model": raw_science["model"], "selection": {"split": "val", "metric": science.eval.selection_metric},
                "methods": {m: raw_science["methods"][m] for m in science.sweep.methods},  # Symm's baselines by loss
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
            os.replace(tmp, args.out)
            mlflow.log_artifact(str(args.out))
            register_best_models(records)
    finally:
        import ray

        ray.shutdown()
    print(f"sweep: {len(records) - len(failed)}/{len(records)} trials finished -> {args.out}")
    if failed:
        for r in failed:
            print(f"sweep: trial {r['dataset']}/{r['method']}/seed{r['seed']} failed: {r['error']}", file=sys.stderr)
        print(f"sweep: finished trials are kept in {args.out} and MLflow; Ray state in {summary['ray_storage']} "
              "(re-run to retry)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

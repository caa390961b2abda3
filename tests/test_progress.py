"""Sweep progress: the callback in a real Ray Tune run (local Ray, private temp dir, loopback).

Reference: the trials' own reported values and outcomes (which trial fails, which value is the best),
chosen here; Tune calls the callback exactly as it does in the sweep.
"""
import io
import os
import tempfile
from pathlib import Path

import pytest

from pipelines.progress import SweepProgress, SweepStatus


def trainable(config):
    from ray import tune

    for epoch in range(2):
        tune.report({"val/recall_at_1": config["value"] * (epoch + 1) / 2})
    if config["value"] < 0:
        raise RuntimeError("this trial fails on purpose")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    temp_dir = tempfile.mkdtemp(prefix="/tmp/symm-progress-")  # short: Ray's socket paths have a length limit
    here = Path(__file__).resolve().parent  # workers import this module's trainable
    path = os.pathsep.join(filter(None, [str(here), str(here.parent), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=temp_dir, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def test_sweep_progress_counts_trials_and_tracks_the_best_value(local_ray, tmp_path):
    from ray import tune

    stream = io.StringIO()  # not a TTY: plain lines, one per finished / failed / retried trial
    progress = SweepProgress(total=3, stream=stream, heartbeat_s=3600)
    tuner = tune.Tuner(
        trainable,
        param_space={"value": tune.grid_search([0.5, 0.9, -1.0]), "method": "m", "dataset": "d", "seed": 0},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="progress", verbose=0, callbacks=[progress],
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    tuner.fit()
    lines = stream.getvalue().strip().splitlines()
    assert progress.status.done == 2 and progress.status.failed == 1 and progress.status.retried == 1
    assert progress.status.best == {"d": (0.9, "m/seed0")}  # the best value any trial reported
    assert sum("finished" in line for line in lines) == 2
    assert sum("FAILED" in line for line in lines) == 1 and sum("retrying" in line for line in lines) == 1
    assert lines[-1].startswith("sweep: 3/3 trials: 2 done · 0 running · 1 failed · 1 retried")
    assert "best val/recall_at_1 d 0.9000 (m/seed0)" in lines[-1]
    assert len(lines) == 5  # no heartbeat within the hour: nothing per result


def test_status_ignores_missing_and_nan_values():
    status = SweepStatus(total=2, metric="val/recall_at_1")
    assert status.observe("glyphs", "a/seed0", 0.5)
    assert not status.observe("glyphs", "b/seed0", float("nan"))
    assert not status.observe("glyphs", "b/seed0", None)
    assert not status.observe("glyphs", "b/seed0", 0.4)
    assert status.best == {"glyphs": (0.5, "a/seed0")}
    assert "0/2 trials: 0 done · 0 running · 0 failed · best val/recall_at_1 glyphs 0.5000 (a/seed0)" in status.line()


def test_on_a_terminal_one_bar_carries_the_status():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    progress = SweepProgress(total=2, stream=tty)
    progress.status.done, progress.status.failed = 1, 1
    progress.status.observe("glyphs", "symm_npair/seed0", 0.97)
    progress.on_experiment_end([])
    text = tty.getvalue()
    assert "sweep" in text and "2/2" in text and "1 failed" in text and "0.9700 (symm_npair/seed0)" in text

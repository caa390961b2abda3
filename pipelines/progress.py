"""Sweep progress: trials done / running / failed and the best validation metric so far.

A Ray Tune callback (it runs in the driver). On a terminal it keeps one tqdm bar up to date; in a
log (not a TTY) it writes one compact line per finished, failed or retried trial, and at most one
heartbeat line per `heartbeat_s` while trials run, so a 33-trial sweep logs ~40 lines, not thousands.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from ray.tune import Callback


@dataclass
class SweepStatus:
    """What the progress line says; kept apart from Tune so it can be checked on its own."""

    total: int
    metric: str
    done: int = 0
    failed: int = 0
    retried: int = 0
    running: int = 0
    best: dict[str, tuple[float, str]] = field(default_factory=dict)  # dataset -> (value, "method/seed")
    started: float = field(default_factory=time.monotonic)

    def observe(self, dataset: str, label: str, value: Any) -> bool:
        """Record a validation value; True when it is a new best for its dataset."""
        if not isinstance(value, (int, float)) or value != value:
            return False
        if dataset not in self.best or value > self.best[dataset][0]:
            self.best[dataset] = (float(value), label)
            return True
        return False

    def line(self) -> str:
        elapsed = int(time.monotonic() - self.started)
        best = "; ".join(f"{d} {v:.4f} ({who})" for d, (v, who) in sorted(self.best.items())) or "none yet"
        retried = f" · {self.retried} retried" if self.retried else ""
        return (f"{self.done + self.failed}/{self.total} trials: {self.done} done · {self.running} running · "
                f"{self.failed} failed{retried} · best {self.metric} {best} · {elapsed // 60}m{elapsed % 60:02d}s")


class SweepProgress(Callback):
    """Tune callback printing the sweep's status (see module docstring)."""

    def __init__(self, total: int, metric: str = "val/recall_at_1", stream: IO[str] | None = None,
                 heartbeat_s: float = 60.0) -> None:
        self.status = SweepStatus(total=total, metric=metric)
        self.stream = stream or sys.stderr
        self.heartbeat_s = heartbeat_s
        self._last_line = time.monotonic()
        self._bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="sweep", unit="trial", file=self.stream, dynamic_ncols=True)

    @staticmethod
    def _label(trial: Any) -> tuple[str, str]:
        config = trial.config
        return str(config.get("dataset", "?")), f"{config.get('method', trial.trial_id)}/seed{config.get('seed', '?')}"

    def _emit(self, event: str | None = None, *, heartbeat: bool = False) -> None:
        now = time.monotonic()
        if self._bar is not None:
            self._bar.n = self.status.done + self.status.failed
            self._bar.set_postfix_str(self.status.line().split(": ", 1)[1], refresh=True)
            if event:
                self._bar.write(f"sweep: {event}", file=self.stream)
            return
        if heartbeat and now - self._last_line < self.heartbeat_s:
            return
        self._last_line = now
        print(f"sweep: {self.status.line()}" + (f" · {event}" if event else ""), file=self.stream, flush=True)

    def _count_running(self, trials: list[Any]) -> None:
        self.status.running = sum(1 for t in trials if t.status == "RUNNING")

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._count_running(trials)
        self._emit(heartbeat=True)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        self._count_running(trials)
        dataset, label = self._label(trial)
        self.status.observe(dataset, label, result.get(self.status.metric))
        self._emit(heartbeat=True)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.status.done += 1
        self._count_running([t for t in trials if t is not trial])
        self._emit("finished " + "/".join(self._label(trial)))

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.status.retried += 1
        self._emit("retrying " + "/".join(self._label(trial)) + " from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.status.failed += 1
        self._count_running([t for t in trials if t is not trial])
        self._emit("FAILED " + "/".join(self._label(trial)))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.status.running = 0
        if self._bar is not None:
            self._emit()
            self._bar.close()
        else:
            print(f"sweep: {self.status.line()}", file=self.stream, flush=True)

"""Scale-out: the same 8-trial CPU-bound sweep on a 1-node and a 2-node loopback Ray cluster.

Each node offers 1 CPU and each trial uses 1 CPU / 1 torch thread, so the 2-node cluster runs two
trials at a time. The sweep is the real entry point (`python -m pipelines.sweep` with
RAY_ADDRESS, preflight, MLflow sqlite store), runs are interleaved (1-node, 2-node, 1-node, ...)
so machine load hits both alike. Reported: wall time per run, the ratio, and the scheduling
overhead per trial = (wall x nodes - sum of the trials' own time_total_s) / trials, i.e. slot
time not spent inside a trial. Target: 2-node >= 1.6x faster.

    .venv/bin/python bench/scale_out.py [--repeats 2] [--steps 800] [--dashboard]

Only the measured cluster runs at a time (started before, stopped after each run; start-up is not
timed), without the Ray dashboard unless --dashboard.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from loopback import LoopbackCluster  # noqa: E402

METHODS = ["npair", "symm_npair", "triplet", "symm_triplet"]  # x 2 seeds = 8 trials


class CpuSampler:
    """CPU seconds of every process of the cluster and of the sweep driver, sampled every 0.5 s.

    Grouped as trial workers (Ray worker processes, ``ray::...``), Ray daemons (GCS, raylets,
    agents, monitors) and the driver (``pipelines.sweep``): where the two cores went during a run.
    """

    def __init__(self, cluster: LoopbackCluster) -> None:
        self.cluster, self.seen = cluster, {}
        self._stop = False

    def _group(self, proc: psutil.Process) -> str:
        cmd = " ".join(proc.cmdline())
        if "pipelines.sweep" in cmd:
            return "driver"
        if proc.name().startswith("ray::") or "default_worker.py" in cmd:
            return "trial workers"
        return "ray daemons"

    def sample(self) -> None:
        procs = self.cluster.processes() | {p for p in psutil.process_iter() if self._is_driver(p)}
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                key = (proc.pid, proc.create_time())
                group = self.seen.get(key, (None, 0.0))[0] or self._group(proc)
                self.seen[key] = (group, times.user + times.system)

    @staticmethod
    def _is_driver(proc: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return "pipelines.sweep" in " ".join(proc.cmdline())
        return False

    def run(self) -> None:
        while not self._stop:
            self.sample()
            time.sleep(0.5)

    def __enter__(self) -> "CpuSampler":
        self.sample()
        self.before = dict(self.seen)
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()
        self.sample()

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, (group, cpu) in self.seen.items():
            out[group] = out.get(group, 0.0) + cpu - self.before.get(key, (group, 0.0))[1]
        return {k: round(v, 1) for k, v in sorted(out.items())}


def run_sweep(cluster: LoopbackCluster, params: Path, work: Path, tag: str) -> dict:
    out = work / f"{tag}.json"
    env = cluster.full_env()
    env.update(RAY_ADDRESS=cluster.gcs_address, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
               SYMM_PREPARED_ROOT=str(work / "prepared"), SYMM_STORAGE_PATH=str(work / "storage"),
               SYMM_EXPERIMENT_NAME="scale-out", SYMM_MAX_CONCURRENT_TRIALS="8", SYMM_CPUS_PER_TRIAL="1")
    start, started_at = time.perf_counter(), time.time()
    with CpuSampler(cluster) as cpu:
        run = subprocess.run([sys.executable, "-m", "pipelines.sweep", "--params", str(params), "--out", str(out),
                              "--fresh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    wall, ended_at = time.perf_counter() - start, time.time()
    if run.returncode != 0:
        raise RuntimeError(run.stdout[-3000:] + run.stderr[-3000:])
    summary = json.loads(out.read_text())
    trial_s, spans = [], []
    for path in (work / "storage" / summary["sweep"]).glob("*/result.json"):
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        trial_s.append(lines[-1]["time_total_s"])
        spans.append((lines[-1]["timestamp"] - lines[-1]["time_total_s"], lines[-1]["timestamp"]))  # (1 s resolution)
    nodes = {t["node_ip"] for t in summary["trials"]}
    return {"wall_s": wall, "trial_s": trial_s, "nodes_used": sorted(nodes), "trials": len(summary["trials"]),
            "cpu_s": cpu.totals(),
            # serial parts: driver start (imports, Ray connect, preflight, MLflow) -> first trial starts,
            # last trial ends -> driver exits (summary, model registry)
            "startup_s": round(min(a for a, _ in spans) - started_at, 1), "tail_s": round(ended_at - max(b for _, b in spans), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=800,
                        help="training steps per trial (800: ~22 s, mostly training; 120: evaluation-dominated)")
    parser.add_argument("--dashboard", action="store_true",
                        help="run the Ray dashboard on the head (off: the sweep does not use it; on 2 cores it costs CPU)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scale_out_"))
    subprocess.run([sys.executable, "-m", "pipelines.prepare", "--dataset", "glyphs", "--out",
                    str(work / "prepared" / "glyphs")], cwd=REPO, check=True, capture_output=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(steps=args.steps, eval_every=max(1, args.steps // 2))
    params["sweep"].update(methods=METHODS, seeds=[0, 1])
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    load_before = os.getloadavg()
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for i in range(args.repeats):
        for n in (1, 2) if i % 2 == 0 else (2, 1):  # interleaved, alternating order
            # only the measured cluster is up: an idle second cluster's daemons would take CPU from
            # the run on this 2-core machine (they do not exist on real, separate machines)
            cluster = LoopbackCluster(cpus_per_node=1, workers=n - 1, dashboard=args.dashboard)
            try:
                cluster.start()
                result = run_sweep(cluster, work / "params.yaml", work, f"n{n}-r{i}")
            finally:
                cluster.stop()
            runs[n].append(result)
            print(f"{n}-node run {i}: {result['wall_s']:.1f} s (start-up {result['startup_s']} s, tail "
                  f"{result['tail_s']} s), trials on {result['nodes_used']}, CPU s {result['cpu_s']}", flush=True)
    load_after = os.getloadavg()

    def overhead(r: dict, nodes: int) -> float:
        return (r["wall_s"] * nodes - sum(r["trial_s"])) / r["trials"]

    wall = {n: statistics.median(r["wall_s"] for r in runs[n]) for n in runs}
    print(json.dumps({
        "trials": 8, "steps": args.steps, "repeats": args.repeats, "dashboard": args.dashboard,
        "wall_s": {f"{n}-node": [round(r["wall_s"], 1) for r in runs[n]] for n in runs},
        "median_wall_s": {f"{n}-node": round(wall[n], 1) for n in runs},
        "speedup_2_vs_1": round(wall[1] / wall[2], 3),
        "mean_trial_s": {f"{n}-node": round(statistics.mean(t for r in runs[n] for t in r["trial_s"]), 2) for n in runs},
        "cpu_s_per_run": {f"{n}-node": [r["cpu_s"] for r in runs[n]] for n in runs},
        "startup_s": {f"{n}-node": [r["startup_s"] for r in runs[n]] for n in runs},
        "tail_s": {f"{n}-node": [r["tail_s"] for r in runs[n]] for n in runs},
        "overhead_per_trial_s": {f"{n}-node": round(statistics.median(overhead(r, n) for r in runs[n]), 2) for n in runs},
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()

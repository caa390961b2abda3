"""Scale-out: the same 8-trial CPU-bound sweep on a 1-node and a 2-node loopback Ray cluster.

Each node offers 1 CPU and each trial uses 1 CPU / 1 torch thread, so the 2-node cluster runs two
trials at a time. The sweep is the real entry point (`python -m pipelines.sweep` with
RAY_ADDRESS, preflight, MLflow sqlite store), runs are interleaved (1-node, 2-node, 1-node, ...)
so machine load hits both alike. Reported: wall time per run, the ratio, and the scheduling
overhead per trial = (wall x nodes - sum of the trials' own time_total_s) / trials, i.e. slot
time not spent inside a trial. Target: 2-node >= 1.6x faster.

    .venv/bin/python bench/scale_out.py [--repeats 2] [--steps 120]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from loopback import LoopbackCluster  # noqa: E402

METHODS = ["npair", "symm_npair", "triplet", "symm_triplet"]  # x 2 seeds = 8 trials


def run_sweep(cluster: LoopbackCluster, params: Path, work: Path, tag: str) -> dict:
    out = work / f"{tag}.json"
    env = cluster.full_env()
    env.update(RAY_ADDRESS=cluster.gcs_address, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
               SYMM_PREPARED_ROOT=str(work / "prepared"), SYMM_STORAGE_PATH=str(work / "storage"),
               SYMM_EXPERIMENT_NAME="scale-out", SYMM_MAX_CONCURRENT_TRIALS="8", SYMM_CPUS_PER_TRIAL="1")
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pipelines.sweep", "--params", str(params), "--out", str(out), "--fresh"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(run.stdout[-3000:] + run.stderr[-3000:])
    summary = json.loads(out.read_text())
    trial_s = []
    for path in (work / "storage" / summary["sweep"]).glob("*/result.json"):
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        trial_s.append(lines[-1]["time_total_s"])
    nodes = {t["node_ip"] for t in summary["trials"]}
    return {"wall_s": wall, "trial_s": trial_s, "nodes_used": sorted(nodes), "trials": len(summary["trials"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scale_out_"))
    subprocess.run([sys.executable, "-m", "pipelines.prepare", "--dataset", "glyphs", "--out",
                    str(work / "prepared" / "glyphs")], cwd=REPO, check=True, capture_output=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(steps=args.steps, eval_every=max(1, args.steps // 2))
    params["sweep"].update(methods=METHODS, seeds=[0, 1])
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    load_before = os.getloadavg()
    clusters = {1: LoopbackCluster(cpus_per_node=1, workers=0), 2: LoopbackCluster(cpus_per_node=1, workers=1)}
    runs: dict[int, list[dict]] = {1: [], 2: []}
    try:
        for c in clusters.values():
            c.start()
        for i in range(args.repeats):
            for n in (1, 2) if i % 2 == 0 else (2, 1):  # interleaved, alternating order
                result = run_sweep(clusters[n], work / "params.yaml", work, f"n{n}-r{i}")
                runs[n].append(result)
                print(f"{n}-node run {i}: {result['wall_s']:.1f} s, trials on {result['nodes_used']}", flush=True)
    finally:
        for c in clusters.values():
            c.stop()
    load_after = os.getloadavg()

    def overhead(r: dict, nodes: int) -> float:
        return (r["wall_s"] * nodes - sum(r["trial_s"])) / r["trials"]

    wall = {n: statistics.median(r["wall_s"] for r in runs[n]) for n in runs}
    print(json.dumps({
        "trials": 8, "steps": args.steps, "repeats": args.repeats,
        "wall_s": {f"{n}-node": [round(r["wall_s"], 1) for r in runs[n]] for n in runs},
        "median_wall_s": {f"{n}-node": round(wall[n], 1) for n in runs},
        "speedup_2_vs_1": round(wall[1] / wall[2], 3),
        "mean_trial_s": {f"{n}-node": round(statistics.mean(t for r in runs[n] for t in r["trial_s"]), 2) for n in runs},
        "overhead_per_trial_s": {f"{n}-node": round(statistics.median(overhead(r, n) for r in runs[n]), 2) for n in runs},
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()

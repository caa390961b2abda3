"""Evaluation at Stanford Online Products scale: our exact metrics vs the usual tools.

SOP-shaped synthetic embeddings (60,502 x 512 float32, 11,316 classes of 2-12 items, mean
5.35 as in SOP's test split): unit class centres in random directions, each item its centre
plus Gaussian noise (per-class scale around ``--noise``), L2-normalised. At the default noise
Recall@1 is about 0.65, so no metric is trivially 0 or 1.

Measured side by side in one run, each in its own subprocess (so peak RSS is per
measurement: that process's peak resident set, VmHWM, with interpreter, imports and data):

  (a) ours: ``symm.evaluation.retrieval_metrics`` -- Recall@1/10/100/1000, MAP@R and
      R-Precision together, exact;
  (b) pytorch-metric-learning's ``AccuracyCalculator`` (precision_at_1, MAP@R, R-Precision,
      k="max_bin_count", query = reference) on the same data;
  (c) the floor: faiss exact kNN (``IndexFlatIP``, k = 1001) -- neighbours only, no metrics;
  (d) ours: ``symm.evaluation.cluster_scores`` -- faiss k-means (k = classes, 20 iterations),
      the final assignment, NMI and pairwise F1;
  (e) plain faiss k-means (k = classes, 20 iterations) -- training only.

Targets (issue 7): (a) <= 1.2 x (c) and <= 0.8 x (b); (a) peak RSS <= 2 GB; (d) <= 1.2 x (e).

    python -m bench.evaluation            # full size; writes docs/benchmarks.md's section
    python -m bench.evaluation --small    # 6,000 points, ~1 min, prints only
    python -m bench.evaluation --n 20000 --classes 3741 [--only ours,floor] [--repeats 2]

Run it alone: every measurement uses all cores, and other load skews the ratios.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Evaluation at SOP scale"

SOP_N, SOP_CLASSES, SOP_DIM = 60_502, 11_316, 512
SMALL_N, SMALL_CLASSES = 6_000, 1_122  # same items per class as SOP
KS = (1, 10, 100, 1000)
KNN_K = 1001
KMEANS_NITER = 20

# name -> (label in the table, what it computes)
MEASUREMENTS = {
    "ours": ("(a) ours: retrieval_metrics", "Recall@1/10/100/1000 + MAP@R + R-Precision, exact"),
    "pml": ("(b) PML AccuracyCalculator", 'P@1 + MAP@R + R-Precision, k="max_bin_count"'),
    "floor": ("(c) faiss IndexFlatIP kNN", f"k = {KNN_K}, neighbours only (the floor)"),
    "ours_clustering": ("(d) ours: cluster_scores", f"faiss k-means (<= {KMEANS_NITER} it) + assignment + NMI + F1"),
    "kmeans": ("(e) faiss k-means", f"{KMEANS_NITER} iterations, training only"),
}


# ------------------------------------------------------------------------------ data


def class_sizes(n: int, classes: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """``classes`` sizes in [lo, hi] summing to exactly ``n``, skewed to small like SOP.

    Sizes are drawn from p(s) ~ exp(-lam (s - lo)) with lam set so the mean is n / classes,
    then single items are moved until the total is exact.
    """
    if not lo * classes <= n <= hi * classes:
        raise ValueError(f"{n} items cannot form {classes} classes of {lo}-{hi} items")
    support = np.arange(lo, hi + 1)
    target = n / classes
    a, b = -20.0, 20.0
    for _ in range(200):  # bisection on lam: the mean decreases as lam grows
        lam = (a + b) / 2
        p = np.exp(-lam * (support - lo) - np.max(-lam * (support - lo)))
        p /= p.sum()
        if (p * support).sum() > target:
            a = lam
        else:
            b = lam
    sizes = rng.choice(support, size=classes, p=p)
    diff = n - int(sizes.sum())
    while diff:
        step = 1 if diff > 0 else -1
        room = np.flatnonzero((sizes + step >= lo) & (sizes + step <= hi))
        pick = rng.choice(room, size=min(abs(diff), room.size), replace=False)
        sizes[pick] += step
        diff -= step * pick.size
    return sizes


def make_data(n: int, classes: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SOP-shaped clustered embeddings (float32, unit rows) and labels (int64, shuffled)."""
    rng = np.random.default_rng(seed)
    sizes = class_sizes(n, classes, 2, 12, rng)
    labels = rng.permutation(np.repeat(np.arange(classes), sizes)).astype(np.int64)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = (noise * np.exp(0.15 * rng.standard_normal(classes))).astype(np.float32)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= scale[labels, None] / np.float32(np.sqrt(dim))
    x += centres[labels]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


# ---------------------------------------------------------------------------- worker


def _status_gb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak), GB.

    VmHWM is this process's own high-water mark (reset at exec); ``ru_maxrss`` is not used
    because Linux folds the parent's RSS at fork time into it.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    if field == "VmHWM":  # not Linux: fall back to ru_maxrss (bytes on macOS)
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9
    return float("nan")


def worker(name: str, data_dir: Path, seed: int) -> dict:
    """Run one measurement in this (fresh) process; return times, RSS and results."""
    import faiss  # every measurement needs it (ours and PML use it too)

    if name in ("ours", "ours_clustering"):
        from symm import evaluation as ev
    elif name == "pml":
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x = np.load(data_dir / "x.npy")
    y = np.load(data_dir / "y.npy")
    n_classes = int(np.unique(y).size)

    if name == "ours":
        def run():
            r = ev.retrieval_metrics(x, y, KS)
            out = {f"recall_at_{k}": v for k, v in r.recall.items()}
            return {**out, "map_at_r": r.map_at_r, "r_precision": r.r_precision}
    elif name == "pml":
        calc = AccuracyCalculator(
            include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
            k="max_bin_count",
            device=torch.device("cpu"),
        )
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def run():
            r = calc.get_accuracy(xt, yt)
            return {
                "recall_at_1": float(r["precision_at_1"]),
                "map_at_r": float(r["mean_average_precision_at_r"]),
                "r_precision": float(r["r_precision"]),
            }
    elif name == "floor":
        def run():
            index = faiss.IndexFlatIP(x.shape[1])
            index.add(x)
            sims, idx = index.search(x, KNN_K)
            return {"neighbours": int(idx.shape[1])}
    elif name == "ours_clustering":
        def run():
            r = ev.cluster_scores(x, y, seed=seed, niter=KMEANS_NITER)
            return {"nmi": r["nmi"], "f1": r["f1"]}
    elif name == "kmeans":
        def run():
            km = faiss.Kmeans(x.shape[1], n_classes, niter=KMEANS_NITER, seed=seed, verbose=False)
            km.train(x)
            return {"objective": float(km.obj[-1]), "iterations": len(km.obj)}
    else:
        raise ValueError(f"unknown measurement {name!r}")

    rss_before = _status_gb("VmRSS")
    load = os.getloadavg()[0]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = _status_gb("VmHWM")
    return {
        "name": name,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_gb": peak,
        "rss_before_gb": rss_before,
        "load_before": load,
        "result": result,
    }


def run_worker(name: str, data_dir: Path, seed: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "bench.evaluation", "--worker", name, "--data", str(data_dir), "--seed", str(seed)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- report


def environment() -> dict:
    """Versions, BLAS libraries and the machine, for the report."""
    import faiss
    import torch
    import pytorch_metric_learning

    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "pml": pytorch_metric_learning.__version__,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) + " (unused: CPU inputs)" if torch.cuda.is_available() else "no GPU",
        "cpu": platform.processor() or platform.machine(),
        "ram_gb": float("nan"),
        "blas": "",
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        m = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        if m:
            info["cpu"] = m.group(1).strip()
        mem = Path("/proc/meminfo").read_text()
        info["ram_gb"] = int(re.search(r"MemTotal:\s*(\d+)", mem).group(1)) * 1024 / 1e9
    except (OSError, AttributeError):
        pass
    try:
        from threadpoolctl import threadpool_info

        libs = []
        for lib in threadpool_info():
            if lib.get("internal_api") == "openblas":
                owner = "faiss" if "faiss" in lib["filepath"] else "numpy" if "numpy" in lib["filepath"] else "?"
                libs.append(f"{owner}: OpenBLAS {lib.get('version')} ({lib.get('architecture')} kernels)")
        info["blas"] = "; ".join(libs)
    except Exception:  # threadpoolctl is optional here
        pass
    return info


def fmt_ratio(value: float, target: float, comparison: str = "<=") -> str:
    ok = value <= target
    return f"{value:.2f} | {comparison} {target:g} | {'yes' if ok else '**no**'}"


def build_report(args, runs: dict[str, list[dict]], info: dict, data_desc: str, date: str, load_start: float) -> tuple[str, list[str]]:
    """Markdown section and the plain-text lines printed to the terminal."""
    best = {name: min(rs, key=lambda r: r["wall_s"]) for name, rs in runs.items()}
    rows = []
    for name, r in best.items():
        label, what = MEASUREMENTS[name]
        if name == "kmeans" and "iterations" in r["result"]:
            what = (
                f"at most {KMEANS_NITER} iterations, ran {r['result']['iterations']} (faiss stops once "
                "the objective stops changing); training only"
            )
        walls = ", ".join(f"{x['wall_s']:.1f}" for x in runs[name])
        rows.append(
            f"| {label} | {what} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_gb']:.2f} "
            f"| {r['rss_before_gb']:.2f} |" + (f" {walls} |" if args.repeats > 1 else "")
        )
    head = "| measurement | computes | wall s | CPU s | peak RSS GB | RSS before call GB |"
    sep = "|---|---|---|---|---|---|"
    if args.repeats > 1:
        head += " all walls s |"
        sep += "---|"

    def ratio(a: str, b: str, target: float) -> tuple[str, str]:
        """Best-of ratio, and the ratio within each round (measured minutes apart)."""
        rounds = ", ".join(f"{x['wall_s'] / y['wall_s']:.2f}" for x, y in zip(runs[a], runs[b]))
        return fmt_ratio(best[a]["wall_s"] / best[b]["wall_s"], target), rounds

    checks = []
    if "ours" in best and "floor" in best:
        checks.append(("retrieval time: (a) / (c) floor", *ratio("ours", "floor", 1.2)))
    if "ours" in best and "pml" in best:
        checks.append(("retrieval time: (a) / (b) PML", *ratio("ours", "pml", 0.8)))
    if "ours" in best:
        peaks = ", ".join(f"{x['peak_rss_gb']:.2f}" for x in runs["ours"])
        checks.append(("retrieval peak RSS (a), GB", fmt_ratio(best["ours"]["peak_rss_gb"], 2.0), peaks))
    if "ours_clustering" in best and "kmeans" in best:
        checks.append(("clustering time: (d) / (e) k-means", *ratio("ours_clustering", "kmeans", 1.2)))

    agree = []
    if "ours" in best and "pml" in best:
        a, b = best["ours"]["result"], best["pml"]["result"]
        diffs = {k: abs(a[k] - b[k]) for k in ("recall_at_1", "map_at_r", "r_precision")}
        agree.append(
            "ours vs PML, |difference|: "
            + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
            + " (PML ranks by float32 L2 distance, we by float32 cosine: only last-bit near-ties can differ)"
        )
    metrics = {}
    for name in ("ours", "ours_clustering"):
        if name in best:
            metrics.update(best[name]["result"])
    metric_line = ", ".join(f"{k} = {v:.4f}" for k, v in metrics.items())

    cmd = ".venv/bin/python -m bench.evaluation" + (" " + args.argv_str if args.argv_str else "")
    lines = [
        SECTION,
        "",
        f"Command: `{cmd}` (from the repository root; issue 7). Run on {date}.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gb']:.0f} GB RAM, {info['gpu']}; "
        f"1-minute load average {load_start:.2f} at the start (the machine is shared: other jobs may "
        f"have been running). Python {info['python']}, numpy {info['numpy']}, torch {info['torch']} "
        f"({info['torch_threads']} threads), faiss {info['faiss']}, pytorch-metric-learning {info['pml']}."
        + (f" BLAS: {info['blas']}." if info["blas"] else ""),
        "",
        f"Data: {data_desc}. Our metrics on it: {metric_line}.",
        "",
        "Each measurement runs in its own subprocess: wall and CPU time of the call alone (imports and "
        "data loading excluded); peak RSS is that process's high-water mark (`VmHWM`: interpreter, "
        "imports and the data included; \"RSS before call\" is the same process just before the call)."
        + (
            f" Each measurement ran {args.repeats} times, in rounds with a rotating order; the tables "
            "use each one's fastest run (the machine's load changes from minute to minute), and "
            "\"per round\" gives the ratios within each round."
            if args.repeats > 1
            else ""
        ),
        "",
        head,
        sep,
        *rows,
        "",
        "| target (issue 7) | measured (best runs) | target | met | per round |",
        "|---|---|---|---|---|",
        *[f"| {name} | {value} | {rounds} |" for name, value, rounds in checks],
    ]
    if agree:
        lines += ["", *[f"Exactness check: {a}." for a in agree]]
    lines += ["", NOTES.strip(), ""]
    text = "\n".join(lines)

    term = [
        f"{date} | {info['cpu']} x{info['cores']} | load {load_start:.2f} | torch {info['torch']} faiss {info['faiss']}",
        f"data: {data_desc}",
        f"metrics: {metric_line}",
        f"{'measurement':<32}{'wall s':>9}{'CPU s':>9}{'peak GB':>9}{'before GB':>10}",
    ]
    for name, r in best.items():
        term.append(
            f"{MEASUREMENTS[name][0]:<32}{r['wall_s']:>9.1f}{r['cpu_s']:>9.1f}{r['peak_rss_gb']:>9.2f}{r['rss_before_gb']:>10.2f}"
        )
    for name, value, rounds in checks:
        term.append(f"{name:<40} {value.replace(' | ', '  ')}   (per round: {rounds})")
    term += agree
    return text, term


NOTES = """
How (a) gets under the floor. The floor (c) and PML (b) both spend their time in faiss's
brute-force search: the full N x N matrix product plus per-query top-k heaps. Ours
(i) computes only half of the product -- the similarity matrix is symmetric, so each
block of ~510 items (whole classes) is multiplied once against all later items and the
strip serves both the block's queries and the later ones; (ii) uses NumPy's BLAS, whose
kernels are faster on this CPU than those bundled with faiss; and (iii) never selects a
top 1000: the rank of a query's first same-label item is a running count of negatives
above its best same-label similarity, so Recall@1000 costs what Recall@1 costs, and
MAP@R / R-Precision keep only the best R negatives above the weakest same-label
similarity per query, ranked exactly with the R same-label items at the end. Peak memory:
one strip (510 x N similarities, 118 MiB) and its mask, one normalised copy of the
embeddings, plus interpreter, torch and faiss. The exactness check above compares all
three shared metrics with PML.

Clustering. (d) is (e) -- the same faiss k-means call, same seed and settings -- plus one
pass assigning every item to its nearest final centroid (a chunked NumPy matrix product,
about one k-means iteration) and NMI and pairwise F1 from a sparse contingency table
(~10 ms). The installed faiss stops k-means once its objective stops changing, which on
these data happens after 5 of the 20 allowed iterations (table above), so that one extra
pass adds ~15-20% here: the 1.2x target holds for the best runs but is borderline (single
rounds under load can exceed it). With 20 full iterations (as in the issue's 72 s
reference) the pass would add ~5%. Avoiding it would need the assignment of faiss's last
Lloyd step, which faiss does not expose. `evaluate()` uses at most 20 k-means iterations
by default (faiss's own default is 25); `niter` and `nredo` are options.
"""


def write_section(text: str, path: Path) -> None:
    """Replace (or append) the '## Evaluation at SOP scale' section, keeping everything else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        nxt = re.search(r"^## ", old[start + len(SECTION):], flags=re.M)
        end = len(old) if nxt is None else start + len(SECTION) + nxt.start()
        tail = old[end:]
        new = old[:start] + text.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    path.write_text(new)


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help=f"{SMALL_N} points / {SMALL_CLASSES} classes, prints only")
    p.add_argument("--n", type=int, default=None, help=f"number of points (default {SOP_N})")
    p.add_argument("--classes", type=int, default=None, help=f"number of classes (default {SOP_CLASSES})")
    p.add_argument("--dim", type=int, default=SOP_DIM)
    p.add_argument("--noise", type=float, default=2.3, help="noise scale; 2.3 gives Recall@1 ~ 0.65 at SOP size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=",".join(MEASUREMENTS), help="comma-separated subset of " + ",".join(MEASUREMENTS))
    p.add_argument("--repeats", type=int, default=1, help="runs per measurement (rotating order); the fastest is reported")
    p.add_argument("--docs", type=Path, default=None, help=f"write the section here (default: {DOCS.relative_to(REPO)} for the full-size run)")
    p.add_argument("--no-docs", action="store_true", help="never write the docs section")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per measurement")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.seed)))
        return

    n = args.n or (SMALL_N if args.small else SOP_N)
    classes = args.classes or (SMALL_CLASSES if args.small else SOP_CLASSES)
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(names) - set(MEASUREMENTS)
    if unknown:
        p.error(f"unknown measurement(s) {sorted(unknown)}; choose from {list(MEASUREMENTS)}")
    full_size = (n, classes, args.dim) == (SOP_N, SOP_CLASSES, SOP_DIM)
    docs = None if args.no_docs else (args.docs or (DOCS if full_size and not args.small else None))
    args.argv_str = " ".join(argv)

    date = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_start = os.getloadavg()[0]
    info = environment()
    x, y = make_data(n, classes, args.dim, args.noise, args.seed)
    sizes = np.bincount(y)
    data_desc = (
        f"{n:,} x {args.dim} float32, {classes:,} classes of {sizes.min()}-{sizes.max()} items "
        f"(mean {sizes.mean():.2f}), noise {args.noise}, seed {args.seed}"
    )
    print(f"{data_desc}; measuring {', '.join(names)} ({args.repeats}x each)", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        np.save(Path(tmp) / "x.npy", x)
        np.save(Path(tmp) / "y.npy", y)
        del x, y
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for name in order:
                r = run_worker(name, Path(tmp), args.seed, args.timeout)
                runs[name].append(r)
                print(
                    f"  {MEASUREMENTS[name][0]:<32} {r['wall_s']:8.1f} s  cpu {r['cpu_s']:8.1f} s  "
                    f"peak {r['peak_rss_gb']:.2f} GB  (load {r['load_before']:.2f})  {r['result']}",
                    flush=True,
                )
    text, term = build_report(args, runs, info, data_desc, date, load_start)
    print()
    print("\n".join(term))
    if docs is not None:
        write_section(text, docs)
        print(f"\nwrote section '{SECTION}' to {docs}")


if __name__ == "__main__":
    main()

"""Forward+backward cost of every loss: Symm vs its base loss, and ours vs pytorch-metric-learning.

All losses are timed interleaved in one process (machine noise hits each alike), in a new
random order each round (what ran just before a call changes its time); medians over
repeats; ratios against the base loss and against PML's same-named loss. The paper reports
+1.8% for Symm+N-pair's loss on a Tesla P40.

    python -m bench.loss_overhead [--repeats 100] [--device cpu|cuda] [--threads 1] [--only symm_npair]
                                  [--denormals flush|keep] [--runs 3] [--markdown docs/benchmarks.md]
                                  [--plot docs/images/loss_overhead.png]

``--runs K`` repeats the whole measurement in K fresh processes, one after another (a process's
heap and caches change every row's time by 10-20% on a shared VM, alike for all rows but not
quite), prints the first run's tables and adds the verdict over all K: each target's CPU-time
ratio per run, "met" where every run is within it, "not met" where none is, "borderline"
between. ``--plot PATH`` (with ``--runs``) draws that verdict: each row's ratio per run as a share
of its target, the range between runs and the products estimate, coloured by verdict.

Each call is timed in wall-clock time and in CPU time of the process (all threads). On a CPU
shared with other jobs, CPU time barely depends on the load while wall time does; the
ratios are computed from both and both are reported. ``--threads 1`` (the default) is how the
trainer runs a trial (one torch thread per trial).

Each row's matrix products: the products its code path runs (recorded once by ``bench.products``:
the aten products of forward and backward, and the BLAS syrk of the Symm Gram) are replayed alone
as rows "products: …" in the same rounds. The verdict gives, per run, the products estimate of a
Symm row, (base − base's products + its products) / base: its ratio if everything but the
matrix products cost what it costs in the base loss. It says how much of a ratio the products
alone explain on this CPU's BLAS; it is not a bound (a Symm node can do the rest in less than its
base loss does: Symm+angular and the Symm distance losses run below theirs).

Denormals are flushed to zero by default (``torch.set_flush_denormal(True)``): on random
N(0, 1) embeddings at d = 512 the N-pair logits spread over ±60, most softmax probabilities
are denormal floats, and on Intel cores every product touching them is microcode-assisted —
the plain N-pair backward then takes ~9x longer (4.2 ms instead of 0.47 ms, 2026-12-02), a
property of the random inputs and the CPU, not of the loss. ``--denormals keep`` measures
without flushing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pytorch_metric_learning import distances, losses, miners, reducers

from bench.products import record_products, replay
from symm.losses import create_loss

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pml_losses() -> dict[str, Loss]:
    sq = distances.LpDistance(power=2, normalize_embeddings=True)
    mean = reducers.MeanReducer

    def with_miner(miner, loss):
        return lambda emb, labels: loss(emb, labels, miner(emb, labels))

    return {
        "npair": losses.NPairsLoss(distance=distances.DotProductSimilarity(normalize_embeddings=False)),
        "angular": losses.AngularLoss(alpha=45),
        "triplet": losses.TripletMarginLoss(margin=0.2, distance=sq, reducer=mean()),
        "triplet_hardest": with_miner(miners.BatchHardMiner(distance=sq), losses.TripletMarginLoss(margin=0.2, distance=sq, reducer=mean())),
        "semihard_triplet": with_miner(miners.TripletMarginMiner(margin=1.0, type_of_triplets="semihard", distance=sq),
                                       losses.TripletMarginLoss(margin=1.0, distance=sq, reducer=mean())),
        "lifted": losses.LiftedStructureLoss(distance=distances.LpDistance(normalize_embeddings=False), reducer=mean()),
        "contrastive": losses.ContrastiveLoss(neg_margin=0.5, reducer=mean()),
    }


NO_COMPILED = {"SYMM_COMPILED_KERNELS": "0"}  # the torch path instead of the compiled loops
NO_SYRK = {"SYMM_BLAS_SYRK": "0"}  # the compiled node's (2N, 2N) Gram as a torch matmul instead of BLAS syrk

# (row name, base row name or None, loss name, options; "env": environment during the call)
ROWS: list[tuple[str, str | None, str, dict]] = [
    ("npair", None, "npair", {}),
    ("symm_npair official", "npair", "npair", {"negatives": "symm", "symm_mode": "official"}),
    ("symm_npair point4", "npair", "npair", {"negatives": "symm", "symm_mode": "point4"}),
    ("symm_npair pair16", "npair", "npair", {"negatives": "symm", "symm_mode": "pair16"}),
    ("angular", None, "angular", {}),
    ("symm_angular official", "angular", "angular", {"negatives": "symm", "symm_mode": "official"}),
    ("symm_angular point4", "angular", "angular", {"negatives": "symm", "symm_mode": "point4"}),
    # the same Symm losses through the torch path (symm.losses.fused / PointSets) instead of the
    # compiled loops (symm.losses.kernels, symm.losses.distance_kernels), side by side in the same rounds
    ("symm_npair official, torch node", "npair", "npair", {"negatives": "symm", "symm_mode": "official", "env": NO_COMPILED}),
    ("symm_npair point4, torch node", "npair", "npair", {"negatives": "symm", "symm_mode": "point4", "env": NO_COMPILED}),
    ("symm_npair pair16, torch node", "npair", "npair", {"negatives": "symm", "symm_mode": "pair16", "env": NO_COMPILED}),
    ("symm_angular official, torch node", "angular", "angular", {"negatives": "symm", "symm_mode": "official", "env": NO_COMPILED}),
    ("symm_angular point4, torch node", "angular", "angular", {"negatives": "symm", "symm_mode": "point4", "env": NO_COMPILED}),
    # the compiled node with its symmetric Gram as a torch matmul (both triangles) instead of BLAS syrk
    ("symm_npair official, torch Gram", "npair", "npair", {"negatives": "symm", "symm_mode": "official", "env": NO_SYRK}),
    ("symm_npair pair16, torch Gram", "npair", "npair", {"negatives": "symm", "symm_mode": "pair16", "env": NO_SYRK}),
    ("symm_angular official, torch Gram", "angular", "angular",
     {"negatives": "symm", "symm_mode": "official", "env": NO_SYRK}),
    ("symm_triplet point4, torch node", "triplet", "triplet", {"negatives": "symm", "symm_mode": "point4", "env": NO_COMPILED}),
    ("symm_lifted point4, torch node", "lifted", "lifted", {"negatives": "symm", "symm_mode": "point4", "env": NO_COMPILED}),
    ("symm_contrastive point4, torch node", "contrastive", "contrastive",
     {"negatives": "symm", "symm_mode": "point4", "env": NO_COMPILED}),
    ("triplet", None, "triplet", {}),
    ("triplet_hardest", None, "triplet", {"negatives": "hardest"}),
    ("symm_triplet point4", "triplet", "triplet", {"negatives": "symm", "symm_mode": "point4"}),
    ("symm_triplet pair16", "triplet", "triplet", {"negatives": "symm", "symm_mode": "pair16"}),
    ("semihard_triplet", None, "semihard_triplet", {}),
    ("symm_semihard_triplet", "semihard_triplet", "semihard_triplet", {"negatives": "symm"}),
    ("lifted", None, "lifted", {}),
    ("symm_lifted point4", "lifted", "lifted", {"negatives": "symm", "symm_mode": "point4"}),
    ("symm_lifted pair16", "lifted", "lifted", {"negatives": "symm", "symm_mode": "pair16"}),
    ("contrastive", None, "contrastive", {}),
    ("symm_contrastive point4", "contrastive", "contrastive", {"negatives": "symm", "symm_mode": "point4"}),
    ("symm_contrastive pair16", "contrastive", "contrastive", {"negatives": "symm", "symm_mode": "pair16"}),
]
PML_NAME = {"npair": "npair", "angular": "angular", "triplet": "triplet", "triplet_hardest": "triplet_hardest",
            "semihard_triplet": "semihard_triplet", "lifted": "lifted", "contrastive": "contrastive"}
TARGETS = {"official": 1.5, "point4": 1.5, "pair16": 2.0}


def with_environment(loss: Loss, env: dict[str, str]) -> Loss:
    """``loss`` with ``env`` set during its forward (the node and its Gram are chosen there)."""
    def call(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        before = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            return loss(embeddings, labels)
        finally:
            for key, value in before.items():
                if value is None:
                    del os.environ[key]
                else:
                    os.environ[key] = value
    return call


def make_row_loss(loss: str, opts: dict) -> Loss:
    options = {k: v for k, v in opts.items() if k != "env"}
    fn = create_loss(loss, **options)
    return with_environment(fn, opts["env"]) if "env" in opts else fn


PRODUCTS = "products: "  # prefix of the rows that replay a row's matrix products alone


def time_call(fn: Loss, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(wall s, process CPU s) of one forward+backward (of one replay, for a products row: it returns None)."""
    x = embeddings.detach().requires_grad_(True)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(x, labels)
    if out is not None:
        out.backward()
    sync()
    return time.perf_counter() - start, time.process_time() - cpu


def measure(n_pairs: int, dim: int, repeats: int, device: str, only: str | None = None,
            budget_s: float = 10.0, products: bool = True) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) per row and PML reference."""
    torch.manual_seed(0)
    embeddings = torch.randn(2 * n_pairs, dim, device=device)
    labels = torch.arange(n_pairs, device=device).repeat_interleave(2)
    rows = [r for r in ROWS if only is None or only in r[0] or (r[1] and only in r[1])]
    needed = {r[0] for r in rows} | {r[1] for r in rows if r[1]}
    fns: dict[str, Loss] = {row: make_row_loss(loss, opts) for row, _, loss, opts in ROWS if row in needed}
    fns.update({f"PML {k}": v for k, v in pml_losses().items() if k in needed})

    def warm_up(names: list[str]) -> None:  # until 3 calls or 1 s each
        for name in names:
            spent = 0.0
            for _ in range(3):
                spent += time_call(fns[name], embeddings, labels)[0]
                if spent > 1.0:
                    break

    warm_up(list(fns))
    # each row's products, recorded once warm (a first call may do one-off work: the Triton node checks
    # its backward on a copy of the first batch of a shape) and replayed alone as a row of its own
    recorded = [PRODUCTS + row for row in fns if products and not row.startswith("PML ")]
    for name in recorded:
        row = name[len(PRODUCTS):]
        fns[name] = lambda _x, _labels, run=replay(record_products(fns[row], embeddings, labels)): run()
    warm_up(recorded)
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    # interleaved rounds in a new (seeded) random order each round: a call's time depends on what
    # ran just before it (a large loss leaves caches cold and the heap trimmed: a small loss right
    # after PML's lifted structure takes up to 3x longer), so a fixed order would bias some rows.
    # A very slow reference (PML's lifted at N=256 takes seconds) stops once it has used its time
    # budget, with at least 3 samples.
    order, rng = list(fns), random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            if len(samples[name]) < 3 or sum(w for w, _ in samples[name]) < budget_s:
                samples[name].append(time_call(fns[name], embeddings, labels))
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in samples.items()}


def table(medians: dict[str, tuple[float, float]], n_pairs: int, dim: int) -> list[str]:
    lines = [f"**N = {n_pairs} pairs, d = {dim}** (ratios: wall-clock / CPU time)", "",
             "| loss | median ms, wall (CPU) | × base loss | target | × PML's | target |", "|---|---|---|---|---|---|"]

    def ratio(a: str, b: str) -> str:
        (wa, ca), (wb, cb) = medians[a], medians[b]
        return f"{wa / wb:.2f} / {ca / cb:.2f}" if cb > 0 else f"{wa / wb:.2f}"

    for row, base, _, opts in ROWS:
        if row not in medians:
            continue
        wall, cpu = medians[row]
        vs_base = ratio(row, base) if base else ""
        target = f"≤ {TARGETS[opts['symm_mode'] if 'symm_mode' in opts else 'point4']}" if base else ""
        pml = PML_NAME.get(row)
        vs_pml = ratio(row, f"PML {pml}") if pml and f"PML {pml}" in medians else ""
        lines.append(f"| {row} | {1000 * wall:.3f} ({1000 * cpu:.3f}) | {vs_base} | {target} | {vs_pml} | {'≤ 0.6' if vs_pml else ''} |")
    refs = [f"{k[4:]} {1000 * w:.3f} ({1000 * c:.3f}) ms" for k, (w, c) in medians.items() if k.startswith("PML ")]
    if refs:
        lines += ["", "PML reference rows, wall (CPU): " + ", ".join(refs)]
    products = [f"{k[len(PRODUCTS):]} {1000 * c:.3f}" for k, (_, c) in medians.items() if k.startswith(PRODUCTS)]
    if products:
        lines += ["", "Matrix products of each row's code path replayed alone (`bench.products`), CPU ms: " + ", ".join(products)]
    return lines + [""]


SIZES = ((64, 512), (256, 128))


def target_ratios(medians: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """{row: (CPU-time ratio, its target)} for every row with a target: Symm against its base loss,
    our base loss against PML's."""
    out = {}
    for row, base, _, opts in ROWS:
        if row not in medians:
            continue
        if base and base in medians and medians[base][1] > 0:
            out[row] = (medians[row][1] / medians[base][1], TARGETS[opts.get("symm_mode", "point4")])
        pml = f"PML {PML_NAME[row]}" if row in PML_NAME else None
        if pml in medians and medians[pml][1] > 0:
            out[f"{row} vs PML"] = (medians[row][1] / medians[pml][1], 0.6)
    return out


def products_estimates(medians: dict[str, tuple[float, float]]) -> dict[str, float]:
    """{Symm row: its CPU-time ratio to its base loss if everything but the matrix products cost what it
    costs in the base}: (base − base's products + the row's products) / base, from one run's medians."""
    out = {}
    for row, base, _, _ in ROWS:
        keys = (row, base, PRODUCTS + row, PRODUCTS + base) if base else ()
        if keys and all(key in medians for key in keys) and medians[base][1] > 0:
            base_cpu = medians[base][1]
            out[row] = (base_cpu - medians[PRODUCTS + base][1] + medians[PRODUCTS + row][1]) / base_cpu
    return out


def verdict_status(ratios: list[float] | tuple[float, ...], target: float) -> tuple[str, int]:
    """('met' where every run is within the target, 'not met' where none is, else 'borderline'; runs within)."""
    within = sum(r <= target for r in ratios)
    return ("met" if within == len(ratios) else "not met" if within == 0 else "borderline"), within


def verdict(ratios: list[float], target: float) -> str:
    """``verdict_status`` as the table prints it: 'met', '**not met**' or 'borderline (k of K within)'."""
    status, within = verdict_status(ratios, target)
    return {"met": "met", "not met": "**not met**"}.get(status, f"borderline ({within} of {len(ratios)} within)")


@dataclass(frozen=True)
class VerdictRow:
    """One target over several runs: a row's ratio in each run, its target and products estimates."""

    size: str
    row: str
    ratios: tuple[float, ...]
    target: float
    estimates: tuple[float, ...]

    @property
    def verdict(self) -> str:
        return verdict(list(self.ratios), self.target)

    @property
    def status(self) -> str:
        return verdict_status(self.ratios, self.target)[0]


def verdict_rows(runs: list[dict[str, dict[str, tuple[float, float]]]]) -> list[VerdictRow]:
    """Every target of the runs (each: {"N x d": medians}), per size in the first run's row order."""
    out = []
    for size in runs[0]:
        per_run = [target_ratios(run[size]) for run in runs]
        estimates = [products_estimates(run[size]) for run in runs]
        for row, (_, target) in per_run[0].items():
            out.append(VerdictRow(size, row, tuple(r[row][0] for r in per_run if row in r), target,
                                  tuple(e[row] for e in estimates if row in e)))
    return out


def verdict_table(runs: list[dict[str, dict[str, tuple[float, float]]]]) -> list[str]:
    """The targets over several runs (each: {"N x d": medians}), one line per row and size."""
    lines = [f"**Verdict over {len(runs)} runs** (CPU-time ratios, one fresh process per run, in run order; three "
             "decimals, so that a ratio just above its target does not print as the target; products estimate: (base − "
             "base's products + the row's products) / base, the ratio if everything but the matrix products cost what it "
             "costs in the base loss — an estimate, not a bound)", "",
             "| size | row | ratio per run | range | target | products estimate per run | verdict |",
             "|---|---|---|---|---|---|---|"]
    for item in verdict_rows(runs):
        values = item.ratios
        products = ", ".join(f"{e:.3f}" for e in item.estimates)
        lines.append(f"| {item.size} | {item.row} | {', '.join(f'{v:.3f}' for v in values)} | "
                     f"{min(values):.3f}-{max(values):.3f} | ≤ {item.target} | {products} | {item.verdict} |")
    return lines + [""]


VERDICT_COLOURS = {"met": "#2e7d32", "borderline": "#ef8f00", "not met": "#c62828"}


def figure_rows(runs: list[dict[str, dict[str, tuple[float, float]]]]) -> list[VerdictRow]:
    """The rows the figure shows: each loss's default code path (not the diagnostic rows that run it
    under another environment, "…, torch node" / "…, torch Gram"), every target of them."""
    default = {row for row, _, _, opts in ROWS if "env" not in opts}
    return [item for item in verdict_rows(runs) if item.row.removesuffix(" vs PML") in default]


def verdict_figure(runs: list[dict[str, dict[str, tuple[float, float]]]], path: Path, caption: str) -> list[VerdictRow]:
    """A PNG of the verdict: per size, each row's ratio in every run as a share of its target (1 = the
    target), the range between runs, and the products estimate; coloured by verdict. Returns the rows drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = figure_rows(runs)
    sizes = list(dict.fromkeys(item.size for item in shown))
    targets = {item.row: item.target for item in shown}
    names = list(targets)
    figure, axes = plt.subplots(1, len(sizes), figsize=(6.2 * len(sizes), 0.34 * len(names) + 1.8), sharey=True,
                                squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for item in (i for i in shown if i.size == size):
            y = names.index(item.row)
            colour = VERDICT_COLOURS[item.status]
            shares = [r / item.target for r in item.ratios]
            ax.hlines(y, min(shares), max(shares), color=colour, linewidth=5, alpha=0.35)
            ax.plot(shares, [y] * len(shares), "o", color=colour, markersize=4)
            if item.estimates:
                ax.plot([e / item.target for e in item.estimates], [y] * len(item.estimates), "x", color="0.35",
                        markersize=5)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_title(size)
        ax.set_xlabel("CPU-time ratio / its target (1 = target; left of it: within)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(names)))
    axes[0][0].set_yticklabels([f"{name} (≤ {targets[name]})" for name in names], fontsize=8)
    axes[0][0].invert_yaxis()
    handles = [Line2D([], [], color=c, marker="o", linestyle="-", linewidth=4, alpha=0.8, label=k)
               for k, c in VERDICT_COLOURS.items()]
    handles.append(Line2D([], [], color="0.35", marker="x", linestyle="", label="products estimate"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.suptitle(caption, fontsize=9)
    figure.tight_layout(rect=(0, 0.05, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return shown


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; the speeds, and the denormal penalty, depend on it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the trainer uses 1 per trial)")
    parser.add_argument("--only", default=None, help="only rows whose name (or base row) contains this")
    parser.add_argument("--markdown", default=None, help="replace the '## Loss overhead' section of this file")
    parser.add_argument("--denormals", choices=("flush", "keep"), default="flush",
                        help="flush denormal floats to zero (default; see the module docstring) or keep them")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole measurement in this many fresh processes")
    parser.add_argument("--no-products", dest="products", action="store_false",
                        help="leave out the rows that replay each row's matrix products (and the products estimate)")
    parser.add_argument("--plot", default=None,
                        help="with --runs: also draw the verdict (each row's ratio per run against its target) to this PNG")
    parser.add_argument("--json", default=None, help=argparse.SUPPRESS)  # one run's medians, for --runs
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    if args.runs > 1:
        return run_several(args)
    if args.plot:
        parser.error("--plot draws the verdict over several runs: give --runs 2 or more")
    torch.set_num_threads(args.threads)
    flushing = args.denormals == "flush" and torch.set_flush_denormal(True)  # False where the CPU cannot
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (f"`python -m bench.loss_overhead --repeats {args.repeats} --threads {args.threads} --denormals {args.denormals}"
              f"{'' if args.products else ' --no-products'}` on {args.device} "
              f"({cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, denormals "
              f"{'flushed to zero' if flushing else 'kept'}), torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, 1-minute load average {load:.2f} "
              f"at the start. Forward+backward of the loss alone on random float32 embeddings; medians of interleaved "
              f"repeats (a new random order each round). Paper (Tesla P40): N-pair 0.2454 ms, Symm+N-pair 0.2497 ms (× 1.02).")
    lines, results = [header, ""], {}
    for n_pairs, dim in SIZES:
        results[f"N = {n_pairs}, d = {dim}"] = medians = measure(n_pairs, dim, args.repeats, args.device, args.only, products=args.products)
        lines += table(medians, n_pairs, dim)
    if hasattr(os, "getloadavg"):
        lines.append(f"1-minute load average at the end: {os.getloadavg()[0]:.2f}")
    text = "\n".join(lines)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"text": text, "medians": results}))
    if args.markdown:
        write_results(Path(args.markdown), text)


def run_several(args: argparse.Namespace) -> None:
    """--runs K: K fresh processes one after another; the first run's tables and the verdict over all."""
    runs, texts = [], []
    passed = [f"--repeats={args.repeats}", f"--device={args.device}", f"--threads={args.threads}",
              f"--denormals={args.denormals}"] + ([f"--only={args.only}"] if args.only else []) + \
        ([] if args.products else ["--no-products"])
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.runs):
            out = Path(folder) / f"run{index}.json"
            print(f"loss_overhead: run {index + 1} of {args.runs} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "bench.loss_overhead", *passed, f"--json={out}"], check=True,
                           stdout=subprocess.DEVNULL)
            result = json.loads(out.read_text())
            runs.append({size: {k: tuple(v) for k, v in medians.items()} for size, medians in result["medians"].items()})
            texts.append(result["text"])
    text = "\n".join([texts[0].replace(f"--repeats {args.repeats} ", f"--repeats {args.repeats} --runs {args.runs} ", 1),
                      "", f"The tables above are run 1 of {args.runs}.", "", *verdict_table(runs)])
    print(text)
    if args.markdown:
        write_results(Path(args.markdown), text)
    if args.plot:
        verdict_figure(runs, Path(args.plot), f"python -m bench.loss_overhead --runs {args.runs} --repeats {args.repeats} on "
                       f"{args.device} ({cpu_model()}, {args.threads} torch threads), {time.strftime('%Y-%m-%d %H:%M')}")


BEGIN, END = "<!-- loss_overhead results: begin -->", "<!-- loss_overhead results: end -->"


def write_results(path: Path, text: str) -> None:
    """Replace the results block of the '## Loss overhead' section (the prose around it stays)."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        before, rest = old.split(BEGIN, 1)
        new = before + block + rest.split(END, 1)[1]
    else:
        new = old.rstrip() + f"\n\n## Loss overhead\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


if __name__ == "__main__":
    main()

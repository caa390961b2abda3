"""DVC stage `report`: aggregate results/sweep.json into tables, a metrics file and pictures.

Writes reports/results.md (mean ± std over seeds per method), reports/metrics.json (DVC
metrics) and reports/comparison.png, reports/curves.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.settings import REPO_ROOT

METRIC_LABELS = {"nmi": "NMI", "f1": "F1", "map_at_r": "MAP@R", "r_precision": "RP"}


def label(metric: str) -> str:
    return f"R@{metric.rsplit('_', 1)[1]}" if metric.startswith("recall_at_") else METRIC_LABELS.get(metric, metric)


def _metric_order(records: list[dict[str, Any]]) -> list[str]:
    present = {k for r in records for k in r["test"]}
    recalls = sorted((k for k in present if k.startswith("recall_at_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return recalls + [k for k in ("nmi", "f1", "map_at_r", "r_precision") if k in present]


def aggregate(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> method -> {metric: {mean, std, n, values}} over the finished seeds."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["status"] == "ok":
            grouped[(r["dataset"], r["method"])].append(r)
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (dataset, method), runs in grouped.items():
        stats: dict[str, Any] = {"seeds": sorted(r["seed"] for r in runs)}
        for metric in _metric_order(runs):
            values = np.array([r["test"][metric] for r in runs if metric in r["test"]], dtype=float)
            stats[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                             "n": int(len(values))}
        out[dataset][method] = stats
    return out


def _fmt(stat: dict[str, Any]) -> str:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def write_markdown(summary: dict[str, Any], table: dict[str, Any], path: Path, pictures: list[str]) -> None:
    records = summary["trials"]
    metrics = _metric_order([r for r in records if r["status"] == "ok"])
    lines = [
        "# Results",
        "",
        f"Sweep `{summary['sweep']}` · code `{summary['code_version']}` · data "
        + ", ".join(f"{k} `{v}`" for k, v in summary["data_hashes"].items())
        + (" · **smoke test (a few steps only)**" if summary.get("smoke_test") else ""),
        "",
        "Test-class metrics (%) of the checkpoint with the best validation Recall@1 (validation classes are "
        "held out from the training classes; the test split is never used for selection). "
        "Mean ± sample std over seeds.",
        "",
    ]
    for dataset, methods in sorted(table.items()):
        lines += [f"## {dataset}", "", "| method | seeds | " + " | ".join(label(m) for m in metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for method, stats in methods.items():
            cells = [_fmt(stats[m]) if m in stats else "–" for m in metrics]
            lines.append(f"| {method} | {len(stats['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Per trial", "", "| dataset | method | seed | status | best step | " + " | ".join(label(m) for m in metrics) + " | MLflow run |",
              "|---|---|---|---|---|" + "---|" * len(metrics) + "---|"]
    for r in sorted(records, key=lambda r: (r["dataset"], r["method"], r["seed"])):
        cells = [f"{100 * r['test'][m]:.1f}" if m in r["test"] else "–" for m in metrics]
        lines.append(f"| {r['dataset']} | {r['method']} | {r['seed']} | {r['status']} | {r.get('best_step')} | "
                     + " | ".join(cells) + f" | `{r.get('mlflow_run_id')}` |")
    lines += ["", *[f"![{p}]({p})" for p in pictures], "",
              f"MLflow: tracking URI `{summary['mlflow_tracking_uri']}`, experiment `{summary['experiment']}`, "
              f"parent run `{summary['parent_run_id']}`.", ""]
    path.write_text("\n".join(lines))


def plot_comparison(table: dict[str, Any], path: Path) -> None:
    """One panel per metric, methods as rows (mean ± std over seeds); Symm methods in orange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(table)
    metrics = [m for m in next(iter(table[datasets[0]].values())) if m != "seeds"]
    n_methods = max(len(table[d]) for d in datasets)
    per_row = 4
    rows_per_dataset = -(-len(metrics) // per_row)
    fig, grid = plt.subplots(len(datasets) * rows_per_dataset, per_row, squeeze=False, sharey="row",
                             figsize=(3.2 * per_row + 1.8, (0.3 * n_methods + 0.8) * rows_per_dataset * len(datasets) + 0.6))
    for ax in grid.flat[len(datasets) * len(metrics):]:
        ax.set_visible(False)
    for row, dataset in enumerate(datasets):
        axes_of_dataset = grid[row * rows_per_dataset:(row + 1) * rows_per_dataset].flatten()
        methods = list(table[dataset])[::-1]  # first method on top
        y = np.arange(len(methods))
        colors = ["tab:orange" if m.startswith("symm") else "tab:blue" for m in methods]
        for col, metric in enumerate(metrics):
            ax = axes_of_dataset[col]
            means = np.array([100 * table[dataset][m][metric]["mean"] if metric in table[dataset][m] else np.nan for m in methods])
            stds = np.array([100 * table[dataset][m][metric]["std"] if metric in table[dataset][m] else 0 for m in methods])
            ax.errorbar(means, y, xerr=stds, fmt="none", ecolor="0.4", capsize=2, lw=1)
            ax.scatter(means, y, c=colors, zorder=3, s=22)
            ax.set_title(f"{label(metric)}" + (f" · {dataset}" if len(datasets) > 1 else ""), fontsize=10)
            ax.grid(axis="x", alpha=0.3)
            ax.tick_params(axis="x", labelsize=8)
            if col % per_row == 0:
                ax.set_yticks(y)
                ax.set_yticklabels([f"{m} (n={len(table[dataset][m]['seeds'])})" for m in methods], fontsize=8)
    fig.suptitle("Test classes, % (mean ± std over seeds); orange = with symmetrical synthesis", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_val, ax_share) = plt.subplots(1, 2, figsize=(12, 4.2))
    grouped: dict[tuple[str, str], list[list[dict[str, Any]]]] = defaultdict(list)
    for r in records:
        if r["status"] == "ok" and r["history"]:
            grouped[(r["dataset"], r["method"])].append(r["history"])
    for (dataset, method), histories in sorted(grouped.items()):
        for key, ax in (("val/recall_at_1", ax_val), ("train/synthetic_share", ax_share)):
            curves = [[(h["epoch"], h[key]) for h in hist if h.get(key) is not None] for hist in histories]
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            epochs = [e for e, _ in curves[0][:length]]
            values = np.array([[v for _, v in c[:length]] for c in curves]) * 100
            mean, std = values.mean(0), values.std(0)
            ax.plot(epochs, mean, marker="o", label=f"{dataset}/{method}")
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax_val.set(title="Validation Recall@1 during training", xlabel="epoch (validation pass)", ylabel="%")
    ax_share.set(title="Share of selected negatives that are synthetic", xlabel="epoch (validation pass)", ylabel="%")
    for ax in (ax_val, ax_share):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", type=Path, default=REPO_ROOT / "results" / "sweep.json")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    args = parser.parse_args(argv)
    if not args.sweep.exists():
        print(f"report: error: {args.sweep} not found; run `dvc repro sweep` first", file=sys.stderr)
        return 2
    summary = json.loads(args.sweep.read_text())
    table = aggregate(summary["trials"])
    if not table:
        print("report: error: no finished trial in the sweep; see the sweep's errors", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    plot_comparison(table, args.out / "comparison.png")
    plot_curves(summary["trials"], args.out / "curves.png")
    write_markdown(summary, table, args.out / "results.md", ["comparison.png", "curves.png"])
    metrics = {ds: {m: {k: v["mean"] for k, v in s.items() if isinstance(v, dict)} for m, s in methods.items()}
               for ds, methods in table.items()}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"report: {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

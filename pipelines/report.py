"""DVC stage `report`: aggregate results/sweep.json into tables, pictures, DVC metrics and HTML.

Per dataset: every method's test metrics as mean ± 95% confidence interval over seeds (Student t),
the paper's published numbers beside them where they exist (pipelines/paper_numbers.yaml), and a
paired comparison of each Symm method with its baseline over the same seeds (paired t-test).
Writes reports/results.md, a self-contained reports/index.html (figures embedded, no network),
reports/metrics.json and the figures; attaches them to the sweep's MLflow parent run.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats as scipy_stats

from pipelines.settings import REPO_ROOT

METRIC_LABELS = {"nmi": "NMI", "f1": "F1", "map_at_r": "MAP@R", "r_precision": "RP"}
PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.yaml")
# Why a dataset's numbers cannot be put next to the paper's (the paper: ImageNet GoogLeNet, 227 px).
NOT_COMPARABLE = {"glyphs": "embedded glyph dataset (not one of the paper's)"}
PAPER_BACKBONE = "googlenet"
NO_PUBLISHED = "no published number"
PAIRED_METRICS = ("recall_at_1", "map_at_r", "nmi", "f1")
# Rows whose checkpoint was picked on the TEST split (eval.selection: best_on_test_diagnostic, the
# official release's protocol): never comparable with validation-selected rows, so their method
# name carries this label in every table, figure and metrics.json key.
DIAGNOSTIC_SELECTION = "best_on_test_diagnostic"
DIAGNOSTIC_LABEL = " [best-on-test diagnostic]"


def label_diagnostic_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with the diagnostic selection get DIAGNOSTIC_LABEL appended to their method name."""
    out = []
    for r in records:
        if r.get("selection") == DIAGNOSTIC_SELECTION and not r["method"].endswith(DIAGNOSTIC_LABEL):
            r = {**r, "method": r["method"] + DIAGNOSTIC_LABEL}
        out.append(r)
    return out


def label(metric: str) -> str:
    return f"R@{metric.rsplit('_', 1)[1]}" if metric.startswith("recall_at_") else METRIC_LABELS.get(metric, metric)


def _metric_order(records: list[dict[str, Any]]) -> list[str]:
    present = {k for r in records for k in r["test"]}
    recalls = sorted((k for k in present if k.startswith("recall_at_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return recalls + [k for k in ("nmi", "f1", "map_at_r", "r_precision") if k in present]


def confidence_interval(values: np.ndarray, level: float = 0.95) -> float:
    """Half-width of the Student-t interval of the mean (0 with fewer than 2 values)."""
    if len(values) < 2:
        return 0.0
    return float(scipy_stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def aggregate(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> method -> {metric: {mean, std, ci95, n}} over the finished seeds."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["status"] == "ok":
            grouped[(r["dataset"], r["method"])].append(r)
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (dataset, method), runs in grouped.items():
        summary: dict[str, Any] = {"seeds": sorted(r["seed"] for r in runs)}
        for metric in _metric_order(runs):
            values = np.array([r["test"][metric] for r in runs if metric in r["test"]], dtype=float)
            summary[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                               "ci95": confidence_interval(values), "n": int(len(values))}
        out[dataset][method] = summary
    return out


def baseline_of(method: str, methods: list[str]) -> str | None:
    """The method a Symm method is compared with: the same name without the `symm_` prefix."""
    if method.startswith("symm_") and method[5:] in methods:
        return method[5:]
    return None


def _is_symm(method: str, specs: dict[str, Any]) -> bool:
    options = (specs.get(method) or {}).get("options") or {}
    return options.get("negatives") == "symm" if method in specs else method.startswith("symm_")


def baselines_of(method: str, methods: list[str], specs: dict[str, Any] | None = None) -> list[str]:
    """What a Symm method is compared with: every non-Symm method on the same loss (mining, DAML,
    HDML, plain) when the sweep recorded the method specs; else the same name without `symm_`."""
    specs = specs or {}
    if not _is_symm(method, specs):
        return []
    loss = _loss_of(specs.get(method))
    if loss is None:
        base = baseline_of(method, methods)
        return [base] if base else []
    return [m for m in methods if m != method and not _is_symm(m, specs) and _loss_of(specs.get(m)) == loss]


def _loss_of(spec: dict[str, Any] | None) -> str | None:
    """The base loss of a method spec: `loss` for metric losses, `base_loss` for DAML / HDML."""
    options = (spec or {}).get("options") or {}
    return options.get("loss", options.get("base_loss"))


def paired_comparisons(records: list[dict[str, Any]], dataset: str,
                       specs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Symm vs each baseline on the seeds both finished: mean difference, its 95% CI, paired t-test."""
    by_method: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for r in records:
        if r["status"] == "ok" and r["dataset"] == dataset:
            by_method[r["method"]][r["seed"]] = r["test"]
    rows = []
    for method in by_method:
        for base in baselines_of(method, list(by_method), specs):
            seeds = sorted(set(by_method[method]) & set(by_method[base]))
            for metric in PAIRED_METRICS:
                if not all(metric in by_method[m][s] for m in (method, base) for s in seeds):
                    continue
                diff = np.array([by_method[method][s][metric] - by_method[base][s][metric] for s in seeds])
                if len(seeds) > 1:
                    test = scipy_stats.ttest_rel([by_method[method][s][metric] for s in seeds],
                                                 [by_method[base][s][metric] for s in seeds])
                    t, p = float(test.statistic), float(test.pvalue)
                else:
                    t = p = float("nan")
                rows.append({"method": method, "baseline": base, "metric": metric, "n": len(seeds),
                             "diff": float(diff.mean()), "ci95": confidence_interval(diff), "t": t, "p": p})
    return rows


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def markdown(self) -> list[str]:
        lines = [f"### {self.title}", ""] + ([self.note, ""] if self.note else [])
        lines += ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return lines + [""]

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c).replace('`', '')}</td>" for c in row) + "</tr>" for row in self.rows)
        note = f"<p>{html.escape(self.note)}</p>" if self.note else ""
        return f"<h3>{html.escape(self.title)}</h3>{note}<table><tr>{head}</tr>{body}</table>"


def not_comparable_reasons(dataset: str, summary: dict[str, Any], paper: dict[str, Any]) -> list[str]:
    """Why this dataset's numbers differ in setup from the paper's (empty: same setup as the paper)."""
    reasons = []
    if dataset in NOT_COMPARABLE:
        reasons.append(NOT_COMPARABLE[dataset])
    elif dataset not in paper.get("datasets", {}):
        reasons.append("the paper has no numbers for this dataset")
    model = summary.get("model")
    if model is None:
        reasons.append("backbone not recorded in the sweep")
    else:
        if model.get("backbone") != PAPER_BACKBONE:
            reasons.append(f"other backbone: {model.get('backbone')} (the paper: GoogLeNet)")
        if not model.get("pretrained"):
            reasons.append("no ImageNet weights (trained from scratch)")
    if (summary.get("selection") or {}).get("split") == "test":
        reasons.append("best-on-test diagnostic: checkpoints selected on the test split (paper-faithful, not a fair result)")
    if summary.get("smoke_test"):
        reasons.append("smoke test (a few steps only)")
    return reasons


def _vs_paper(ours: float | None, ref: float | None) -> str:
    if ref is None:
        return NO_PUBLISHED
    if ours is None:
        return f"– vs {ref:.1f}"
    return f"{ours:.1f} vs {ref:.1f} ({ours - ref:+.1f})"


def build_tables(summary: dict[str, Any], table: dict[str, Any], paper: dict[str, Any]) -> dict[str, list[Table]]:
    records = summary["trials"]
    metrics = _metric_order([r for r in records if r["status"] == "ok"])
    sections: dict[str, list[Table]] = {}
    for dataset, methods in sorted(table.items()):
        published = paper.get("datasets", {}).get(dataset, {})
        reasons = not_comparable_reasons(dataset, summary, paper)
        note = ("Not comparable to the paper: " + "; ".join(reasons) + "." if reasons
                else "Same setup as the paper (ImageNet GoogLeNet).")
        if published:
            note += (f" Paper numbers: {paper.get('source', '')}; the release selected checkpoints on test Recall@1, "
                     "we select on validation classes.")
        main = Table("Test metrics (%), mean ± 95% CI over seeds", ["method", "seeds"] + [label(m) for m in metrics]
                     + (["paper R@1", "Δ R@1"] if published else []), note=note)
        for method, stats in methods.items():
            row = [method, str(len(stats["seeds"]))] + [
                f"{100 * stats[m]['mean']:.1f} ± {100 * stats[m]['ci95']:.1f}" if m in stats else "–" for m in metrics]
            if published:
                ref = published.get(method, {}).get("recall_at_1")
                ours = 100 * stats["recall_at_1"]["mean"] if "recall_at_1" in stats else None
                row += [f"{ref:.1f}" if ref is not None else NO_PUBLISHED,
                        f"{ours - ref:+.1f}" if ref is not None and ours is not None else "–"]
            main.rows.append(row)
        tables = [main]
        if published:
            paper_metrics = _metric_order([{"test": v} for v in published.values()])
            beside = Table("Beside the paper: ours (mean) vs published, difference in points",
                           ["method"] + [label(m) for m in paper_metrics],
                           note=" ".join(filter(None, ["Not comparable: " + "; ".join(reasons) + "." if reasons else "",
                                                       f"Published: {paper.get('source', '')}."])))
            for method, stats in methods.items():
                ref = published.get(method, {})
                beside.rows.append([method] + [
                    _vs_paper(100 * stats[m]["mean"] if m in stats else None, ref.get(m)) for m in paper_metrics])
            tables.append(beside)
        paired = Table("Symm vs each baseline on the same loss: paired over seeds (test metrics, percentage points)",
                       ["Symm method", "baseline", "metric", "seeds", "mean Δ", "95% CI of Δ", "paired t", "p"],
                       note="Same seeds, same data order; paired t-test on the per-seed differences. "
                            "With few seeds the test has little power — read the CI.")
        for c in paired_comparisons(records, dataset, summary.get("methods")):
            paired.rows.append([c["method"], c["baseline"], label(c["metric"]), str(c["n"]), f"{100 * c['diff']:+.2f}",
                                f"[{100 * (c['diff'] - c['ci95']):+.2f}, {100 * (c['diff'] + c['ci95']):+.2f}]",
                                "–" if np.isnan(c["t"]) else f"{c['t']:.2f}",
                                "–" if np.isnan(c["p"]) else f"{c['p']:.3f}"])
        sections[dataset] = tables + ([paired] if paired.rows else [])
    trials = Table("Per trial (test metrics, %)", ["dataset", "method", "seed", "status", "best step"]
                   + [label(m) for m in metrics] + ["MLflow run"])
    for r in sorted(records, key=lambda r: (r["dataset"], r["method"], r["seed"])):
        trials.rows.append([r["dataset"], r["method"], str(r["seed"]), r["status"], str(r.get("best_step"))]
                           + [f"{100 * r['test'][m]:.1f}" if m in r["test"] else "–" for m in metrics]
                           + [f"`{r.get('mlflow_run_id')}`"])
    sections["all trials"] = [trials]
    return sections


def header_lines(summary: dict[str, Any]) -> list[str]:
    diagnostic = [r for r in summary["trials"] if r.get("selection") == DIAGNOSTIC_SELECTION]
    warning = [f"**{len(diagnostic)} trial(s) selected their checkpoint on the TEST split** (rows labelled "
               f"`{DIAGNOSTIC_LABEL.strip()}`, the official release's protocol): a diagnostic only, not a fair "
               "result; do not compare them with validation-selected rows.", ""] if diagnostic else []
    return warning + [
        f"Sweep `{summary['sweep']}` · code `{summary['code_version']}` · data "
        + ", ".join(f"{k} `{v}`" for k, v in summary["data_hashes"].items())
        + (" · **smoke test (a few steps only)**" if summary.get("smoke_test") else ""),
        "",
        "Checkpoints are selected on validation classes held out from the training classes; the test split "
        "is used once, for the numbers below" + (" (except the rows labelled best-on-test diagnostic)." if warning else "."),
        "",
    ]


def write_markdown(summary: dict[str, Any], sections: dict[str, list[Table]], path: Path, pictures: list[str]) -> None:
    lines = ["# Results", "", *header_lines(summary)]
    for name, tables in sections.items():
        lines += [f"## {name}", ""]
        for t in tables:
            lines += t.markdown()
    lines += [*[f"![{p}]({p})" for p in pictures], "",
              f"MLflow: tracking URI `{summary['mlflow_tracking_uri']}`, experiment `{summary['experiment']}`, "
              f"parent run `{summary['parent_run_id']}`.", ""]
    path.write_text("\n".join(lines))


def write_html(summary: dict[str, Any], sections: dict[str, list[Table]], path: Path, pictures: list[Path]) -> None:
    """One file, no external resources: tables inline, figures as data URIs."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>symm results</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}</style></head><body><h1>Results</h1>",
             f"<p>{html.escape(' '.join(header_lines(summary))).replace('`', '')}</p>"]
    for name, tables in sections.items():
        parts.append(f"<h2>{html.escape(name)}</h2>" + "".join(t.html() for t in tables))
    for picture in pictures:
        data = base64.b64encode(picture.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(picture.stem)}</h2><img alt='{html.escape(picture.name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path.write_text("".join(parts))


def plot_recall_at_k(table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(table)
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for method, stats in table[dataset].items():
            ks = sorted(int(m.rsplit("_", 1)[1]) for m in stats if m.startswith("recall_at_"))
            means = [100 * stats[f"recall_at_{k}"]["mean"] for k in ks]
            cis = [100 * stats[f"recall_at_{k}"]["ci95"] for k in ks]
            ax.errorbar(ks, means, yerr=cis, marker="o", capsize=2, label=method,
                        linestyle="-" if method.startswith("symm") else "--")
        ax.set_xscale("log", base=2)
        ax.set(title=f"{dataset}: Recall@K (mean ± 95% CI over seeds)", xlabel="K", ylabel="%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def _placeholder(path: Path, reason: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 1.2))
    fig.text(0.5, 0.5, f"embedding map not drawn: {reason}", ha="center", va="center")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return False


def plot_embedding_maps(summary: dict[str, Any], table: dict[str, Any], path: Path, n_classes: int = 10,
                        per_class: int = 50) -> bool:
    """t-SNE of test embeddings: the best Symm run (by validation R@1) beside its baseline, same seed.

    Embeddings come from the runs' MLflow artifacts; if unavailable the figure says why.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient
    from sklearn.manifold import TSNE

    pairs = []
    for dataset in sorted(table):
        runs = [r for r in summary["trials"] if r["dataset"] == dataset and r["status"] == "ok" and r.get("mlflow_run_id")]
        symm = [r for r in runs if baseline_of(r["method"], list(table[dataset]))]
        if not symm:
            continue
        best = max(symm, key=lambda r: r["best_val"].get("recall_at_1", float("-inf")))
        base = next((r for r in runs if r["method"] == baseline_of(best["method"], list(table[dataset])) and r["seed"] == best["seed"]), None)
        if base is not None:
            pairs.append((dataset, base, best))
    if not pairs:
        return _placeholder(path, "no Symm run with a baseline at the same seed")
    try:
        client = MlflowClient(tracking_uri=summary["mlflow_tracking_uri"])
        loaded = {}
        for _, *runs in pairs:
            for r in runs:
                local = client.download_artifacts(r["mlflow_run_id"], "embeddings/test.npz")
                with np.load(local) as f:
                    loaded[r["mlflow_run_id"]] = (f["embeddings"], f["labels"])
    except Exception as err:  # noqa: BLE001 - the rest of the report must still be written
        warnings.warn(f"no embedding map: test embeddings not available from MLflow ({err})")
        return _placeholder(path, "test embeddings not available from MLflow")
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 5 * len(pairs)), squeeze=False)
    for row, (dataset, *runs) in enumerate(pairs):
        for ax, r in zip(axes[row], runs):
            emb, labels = loaded[r["mlflow_run_id"]]
            keep = np.zeros(len(labels), dtype=bool)  # the same classes and items in both panels
            for c in np.unique(labels)[:n_classes]:
                keep[np.flatnonzero(labels == c)[:per_class]] = True
            emb = emb[keep] / np.linalg.norm(emb[keep], axis=1, keepdims=True).clip(1e-12)
            xy = TSNE(n_components=2, init="pca", random_state=0, perplexity=min(20.0, (len(emb) - 1) / 3), max_iter=250).fit_transform(emb)
            class_index = np.searchsorted(np.unique(labels[keep]), labels[keep])
            ax.scatter(xy[:, 0], xy[:, 1], c=class_index, cmap="tab10", vmin=0, vmax=9, s=8)
            ax.set_title(f"{dataset} · {r['method']} · seed {r['seed']} (R@1 {100 * r['test']['recall_at_1']:.1f}%)", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"t-SNE of test embeddings: first {n_classes} test classes, {per_class} items each, coloured by class", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def attach_to_mlflow(summary: dict[str, Any], files: list[Path]) -> None:
    """Put the report on the sweep's parent run; a missing server must not lose the report."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=summary["mlflow_tracking_uri"])
        for f in files:
            client.log_artifact(summary["parent_run_id"], str(f), artifact_path="report")
    except Exception as err:  # noqa: BLE001 - the report on disk is what matters
        warnings.warn(f"could not attach the report to MLflow run {summary.get('parent_run_id')}: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", type=Path, default=REPO_ROOT / "results" / "sweep.json")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    parser.add_argument("--no-mlflow", action="store_true", help="do not attach the report to the MLflow parent run")
    args = parser.parse_args(argv)
    if not args.sweep.exists():
        print(f"report: error: {args.sweep} not found; run `dvc repro sweep` first", file=sys.stderr)
        return 2
    summary = json.loads(args.sweep.read_text())
    summary["trials"] = label_diagnostic_rows(summary["trials"])
    table = aggregate(summary["trials"])
    if not table:
        print("report: error: no finished trial in the sweep; see the sweep's errors", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    pictures = [args.out / name for name in ("comparison.png", "recall_at_k.png", "curves.png")]
    plot_comparison(table, pictures[0])
    plot_recall_at_k(table, pictures[1])
    plot_curves(summary["trials"], pictures[2])
    if args.no_mlflow:
        _placeholder(args.out / "embedding_map.png", "--no-mlflow")
    else:
        plot_embedding_maps(summary, table, args.out / "embedding_map.png")
    pictures.append(args.out / "embedding_map.png")
    sections = build_tables(summary, table, yaml.safe_load(PAPER_NUMBERS.read_text()))
    write_markdown(summary, sections, args.out / "results.md", [p.name for p in pictures])
    write_html(summary, sections, args.out / "index.html", pictures)
    metrics = {ds: {m: {k: v["mean"] for k, v in s.items() if isinstance(v, dict)} for m, s in methods.items()}
               for ds, methods in table.items()}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    if not args.no_mlflow:
        attach_to_mlflow(summary, [args.out / "results.md", args.out / "index.html", *pictures])
    print(f"report: {args.out / 'results.md'} and {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

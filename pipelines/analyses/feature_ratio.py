"""Analysis 4, ratio of feature points: the share of selected negatives that are synthetic, at
every training step, for each Symm variant of each loss (recorded by symm.analysis.loss_stats)."""
from __future__ import annotations

import numpy as np

from pipelines.analyses.common import AnalysisConfig, Context, pyplot, write_table

DEFAULT_VARIANTS = {"npair": ["official", "point4", "pair16"], "angular": ["official", "point4"],
                    "triplet": ["point4", "pair16", "semihard"], "semihard_triplet": ["semihard"],
                    "lifted": ["point4", "pair16"], "contrastive": ["point4", "pair16"]}


class Config(AnalysisConfig):
    variants: dict[str, list[str]] = DEFAULT_VARIANTS
    smooth: int = 10  # steps in the moving average of the figure (the csv keeps every step)

    def smoke(self) -> "Config":
        return super().smoke().model_copy(update={"variants": {"npair": ["official"], "triplet": ["point4"]}})


COLUMNS = ["loss", "symm_mode", "seeds", "share_first_10pct", "share_last_10pct", "rise", "test_recall_at_1"]


def run(ctx: Context, cfg: Config) -> None:
    from symm.analysis.loss_stats import record_loss_stats

    steps_rows, rows, curves = [], [], {}
    for loss, modes in cfg.variants.items():
        for mode in modes:
            spec = {"kind": "metric_loss", "options": {"loss": loss, "negatives": "symm", "symm_mode": mode}}
            shares, tests = [], []
            for seed in cfg.seeds:
                with record_loss_stats() as calls:
                    tests.append(ctx.train(spec, seed, cfg.train, label=f"{loss}-{mode}-s{seed}").test["recall_at_1"])
                share = np.array([c["synthetic_share"] for c in calls])
                shares.append(share)
                steps_rows += [{"loss": loss, "symm_mode": mode, "seed": seed, "step": i + 1, "synthetic_share": float(s)}
                               for i, s in enumerate(share)]
            curve = np.mean(shares, axis=0)
            curves[f"{loss} {mode}"] = curve
            tenth = max(1, len(curve) // 10)
            first, last = float(curve[:tenth].mean()), float(curve[-tenth:].mean())
            rows.append({"loss": loss, "symm_mode": mode, "seeds": len(cfg.seeds), "share_first_10pct": first,
                         "share_last_10pct": last, "rise": last - first, "test_recall_at_1": float(np.mean(tests))})
    write_table(ctx.out_dir, "table", rows, COLUMNS)
    write_table(ctx.out_dir, "per_step", steps_rows, ["loss", "symm_mode", "seed", "step", "synthetic_share"])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, curve) in enumerate(curves.items()):
        width = max(1, min(cfg.smooth, len(curve)))
        smooth = np.convolve(curve, np.ones(width) / width, mode="valid")
        ax.plot(np.arange(width, len(curve) + 1), 100 * smooth, label=name, color=f"C{i % 10}",
                linestyle="-" if i < 10 else "--")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"synthetic share of selected negatives (%), {cfg.smooth}-step mean")
    ax.set_title("ratio of feature points", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(ctx.out_dir / "feature_ratio.png", dpi=110)
    plt.close(fig)

"""Analysis 2, level of hardness: the k-th hardest candidate instead of the hardest (loss option
``hardness_rank``; k = 1 is the usual Symm selection), per selection variant, over seeds."""
from __future__ import annotations

import numpy as np

from pipelines.analyses.common import AnalysisConfig, Context, pyplot, write_table


class Config(AnalysisConfig):
    method: str = "symm_npair"
    ranks: dict[str, list[int]] = {"point4": [1, 2, 3, 4], "pair16": [1, 2, 4, 8, 16]}

    def smoke(self) -> "Config":
        return super().smoke().model_copy(update={"ranks": {mode: ks[:2] for mode, ks in self.ranks.items()}})


COLUMNS = ["symm_mode", "hardness_rank", "seeds", "recall_at_1", "recall_at_1_sd", "nmi", "map_at_r", "synthetic_share"]


def method_spec(ctx: Context, cfg: Config, mode: str, rank: int) -> dict:
    return ctx.method_options(cfg.method, negatives="symm", symm_mode=mode, hardness_rank=rank)


def run(ctx: Context, cfg: Config) -> None:
    rows = []
    for mode, ranks in cfg.ranks.items():
        for rank in ranks:
            results = [ctx.train(method_spec(ctx, cfg, mode, rank), seed, cfg.train, label=f"{mode}-k{rank}-s{seed}")
                       for seed in cfg.seeds]
            r1 = np.array([r.test["recall_at_1"] for r in results])
            share = [h["train"].get("synthetic_share", np.nan) for r in results for h in r.history]
            rows.append({"symm_mode": mode, "hardness_rank": rank, "seeds": len(results),
                         "recall_at_1": float(r1.mean()), "recall_at_1_sd": float(r1.std(ddof=1)) if len(r1) > 1 else 0.0,
                         "nmi": float(np.mean([r.test["nmi"] for r in results])),
                         "map_at_r": float(np.mean([r.test["map_at_r"] for r in results])),
                         "synthetic_share": float(np.nanmean(share)) if share else float("nan")})
    write_table(ctx.out_dir, "table", rows, COLUMNS)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode in cfg.ranks:
        mine = [r for r in rows if r["symm_mode"] == mode]
        ks = [r["hardness_rank"] for r in mine]
        axes[0].errorbar(ks, [100 * r["recall_at_1"] for r in mine], yerr=[100 * r["recall_at_1_sd"] for r in mine],
                         marker="o", capsize=3, label=mode)
        axes[1].plot(ks, [100 * r["map_at_r"] for r in mine], marker="o", label=mode)
    for ax, title in zip(axes, ("test R@1 (%) ± sd over seeds", "test MAP@R (%)")):
        ax.set_xlabel("k (k-th hardest candidate; 1 = hardest)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.out_dir / "hardness.png", dpi=110)
    plt.close(fig)

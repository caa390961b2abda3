"""Analysis 1, similarity alpha and norm beta: Symm+N-pair over an alpha x beta grid, both forms.

Test Recall@1 and NMI (mean over seeds) per (form, alpha, beta), as a table and heat maps.
"""
from __future__ import annotations

import numpy as np

from pipelines.analyses.common import AnalysisConfig, Context, pyplot, write_table


class Config(AnalysisConfig):
    method: str = "symm_npair"
    alphas: list[float] = [1.0, 1.5, 2.0, 2.5]
    betas: list[float] = [0.5, 1.0, 1.5]
    forms: list[str] = ["paper", "official"]

    def smoke(self) -> "Config":
        return super().smoke().model_copy(update={"alphas": self.alphas[:2], "betas": self.betas[:1]})


COLUMNS = ["form", "alpha", "beta", "seeds", "recall_at_1", "recall_at_1_sd", "nmi", "nmi_sd", "map_at_r"]


def run(ctx: Context, cfg: Config) -> None:
    rows, done = [], {}
    for form in cfg.forms:
        for alpha in cfg.alphas:
            for beta in cfg.betas:
                # both forms are the same mirror at alpha=2, beta=1 (same coefficients): train it once
                key = (alpha, beta, "mirror" if (alpha, beta) == (2.0, 1.0) else form)
                if key not in done:
                    spec = ctx.method_options(cfg.method, alpha=alpha, beta=beta, form=form)
                    done[key] = [ctx.train(spec, seed, cfg.train, label=f"{form}-a{alpha}-b{beta}-s{seed}").test
                                 for seed in cfg.seeds]
                tests = done[key]
                r1, nmi = np.array([t["recall_at_1"] for t in tests]), np.array([t["nmi"] for t in tests])
                rows.append({"form": form, "alpha": alpha, "beta": beta, "seeds": len(tests),
                             "recall_at_1": float(r1.mean()), "recall_at_1_sd": float(r1.std(ddof=1)) if len(r1) > 1 else 0.0,
                             "nmi": float(nmi.mean()), "nmi_sd": float(nmi.std(ddof=1)) if len(nmi) > 1 else 0.0,
                             "map_at_r": float(np.mean([t["map_at_r"] for t in tests]))})
    write_table(ctx.out_dir, "table", rows, COLUMNS)
    heat_maps(rows, cfg, ctx.out_dir / "heatmap.png")


def heat_maps(rows: list[dict], cfg: Config, path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, len(cfg.forms), figsize=(4.2 * len(cfg.forms), 6.4), squeeze=False)
    for col, form in enumerate(cfg.forms):
        for row, metric in enumerate(("recall_at_1", "nmi")):
            grid = np.array([[next(r[metric] for r in rows if r["form"] == form and r["alpha"] == a and r["beta"] == b)
                              for a in cfg.alphas] for b in cfg.betas])
            ax = axes[row][col]
            image = ax.imshow(100 * grid, cmap="viridis", origin="lower", aspect="auto")
            for (i, j), value in np.ndenumerate(100 * grid):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="w" if value < 100 * grid.max() - 2 else "k", fontsize=8)
            ax.set_xticks(range(len(cfg.alphas)), [str(a) for a in cfg.alphas])
            ax.set_yticks(range(len(cfg.betas)), [str(b) for b in cfg.betas])
            ax.set_xlabel("alpha")
            ax.set_ylabel("beta")
            ax.set_title(f"{form} form: test {'R@1' if metric == 'recall_at_1' else 'NMI'} (%)", fontsize=9)
            fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"Symm+N-pair, mean over {len(cfg.seeds)} seed(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

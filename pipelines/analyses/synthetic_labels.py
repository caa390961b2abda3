"""Analysis 3, label of synthetics: per epoch, Recall@1 of mirror images used as queries against
the original test embeddings vs the originals' own (definitions: symm.analysis.synthetic_recall).

The test split is only measured here, never used to select anything: the trial itself still
selects its weights on validation, as every trial does.
"""
from __future__ import annotations

import numpy as np

from pipelines.analyses.common import AnalysisConfig, Context, pyplot, write_table


class Config(AnalysisConfig):
    method: str = "symm_npair"
    pair_seed: int = 0


COLUMNS = ["seed", "epoch", "step", "original_recall_at_1", "original_recall_at_1_partner_excluded",
           "synthetic_recall_at_1", "gap", "n_synthetic"]


def epoch_scorer(ctx: Context, seed: int, pair_seed: int, rows: list[dict]):
    """An on_eval callback: embed the test split with the epoch's weights and score its mirror images."""
    from symm.analysis.synthetic_recall import synthetic_label_scores
    from symm.models import create_model
    from symm.training import embed

    science = ctx.science
    images, labels = ctx.data["test"]
    model = create_model(science.model.backbone, embedding_dim=science.model.embedding_dim,
                         in_channels=images.shape[1], **science.model.options)

    def on_eval(event) -> None:
        model.load_state_dict(event.checkpoint()["model"])
        scores = synthetic_label_scores(embed(model, images, science.eval.batch_size), labels, seed=pair_seed)
        rows.append({"seed": seed, "epoch": event.epoch, "step": event.step, **scores,
                     "gap": scores["synthetic_recall_at_1"] - scores["original_recall_at_1_partner_excluded"]})

    return on_eval


def run(ctx: Context, cfg: Config) -> None:
    rows: list[dict] = []
    for seed in cfg.seeds:
        ctx.train(ctx.method_options(cfg.method), seed, cfg.train, on_eval=epoch_scorer(ctx, seed, cfg.pair_seed, rows),
                  label=f"s{seed}")
    write_table(ctx.out_dir, "table", rows, COLUMNS)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, name, color in (("original_recall_at_1", "originals (self excluded)", "C0"),
                             ("original_recall_at_1_partner_excluded", "paired originals (self + partner excluded)", "C2"),
                             ("synthetic_recall_at_1", "synthetic queries (both sources excluded)", "C1")):
        for i, seed in enumerate(cfg.seeds):
            mine = [r for r in rows if r["seed"] == seed]
            ax.plot([r["step"] for r in mine], [100 * r[key] for r in mine], marker="o", color=color,
                    label=name if i == 0 else None, alpha=0.9)
    ax.set_xlabel("training step")
    ax.set_ylabel("test Recall@1 (%)")
    ax.set_title("label of synthetics: mirror images as queries", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ctx.out_dir / "synthetic_labels.png", dpi=110)
    plt.close(fig)
    if rows:
        print(f"analyses {ctx.name}: mean gap synthetic - paired originals = "
              f"{100 * np.mean([r['gap'] for r in rows]):+.1f} points")

"""Analysis 5, visualisation over training: t-SNE maps of a fixed subset of test classes with
their mirror images (symm.analysis.synthetic_recall's pairs) at each evaluation checkpoint.

Each map after the first starts from the previous layout (same points, same order), so the
frames of the animated GIF move smoothly instead of re-orienting at random.
"""
from __future__ import annotations

import io

import numpy as np
import torch

from pipelines.analyses.common import AnalysisConfig, Context, pyplot, write_table


class Config(AnalysisConfig):
    method: str = "symm_npair"
    n_classes: int = 6
    per_class: int = 40       # test items per class on the map (each pair adds 2 mirror images)
    perplexity: float = 30.0
    subset_seed: int = 0

    def smoke(self) -> "Config":
        return super().smoke().model_copy(update={"n_classes": 3, "per_class": 6, "perplexity": 5.0})


def subset(labels: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Fixed indices: n_classes test classes and per_class items of each, drawn with subset_seed."""
    generator = torch.Generator().manual_seed(cfg.subset_seed)
    classes = torch.unique(labels)
    if len(classes) < cfg.n_classes:
        raise ValueError(f"analyses.embedding_maps.n_classes={cfg.n_classes} but the test split has {len(classes)} classes")
    chosen = classes[torch.randperm(len(classes), generator=generator)[: cfg.n_classes]].sort().values
    picks = []
    for cls in chosen:
        members = (labels == cls).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=generator)[: cfg.per_class]])
    return torch.cat(picks)


def run(ctx: Context, cfg: Config) -> None:
    from sklearn.manifold import TSNE

    from symm.analysis.synthetic_recall import mirror_pairs, synthetic_points
    from symm.models import create_model
    from symm.training import embed

    science = ctx.science
    images, labels = ctx.data["test"]
    chosen = subset(labels, cfg)
    sub_images, sub_labels = images[chosen], labels[chosen]
    pairs = mirror_pairs(sub_labels, seed=cfg.subset_seed)
    model = create_model(science.model.backbone, embedding_dim=science.model.embedding_dim,
                         in_channels=images.shape[1], **science.model.options)
    frames: list[dict] = []

    def on_eval(event) -> None:
        model.load_state_dict(event.checkpoint()["model"])
        emb = embed(model, sub_images, science.eval.batch_size)
        synth, sources = synthetic_points(emb, pairs)
        points = torch.nn.functional.normalize(torch.cat([emb, synth]), dim=1).numpy()  # cosine geometry, as retrieval
        init = frames[-1]["xy"] if frames else "pca"
        xy = TSNE(n_components=2, init=init, random_state=cfg.subset_seed,
                  perplexity=min(cfg.perplexity, (len(points) - 1) / 3)).fit_transform(points)
        frames.append({"step": event.step, "epoch": event.epoch, "xy": xy, "n_real": len(emb),
                       "synthetic_labels": sub_labels[sources[:, 0]].numpy()})

    seed = cfg.seeds[0]
    result = ctx.train(ctx.method_options(cfg.method), seed, cfg.train, on_eval=on_eval, label=f"s{seed}")
    rows = [{"step": f["step"], "epoch": f["epoch"], "points": len(f["xy"]), "originals": f["n_real"],
             "synthetic": len(f["xy"]) - f["n_real"]} for f in frames]
    write_table(ctx.out_dir, "table", rows, ["step", "epoch", "points", "originals", "synthetic"])
    np.savez(ctx.out_dir / "maps.npz", steps=np.array([f["step"] for f in frames]),
             xy=np.stack([f["xy"] for f in frames]), labels=sub_labels.numpy(), pairs=pairs.numpy())
    plt = pyplot()
    classes = sorted(set(sub_labels.tolist()))
    colors = {c: f"C{i % 10}" for i, c in enumerate(classes)}

    def draw(ax, frame) -> None:
        real, synth = frame["xy"][: frame["n_real"]], frame["xy"][frame["n_real"]:]
        ax.scatter(real[:, 0], real[:, 1], s=9, c=[colors[c] for c in sub_labels.tolist()], marker="o", linewidths=0)
        ax.scatter(synth[:, 0], synth[:, 1], s=12, c=[colors[c] for c in frame["synthetic_labels"].tolist()],
                   marker="x", linewidths=0.7, alpha=0.8)
        ax.set_title(f"step {frame['step']}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    fig, axes = plt.subplots(1, len(frames), figsize=(2.9 * len(frames), 3.2), squeeze=False)
    for ax, frame in zip(axes[0], frames):
        draw(ax, frame)
    fig.suptitle(f"t-SNE of {cfg.n_classes} test classes (colour = class; o original, x mirror image); "
                 f"final test R@1 {100 * result.test['recall_at_1']:.1f}%", fontsize=9)
    fig.tight_layout()
    fig.savefig(ctx.out_dir / "maps.png", dpi=110)
    plt.close(fig)
    write_gif(frames, draw, ctx.out_dir / "maps.gif")


def write_gif(frames: list[dict], draw, path) -> None:
    from PIL import Image

    plt = pyplot()
    pictures = []
    for frame in frames:
        fig, ax = plt.subplots(figsize=(4, 4))
        draw(ax, frame)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        buffer.seek(0)
        pictures.append(Image.open(buffer).convert("P", palette=Image.Palette.ADAPTIVE))
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=900, loop=0)

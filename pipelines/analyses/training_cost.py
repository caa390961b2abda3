"""Analysis 6, training speed and memory: N-pair vs Symm+N-pair (each variant), side by side.

Per setting (a backbone, image size and batch), every variant is timed in interleaved rounds in
this one process (machine load hits each alike) and the medians are compared as ratios to plain
N-pair, next to the paper's (Tesla P40, GoogLeNet, batch 64 x 2: step +0.16%, loss +1.8%).
Measured (medians, and ratios of the fastest repeats beside them): forward+backward of a whole step (model + loss), forward+backward of the loss alone
(on the step's embeddings, detached), matmul FLOPs of the loss, memory held for backward by the
step and by the loss (symm.analysis.cost), the CUDA allocator peak when on a GPU, and the
paper's points/similarity matrix sizes. Weights are randomly initialised (timing does not depend
on them) and images are random; no optimiser update is timed.
"""
from __future__ import annotations

import platform
import statistics

import torch

from pipelines.analyses.common import Context, Strict, pyplot, write_table

PAPER = {"step_ratio": 0.8866 / 0.8852, "loss_ratio": 0.2497 / 0.2454}


class Setting(Strict):
    name: str
    backbone: str | None = None        # None: the loss alone on random embeddings (no step timing)
    image_size: int | None = None      # None: the dataset's own images
    in_channels: int | None = None     # None: the dataset's
    classes_per_batch: int
    embedding_dim: int
    options: dict = {}
    repeats: int = 5
    warmup: int = 1


class Config(Strict):
    settings: list[Setting] = [
        Setting(name="paper loss (64 pairs, d=512)", classes_per_batch=64, embedding_dim=512, repeats=50, warmup=5),
        Setting(name="paper (GoogLeNet, 64x2, 227 px)", backbone="googlenet", image_size=227, in_channels=3,
                classes_per_batch=64, embedding_dim=512, repeats=3),
        Setting(name="embedded default", backbone="small_cnn", classes_per_batch=16, embedding_dim=64,
                options={"width": 16}, repeats=30, warmup=3),
    ]
    variants: dict[str, dict] = {"npair": {"negatives": "none"},
                                 "symm official": {"negatives": "symm", "symm_mode": "official"},
                                 "symm point4": {"negatives": "symm", "symm_mode": "point4"},
                                 "symm pair16": {"negatives": "symm", "symm_mode": "pair16"}}
    seeds: list[int] = [0]

    def smoke(self) -> "Config":
        tiny = [s.model_copy(update={"repeats": 1, "warmup": 0, "classes_per_batch": 4,
                                     "image_size": None if s.image_size is None else 64}) for s in self.settings]
        return self.model_copy(update={"settings": tiny})


COLUMNS = ["setting", "variant", "device", "step_ms", "step_ratio", "step_ratio_min", "paper_step_ratio", "loss_ms",
           "loss_ratio", "loss_ratio_min", "paper_loss_ratio", "loss_mflops", "step_saved_mb", "loss_saved_mb", "cuda_peak_mb",
           "points_matrix", "similarity_matrix", "points_ratio", "similarity_ratio", "repeats"]


def measure(setting: Setting, variants: dict[str, dict], data_shape: tuple[int, int, int], device: torch.device) -> list[dict]:
    from symm.analysis.cost import flops, matrix_sizes, peak_cuda_bytes, saved_for_backward_bytes, timed
    from symm.losses import create_loss
    from symm.models import create_model

    torch.manual_seed(0)
    n = setting.classes_per_batch
    labels = torch.arange(n, device=device).repeat_interleave(2)
    losses = {name: create_loss("npair", **opts) for name, opts in variants.items()}
    saved: dict[str, int] = {}
    if setting.backbone is None:
        model, fixed = None, torch.randn(2 * n, setting.embedding_dim, device=device)
    else:
        channels = setting.in_channels or data_shape[0]
        size = setting.image_size or data_shape[1]
        model = create_model(setting.backbone, embedding_dim=setting.embedding_dim, in_channels=channels,
                             **setting.options).to(device).train()
        images = torch.rand(2 * n, channels, size, size, device=device)
        with torch.no_grad():
            fixed = model(images)

    def step(loss, name: str) -> None:
        model.zero_grad(set_to_none=True)
        out, saved[name] = saved_for_backward_bytes(lambda: loss(model(images), labels))
        out.backward()

    def loss_only(loss) -> None:
        loss(fixed.detach().requires_grad_(True), labels).backward()

    samples = {name: {"step": [], "loss": []} for name in variants}
    for round_ in range(setting.warmup + setting.repeats):
        for name, loss in losses.items():  # interleaved: one step of each variant per round
            step_s = timed(lambda: step(loss, name), device) if model is not None else float("nan")
            loss_s = timed(lambda: loss_only(loss), device)
            if round_ >= setting.warmup:
                samples[name]["step"].append(step_s)
                samples[name]["loss"].append(loss_s)
    rows = []
    for name, loss in losses.items():
        emb = fixed.detach().requires_grad_(True)
        _, loss_bytes = saved_for_backward_bytes(lambda: loss(emb, labels))
        peak = peak_cuda_bytes(lambda: step(loss, name), device) if model is not None else None
        sizes = matrix_sizes(n, setting.embedding_dim, synthetic=variants[name].get("negatives") == "symm")
        rows.append({"setting": setting.name, "variant": name, "device": device.type,
                     "step_ms": 1000 * statistics.median(samples[name]["step"]),
                     "loss_ms": 1000 * statistics.median(samples[name]["loss"]),
                     # the fastest repeat: least disturbed by other processes on a loaded machine
                     "step_ms_min": 1000 * min(samples[name]["step"]), "loss_ms_min": 1000 * min(samples[name]["loss"]),
                     "loss_mflops": flops(lambda: loss_only(loss)) / 1e6,
                     "step_saved_mb": saved[name] / 2**20 if name in saved else float("nan"),
                     "loss_saved_mb": loss_bytes / 2**20,
                     "cuda_peak_mb": "" if peak is None else peak / 2**20, **sizes, "repeats": setting.repeats})
    base = rows[0]
    for row in rows:
        row.update(step_ratio=row["step_ms"] / base["step_ms"], loss_ratio=row["loss_ms"] / base["loss_ms"],
                   step_ratio_min=row["step_ms_min"] / base["step_ms_min"],
                   loss_ratio_min=row["loss_ms_min"] / base["loss_ms_min"],
                   points_ratio=row["points_matrix"] / base["points_matrix"],
                   similarity_ratio=row["similarity_matrix"] / base["similarity_matrix"],
                   paper_step_ratio=PAPER["step_ratio"] if row is not base else 1.0,
                   paper_loss_ratio=PAPER["loss_ratio"] if row is not base else 1.0)
    return rows


def run(ctx: Context, cfg: Config) -> None:
    if next(iter(cfg.variants.values())).get("negatives", "none") != "none":
        raise ValueError("analyses.training_cost.variants: list plain N-pair first (the ratios' base)")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    data_shape = tuple(ctx.data["train"][0].shape[1:])
    rows = []
    # random inputs: N-pair logits on random 512-d embeddings give denormal softmax probabilities,
    # which on Intel CPUs make the plain loss ~9x slower (docs/benchmarks.md); flushed as in
    # bench.loss_overhead, for this analysis only (torch's default is restored after it)
    flushed = torch.set_flush_denormal(True)
    try:
        for device in devices:
            for setting in cfg.settings:
                print(f"analyses {ctx.name}: {setting.name} on {device.type} ...", flush=True)
                rows += measure(setting, cfg.variants, data_shape, device)
                ctx.log_child(f"{setting.name}-{device.type}", {"setting": setting.name, "device": device.type},
                              {f"{r['variant'].replace(' ', '_')}/{k}": r[k] for r in rows[-len(cfg.variants):]
                               for k in ("step_ms", "loss_ms", "step_ratio", "loss_ratio")})
    finally:
        torch.set_flush_denormal(False)
    write_table(ctx.out_dir, "table", rows, COLUMNS)
    (ctx.out_dir / "machine.txt").write_text(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"denormals {'flushed to zero on CPU' if flushed else 'kept (flushing unsupported)'}; "
        f"load average at the end {' '.join(f'{x:.1f}' for x in __import__('os').getloadavg())}\n")
    plt = pyplot()
    groups = [(s.name, d.type) for d in devices for s in cfg.settings]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / len(cfg.variants)
    for i, name in enumerate(cfg.variants):
        for ax, key in zip(axes, ("step_ratio", "loss_ratio")):
            values = [next(r[key] for r in rows if r["variant"] == name and r["setting"] == g and r["device"] == d)
                      for g, d in groups]
            ax.bar([j + i * width for j in range(len(groups))], values, width, label=name)
    for ax, key, title in zip(axes, ("step_ratio", "loss_ratio"), ("forward+backward step", "loss alone")):
        ax.axhline(PAPER[key], color="k", linestyle="--", linewidth=1, label=f"paper Symm ({PAPER[key]:.4f})")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], [f"{g}\n{d}" for g, d in groups], fontsize=7)
        ax.set_ylabel("median time / plain N-pair")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ctx.out_dir / "training_cost.png", dpi=110)
    plt.close(fig)

"""Training-loader throughput: the packed format vs torchvision ImageFolder + PIL, side by side.

Generates a synthetic CUB-sized set of real JPEGs (default 2,000 images of 500x375 in 200
classes, in the CUB_200_2011 layout, whose images/ folder is also an ImageFolder tree), prepares
it with the project's own prepare code (``storage: raw`` and ``storage: jpeg``, timing it), then
measures images/second of a training loader with the ``official`` augmentation at 227 px
(random border crop, resize 255², random 227 crop, flip, caffe-style mean subtraction):

- ``imagefolder+PIL``: ``torchvision.datasets.ImageFolder`` on the original JPEGs, PIL transforms
  (the same border crop, ``Resize((255, 255))``, ``RandomCrop(227)``, ``RandomHorizontalFlip``,
  ``ToTensor``, ``Normalize``), shuffled batches;
- ``packed-raw`` / ``packed-jpeg``: ``symm.data.loaders.make_train_loader`` with N-pair batches,
  float32 normalised batches like the baseline (``normalize_in="workers"``, the default for a CPU
  device);
- ``..., uint8 out``: the same loader as used with a GPU (``normalize_in="device"``): workers ship
  uint8 and the main process converts (here on the CPU, timed; on a GPU this step is the GPU's).

Same batch size, same number of workers, both read from a warm page cache. Rounds interleave the
pipelines and the best round is reported. Because the wall-clock rate depends on whatever else the
machine runs, it also reports the CPU time spent per delivered image by all processes (main +
workers, read from /proc over the timed window: independent of other load) and each pipeline's
per-image cost in one process (no DataLoader), which predicts throughput with more workers
(images/s ≈ workers × 1000 / ms).

    python -m bench.data_throughput [--images 2000] [--workers 2] [--batches 30] [--rounds 2]
                                    [--markdown docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def make_dataset(parent: Path, n_images: int, n_classes: int, size: tuple[int, int]) -> Path:
    from symm.data.fakes import make_fake_cub

    per_class = max(2, n_images // n_classes)
    classes = tuple(range(1, n_classes // 2 + 1)) + tuple(range(101, 101 + n_classes - n_classes // 2))
    info = make_fake_cub(parent, classes=classes, per_class=per_class, size=size, defects=False, smooth=True)
    return info.root


class RandomBorderCrop:
    """The release's border cut for PIL images: m in [1, int(0.05 * short side) - 1] from every side."""

    def __init__(self, fraction: float = 0.05) -> None:
        self.fraction = fraction

    def __call__(self, img):  # noqa: ANN001, ANN204
        w, h = img.size
        high = int(min(w, h) * self.fraction)
        if high <= 1:
            return img
        m = random.randint(1, high - 1)
        return img.crop((m, m, w - m, h - m))


def imagefolder_loader(images_dir: Path, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        RandomBorderCrop(),
        transforms.Resize((255, 255)),
        transforms.RandomCrop(227),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=[123.69 / 255, 116.78 / 255, 103.94 / 255], std=[1 / 255] * 3),
    ])
    ds = datasets.ImageFolder(str(images_dir), transform=tf)
    # one long shuffled "epoch" (several permutations): no worker restart inside a measurement
    sampler = torch.utils.data.RandomSampler(ds, num_samples=100 * len(ds))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       drop_last=True, persistent_workers=False,
                                       prefetch_factor=4 if workers else None)


def packed_loader(prepared: Path, batch_size: int, workers: int, steps: int, normalize_in: str):  # noqa: ANN201
    from symm.data.loaders import make_train_loader, read_labels
    from symm.samplers import NPairBatchSampler

    sampler = NPairBatchSampler(read_labels(prepared, "train"), classes_per_batch=batch_size // 2, seed=0)
    return make_train_loader(prepared, "train", batch_sampler=sampler, augmentation="official", steps=steps,
                             seed=0, num_workers=workers, device="cpu", normalize_in=normalize_in)


def _cpu_seconds_of_children() -> dict[int, float]:
    """utime + stime of this process's child processes (the DataLoader workers), from /proc."""
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid
            out[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def measure(make, batches: int, warmup: int = 3) -> tuple[float, float, float]:  # noqa: ANN001
    """(images/s and CPU ms per image, all processes, over `batches` batches after `warmup`;
    seconds to the first batch). CPU time does not depend on what else the machine runs."""
    t0 = time.perf_counter()
    loader = make()
    it = iter(loader)
    first = None
    n_images = 0
    start = cpu0 = kids0 = None
    for k in range(warmup + batches):
        try:
            images, _ = next(it)
        except StopIteration:  # an epoch of ImageFolder ended: start another
            it = iter(loader)
            images, _ = next(it)
        if first is None:
            first = time.perf_counter() - t0
        if k == warmup - 1:
            start, cpu0, kids0 = time.perf_counter(), time.process_time(), _cpu_seconds_of_children()
        elif k >= warmup:
            n_images += images.shape[0]
    elapsed = time.perf_counter() - start
    kids1 = _cpu_seconds_of_children()
    cpu = time.process_time() - cpu0 + sum(v - kids0.get(pid, 0.0) for pid, v in kids1.items())
    del it
    return n_images / elapsed, 1000 * cpu / n_images, first


def per_image_ms(fn, n: int) -> float:  # noqa: ANN001
    fn(0)
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return 1000 * (time.perf_counter() - t) / n


def prepare_lines(prep_rows: list, workers: int, src_bytes: int, n_files: int) -> list[str]:
    lines = ["| prepare, storage | s per 1,000 images | MB per 1,000 images |", "|---|---|---|"]
    for storage, _, per_k, per_img in prep_rows:
        lines.append(f"| {storage} | {per_k:.1f} | {per_img * 1000 / 1e6:.0f} |")
    lines.append("")
    lines.append(f"(prepare: {workers} worker processes, short side 256; the source JPEGs are "
                 f"{src_bytes / n_files * 1000 / 1e6:.0f} MB per 1,000)")
    return lines


SECTION = "## Data loading throughput"
RESULTS_BEGIN = "<!-- data_throughput results: begin -->"
RESULTS_END = "<!-- data_throughput results: end -->"


def write_section(path: Path, lines: list[str]) -> None:
    """Put the results between the markers of our section; create the section if missing.

    Only the text between the markers is replaced: the prose of the section and every other
    section of the file stay as they are.
    """
    block = "\n".join([RESULTS_BEGIN, *lines, RESULTS_END])
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_BEGIN, 1)
        text = head + block + rest.split(RESULTS_END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--size", default="500x375", help="WxH of the generated JPEGs (CUB's typical size)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="images per batch (N-pair: batch/2 classes x 2)")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prepare-workers", type=int, default=None, help="default: --workers")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--skip-loaders", action="store_true", help="only time prepare")
    parser.add_argument("--markdown", type=Path, default=None,
                        help=f"also write the results into this file's {SECTION!r} section (e.g. docs/benchmarks.md)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(1)

    work = Path(args.dir or tempfile.mkdtemp(prefix="symm-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        root = make_dataset(work / "raw", args.images, args.classes, (width, height))
        jpeg_files = list((root / "images").rglob("*.jpg"))
        n_files = len(jpeg_files)
        src_bytes = sum(p.stat().st_size for p in jpeg_files)
        print(f"generated {n_files} JPEGs {width}x{height} ({src_bytes / n_files / 1024:.0f} KiB each) "
              f"in {time.perf_counter() - t:.1f}s under {work}")

        from symm.data.build import prepare_image_dataset
        from symm.data.cub import SPEC

        prepared: dict[str, Path] = {}
        pw = args.prepare_workers or args.workers
        prep_rows = []
        for storage in ("raw", "jpeg"):
            out = work / f"prepared-{storage}"
            t = time.perf_counter()
            m = prepare_image_dataset(SPEC, out, root=root, short_side=256, val_classes=0, storage=storage,
                                      workers=pw, progress=False)
            dt = time.perf_counter() - t
            size = sum(f["bytes"] for f in m["files"].values())
            prep_rows.append((storage, dt, 1000 * dt / n_files, size / n_files))
            prepared[storage] = out

        if args.skip_loaders:
            print("\n".join(prepare_lines(prep_rows, pw, src_bytes, n_files)))
            return

        # per-image cost in one process (decode + augmentation, no DataLoader)
        from symm.data.augment import get_preset
        from symm.data.loaders import PackedDataset

        pil_ds = imagefolder_loader(root / "images", args.batch, 0).dataset
        costs = {"imagefolder+PIL": per_image_ms(lambda i: pil_ds[i % len(pil_ds)], 200)}
        for storage, path in prepared.items():
            for label, norm in (("", get_preset("official")), (", uint8 out", None)):
                ds = PackedDataset(path, "train", get_preset("official").train, normalize=norm)
                costs[f"packed-{storage}{label}"] = per_image_ms(lambda i, ds=ds: ds[(i % len(ds), (0, 0, i))], 200)

        steps = (args.batches + 5) * args.rounds * 2
        makers = {
            "imagefolder+PIL": lambda: imagefolder_loader(root / "images", args.batch, args.workers),
            "packed-raw": lambda: packed_loader(prepared["raw"], args.batch, args.workers, steps, "workers"),
            "packed-raw, uint8 out": lambda: packed_loader(prepared["raw"], args.batch, args.workers, steps, "device"),
            "packed-jpeg": lambda: packed_loader(prepared["jpeg"], args.batch, args.workers, steps, "workers"),
            "packed-jpeg, uint8 out": lambda: packed_loader(prepared["jpeg"], args.batch, args.workers, steps, "device"),
        }
        results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in makers}
        for _ in range(args.rounds):
            for name, make in makers.items():
                results[name].append(measure(make, args.batches))

        lines = [
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}: {n_files} generated JPEGs {width}x{height} "
            f"({src_bytes / n_files / 1024:.0f} KiB each), {args.workers} DataLoader workers, batch {args.batch}, "
            f"{args.batches} timed batches after 3 warm-up ones, {args.rounds} interleaved rounds "
            f"(`python -m bench.data_throughput --workers {args.workers} --rounds {args.rounds} "
            f"--batches {args.batches}`).",
            "",
            "| pipeline | images/s, best (median) | × ImageFolder | CPU ms per image, all processes | × less CPU | "
            "per image, 1 process (ms) | first batch (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        base = max(r[0] for r in results["imagefolder+PIL"])
        base_cpu = statistics.median(r[1] for r in results["imagefolder+PIL"])
        for name, rows in results.items():
            best = max(r[0] for r in rows)
            median = statistics.median(r[0] for r in rows)
            cpu = statistics.median(r[1] for r in rows)
            first = statistics.median(r[2] for r in rows)
            lines.append(f"| {name} | {best:,.0f} ({median:,.0f}) | {best / base:.2f} | {cpu:.2f} | "
                         f"{base_cpu / cpu:.1f} | {costs[name]:.2f} | {first:.2f} |")
        lines += ["", *prepare_lines(prep_rows, pw, src_bytes, n_files)]
        print()
        print("\n".join(lines))
        if args.markdown is not None:
            write_section(args.markdown, lines)
            print(f"\nupdated the results in {args.markdown} (section {SECTION!r})")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

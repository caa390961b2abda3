"""Augmentation presets for the image benchmarks: ``official`` and ``standard``.

Each preset has a train transform, an eval transform and a normalisation:

- transforms run in the DataLoader workers on one image: uint8 tensor (3, h, w) in, uint8 tensor
  (3, S, S) out, with an explicit ``numpy.random.Generator`` for every random choice (so a batch is
  identical whatever the number of workers, and a resumed run continues exactly);
- ``normalize`` runs on the *batch* after it reached the training device: uint8 -> float32.
  Workers therefore ship uint8 (4x less to pin and copy than float), and on a GPU the arithmetic
  is done there.

Resizing uses torch's uint8 bilinear kernel with antialiasing, which is fastest on the
channels-last layout the packed ``raw`` storage hands out (measured 0.2 ms for a 256x341 -> 227²
resize on one core, against 0.55 ms for Pillow's).

``official`` — the Symmetrical Synthesis release (method.md §7), for 227 px inputs:
  train: cut a random border of m pixels from every side, m uniform in [1, int(0.05·short side) − 1]
  (no cut when that range is empty, as in the release), resize to 255² (int(227·1.125); the aspect
  ratio is not kept), random 227² crop (offsets 0..27), horizontal flip with p = 0.5;
  eval: resize to 227²;
  normalize: caffe/VGG-style — RGB values in 0..255 minus the per-channel mean
  (123.69, 116.78, 103.94), no division (the release's ``vgg_preprocess``).
``standard`` — the common torchvision recipe, for 224 px inputs:
  train: RandomResizedCrop(224, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip;
  eval: resize the short side to 256 (aspect kept), centre crop 224;
  normalize: /255, ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def resize(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (3, h, w) -> uint8 (3, height, width), bilinear with antialiasing."""
    if img.shape[1] == height and img.shape[2] == width:
        return img
    return F.interpolate(img[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def _flip(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return img.flip(-1) if rng.random() < 0.5 else img


def _require_rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ValueError("a training transform needs a numpy Generator (the loader passes one per sample)")
    return rng


class Transform:
    """uint8 (3, h, w) tensor [+ rng] -> uint8 (3, size, size).

    ``apply`` may return a strided view (the batch writer copies it into place); calling the
    transform returns a contiguous tensor.
    """

    size: int

    def apply(self, img: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, img: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        return self.apply(img, rng).contiguous()


@dataclass(frozen=True)
class OfficialTrain(Transform):
    size: int = 227
    resize_to: int = 255            # int(227 * 1.125)
    border_fraction: float = 0.05

    def apply(self, img: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        rng = _require_rng(rng)
        _, h, w = img.shape
        high = int(min(h, w) * self.border_fraction)
        if high > 1:  # the release: randint(1, high) raises for high <= 1 and then keeps the image
            m = int(rng.integers(1, high))
            img = img[:, m : h - m, m : w - m]
        x = resize(img, self.resize_to, self.resize_to)
        edge = self.resize_to - self.size
        i, j = (int(v) for v in rng.integers(0, edge, size=2)) if edge > 0 else (0, 0)
        x = x[:, i : i + self.size, j : j + self.size]
        return _flip(x, rng)


@dataclass(frozen=True)
class OfficialEval(Transform):
    size: int = 227

    def apply(self, img: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        return resize(img, self.size, self.size)


@dataclass(frozen=True)
class StandardTrain(Transform):
    """RandomResizedCrop + flip, with torchvision's sampling rule (10 tries, then a centre crop)."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def crop_box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop."""
        area = h * w
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(rng.integers(0, h - ch + 1))
                left = int(rng.integers(0, w - cw + 1))
                return top, left, ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def apply(self, img: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        rng = _require_rng(rng)
        _, h, w = img.shape
        top, left, ch, cw = self.crop_box(h, w, rng)
        x = resize(img[:, top : top + ch, left : left + cw], self.size, self.size)
        return _flip(x, rng)


@dataclass(frozen=True)
class StandardEval(Transform):
    size: int = 224
    resize_short: int = 256

    def apply(self, img: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        _, h, w = img.shape
        if h <= w:
            nh, nw = self.resize_short, int(self.resize_short * w / h)
        else:
            nh, nw = int(self.resize_short * h / w), self.resize_short
        x = resize(img, nh, nw)
        top = int(round((nh - self.size) / 2.0))
        left = int(round((nw - self.size) / 2.0))
        return x[:, top : top + self.size, left : left + self.size]


@dataclass(frozen=True)
class Preset:
    name: str
    train: Transform
    eval: Transform
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float                      # applied to the 0..255 values before mean / std
    _cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def size(self) -> int:
        return self.train.size

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean / scale, scale / std) as (3, 1, 1): x_norm = (x - m) * k on the raw 0..255 values."""
        if device not in self._cache:
            mean = torch.tensor(self.mean, dtype=torch.float64) / self.scale
            k = self.scale / torch.tensor(self.std, dtype=torch.float64)
            self._cache[device] = (
                mean.to(device=device, dtype=torch.float32).view(3, 1, 1),
                None if bool((k == 1).all()) else k.to(device=device, dtype=torch.float32).view(3, 1, 1),
            )
        return self._cache[device]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) on any device -> float32 normalised input for the network."""
        m, k = self._constants(images.device)
        x = torch.sub(images, m)  # promotes to float32 in one pass
        return x if k is None else x.mul_(k)

    def normalize_into(self, image: torch.Tensor, out: torch.Tensor) -> None:
        """``normalize`` of one uint8 (3, H, W) image written into the float32 slot ``out``."""
        m, k = self._constants(image.device)
        torch.sub(image, m, out=out)
        if k is not None:
            out.mul_(k)


PRESETS: dict[str, Preset] = {
    "official": Preset("official", OfficialTrain(), OfficialEval(), mean=(123.69, 116.78, 103.94),
                       std=(1.0, 1.0, 1.0), scale=1.0),
    "standard": Preset("standard", StandardTrain(), StandardEval(), mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), scale=1.0 / 255.0),
}


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; known: {sorted(PRESETS)}")
    return PRESETS[preset]

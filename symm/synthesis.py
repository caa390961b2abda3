"""Symmetrical synthesis (Gu & Ko, AAAI 2020): hard negatives made by mirroring embeddings.

Each point is reflected about the line through the origin and its same-class partner (the
axis). No parameters and nothing detached, so gradients flow through the mirror images.
"""
from __future__ import annotations

from typing import Literal

import torch

Form = Literal["paper", "official"]


def reflect(
    points: torch.Tensor,
    axes: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 1.0,
    form: Form = "paper",
    eps: float = 1e-12,
    rescale_to_axis_norm: bool = False,
) -> torch.Tensor:
    """Mirror each row of ``points`` about the line spanned by the matching row of ``axes``.

    With ``r`` the projection of x onto the axis:
    - ``form="paper"``:    x' = beta * (x + alpha * (r - x))
    - ``form="official"``: x' = beta * (alpha * r - x)        (flags symm_ratio / symm_norm_ratio)
    Both give the exact mirror 2r - x at alpha=2, beta=1; for alpha != 2 they move in opposite
    directions, which is why both are offered by name. ``rescale_to_axis_norm`` is the official
    code's optional rescale of x' to the norm of its axis point. ``eps`` guards a zero axis.
    """
    if points.shape != axes.shape:
        raise ValueError(f"points {tuple(points.shape)} and axes {tuple(axes.shape)} must have the same shape")
    if form not in ("paper", "official"):
        raise ValueError(f"unknown reflection form {form!r}; use 'paper' or 'official'")
    axis_sq_norm = (axes * axes).sum(dim=-1, keepdim=True).clamp_min(eps)
    projection = ((points * axes).sum(dim=-1, keepdim=True) / axis_sq_norm) * axes
    if form == "paper":
        mirrored = beta * (points + alpha * (projection - points))
    else:
        mirrored = beta * (alpha * projection - points)
    if rescale_to_axis_norm:
        mirrored_norm = mirrored.norm(dim=-1, keepdim=True).clamp_min(eps)
        mirrored = mirrored * (axis_sq_norm.sqrt() / mirrored_norm)
    return mirrored

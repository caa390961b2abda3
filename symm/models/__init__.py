"""Backbones with a linear embedding head, chosen by name: ``create_model(name, ...)``."""
from __future__ import annotations

from typing import Any

from torch import nn

from symm.models.small_cnn import SmallCNN
from symm.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")
BACKBONES.register("small_cnn")(SmallCNN)


def create_model(name: str, embedding_dim: int = 512, **options: Any) -> nn.Module:
    """A module mapping images (B, C, H, W) to embeddings (B, embedding_dim)."""
    return BACKBONES.create(name, embedding_dim=embedding_dim, **options)


__all__ = ["BACKBONES", "SmallCNN", "create_model"]

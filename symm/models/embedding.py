"""The pieces every ImageNet backbone shares: input adapter, embedding head, BatchNorm freezing."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# What every ImageNet backbone here takes: RGB in [0, 1], normalised with these (torchvision's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputAdapter(nn.Module):
    """Maps ImageNet-normalised RGB to what a backbone's ImageNet weights were trained on.

    ``out[:, c] = in[:, channels[c]] * scale[c] + shift[c]``. Like torchvision's GoogLeNet
    ``transform_input``, it lets one data pipeline feed every backbone. Its buffers are not
    persistent, so they never appear in a state_dict.
    """

    def __init__(
        self,
        target_mean: Sequence[float],
        target_std: Sequence[float],
        value_range: float = 1.0,
        bgr: bool = False,
    ) -> None:
        super().__init__()
        order = [2, 1, 0] if bgr else [0, 1, 2]
        src_mean = torch.tensor(IMAGENET_MEAN)[order]
        src_std = torch.tensor(IMAGENET_STD)[order]
        mean, std = torch.tensor(target_mean), torch.tensor(target_std)
        # x01 = in * src_std + src_mean;  out = (x01 * value_range - mean) / std
        self.register_buffer("channels", torch.tensor(order), persistent=False)
        self.register_buffer("scale", (src_std * value_range / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "shift", ((src_mean * value_range - mean) / std).view(1, 3, 1, 1), persistent=False
        )
        self.description = (
            f"{'BGR' if bgr else 'RGB'} in [0, {value_range:g}], "
            f"minus mean {tuple(target_mean)}, divided by std {tuple(target_std)}"
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.index_select(1, self.channels) * self.scale + self.shift

    def extra_repr(self) -> str:
        return self.description


class EmbeddingModel(nn.Module):
    """backbone (feature maps) -> global average pooling -> linear embedding head.

    The head is ``nn.Linear(feature_dim, embedding_dim)`` with Glorot (xavier uniform) weights and
    zero bias, no BatchNorm or activation (the paper's embedding layer). Input: ImageNet-normalised
    RGB (B, 3, H, W), or one channel (B, 1, H, W) with ``in_channels=1``, repeated to three.
    State_dict keys: ``backbone.*`` (the backbone's own names, as in its weights file) and
    ``embedding.weight`` / ``embedding.bias``.
    """

    def __init__(
        self, backbone: nn.Module, feature_dim: int, embedding_dim: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grayscale, repeated to RGB) or 3, got {in_channels}")
        self.in_channels = in_channels
        self.feature_dim = feature_dim
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Linear(feature_dim, embedding_dim)
        nn.init.xavier_uniform_(self.embedding.weight)
        nn.init.zeros_(self.embedding.bias)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled backbone features (B, feature_dim), before the embedding head."""
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(images.shape)}"
            )
        if self.in_channels == 1:
            images = images.expand(-1, 3, -1, -1)
        return torch.flatten(self.pool(self.backbone(images)), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.features(images))


def _stay_in_eval(module: nn.Module, args: tuple) -> None:
    if module.training:
        module.train(False)


def freeze_batch_norm(model: nn.Module) -> int:
    """Freeze every BatchNorm layer of ``model``: running statistics and affine parameters.

    The layers are put in eval mode and a forward pre-hook puts them back in eval mode at every
    call, so ``model.train()`` cannot switch batch statistics back on; their weight and bias get
    ``requires_grad=False``. Returns the number of layers frozen.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(False)
            module.register_forward_pre_hook(_stay_in_eval)
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)
            count += 1
    return count

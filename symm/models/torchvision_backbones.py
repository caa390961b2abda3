"""torchvision's GoogLeNet (Inception v1) and ResNet-50 as feature-map backbones.

The architectures are torchvision's; only the classifier parts are removed (GoogLeNet's
auxiliary heads, global pooling, dropout and ``fc``), so the state_dict keys are exactly
torchvision's and its ImageNet files load as they are (their ``fc.*``/``aux*`` keys are ignored).
Weights are never downloaded: ``pretrained="imagenet"`` looks for torchvision's file name in the
torch hub cache (see ``symm.models.weights``).
"""
from __future__ import annotations

import torch
from torchvision.models import GoogLeNet
from torchvision.models.resnet import Bottleneck, ResNet

from symm.models.embedding import InputAdapter


class GoogLeNetBackbone(GoogLeNet):
    """Inception v1 (torchvision, without auxiliary heads) up to ``inception5b``: 1024 channels.

    torchvision's ImageNet weights were ported from a network trained on inputs scaled to
    [-1, 1]; ``input_adapter`` maps ImageNet-normalised RGB there (what torchvision's
    ``transform_input=True`` does for its pretrained GoogLeNet).
    """

    feature_dim = 1024
    imagenet_files = ("googlenet-1378be20.pth",)
    classifier_prefixes = ("fc.", "aux1.", "aux2.")

    _stages = (
        "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
        "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
        "inception5a", "inception5b",
    )

    def __init__(self) -> None:
        super().__init__(aux_logits=False, transform_input=False, init_weights=True)
        del self.avgpool, self.dropout, self.fc
        self.input_adapter = InputAdapter(target_mean=(0.5, 0.5, 0.5), target_std=(0.5, 0.5, 0.5))

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self.input_adapter(images)
        for name in self._stages:
            x = getattr(self, name)(x)
        return x


class ResNet50Backbone(ResNet):
    """ResNet-50 (torchvision) up to ``layer4``: 2048 channels. Takes ImageNet-normalised RGB."""

    feature_dim = 2048
    # torchvision's IMAGENET1K_V1 (the classic weights) first, then IMAGENET1K_V2
    imagenet_files = ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")
    classifier_prefixes = ("fc.",)

    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3])
        del self.avgpool, self.fc

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


__all__ = ["GoogLeNetBackbone", "ResNet50Backbone"]

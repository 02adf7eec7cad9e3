"""A tiny random backbone that is exactly equivariant to horizontal flips (for tests)."""

from __future__ import annotations

import torch
from torch import nn

from semcorr.features.base import Backbone, BackboneInfo


class MirrorBackbone(Backbone):
    """4x4 patches (stride 4) through mirror-symmetric random filters, then a 1x1 mixing layer.

    Because every first-layer filter equals its own mirror image and the patches tile the input
    exactly, the features of a flipped image are the flipped features of the image.
    """

    def __init__(self, channels: int = 32, image_size: int = 128, seed: int = 0) -> None:
        super().__init__()
        self.info = BackboneInfo(name="mirror-test", stride=4, image_size=image_size)
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(channels, 3, 4, 4, generator=generator)
        self.patch = nn.Conv2d(3, channels, 4, stride=4, bias=False)
        self.mix = nn.Conv2d(channels, channels, 1)
        with torch.no_grad():
            self.patch.weight.copy_((weight + weight.flip(-1)) / 2)
            self.mix.weight.copy_(torch.randn(channels, channels, 1, 1, generator=generator))
            self.mix.bias.zero_()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.relu(self.patch(images)))

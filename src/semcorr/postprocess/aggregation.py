"""GeoAware-SC's aggregation network: one ResNet bottleneck per feature part, mixed by softmax.

The input is the channel concatenation of the backbone's parts (for ``sd+dino`` in ``raw`` mode:
SD s3, s4, s5 and DINOv2, 640 + 1280 + 1280 + 768 channels). Each part goes through its own
bottleneck branch (1x1 → 3x3 → 1x1 convolutions of width ``projection_dim // 4``, GroupNorm
after every convolution, ReLU after the residual add, a 1x1 projection shortcut when the part's
width differs from ``projection_dim``); the branch outputs are weighted by
``softmax(mixing_weights)`` and summed. The state-dict keys are those of the official
checkpoints, so they load strictly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.conventions import check_shape

__all__ = ["AggregationNetwork", "Bottleneck", "ConvNorm"]


class ConvNorm(nn.Conv2d):
    """A bias-free convolution followed by GroupNorm (the norm lives at ``<conv>.norm``).

    Args:
        in_channels, out_channels: widths.
        kernel_size: odd square kernel; padding keeps the grid size.
        groups: GroupNorm groups.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                         bias=False)
        self.norm = nn.GroupNorm(groups, out_channels)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, h, w)`` → ``(B, C_out, h, w)``."""
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    """Residual bottleneck ``relu(conv3(relu(conv2(relu(conv1(x))))) + shortcut(x))``.

    Args:
        in_channels: input width.
        out_channels: output width.
        width: width of the inner 3x3 convolution.
        groups: GroupNorm groups.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, groups: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_channels, width, 1, groups)
        self.conv2 = ConvNorm(width, width, 3, groups)
        self.conv3 = ConvNorm(width, out_channels, 1, groups)
        self.shortcut = (
            ConvNorm(in_channels, out_channels, 1, groups) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, h, w)`` → ``(B, C_out, h, w)``."""
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + skip)


class AggregationNetwork(nn.Module):
    """Per-part bottlenecks mixed by learned softmax weights (GeoAware-SC's post-processor).

    Args:
        feature_dims: channels of each part, in the order they are concatenated.
        projection_dim: output channels; it and its quarter (the bottleneck width) must be
            multiples of ``num_groups``.
        num_groups: GroupNorm groups in every branch.
        feature_dropout: dropout probability on the input features while training.

    Attributes:
        mixing_weights: ``(P,)`` logits of the part weights.
        logit_scale: log of the InfoNCE inverse temperature (``log(1 / 0.07)`` at start).
        self_logit_scale: a second learned scale kept for checkpoint compatibility
            (``log(10)`` at start; unused by the forward pass).
    """

    def __init__(
        self,
        feature_dims: Sequence[int] = (640, 1280, 1280, 768),
        projection_dim: int = 768,
        num_groups: int = 32,
        feature_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if projection_dim % 4 or (projection_dim // 4) % num_groups or projection_dim % num_groups:
            raise ValueError(
                f"projection_dim {projection_dim} must be divisible by 4 and its quarter by "
                f"num_groups {num_groups}"
            )
        self.feature_dims = tuple(int(d) for d in feature_dims)
        self.projection_dim = int(projection_dim)
        self.feature_dropout = float(feature_dropout)
        self.bottleneck_layers = nn.ModuleList(
            nn.Sequential(Bottleneck(dim, projection_dim, projection_dim // 4, num_groups))
            for dim in self.feature_dims
        )
        self.mixing_weights = nn.Parameter(torch.ones(len(self.feature_dims)))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.self_logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    @property
    def in_channels(self) -> int:
        """Channels of the concatenated input."""
        return sum(self.feature_dims)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Aggregate concatenated parts.

        Args:
            features: ``(B, sum(feature_dims), h, w)``.

        Returns:
            ``(B, projection_dim, h, w)`` (not normalised; match with cosine similarity).
        """
        dims = check_shape(features, "B C h w", "features")
        if dims["C"] != self.in_channels:
            raise ValueError(
                f"features have {dims['C']} channels, the head expects {self.in_channels} "
                f"({' + '.join(map(str, self.feature_dims))})"
            )
        if self.training and self.feature_dropout > 0:
            features = F.dropout(features, p=self.feature_dropout)
        weights = torch.softmax(self.mixing_weights, dim=0).to(features.dtype)
        parts = torch.split(features, self.feature_dims, dim=1)
        out = None
        for weight, branch, part in zip(weights, self.bottleneck_layers, parts, strict=True):
            term = weight * branch(part)
            out = term if out is None else out + term
        return out

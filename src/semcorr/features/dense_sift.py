"""``dense-sift``: a weight-free, multi-scale dense SIFT descriptor in torch.

At every feature cell and for each spatial bin size ``b``, the descriptor is a 4x4 grid of
8-bin gradient-orientation histograms (128 values), with bilinear (triangular) spatial pooling,
soft orientation binning and SIFT's Gaussian weighting of the cells, normalised as RootSIFT
(L1, then square root). The scales are concatenated and normalised jointly, so a larger bin size
brings the wider context that matching across object instances needs.

It runs anywhere (CPU or GPU, no weights) and is semcorr's embedded default backbone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from semcorr.errors import InputError
from semcorr.features.base import Backbone, BackboneInfo, register_backbone

__all__ = ["PRESETS", "DenseSIFT", "dense_sift", "dense_sift_precise"]

_LUMA = (0.299, 0.587, 0.114)
_CELLS = 4  # cells per side of a SIFT descriptor


def _gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _triangle_kernel1d(bin_size: int) -> torch.Tensor:
    x = torch.arange(-(bin_size - 1), bin_size, dtype=torch.float32)
    return 1.0 - x.abs() / bin_size


def _separable_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Filter every channel of ``(B, C, H, W)`` with the same odd 1-D kernel along both axes."""
    channels = x.shape[1]
    k = kernel.to(dtype=x.dtype, device=x.device)
    pad = k.numel() // 2
    horizontal = k.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = k.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0)), horizontal, groups=channels)
    return F.conv2d(F.pad(x, (0, 0, pad, pad)), vertical, groups=channels)


def orientation_maps(gray: torch.Tensor, num_orientations: int = 8) -> torch.Tensor:
    """Gradient magnitude split over orientation bins with linear interpolation.

    Args:
        gray: ``(B, 1, H, W)`` grey image.
        num_orientations: number of bins over [0, 2π).

    Returns:
        ``(B, num_orientations, H, W)``; summing over channels gives the gradient magnitude.
    """
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    gy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    magnitude = torch.sqrt(gx * gx + gy * gy)
    angle = torch.atan2(gy, gx) % (2 * math.pi)
    position = angle * (num_orientations / (2 * math.pi))
    lower = position.floor()
    frac = position - lower
    lower_bin = lower.long() % num_orientations
    upper_bin = (lower_bin + 1) % num_orientations
    maps = gray.new_zeros(gray.shape[0], num_orientations, *gray.shape[-2:])
    maps.scatter_add_(1, lower_bin, magnitude * (1 - frac))
    maps.scatter_add_(1, upper_bin, magnitude * frac)
    return maps


class DenseSIFT(Backbone):
    """Multi-scale dense SIFT (see module docstring).

    Args:
        image_size: side of the square input in pixels (a multiple of ``stride``).
        stride: pixels between descriptors (feature-cell size).
        bin_sizes: spatial bin sizes in input pixels; a descriptor spans ``4 * bin_size``.
        num_orientations: orientation bins per cell.
        sigma: Gaussian smoothing of the grey image before gradients.
        prior: the matching prior this setting prefers (fields of
            :class:`~semcorr.match.geometric.AffinePrior`; a :class:`~semcorr.pipeline.Matcher`
            with ``prior="auto"`` uses it), or ``None``.
    """

    def __init__(
        self,
        *,
        image_size: int = 256,
        stride: int = 4,
        bin_sizes: Sequence[int] = (8, 16, 32, 64),
        num_orientations: int = 8,
        sigma: float = 0.8,
        prior: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if stride < 1 or image_size % stride:
            raise InputError(f"dense-sift: image_size {image_size} must be a multiple of stride")
        if not bin_sizes or min(bin_sizes) < 1:
            raise InputError("dense-sift: bin_sizes must be positive integers")
        self.info = BackboneInfo(
            name="dense-sift",
            stride=stride,
            image_size=image_size,
            license="method: SIFT (patent expired); implementation: semcorr, Apache-2.0",
            extra={} if prior is None else {"prior": dict(prior)},
        )
        self.bin_sizes = tuple(int(b) for b in bin_sizes)
        self.num_orientations = num_orientations
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("smoothing", _gaussian_kernel1d(sigma), persistent=False)

    @property
    def dim(self) -> int:
        return len(self.bin_sizes) * _CELLS * _CELLS * self.num_orientations

    def _descriptor(self, orientations: torch.Tensor, bin_size: int) -> torch.Tensor:
        """RootSIFT descriptors ``(B, 16 * n, h, w)`` at cell centres for one bin size."""
        batch, n, height, width = orientations.shape
        pooled = _separable_conv(orientations, _triangle_kernel1d(bin_size))
        stride = self.stride
        h, w = height // stride, width // stride
        device, dtype = orientations.device, orientations.dtype
        offsets = (torch.arange(_CELLS, device=device, dtype=dtype) - (_CELLS - 1) / 2) * bin_size
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")  # (4, 4) each
        cy = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride - 0.5
        cx = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride - 0.5
        # sample positions (h, w, 16) in input pixels, then normalised for grid_sample
        ys = cy.view(h, 1, 1) + dy.reshape(1, 1, -1)
        xs = cx.view(1, w, 1) + dx.reshape(1, 1, -1)
        ys, xs = torch.broadcast_tensors(ys, xs)
        grid = torch.stack(
            [(xs + 0.5) / width * 2 - 1, (ys + 0.5) / height * 2 - 1], dim=-1
        ).reshape(1, h, w * _CELLS * _CELLS, 2)
        samples = F.grid_sample(
            pooled, grid.expand(batch, -1, -1, -1), mode="bilinear", align_corners=False
        )  # (B, n, h, w * 16)
        samples = samples.view(batch, n, h, w, _CELLS * _CELLS)
        weight = torch.exp(-(dx**2 + dy**2).reshape(-1) / (2 * (0.5 * _CELLS * bin_size) ** 2))
        samples = samples * weight
        descriptor = samples.permute(0, 4, 1, 2, 3).reshape(batch, -1, h, w)
        descriptor = descriptor / (descriptor.sum(dim=1, keepdim=True) + 1e-6)
        return descriptor.clamp_min(0).sqrt()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Dense SIFT of ``(B, 3, S, S)`` images → ``(B, dim, S / stride, S / stride)``."""
        gray = (images * self.luma).sum(dim=1, keepdim=True)
        gray = _separable_conv(gray, self.smoothing)
        orientations = orientation_maps(gray, self.num_orientations)
        parts = [self._descriptor(orientations, b) for b in self.bin_sizes]
        return torch.cat(parts, dim=1) / math.sqrt(len(parts))


#: Named settings. ``semantic`` (the default) gives each descriptor a wide context, which is
#: what matching across object instances needs (PF-Willow); ``precise`` keeps finer cells at a
#: higher resolution, which same-instance matching under rotation and zoom prefers.
PRESETS: dict[str, dict[str, object]] = {
    "semantic": {"image_size": 256, "bin_sizes": (8, 16, 32, 64)},
    "precise": {"image_size": 384, "bin_sizes": (4, 8, 16, 32, 64)},
}


def _build(preset: str, weights: str | None, options: dict[str, object]) -> DenseSIFT:
    if weights is not None:
        raise InputError("dense-sift has no weights; drop --weights")
    if preset not in PRESETS:
        raise InputError(f"dense-sift: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    try:
        return DenseSIFT(**{**PRESETS[preset], **options})  # type: ignore[arg-type]
    except TypeError as exc:
        raise InputError(f"dense-sift: {exc}") from None


@register_backbone("dense-sift")
def dense_sift(
    *, weights: str | None = None, preset: str = "semantic", **options: object
) -> DenseSIFT:
    """The weight-free dense SIFT backbone (``weights`` must be ``None``); keyword options
    override the preset's."""
    return _build(preset, weights, options)


@register_backbone("dense-sift-precise")
def dense_sift_precise(*, weights: str | None = None, **options: object) -> DenseSIFT:
    """``dense-sift`` with the ``precise`` preset (same-instance matching)."""
    return _build("precise", weights, options)

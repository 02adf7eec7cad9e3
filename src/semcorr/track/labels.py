"""Labels on a feature grid: first-frame points and index masks in, propagated soft labels out.

Points follow CRW (github.com/ajabri/videowalk), read for facts:

* a point becomes a Gaussian heatmap drawn as ``code/data/jhmdb.py`` ``draw_labelmap_np`` does
  (l.287-319): centre value 1, ``sigma`` in cells, a ``(6 sigma + 1)`` square placed at
  ``int(p - 3 sigma)`` (truncation, so the drawn peak is on a whole cell), clipped to the grid,
  nothing when the square lies outside; the loader uses ``sigma = 0.5`` (l.126);
* pixel → cell is ``x * w / W`` (``jhmdb.py`` l.238-239, divided by the map stride) and cell →
  pixel ``x * W / w`` (``code/eval/eval_pck.py``: ``/ feat_res * width``);
* a heatmap becomes a point as ``code/utils/test_utils.py`` ``process_pose`` does (l.55-77):
  the 3 largest cells, averaged with their values as weights; ``-1`` when the map is all zero.

Masks follow DIFT's ``eval_davis.py`` (github.com/Tsingularity/dift): the index mask is
resized to the grid with nearest-neighbour sampling (PIL, ``read_seg`` l.249) and one-hot
encoded (``to_one_hot`` l.186-198); back, soft labels are upsampled bilinearly
(``align_corners=False``), each channel min-max normalised when its maximum is positive
(``norm_mask`` l.100-108) and the argmax taken (l.71-74).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from semcorr.conventions import UNMATCHED, check_shape
from semcorr.errors import InputError

__all__ = [
    "MASK_NORMALISE", "labels_to_mask", "labels_to_points", "mask_to_labels", "points_to_labels",
]


def points_to_labels(points: Tensor, size: tuple[int, int], grid: tuple[int, int],
                     sigma: float = 0.5) -> Tensor:
    """One Gaussian heatmap per point on the feature grid (CRW's ``draw_labelmap_np``).

    Args:
        points: ``(P, 2)`` pixel coordinates ``(x, y)``; a missing point (``(-1, -1)`` or
            non-finite) gives an all-zero map.
        size: ``(H, W)`` of the image the grid covers.
        grid: ``(h, w)`` of the feature grid.
        sigma: standard deviation in cells.

    Returns:
        ``(P, h, w)`` heatmaps with values in ``[0, 1]``.
    """
    check_shape(points, "P 2", "points")
    (height, width), (h, w) = size, grid
    cells = points.double() * torch.tensor([w / width, h / height], dtype=torch.float64)
    span = 6 * sigma + 1
    length, centre = math.ceil(span), span // 2  # np.arange(0, span) and its centre
    upper_left = torch.trunc(cells - 3 * sigma)  # Python's int(): truncation toward zero
    lower_right = torch.trunc(cells + 3 * sigma + 1)
    missing = ~torch.isfinite(points).all(1) | (points == UNMATCHED).all(1)
    inside = ((upper_left < torch.tensor([w, h])) & (lower_right >= 0)).all(1) & ~missing

    def axis(n: int, k: int) -> Tensor:
        """Gaussian factor ``(P, n)`` along one axis (k = 0 for x, 1 for y), zero off the
        drawn square."""
        index = torch.arange(n, dtype=torch.float64)[None] - upper_left[:, k:k + 1]
        drawn = (index >= 0) & (index < length) & (torch.arange(n)[None] < lower_right[:, k:k + 1])
        return torch.where(drawn, torch.exp(-((index - centre) ** 2) / (2 * sigma**2)), 0.0)

    maps = axis(h, 1)[:, :, None] * axis(w, 0)[:, None, :]
    return (maps * inside[:, None, None]).float()


def labels_to_points(labels: Tensor, size: tuple[int, int], topk: int = 3
                     ) -> tuple[Tensor, Tensor]:
    """Points from heatmaps (CRW's ``process_pose``).

    Args:
        labels: ``(P, h, w)`` propagated heatmaps (no background channel).
        size: ``(H, W)`` of the image the grid covers.
        topk: cells averaged per point (CRW: 3; 1 is the plain argmax).

    Returns:
        ``(P, 2)`` pixel coordinates (``-1, -1`` for an all-zero map) and ``(P,)`` scores: the
        heatmap's peak value (soft labels lie in ``[0, 1]``).
    """
    dims = check_shape(labels, "P h w", "labels")
    h, w = dims["h"], dims["w"]
    flat = labels.reshape(dims["P"], h * w).float()
    values, index = flat.topk(min(topk, h * w), dim=1)
    total = values.sum(1, keepdim=True)
    weights = values / torch.where(total == 0, 1.0, total)
    cells = torch.stack([(index % w).float(), torch.div(index, w, rounding_mode="floor").float()],
                        dim=-1)  # (P, k, 2) as (x, y)
    mean = (cells * weights[..., None]).sum(1)
    points = mean * mean.new_tensor([size[1] / w, size[0] / h])
    points[flat.sum(1) == 0] = UNMATCHED
    return points, values[:, 0]


def mask_to_labels(mask: Tensor, num_objects: int | None = None,
                   grid: tuple[int, int] | None = None) -> Tensor:
    """Index mask → one-hot soft labels, background included (DIFT's ``read_seg``).

    Args:
        mask: ``(H, W)`` integer object indices, 0 = background.
        num_objects: objects besides the background (default: the largest index).
        grid: ``(h, w)`` to resize to with nearest-neighbour sampling first (None: keep).

    Returns:
        ``(num_objects + 1, h, w)`` float one-hot labels.
    """
    check_shape(mask, "H W", "mask")
    if mask.numel() and int(mask.min()) < 0:
        raise InputError("mask: object indices must be >= 0")
    largest = int(mask.max()) if mask.numel() else 0
    num_objects = largest if num_objects is None else num_objects
    if largest > num_objects:
        raise InputError(f"mask holds object index {largest} but num_objects={num_objects}")
    if largest > 255:
        raise InputError(f"mask holds object index {largest}; at most 255 objects")
    if grid is not None and tuple(grid) != tuple(mask.shape):
        image = Image.fromarray(mask.cpu().numpy().astype(np.uint8))
        resized = np.asarray(image.resize((grid[1], grid[0]), Image.NEAREST))
        mask = torch.from_numpy(resized.astype(np.int64))
    return F.one_hot(mask.long(), num_objects + 1).permute(2, 0, 1).float()


#: Mask read-outs of :func:`labels_to_mask`: DIFT's per-channel min-max rescaling, or none.
MASK_NORMALISE = ("minmax", "none")


def labels_to_mask(labels: Tensor, size: tuple[int, int], normalise: str = "minmax") -> Tensor:
    """Soft labels → index mask at ``size``: bilinear upsampling, an optional per-channel
    rescaling, argmax.

    ``normalise="minmax"`` is DIFT's ``norm_mask``: each channel is rescaled to ``[0, 1]`` over
    the frame, so an object channel reaches 1 somewhere even when the object is out of view.
    ``"none"`` compares the propagated weights as they are (they sum to 1 over the channels),
    so an object wins a pixel only where it outweighs the background.

    Args:
        labels: ``(K, h, w)`` soft labels, channel 0 the background.
        size: ``(H, W)`` of the output.
        normalise: ``"minmax"`` (DIFT) or ``"none"``.

    Returns:
        ``(H, W)`` int64 indices in ``[0, K)``.
    """
    check_shape(labels, "K h w", "labels")
    if normalise not in MASK_NORMALISE:
        raise InputError(f"mask normalisation must be one of {', '.join(MASK_NORMALISE)}, "
                         f"got {normalise!r}")
    up = F.interpolate(labels[None].float(), size=tuple(size), mode="bilinear",
                       align_corners=False)[0]
    if normalise == "minmax":
        low = up.amin(dim=(1, 2), keepdim=True)
        high = up.amax(dim=(1, 2), keepdim=True)
        span = high - low
        scaled = (up - low) / torch.where(span > 0, span, 1.0)  # a flat channel becomes 0
        up = torch.where(high > 0, scaled, up)
    return up.argmax(0)

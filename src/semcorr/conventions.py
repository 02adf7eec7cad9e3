"""The conventions of semcorr, written down once.

Coordinates
    A point is ``(x, y)`` in pixels of the **original** image (before any resize or pad), with
    ``(0, 0)`` the *centre* of the top-left pixel. This is the frame dataset annotations use
    (SPair-71k, PF-Pascal, PF-Willow after removing MATLAB's 1-based offset). The top-left
    *corner* of the image is therefore ``(-0.5, -0.5)`` and the bottom-right corner is
    ``(W - 0.5, H - 0.5)``. A point is inside the image when ``-0.5 <= x <= W - 0.5`` and
    likewise for ``y``.

Feature grids
    A dense map of stride ``s`` has cell ``(i, j)`` covering input pixels
    ``[j*s, (j+1)*s) x [i*s, (i+1)*s)``; its centre is at input pixel ``(j + 0.5) * s - 0.5``.
    Continuous grid coordinates put cell centres at integers. :class:`semcorr.geometry.ResizePad`
    maps points between original image, backbone input and feature grid.

Shapes
    * images ``(B, 3, H, W)`` float in [0, 1] (before a backbone's own normalisation);
    * dense maps ``(B, C, h, w)``;
    * point sets ``(B, N, 2)`` (or ``(N, 2)`` for one image);
    * per-point descriptors ``(B, N, C)``;
    * similarities of N query points against a grid ``(B, N, h, w)``.

Unmatched
    ``-1`` marks an unmatched index (mutual nearest neighbours) and a missing point
    (coordinates ``(-1, -1)``) in outputs.
"""

from __future__ import annotations

import torch

__all__ = ["UNMATCHED", "check_shape"]

UNMATCHED = -1


def check_shape(x: torch.Tensor, spec: str, name: str = "tensor") -> dict[str, int]:
    """Check that ``x`` has the shape described by ``spec`` and return the named sizes.

    Args:
        x: the tensor to check.
        spec: space-separated dimension names, e.g. ``"B C H W"``; an integer fixes a size
            (``"B N 2"``), a name seen twice must agree.
        name: the argument's name for the error message.

    Returns:
        A dict from dimension name to size.

    Raises:
        ValueError: if the number of dimensions or a fixed/repeated size does not match.
    """
    dims = spec.split()
    if x.dim() != len(dims):
        raise ValueError(f"{name} must have shape ({', '.join(dims)}), got {tuple(x.shape)}")
    sizes: dict[str, int] = {}
    for dim, size in zip(dims, x.shape):
        if dim.isdigit():
            if int(dim) != size:
                raise ValueError(
                    f"{name} must have shape ({', '.join(dims)}), got {tuple(x.shape)}"
                )
        elif dim in sizes and sizes[dim] != size:
            raise ValueError(f"{name}: dimension {dim} disagrees in {tuple(x.shape)}")
        else:
            sizes[dim] = int(size)
    return sizes

"""Synthetic clips with known motion, to measure tracking without a video dataset.

A clip is a real photograph seen by a camera that pans, rotates and zooms smoothly, with a
pasted patch of another photograph (the *object*) that leaves the frame and comes back. The
true position of every point and the true object mask are known in every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from semcorr.conventions import UNMATCHED

__all__ = ["SyntheticClip", "make_clip", "mask_iou", "pck"]


@dataclass(frozen=True)
class SyntheticClip:
    """Frames and their ground truth.

    Attributes:
        frames: ``(T, 3, H, W)`` in [0, 1].
        points: ``(T, P, 2)`` true pixel positions, ``-1`` where a point is not visible
            (outside the frame, or a background point hidden by the object).
        masks: ``(T, H, W)`` int64, 1 on the object, 0 elsewhere.
        num_background: the first ``num_background`` points lie on the background, the rest
            on the object.
    """

    frames: Tensor
    points: Tensor
    masks: Tensor
    num_background: int


def _camera(t: Tensor, num_frames: int) -> tuple[Tensor, Tensor, Tensor]:
    """Smooth camera motion ``(T,)``: rotation (radians), zoom, and pan ``(T, 2)`` in pixels."""
    phase = 2 * math.pi * t / num_frames
    angle = math.radians(6.0) * torch.sin(phase)
    zoom = 1 + 0.12 * torch.sin(0.5 * phase)
    pan = torch.stack([25 * torch.sin(phase), 15 * (1 - torch.cos(phase))], dim=-1)
    return angle, zoom, pan


def _frame_to_background(num_frames: int, size: tuple[int, int], anchor: Tensor) -> Tensor:
    """``(T, 2, 3)`` affine maps from frame pixels to background pixels."""
    h, w = size
    t = torch.arange(num_frames, dtype=torch.float64)
    angle, zoom, pan = _camera(t, num_frames)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    offset = anchor + pan - (linear @ centre)
    return torch.cat([linear, offset[..., None]], dim=-1)


def _render(background: Tensor, maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Sample ``background`` ``(3, Hb, Wb)`` through ``maps`` ``(T, 2, 3)`` → ``(T, 3, H, W)``."""
    h, w = size
    hb, wb = background.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    pixels = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)  # (HW, 3)
    source = torch.einsum("tij,pj->tpi", maps, pixels)  # (T, HW, 2) background pixels
    scale = torch.tensor([2 / wb, 2 / hb], dtype=torch.float64)
    grid = ((source + 0.5) * scale - 1).reshape(len(maps), h, w, 2).float()
    frames = F.grid_sample(background[None].expand(len(maps), -1, -1, -1).float(), grid,
                           mode="bilinear", padding_mode="reflection", align_corners=False)
    return frames.clamp(0, 1)


def _object_path(num_frames: int, size: tuple[int, int], patch: tuple[int, int], leaves: bool
                 ) -> Tensor:
    """Top-left corners ``(T, 2)`` (integers) of the object: during the first half of the clip
    it slides right out of the frame (``leaves``; else left, staying in view) and comes back
    to where it started; then it bobs in place."""
    h, w = size
    ph, pw = patch
    t = torch.arange(num_frames, dtype=torch.float64)
    x0, y0 = w - pw - 12, h // 2 - ph // 2
    half = num_frames / 2
    away = torch.where(t < half, torch.sin(math.pi * t / half) ** 2, torch.zeros_like(t))
    x = x0 + (pw + 30) * away if leaves else x0 - 0.4 * w * away
    y = y0 + 8 * torch.sin(2 * math.pi * t / num_frames)
    return torch.stack([x, y], -1).round()


def make_clip(background: Tensor, patch: Tensor, num_frames: int = 40,
              size: tuple[int, int] = (120, 160), leaves: bool = True) -> SyntheticClip:
    """A clip of ``num_frames`` frames of ``size`` ``(H, W)``.

    Args:
        background: ``(3, Hb, Wb)`` photo in [0, 1], larger than the frame (about 2x).
        patch: ``(3, ph, pw)`` the object, pasted on top.
        num_frames: clip length.
        size: frame ``(H, W)``.
        leaves: whether the object leaves the frame and comes back.

    Returns:
        The clip; 9 background points (a 3 x 3 grid in the first frame) then 4 object points.
    """
    h, w = size
    ph, pw = patch.shape[-2:]
    hb, wb = background.shape[-2:]
    anchor = torch.tensor([(wb - 1) / 2, (hb - 1) / 2], dtype=torch.float64)
    maps = _frame_to_background(num_frames, size, anchor)
    frames = _render(background, maps, size)
    corners = _object_path(num_frames, size, (ph, pw), leaves)
    masks = torch.zeros(num_frames, h, w, dtype=torch.long)
    for t in range(num_frames):  # a loop over frames: paste the object
        x, y = int(corners[t, 0]), int(corners[t, 1])
        x1, y1 = min(x + pw, w), min(y + ph, h)
        if x < w and y < h:
            frames[t, :, y:y1, x:x1] = patch[:, : y1 - y, : x1 - x]
            masks[t, y:y1, x:x1] = 1
    gy, gx = torch.meshgrid(torch.linspace(0.2, 0.8, 3) * (h - 1),
                            torch.linspace(0.15, 0.55, 3) * (w - 1), indexing="ij")
    first = torch.stack([gx.flatten(), gy.flatten()], -1).double()  # (9, 2) in frame 0
    on_background = first @ maps[0, :, :2].T + maps[0, :, 2]  # background pixels
    homog = torch.cat([maps[:, :, :2], maps[:, :, 2:]], dim=-1)
    inverse = torch.linalg.inv(torch.cat([homog, torch.tensor([[[0.0, 0, 1]]],
                                          dtype=torch.float64).expand(num_frames, -1, -1)], 1))
    background_points = (torch.einsum("tij,pj->tpi", inverse[:, :2, :2], on_background)
                         + inverse[:, None, :2, 2])
    relative = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.7]],
                            dtype=torch.float64) * torch.tensor([pw - 1, ph - 1])
    object_points = corners[:, None, :] + relative[None]
    points = torch.cat([background_points, object_points], dim=1)
    inside = ((points >= 0) & (points <= torch.tensor([w - 1, h - 1]))).all(-1)
    cell = points.round().long().clamp_min(0)
    hidden = masks[torch.arange(num_frames)[:, None], cell[..., 1].clamp_max(h - 1),
                   cell[..., 0].clamp_max(w - 1)].bool()
    hidden[:, 9:] = False  # object points are on top
    visible = inside & ~hidden
    points = torch.where(visible[..., None], points, torch.full_like(points, UNMATCHED))
    return SyntheticClip(frames, points.float(), masks, 9)


def pck(predicted: Tensor, truth: Tensor, size: tuple[int, int], alpha: float = 0.05) -> float:
    """Fraction of visible true points ``(T, P, 2)`` predicted within ``alpha * max(H, W)``."""
    visible = (truth != UNMATCHED).any(-1)
    error = (predicted - truth).norm(dim=-1)
    return float((error[visible] <= alpha * max(size)).float().mean())


def mask_iou(predicted: Tensor, truth: Tensor) -> Tensor:
    """IoU per frame of binary masks ``(T, H, W)`` (1 when both are empty) → ``(T,)``."""
    p, g = predicted.bool(), truth.bool()
    inter = (p & g).flatten(1).sum(1).float()
    union = (p | g).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))

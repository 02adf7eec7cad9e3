"""GeoAware-SC's training loss on one pair, with the released code's keypoint arithmetic.

A pair gives up to four *views* (the released ``calculate_loss``), each a first and a second
map among source, target, mirrored source and mirrored target:

* the pair itself (weight 1): symmetric InfoNCE on the keypoint descriptors plus the dense
  flow error;
* single flip, mirrored source → target (``single_flip``; off in the released training
  configurations, where it follows the evaluation-only adaptive-flip switch);
* double flip, both mirrored (``double_flip``, 1);
* self flip, mirrored source → source (``self_flip``, 0.25).

The flipped views use the flow error only (InfoNCE only when the dense objective is off), and
their loss is the weighted mean over the views that have a usable keypoint.

The keypoint arithmetic is the released code's, so that the loss equals it:

* keypoints live in an ``annotation_size`` (840) square frame: scaled by
  ``840 / max(w, h)`` and offset by the centring pad, pixel *corners* (no half-pixel shift);
* a mirrored image's keypoint ``i`` is the mirror ``840 - x`` of its left/right partner's;
* a keypoint's cell is ``int(k * grid / 840)``; the flow target is the continuous
  ``k1 * grid / 840 - k0 * grid / 840`` and the prediction is the soft-argmax match minus the
  source cell, so the flow is measured from the source cell's corner;
* visibility: the pair view uses keypoints annotated in both images; the double flip those of
  the partner in both; the self flip keypoints whose partner and themselves are in the source;
* label noise: std ``label_noise * threshold / 2`` cells, the threshold being the larger side of
  the target's box (the *source's* box for the self flip), drawn per view for its usable
  keypoints in order. ``noise_reference="image"`` is the released PF-Pascal rule: no boxes,
  the threshold is the 840-px image side taken as cells (std 42 cells at 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from semcorr.data.base import PairSample
from semcorr.geometry import ResizePad
from semcorr.match.similarity import sample_descriptors
from semcorr.train.losses import SoftArgmaxGrid, flow_epe_loss, info_nce_loss

if TYPE_CHECKING:
    from semcorr.train.geoaware import GeoAwareTrainConfig

__all__ = [
    "NOISE_REFERENCES",
    "LoadedPair",
    "PairViews",
    "annotation_frame",
    "pair_views",
    "views_loss",
]

#: What the label-noise std is a fraction of (see the module docstring).
NOISE_REFERENCES: tuple[str, ...] = ("box", "image")


@dataclass
class LoadedPair:
    """Features and keypoints of one pair, on the feature grid.

    Attributes:
        features: ``(4, C, h, w)`` maps of source, target, mirrored source, mirrored target.
        transforms: source and target :class:`ResizePad`.
        sample: the annotation.
    """

    features: torch.Tensor
    transforms: tuple[ResizePad, ResizePad]
    sample: PairSample


@dataclass
class PairViews:
    """The pose-variant views of a pair, stacked (V views, N keypoints).

    Attributes:
        first, second: ``(V,)`` index into the four maps (source, target, their mirrors).
        cells0, cells1: ``(V, N, 2)`` integer cells (x, y) of the keypoints in each map.
        flow: ``(V, N, 2)`` target displacement in cells, before label noise.
        valid: ``(V, N)`` keypoints usable in each view.
        weights: ``(V,)`` view weights.
        noise_std: ``(V,)`` label-noise std in cells.
        sparse: ``(V,)`` the view's loss has the InfoNCE term.
        dense: ``(V,)`` the view's loss has the flow term.
    """

    first: torch.Tensor
    second: torch.Tensor
    cells0: torch.Tensor
    cells1: torch.Tensor
    flow: torch.Tensor
    valid: torch.Tensor
    weights: torch.Tensor
    noise_std: torch.Tensor
    sparse: torch.Tensor
    dense: torch.Tensor


def annotation_frame(points: torch.Tensor, size: tuple[int, int], frame: int) -> torch.Tensor:
    """Original pixels ``(N, 2)`` → the released code's square annotation frame (float32).

    Args:
        points: ``(N, 2)`` (x, y).
        size: ``(width, height)`` of the image.
        frame: side of the frame (840 as released).
    """
    w, h = size
    out = points.to(torch.float32) * (frame / max(w, h))
    if h < w:
        out[:, 1] += int((frame - round(frame * h / w)) / 2)
    elif w < h:
        out[:, 0] += int((frame - round(frame * w / h)) / 2)
    return out


def _mirror(frame_points: torch.Tensor, perm: torch.Tensor, frame: int) -> torch.Tensor:
    """Keypoints of the mirrored image: row ``i`` is the mirror of row ``perm[i]``."""
    out = frame_points.clone()
    out[:, 0] = frame - frame_points[:, 0]
    return out[perm]


def _full_permutation(perm: torch.Tensor) -> torch.Tensor:
    n = perm.shape[0]
    return torch.where(perm < 0, torch.arange(n), perm)


def _threshold(sample: PairSample, side: str, frame: int, cells_per_px: float,
               reference: str) -> float:
    """The label-noise threshold in cells of the ``side`` (``source``/``target``) image."""
    if reference == "image":
        return float(frame)
    size = sample.source_size if side == "source" else sample.target_size
    box = sample.source_bbox if side == "source" else sample.target_bbox
    if box is not None:
        length = float(max(box[2] - box[0], box[3] - box[1]))
    else:  # no box: the PCK reference, in that image's pixels
        length = sample.pck_reference * max(size) / max(sample.target_size)
    return length * (frame / max(size)) * cells_per_px


def pair_views(pair: LoadedPair, config: GeoAwareTrainConfig) -> PairViews:
    """The pair view plus, with ``pair_augment``, the single/double/self-flip views."""
    if config.noise_reference not in NOISE_REFERENCES:
        from semcorr.errors import InputError

        raise InputError(f"noise_reference must be one of {NOISE_REFERENCES}, got "
                         f"{config.noise_reference!r}")
    s, frame = pair.sample, config.annotation_size
    h, w = pair.features.shape[-2:]
    to_cells = torch.tensor([w / frame, h / frame], dtype=torch.float32)
    k0 = annotation_frame(s.source_points, s.source_size, frame)
    k1 = annotation_frame(s.target_points, s.target_size, frame)
    source_vis = (s.source_points >= 0).all(dim=-1)
    target_vis = s.visible.bool() if s.target_visible is None else s.target_visible.bool()
    perm = _full_permutation(s.flip_permutation.long())
    k0f, k1f = _mirror(k0, perm, frame), _mirror(k1, perm, frame)
    noise = {side: config.label_noise * _threshold(s, side, frame, w / frame,
                                                   config.noise_reference) / 2
             for side in ("source", "target")}
    rows = [(0, 1, k0, k1, s.visible.bool(), 1.0, noise["target"])]
    if config.pair_augment:
        rows += [
            (2, 1, k0f, k1, source_vis[perm] & target_vis, config.single_flip, noise["target"]),
            (2, 3, k0f, k1f, source_vis[perm] & target_vis[perm], config.double_flip,
             noise["target"]),
            (2, 0, k0f, k0, source_vis[perm] & source_vis, config.self_flip, noise["source"]),
        ]
    rows = [r for r in rows if r[5] > 0]
    scaled0 = torch.stack([r[2] for r in rows]) * to_cells  # (V, N, 2), float32 as released
    scaled1 = torch.stack([r[3] for r in rows]) * to_cells
    limit = torch.tensor([w - 1, h - 1])

    def cells(scaled: torch.Tensor) -> torch.Tensor:
        return torch.minimum(scaled.to(torch.long).clamp_min(0), limit).float()

    dense = config.dense_weight > 0  # the released DENSE_OBJ switch
    is_pair = torch.arange(len(rows)) == 0
    return PairViews(
        first=torch.tensor([r[0] for r in rows]),
        second=torch.tensor([r[1] for r in rows]),
        cells0=cells(scaled0),
        cells1=cells(scaled1),
        flow=scaled1 - scaled0,
        valid=torch.stack([r[4] for r in rows]),
        weights=torch.tensor([float(r[5]) for r in rows]),
        noise_std=torch.tensor([float(r[6]) for r in rows]),
        sparse=is_pair | (not dense),
        dense=torch.full_like(is_pair, dense),
    )


def views_loss(
    out: torch.Tensor,
    scale: torch.Tensor,
    pair: LoadedPair,
    config: GeoAwareTrainConfig,
    generator: torch.Generator | None = None,
    grid: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The weighted mean, over the pair's usable views, of each view's loss.

    Args:
        out: ``(4, D, h, w)`` head outputs of source, target and their mirrors.
        scale: InfoNCE inverse temperature.
        pair: the pair (keypoints, sizes, boxes).
        config: loss settings.
        generator: label-noise source (one ``(n, 2)`` draw per usable view, in view order).
        grid: the soft-argmax axes (:class:`~semcorr.train.losses.SoftArgmaxGrid` output);
            ``None`` = fixed cell coordinates.
    """
    device = out.device
    if grid is None:
        grid = SoftArgmaxGrid(out.shape[-1], out.shape[-2], learnable=False).to(device)()
    views = pair_views(pair, config)
    usable = views.valid.any(dim=1)
    if not usable.any():
        return out.sum() * 0
    first, second = out[views.first.to(device)], out[views.second.to(device)]
    cells0, cells1 = views.cells0.to(device), views.cells1.to(device)
    desc0 = sample_descriptors(first, cells0)
    desc1 = sample_descriptors(second, cells1)
    losses = []
    for v in range(desc0.shape[0]):  # a handful of views, not keypoints
        valid = views.valid[v]
        if not usable[v]:
            losses.append(out.sum() * 0)
            continue
        flow = views.flow[v]
        if config.label_noise > 0:
            noise = torch.randn((int(valid.sum()), 2), generator=generator, dtype=flow.dtype)
            flow = flow.clone()
            flow[valid] = flow[valid] + noise * float(views.noise_std[v])
        keep = valid.to(device)[None]
        loss = out.new_zeros(())
        if views.sparse[v]:
            loss = loss + config.sparse_weight * info_nce_loss(
                desc0[v:v + 1], desc1[v:v + 1], scale, keep)
        if views.dense[v]:
            loss = loss + config.dense_weight * flow_epe_loss(
                desc0[v:v + 1], second[v:v + 1], cells0[v:v + 1], flow[None].to(device), grid,
                keep, config.train_window, config.temperature)
        losses.append(loss)
    weights = (views.weights * usable).to(device)
    return (torch.stack(losses) * weights).sum() / weights.sum()

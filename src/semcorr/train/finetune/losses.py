"""Keypoint losses over the target grid (``ce``, ``softargmax``) and the loss of a batch of
pairs."""

from __future__ import annotations

import torch

from semcorr.conventions import check_shape
from semcorr.errors import InputError
from semcorr.features.base import Backbone, autocast
from semcorr.match.rules import masked_scores, soft_argmax2d, window_soft_argmax2d
from semcorr.match.similarity import cosine_similarity, sample_descriptors
from semcorr.train.finetune.batches import PairBatch
from semcorr.train.finetune.config import LOSSES, FinetuneConfig


def bilinear_cell_targets(target: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The distribution over grid cells whose mean is each target point.

    Args:
        target: ``(B, N, 2)`` grid coordinates (x, y), clamped into the grid.
        h, w: grid size.

    Returns:
        ``(B, N, h * w)`` bilinear weights on the (up to) four cells around each point.
    """
    check_shape(target, "B N 2", "target")
    limit = target.new_tensor([w - 1, h - 1])
    point = torch.minimum(target.clamp_min(0), limit)
    low = point.floor().clamp(max=limit - 1).clamp_min(0)
    frac = point - low  # in [0, 1]
    probs = target.new_zeros(*target.shape[:2], h * w)
    for dx in (0, 1):
        for dy in (0, 1):
            wx = frac[..., 0] if dx else 1 - frac[..., 0]
            wy = frac[..., 1] if dy else 1 - frac[..., 1]
            x = (low[..., 0] + dx).clamp(max=w - 1)
            y = (low[..., 1] + dy).clamp(max=h - 1)
            probs.scatter_add_(-1, (y * w + x).long()[..., None], (wx * wy)[..., None])
    return probs


def grid_cross_entropy(
    scores: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy between ``softmax(scores / temperature)`` and the bilinear target.

    Args:
        scores: ``(B, N, h, w)`` similarities.
        target: ``(B, N, 2)`` target grid coordinates.
        temperature: softmax temperature.
        mask: optional validity of target cells, ``(B, h, w)`` or ``(h, w)``; the target's
            weights on invalid cells are dropped and the rest renormalised.

    Returns:
        ``(B, N)`` losses (nats).
    """
    dims = check_shape(scores, "B N h w", "scores")
    logits = masked_scores(scores.float(), mask) / temperature
    log_probs = torch.log_softmax(logits.flatten(2), dim=-1)
    wanted = bilinear_cell_targets(target.float(), dims["h"], dims["w"])
    allowed = torch.isfinite(log_probs)
    wanted = wanted * allowed
    wanted = wanted / wanted.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(wanted * log_probs.masked_fill(~allowed, 0)).sum(-1)


def soft_argmax_error(
    scores: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    window: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distance in cells between the soft-argmax of the scores and the target.

    Args:
        scores: ``(B, N, h, w)``.
        target: ``(B, N, 2)`` grid coordinates.
        temperature: softmax temperature.
        window: window radius around the argmax (``None`` = the whole grid).
        mask: optional validity of target cells.

    Returns:
        ``(B, N)`` end-point errors in cells.
    """
    if window is None:
        predicted = soft_argmax2d(scores, temperature, mask)
    else:
        predicted = window_soft_argmax2d(scores, window, temperature, mask)
    return (predicted - target.to(predicted.dtype)).norm(dim=-1)


def keypoint_losses(
    scores: torch.Tensor,
    target: torch.Tensor,
    loss: str,
    temperature: float,
    window: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-keypoint loss ``(B, N)`` of the named kind (``ce`` or ``softargmax``)."""
    if loss == "ce":
        return grid_cross_entropy(scores, target, temperature, mask)
    if loss == "softargmax":
        return soft_argmax_error(scores, target, temperature, window, mask)
    raise InputError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")


def pair_losses(
    backbone: Backbone, batch: PairBatch, config: FinetuneConfig
) -> torch.Tensor:
    """Loss of each pair ``(B,)``: the mean over its valid keypoints (0 when none).

    The backbone runs under the configured autocast; similarities and losses in float32.
    """
    b = batch.source.shape[0]
    with autocast(batch.source.device, config.precision):
        features = backbone(torch.cat([batch.source, batch.target]))
    features = features.float()
    descriptors = sample_descriptors(features[:b], batch.source_cells)
    scores = cosine_similarity(descriptors, features[b:])
    grid = features.shape[-2:]
    target = batch.target_cells.clamp_min(0)
    target = torch.minimum(target, target.new_tensor([grid[1] - 1, grid[0] - 1]))
    losses = keypoint_losses(scores, target, config.loss, config.temperature, config.window,
                             batch.target_masks)
    valid = batch.valid.float()
    return (losses * valid).sum(1) / valid.sum(1).clamp_min(1)

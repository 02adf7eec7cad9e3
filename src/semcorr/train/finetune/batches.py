"""Pairs ready for the backbone (:class:`PairBatch`) and the stateless order of the pairs."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from semcorr.data.base import PairSample
from semcorr.errors import InputError
from semcorr.features.base import Backbone
from semcorr.geometry import ResizePad
from semcorr.io import load_image


@dataclass
class PairBatch:
    """Pairs ready for the backbone.

    Attributes:
        source, target: ``(B, 3, S, S)`` resized and padded images in [0, 1].
        source_cells, target_cells: ``(B, N, 2)`` keypoints on the feature grid (padded rows 0).
        valid: ``(B, N)`` keypoints visible in both images.
        target_masks: ``(B, h, w)`` target cells on image content.
    """

    source: torch.Tensor
    target: torch.Tensor
    source_cells: torch.Tensor
    target_cells: torch.Tensor
    valid: torch.Tensor
    target_masks: torch.Tensor


class _InputCache:
    """Resized inputs of recently used images (least recently used out)."""

    def __init__(self, backbone: Backbone, size: int = 16) -> None:
        self.backbone = backbone
        self.size = size
        self.items: OrderedDict[str, tuple[torch.Tensor, ResizePad]] = OrderedDict()

    def __call__(self, path: Path) -> tuple[torch.Tensor, ResizePad]:
        key = str(path)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        image = load_image(path)
        transform = self.backbone.transform_for(image.shape[-1], image.shape[-2])
        value = (transform.apply(image[None])[0], transform)
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


def make_batch(
    samples: Sequence[PairSample],
    inputs: Callable[[Path], tuple[torch.Tensor, ResizePad]],
    device: torch.device,
) -> PairBatch:
    """Stack pairs into a :class:`PairBatch` (keypoints padded to the largest count).

    Args:
        samples: the pairs.
        inputs: ``path -> (image (3, S, S), ResizePad)``.
        device: where the tensors go.
    """
    sources, targets, src_cells, tgt_cells, masks = [], [], [], [], []
    for sample in samples:
        src, src_t = inputs(sample.source_path)
        tgt, tgt_t = inputs(sample.target_path)
        rows = sample.visible.nonzero().flatten()
        sources.append(src)
        targets.append(tgt)
        src_cells.append(src_t.to_grid(sample.source_points[rows].float()))
        tgt_cells.append(tgt_t.to_grid(sample.target_points[rows].float()))
        masks.append(tgt_t.valid_cells())
    n = max([1] + [c.shape[0] for c in src_cells])
    valid = torch.zeros(len(samples), n, dtype=torch.bool)
    for i, cells in enumerate(src_cells):
        valid[i, : cells.shape[0]] = True

    def pad(cells: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([F.pad(c, (0, 0, 0, n - c.shape[0])) for c in cells])

    return PairBatch(
        torch.stack(sources).to(device), torch.stack(targets).to(device),
        pad(src_cells).to(device), pad(tgt_cells).to(device), valid.to(device),
        torch.stack(masks).to(device),
    )


@functools.lru_cache(maxsize=4)
def _epoch_order(num_pairs: int, seed: int, epoch: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(seed + epoch)
    return tuple(torch.randperm(num_pairs, generator=generator).tolist())


def batch_indices(step: int, batch_size: int, num_pairs: int, seed: int) -> list[int]:
    """The pairs of step ``step``: consecutive slices of per-epoch permutations.

    A function of its arguments only (no state), so resuming and multi-process runs see the
    same pairs as an uninterrupted single process.
    """
    if num_pairs < 1:
        raise InputError("the training set has no pairs")
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, num_pairs)
        out.append(_epoch_order(num_pairs, seed, epoch)[offset])
    return out

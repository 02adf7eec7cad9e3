"""Training pairs for SD4Match: synthetic warps (:class:`SyntheticPairs`) and annotated
benchmark pairs prepared as the official code prepares them (:class:`AnnotatedPairs`).

The official training (``train_simple_prompt.py``, ``train_cpm.py``) reads a benchmark's
training pairs and, per image:

* stretches it to ``size x size`` (``Resize((768, 768))`` on the PIL image: bilinear, aspect
  ratio ignored, 8-bit result);
* moves each keypoint to ``(x * size / w, y * size / h)`` (no half-pixel offset) and clamps
  it into ``[1e-4, size - 1 - 1e-4]``;
* for a PF-PASCAL training row with ``flip = 1``, mirrors both images after the resize and
  their keypoints to ``size - x``; the CPM's DINOv2 input is the mirrored original;
* keeps only the keypoints annotated in both images.

The loss then reads a keypoint ``p`` of the stretched frame at grid coordinate
``p * (n - 1) / (size - 1)`` of an ``n``-cell map (``align_corners=True`` sampling):
:func:`stretched_to_cells`. After each epoch the official training measures
nearest-neighbour PCK@0.1 on the validation split in the stretched frame and keeps the best
prompt: :func:`nearest_neighbour_pck`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from semcorr.data.base import PairDataset, PairSample
from semcorr.errors import InputError

__all__ = ["AnnotatedPairs", "KEYPOINT_EPS", "SyntheticPairs", "epoch_indices", "list_images",
           "nearest_neighbour_pck", "steps_per_epoch", "stretched_to_cells"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp")
#: Margin that keeps stretched keypoints strictly inside the image (the official ``eps``).
KEYPOINT_EPS = 1e-4


def stretched_to_cells(points: torch.Tensor, size: int, cells: int) -> torch.Tensor:
    """Pixel coordinates of a ``size x size`` image → grid coordinates of a ``cells x cells``
    map, corners aligned (the official code's convention).

    Args:
        points: ``(..., 2)`` (x, y) in ``[0, size - 1]``.
        size: image side.
        cells: map side.

    Returns:
        ``(..., 2)`` grid coordinates in ``[0, cells - 1]``.
    """
    return points * ((cells - 1) / (size - 1))


class AnnotatedPairs:
    """A benchmark's training pairs as SD4Match's official training sees them.

    Args:
        dataset: the pairs (:func:`semcorr.data.create_dataset`).
        size: side of the stretched square (768).
        dino_side: side of the CPM's DINOv2 input (``None``: no DINOv2 input).
        threshold: the PCK reference of a pair: ``bbox`` (the larger side of the stretched
            target box; the image side when there is none) or ``image`` (the image side, the
            official rule for PF-PASCAL).
    """

    def __init__(self, dataset: PairDataset, size: int, dino_side: int | None = None,
                 threshold: str = "bbox") -> None:
        if len(dataset) == 0:
            raise InputError(f"{dataset!r}: no training pairs")
        if threshold not in ("bbox", "image"):
            raise InputError(f"threshold must be 'bbox' or 'image', got {threshold!r}")
        self.dataset, self.size, self.dino_side = dataset, size, dino_side
        self.threshold = threshold
        self._categories: list[str] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def categories(self) -> list[str]:
        """The category of every pair (a class prompt gets one row per distinct name)."""
        if self._categories is None:
            self._categories = [s.category for s in self.dataset]
        return self._categories

    def _image(self, path: Any, flip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        from PIL import Image

        from semcorr.features.sd4match_official import cpm_dino_input
        from semcorr.io import load_pil, pil_to_tensor

        original = load_pil(path)
        stretched = pil_to_tensor(original.resize((self.size, self.size), Image.BILINEAR))
        if flip:
            stretched = stretched.flip(-1)
        dino = None
        if self.dino_side is not None:
            raw = pil_to_tensor(original)
            dino = cpm_dino_input(raw.flip(-1) if flip else raw, self.dino_side)
        return stretched, dino

    def _points(self, points: torch.Tensor, image_size: tuple[int, int], flip: bool
                ) -> torch.Tensor:
        scale = points.new_tensor([self.size / image_size[0], self.size / image_size[1]])
        moved = points * scale
        if flip:
            moved[:, 0] = self.size - moved[:, 0]
        return moved.clamp(KEYPOINT_EPS, self.size - 1 - KEYPOINT_EPS)

    def sample(self, index: int) -> dict[str, Any]:
        """Pair ``index`` prepared for training.

        Returns:
            ``image0``, ``image1``: ``(3, S, S)`` in [0, 1]; ``points0``, ``points1``:
            ``(N, 2)`` stretched pixels of the keypoints annotated in both; ``valid``:
            ``(N,)`` all True; ``category``; ``dino0``, ``dino1``: ``(3, c, c)`` DINOv2 inputs
            (when ``dino_side`` is set); ``threshold``: the PCK reference in stretched pixels.
        """
        pair: PairSample = self.dataset[index]
        flip = bool(pair.extra.get("flip", 0))
        image0, dino0 = self._image(pair.source_path, flip)
        image1, dino1 = self._image(pair.target_path, flip)
        keep = pair.visible
        out: dict[str, Any] = {
            "image0": image0, "image1": image1,
            "points0": self._points(pair.source_points[keep], pair.source_size, flip),
            "points1": self._points(pair.target_points[keep], pair.target_size, flip),
            "valid": torch.ones(int(keep.sum()), dtype=torch.bool),
            "category": pair.category,
            "threshold": self._reference(pair),
        }
        if dino0 is not None:
            out["dino0"], out["dino1"] = dino0, dino1
        return out

    def _reference(self, pair: PairSample) -> float:
        box = pair.target_bbox
        if self.threshold == "image" or box is None:
            return float(self.size)
        width, height = pair.target_size
        return float(max((box[2] - box[0]) * self.size / width,
                         (box[3] - box[1]) * self.size / height))

    @staticmethod
    def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Stack samples; keypoints are padded to the batch's largest count (``valid`` False).

        Returns:
            ``image0``, ``image1``: ``(B, 3, S, S)``; ``points0``, ``points1``: ``(B, N, 2)``;
            ``valid``: ``(B, N)``; ``category``: B names; ``threshold``: ``(B,)``; ``dino0``,
            ``dino1``: ``(B, 3, c, c)`` when present.
        """
        n = max(int(s["valid"].shape[0]) for s in samples)
        b = len(samples)
        points = {k: torch.zeros(b, n, 2) for k in ("points0", "points1")}
        valid = torch.zeros(b, n, dtype=torch.bool)
        for i, s in enumerate(samples):
            count = int(s["valid"].shape[0])
            points["points0"][i, :count] = s["points0"]
            points["points1"][i, :count] = s["points1"]
            valid[i, :count] = True
        out: dict[str, Any] = {k: torch.stack([s[k] for s in samples])
                               for k in ("image0", "image1")}
        out.update(points, valid=valid, category=[s["category"] for s in samples],
                   threshold=torch.tensor([s["threshold"] for s in samples]))
        if "dino0" in samples[0]:
            out["dino0"] = torch.stack([s["dino0"] for s in samples])
            out["dino1"] = torch.stack([s["dino1"] for s in samples])
        return out


def epoch_indices(count: int, batch_size: int, world_size: int, rank: int, step: int,
                  seed: int) -> list[int]:
    """The pairs of global ``step`` on ``rank``: every epoch is a seeded permutation of the
    ``count`` pairs split into ``world_size * batch_size`` chunks (the last one wraps around,
    as a distributed sampler pads), so a resumed run draws the same pairs.

    Returns:
        ``batch_size`` pair indices.
    """
    per_epoch = steps_per_epoch(count, batch_size, world_size)
    epoch, within = divmod(step, per_epoch)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(
        seed * 1_000_003 + epoch))
    start = (within * world_size + rank) * batch_size
    return order[(start + torch.arange(batch_size)) % count].tolist()


def steps_per_epoch(count: int, batch_size: int, world_size: int = 1) -> int:
    """Optimisation steps of one pass over ``count`` pairs."""
    return -(-count // (batch_size * world_size))


def nearest_neighbour_pck(features0: torch.Tensor, features1: torch.Tensor,
                          points0: torch.Tensor, points1: torch.Tensor, valid: torch.Tensor,
                          thresholds: torch.Tensor, size: int, alpha: float = 0.1
                          ) -> torch.Tensor:
    """Per-pair PCK of nearest-neighbour matches in the stretched frame (the official
    validation's ``nn_pck0.1``): each source keypoint's descriptor (read corner-aligned) is
    matched to the most similar target cell, whose position goes back to pixels by
    ``cell * (size - 1) / (n - 1)``; a match is correct when within ``alpha * threshold``
    (``<=``).

    Args:
        features0, features1: ``(B, C, h0, w0)``, ``(B, C, h1, w1)`` of ``size x size`` images.
        points0, points1: ``(B, N, 2)`` keypoints in stretched pixels.
        valid: ``(B, N)`` keypoints that count.
        thresholds: ``(B,)`` PCK references in stretched pixels.
        size: the stretched image side.
        alpha: PCK threshold.

    Returns:
        ``(B,)`` fraction of correct keypoints per pair.
    """
    from semcorr.match.similarity import cosine_similarity, sample_descriptors

    h0, w0 = features0.shape[-2:]
    h1, w1 = features1.shape[-2:]
    scale0 = points0.new_tensor([(w0 - 1) / (size - 1), (h0 - 1) / (size - 1)])
    scores = cosine_similarity(sample_descriptors(features0, points0 * scale0), features1)
    best = scores.flatten(2).argmax(dim=-1)  # (B, N)
    cells = torch.stack([best % w1, torch.div(best, w1, rounding_mode="floor")], -1)
    predicted = cells.to(points1.dtype) * points1.new_tensor(
        [(size - 1) / (w1 - 1), (size - 1) / (h1 - 1)])
    correct = (predicted - points1).norm(dim=-1) <= alpha * thresholds.to(points1.dtype)[:, None]
    return (correct & valid).sum(1) / valid.sum(1).clamp_min(1)


class SyntheticPairs:
    """Pairs made by warping images with random similarity transforms (known ground truth).

    Args:
        images: image files.
        size: side of the square input (images are resized to ``size x size``).
        num_points: keypoints per pair.
        max_angle: rotations are uniform in ``[-max_angle, max_angle]`` degrees.
        scale_range: zooms are uniform in this range.
        max_shift: shifts are uniform in ``[-max_shift, max_shift] * size`` pixels.
    """

    def __init__(self, images: Sequence[str | Path], size: int, num_points: int = 32,
                 max_angle: float = 15.0, scale_range: tuple[float, float] = (0.85, 1.15),
                 max_shift: float = 0.1) -> None:
        if not images:
            raise InputError("synthetic pairs: no training images")
        self.paths = [Path(p) for p in images]
        self.size, self.num_points = size, num_points
        self.max_angle, self.scale_range, self.max_shift = max_angle, scale_range, max_shift
        self._cache: dict[int, torch.Tensor] = {}

    @property
    def categories(self) -> list[str]:
        """One category per image: its file stem."""
        return [p.stem for p in self.paths]

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` resized to ``(3, size, size)`` in [0, 1] (cached)."""
        if index not in self._cache:
            from semcorr.io import load_image

            img = load_image(self.paths[index])[None]
            self._cache[index] = F.interpolate(img, size=(self.size, self.size),
                                               mode="bilinear", antialias=True,
                                               align_corners=False)[0].clamp(0, 1)
        return self._cache[index]

    def _uniform(self, low: float, high: float, g: torch.Generator) -> float:
        return low + (high - low) * float(torch.rand((), generator=g))

    def sample(self, index: int, generator: torch.Generator) -> dict[str, Any]:
        """A random pair from image ``index``.

        Returns:
            ``image0``, ``image1``: ``(3, S, S)``; ``points0``, ``points1``: ``(N, 2)`` input
            pixels; ``valid``: ``(N,)`` (the point lands inside the target); ``category``.
        """
        from semcorr.geometry.warp import similarity_matrix, warp_image, warp_points

        s = self.size
        angle = self._uniform(-self.max_angle, self.max_angle, generator)
        scale = self._uniform(*self.scale_range, generator)
        shift = (self._uniform(-self.max_shift, self.max_shift, generator) * s,
                 self._uniform(-self.max_shift, self.max_shift, generator) * s)
        matrix = similarity_matrix(s, s, angle, scale, shift)
        image0 = self.image(index)
        points0 = torch.rand(self.num_points, 2, generator=generator) * (s - 1)
        points1 = warp_points(points0, matrix)
        valid = ((points1 >= 0) & (points1 <= s - 1)).all(dim=-1)
        return {"image0": image0, "image1": warp_image(image0, matrix, (s, s)),
                "points0": points0, "points1": points1, "valid": valid,
                "category": self.paths[index].stem}

    @staticmethod
    def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Stacked samples: tensors gain a leading ``B``; ``category`` becomes a list."""
        out: dict[str, Any] = {k: torch.stack([s[k] for s in samples])
                               for k in ("image0", "image1", "points0", "points1", "valid")}
        out["category"] = [s["category"] for s in samples]
        return out


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: no such image folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{root}: no images ({', '.join(_IMAGE_SUFFIXES)})")
    return files

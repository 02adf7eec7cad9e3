"""Benchmark datasets: the :class:`PairSample` every loader yields and the dataset registry.

A dataset is a sequence of annotated image pairs read from the official on-disk layout. Points
follow :mod:`semcorr.conventions`: ``(x, y)`` in original pixels, ``(0, 0)`` the centre of the
top-left pixel. Keypoints that are not annotated in an image are stored as ``(-1, -1)``; the
``visible`` mask (annotated in *both* images) is what counts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from semcorr.errors import InputError
from semcorr.registry import Registry

__all__ = [
    "ALTERNATIVES_KEY",
    "GROUPS_KEY",
    "HEADLINE_KEY",
    "DATASETS",
    "OUTSIDE_TOLERANCE",
    "BadPair",
    "alternatives_problem",
    "PairDataset",
    "PairSample",
    "annotation_problem",
    "create_dataset",
    "flip_permutation_from_pairs",
    "group_ids_from_groups",
    "image_size",
    "list_datasets",
    "read_json",
    "register_dataset",
    "require_dir",
    "require_file",
    "sample_problem",
]


@dataclass(frozen=True)
class PairSample:
    """One annotated source → target pair.

    Attributes:
        source_path, target_path: the image files.
        source_points, target_points: ``(N, 2)`` float (x, y) in original pixels; ``(-1, -1)``
            where a keypoint is not annotated in that image.
        visible: ``(N,)`` bool, annotated in both images (the points PCK is computed on).
        category: class name (the unit of per-category results).
        source_bbox, target_bbox: ``(4,)`` float ``x1, y1, x2, y2`` or ``None``.
        source_size, target_size: ``(width, height)`` in pixels.
        pck_reference: the length in pixels that a PCK threshold α multiplies.
        keypoint_ids: ``(N,)`` long, the dataset's keypoint index of each row.
        flip_permutation: ``(N,)`` long, row of the left/right partner (``-1`` = no partner
            among the N rows).
        pair_id: unique, stable name of the pair within its dataset and split.
        extra: dataset-specific fields (difficulty flags, ...), JSON-serialisable.
        target_visible: ``(N,)`` bool, annotated in the target (``visible`` when ``None``).
        symmetry_groups: ``(N,)`` long, id of the keypoint's symmetry group as defined by
            GeoAware-SC (``-1`` = none); used for the geometry-aware subset.
        source_mask_path, target_mask_path: instance masks of the objects (any non-zero pixel
            is on the object), when the dataset has them; used by pose alignment.
    """

    source_path: Path
    target_path: Path
    source_points: torch.Tensor
    target_points: torch.Tensor
    visible: torch.Tensor
    category: str
    source_bbox: torch.Tensor | None
    target_bbox: torch.Tensor | None
    source_size: tuple[int, int]
    target_size: tuple[int, int]
    pck_reference: float
    keypoint_ids: torch.Tensor
    flip_permutation: torch.Tensor
    pair_id: str
    extra: dict[str, Any] = field(default_factory=dict)
    target_visible: torch.Tensor | None = None
    symmetry_groups: torch.Tensor | None = None
    source_mask_path: Path | None = None
    target_mask_path: Path | None = None

    @property
    def num_keypoints(self) -> int:
        return int(self.source_points.shape[0])

    def geometry_aware(self) -> torch.Tensor:
        """``(N,)`` bool: the GeoAware-SC geometry-aware keypoints of this pair.

        A keypoint is geometry-aware when it is visible in both images and its symmetry group
        has at least two members annotated in the target.
        """
        n = self.num_keypoints
        if self.symmetry_groups is None or n == 0:
            return torch.zeros(n, dtype=torch.bool)
        groups = self.symmetry_groups
        in_target = self.visible if self.target_visible is None else self.target_visible
        has_group = groups >= 0
        safe = groups.clamp_min(0)
        counts = torch.zeros(int(safe.max()) + 1, dtype=torch.long)
        counts.index_add_(
            0, safe[has_group & in_target], torch.ones_like(safe[has_group & in_target])
        )
        return self.visible & has_group & (counts[safe] >= 2)


#: ``PairSample.extra`` key of the per-row keypoint group labels (:mod:`semcorr.eval.groups`).
GROUPS_KEY = "keypoint_groups"
#: ``PairSample.extra`` key of the headline group ``(breakdown, label)``.
HEADLINE_KEY = "headline_group"
#: ``PairSample.extra`` key of every correct target of each row: ``[[[x, y], ...], ...]``, one
#: non-empty list per keypoint row (original target pixels; SOCO's concept matches). A row is
#: then correct when it is within reach of any of them.
ALTERNATIVES_KEY = "target_alternatives"


def alternatives_problem(value: Any, rows: int) -> str | None:
    """Why ``value`` is not one non-empty list of ``[x, y]`` per row (``None`` when it is)."""
    if not isinstance(value, (list, tuple)) or len(value) != rows:
        return f"{ALTERNATIVES_KEY!r} must hold one list of targets per keypoint ({rows})"
    if not all(isinstance(row, (list, tuple)) and row and all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in row) for row in value):
        return f"{ALTERNATIVES_KEY!r}: every keypoint needs a non-empty list of [x, y] targets"
    return None


#: How far (pixels) a visible source keypoint may lie outside its image and still be used (it is
#: then pulled onto the border): annotation tools round to the pixel grid.
OUTSIDE_TOLERANCE = 1.0


class BadPair(InputError):
    """A pair whose annotation cannot be used; ``pair_id`` names it (``#<index>`` when the
    annotation is too malformed to give its name)."""

    def __init__(self, pair_id: str, reason: str) -> None:
        super().__init__(f"{pair_id}: {reason}")
        self.pair_id = pair_id
        self.reason = reason


def _shape_problem(sample: PairSample) -> str | None:
    """Why the fields of ``sample`` do not fit together (``None`` when they do)."""
    n = sample.source_points.shape[0] if sample.source_points.dim() == 2 else -1
    if sample.source_points.shape != (n, 2) or sample.target_points.shape != (n, 2):
        return (f"keypoints must be (N, 2) in both images, got {tuple(sample.source_points.shape)}"
                f" and {tuple(sample.target_points.shape)}")
    per_keypoint = {"visible": sample.visible, "keypoint_ids": sample.keypoint_ids,
                    "flip_permutation": sample.flip_permutation,
                    "target_visible": sample.target_visible,
                    "symmetry_groups": sample.symmetry_groups}
    for name, value in per_keypoint.items():
        if value is not None and value.shape != (n,):
            return f"{name} must have one entry per keypoint ({n}), got {tuple(value.shape)}"
    for name, box in (("source", sample.source_bbox), ("target", sample.target_bbox)):
        if box is not None and (box.shape != (4,) or not torch.isfinite(box).all()):
            return f"{name} bounding box must be 4 finite numbers x1, y1, x2, y2"
    for name, size in (("source", sample.source_size), ("target", sample.target_size)):
        if len(size) != 2 or min(size) < 1:
            return f"{name} image size must be a positive (width, height), got {size}"
    return None


def annotation_problem(sample: PairSample) -> str | None:
    """Why the annotation of a pair cannot be used (``None`` when it is sound): fields whose
    shapes do not fit, a visible keypoint that is not a finite number, or a visible source
    keypoint outside its image (beyond :data:`OUTSIDE_TOLERANCE`; a source point is never
    clamped silently)."""
    shape = _shape_problem(sample)
    if shape is not None:
        return shape
    rows = sample.visible.nonzero().flatten()
    for name, points in (("source", sample.source_points), ("target", sample.target_points)):
        bad = (~torch.isfinite(points[rows]).all(dim=1)).nonzero().flatten()
        if bad.numel():
            k = int(sample.keypoint_ids[rows[bad[0]]])
            return f"{name} keypoint {k} is not a finite number"
    width, height = sample.source_size
    points = sample.source_points[rows]
    outside = ((points[:, 0] < -OUTSIDE_TOLERANCE) | (points[:, 1] < -OUTSIDE_TOLERANCE)
               | (points[:, 0] > width - 1 + OUTSIDE_TOLERANCE)
               | (points[:, 1] > height - 1 + OUTSIDE_TOLERANCE)).nonzero().flatten()
    if outside.numel():
        k = int(outside[0])
        x, y = points[k].tolist()
        return (f"source keypoint {int(sample.keypoint_ids[rows[k]])} ({x:g}, {y:g}) lies "
                f"outside the {width}x{height} source image")
    return None


def sample_problem(sample: PairSample) -> str | None:
    """Why a pair must not be scored (``None`` when it is sound): an
    :func:`annotation_problem`, or a PCK reference length that is not a positive number (a box
    of size 0, a single keypoint)."""
    problem = annotation_problem(sample)
    if problem is not None:
        return problem
    reference = float(sample.pck_reference)
    if not (reference > 0 and reference < float("inf")):
        return (f"PCK reference length is {reference:g} (a box of size 0 or a single keypoint): "
                "no threshold to measure against")
    return None


class PairDataset(Sequence[PairSample]):
    """Base class of the benchmark datasets: a sequence of :class:`PairSample`.

    Subclasses fill ``self.name``, ``self.split``, ``self.root`` and implement ``__len__``,
    :meth:`sample` and :meth:`image_paths`. ``protocol`` describes how PCK is computed.
    """

    name: str = ""
    split: str = "test"
    root: Path
    #: ``normalisation``: ``bbox`` | ``image`` | ``keypoints``; ``average``: ``pairs`` (overall
    #: per-image PCK = mean over all pairs) or ``categories`` (mean over categories of the
    #: per-category mean over pairs).
    protocol: dict[str, str] = {"normalisation": "bbox", "average": "pairs"}

    def __len__(self) -> int:
        raise NotImplementedError

    def sample(self, index: int) -> PairSample:
        """The ``index``-th pair (``0 <= index < len(self)``)."""
        raise NotImplementedError

    def image_paths(self) -> list[Path]:
        """The unique image files the pairs use, sorted."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> PairSample:  # type: ignore[override]
        if not isinstance(index, int):
            raise TypeError("datasets are indexed by int")
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.checked_sample(index)

    def __iter__(self) -> Iterator[PairSample]:
        for index in range(len(self)):
            yield self.checked_sample(index)

    def checked_sample(self, index: int) -> PairSample:
        """:meth:`sample`, validated on read (see :func:`annotation_problem`).

        Raises:
            BadPair: naming the pair and the problem (malformed fields of an annotation file
                included); callers skip, count and list such a pair.
            InputError: for a missing or unreadable annotation file.
            ImageError: for an image that cannot be read.
        """
        from semcorr.errors import SemcorrError

        try:
            sample = self.sample(index)
        except SemcorrError:
            raise
        except (TypeError, ValueError, IndexError, KeyError) as exc:  # a field of the wrong kind
            raise BadPair(f"#{index}", f"malformed annotation ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())})") from None
        problem = annotation_problem(sample)
        if problem is not None:
            raise BadPair(sample.pair_id, problem)
        return sample

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(root={str(self.root)!r}, split={self.split!r}, pairs={len(self)})"


DATASETS: Registry[PairDataset] = Registry("dataset")
register_dataset = DATASETS.register


def create_dataset(
    name: str, root: str | os.PathLike[str], split: str = "test", **options: Any
) -> PairDataset:
    """Open the dataset registered as ``name`` from its official layout under ``root``.

    Raises:
        UnknownNameError: for an unknown name.
        InputError: naming the missing or malformed file when the folder is incomplete.
    """
    constructor = DATASETS.get(name)
    try:
        return constructor(root=Path(root), split=split, **options)
    except TypeError as exc:
        raise InputError(f"dataset {name}: {exc}") from None


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return DATASETS.names()


# --- helpers shared by the loaders -------------------------------------------------------------


def require_dir(path: Path, what: str = "folder") -> Path:
    """``path`` if it is a folder, else an :class:`InputError` naming it."""
    if not path.is_dir():
        raise InputError(f"{path}: missing {what}")
    return path


def require_file(path: Path, what: str = "file") -> Path:
    """``path`` if it is a file, else an :class:`InputError` naming it."""
    if not path.is_file():
        raise InputError(f"{path}: missing {what}")
    return path


def read_json(path: Path) -> Any:
    """Parse a JSON annotation file, with an :class:`InputError` naming it when bad."""
    require_file(path, "annotation file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header.

    Raises:
        ImageError: naming the file when it is missing or unreadable.
    """
    from semcorr.io import open_image

    with open_image(path) as img:  # header only; refuses a decompression bomb
        return int(img.size[0]), int(img.size[1])


def flip_permutation_from_pairs(num_keypoints: int, pairs: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(K,)`` long left/right partner of each keypoint id (``-1`` = none).

    Args:
        num_keypoints: K, the number of keypoint ids of the category.
        pairs: ``(left, right)`` id pairs; ids ``>= K`` are ignored.
    """
    perm = torch.full((num_keypoints,), -1, dtype=torch.long)
    if pairs:
        idx = torch.tensor([list(p) for p in pairs], dtype=torch.long)
        idx = idx[(idx < num_keypoints).all(dim=1)]
        perm[idx[:, 0]] = idx[:, 1]
        perm[idx[:, 1]] = idx[:, 0]
    return perm


def group_ids_from_groups(num_keypoints: int, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(K,)`` long symmetry-group id of each keypoint id (``-1`` = in no group).

    Args:
        num_keypoints: K.
        groups: lists of keypoint ids that are symmetric to each other; ids ``>= K`` ignored.
    """
    out = torch.full((num_keypoints,), -1, dtype=torch.long)
    for gid, members in enumerate(groups):
        idx = torch.tensor([m for m in members if m < num_keypoints], dtype=torch.long)
        out[idx] = gid
    return out

"""Percentage of Correct Keypoints (PCK), as pure torch functions plus a streaming accumulator.

A predicted point is correct at threshold α when its Euclidean distance to the ground truth is
**strictly less** than ``α * reference`` (``<``: GeoAware-SC and the PF benchmarks as semcorr has
always measured them; an error exactly at the threshold counts as wrong) or, with
``inclusive=True``, at most ``α * reference`` (``<=``: SD4Match's ``utils/evaluator.py`` and the
foundation fine-tuning study). The named protocols of :mod:`semcorr.eval.protocols` say which
rule each published number uses. ``reference`` is, by protocol:

* ``bbox``: the larger side of the target's bounding box (SPair-71k, AP-10k, CUB);
* ``image``: the larger side of the target image (PF-Pascal);
* ``keypoints``: the larger side of the bounding box of the target's keypoints (PF-WILLOW).

Two aggregations:

* **per image**: the PCK of each pair (mean over its visible keypoints), then the mean over
  pairs (pairs without visible keypoints are left out);
* **per keypoint**: all visible keypoints pooled.

Distances and thresholds are computed in float64 by default so that "exactly at the threshold"
is exact; ``dtype=torch.float32`` repeats a float32 evaluation (SD4Match's) bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PCKAccumulator",
    "PCKStatistics",
    "bbox_reference",
    "format_threshold",
    "image_reference",
    "keypoint_reference",
    "pck_correct",
    "per_image_pck",
    "per_keypoint_pck",
]

#: The thresholds α reported by default.
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.15)


def format_threshold(alpha: float) -> str:
    """The key of a threshold in results: two decimals (``0.1`` → ``"0.10"``)."""
    return f"{alpha:.2f}"


def pck_correct(
    pred: torch.Tensor,
    gt: torch.Tensor,
    reference: float | torch.Tensor,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    inclusive: bool = False,
    dtype: torch.dtype = torch.float64,
    limit_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Whether each prediction is within ``α * reference`` of its ground truth.

    Args:
        pred: ``(..., N, 2)`` predicted (x, y).
        gt: ``(..., N, 2)`` ground-truth (x, y).
        reference: scalar, or a tensor broadcastable to ``(..., N)`` (e.g. ``(N,)`` or
            ``(B, 1)``): the length α multiplies, in pixels.
        thresholds: T values of α.
        inclusive: ``distance <= α * reference`` instead of the strict ``<``.
        dtype: precision of the distance, the reference and their comparison.
        limit_dtype: precision of the product ``α * reference`` before it is rounded to
            ``dtype`` (default ``dtype``; float64 for a script that multiplies Python floats and
            compares with a float32 tensor).

    Returns:
        ``(..., N, T)`` bool.
    """
    if pred.shape != gt.shape or pred.shape[-1:] != (2,):
        raise ValueError(
            f"pred and gt must both be (..., N, 2), got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    distance = torch.linalg.vector_norm(pred.to(dtype) - gt.to(dtype), dim=-1)  # (..., N)
    product = limit_dtype or dtype
    ref = (reference.to(device=pred.device, dtype=product) if isinstance(reference, torch.Tensor)
           else torch.tensor(float(reference), dtype=product, device=pred.device))
    alphas = torch.as_tensor(list(thresholds), dtype=product, device=pred.device)
    limit = (ref[..., None] * alphas).to(dtype)
    return distance[..., None] <= limit if inclusive else distance[..., None] < limit


def per_image_pck(correct: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """PCK of each pair: mean over its visible keypoints.

    Args:
        correct: ``(B, N, T)`` or ``(N, T)`` bool from :func:`pck_correct`.
        visible: ``(B, N)`` or ``(N,)`` bool (all visible when ``None``).

    Returns:
        ``(B, T)`` or ``(T,)`` float64; NaN for a pair without visible keypoints.
    """
    if visible is None:
        visible = torch.ones(correct.shape[:-1], dtype=torch.bool, device=correct.device)
    hits = (correct & visible[..., None]).sum(dim=-2).double()
    count = visible.sum(dim=-1, keepdim=True).double()
    return hits / count


def per_keypoint_pck(correct: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """PCK over all visible keypoints pooled (all leading dimensions flattened).

    Args:
        correct: ``(..., N, T)`` bool.
        visible: ``(..., N)`` bool (all visible when ``None``).

    Returns:
        ``(T,)`` float64; NaN when nothing is visible.
    """
    flat = correct.reshape(-1, correct.shape[-1])
    mask = (
        torch.ones(flat.shape[0], dtype=torch.bool, device=correct.device)
        if visible is None
        else visible.reshape(-1)
    )
    return flat[mask].double().sum(dim=0) / mask.sum().double()


def bbox_reference(bbox: torch.Tensor) -> torch.Tensor:
    """Larger side of ``x1, y1, x2, y2`` boxes ``(..., 4)`` → ``(...)``."""
    return torch.maximum(bbox[..., 2] - bbox[..., 0], bbox[..., 3] - bbox[..., 1])


def image_reference(width: int, height: int) -> float:
    """Larger side of an image."""
    return float(max(width, height))


def keypoint_reference(points: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Larger side of the bounding box of the (visible) points ``(N, 2)`` → scalar tensor."""
    if visible is not None:
        points = points[visible]
    if points.shape[0] == 0:
        return points.new_tensor(float("nan"))
    extent = points.amax(dim=0) - points.amin(dim=0)
    return extent.max()


@dataclass
class _Sums:
    """Running sums for one group of pairs (memory independent of the number of pairs)."""

    size: int
    pairs: int = 0
    image_sum: torch.Tensor = field(init=False)
    keypoints: int = 0
    keypoint_hits: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.image_sum = torch.zeros(self.size, dtype=torch.float64)
        self.keypoint_hits = torch.zeros(self.size, dtype=torch.float64)

    def add(self, correct: torch.Tensor) -> None:
        """Add one pair's ``(n, T)`` correctness of its counted keypoints (n may be 0)."""
        if correct.shape[0] == 0:
            return
        hits = correct.double().sum(dim=0).cpu()
        self.pairs += 1
        self.image_sum += hits / correct.shape[0]
        self.keypoints += correct.shape[0]
        self.keypoint_hits += hits

    def per_image(self) -> torch.Tensor:
        return (
            self.image_sum / self.pairs if self.pairs else torch.full_like(self.image_sum, math.nan)
        )

    def per_keypoint(self) -> torch.Tensor:
        if not self.keypoints:
            return torch.full_like(self.keypoint_hits, math.nan)
        return self.keypoint_hits / self.keypoints


def _table(
    thresholds: Sequence[float], per_image: torch.Tensor, per_keypoint: torch.Tensor
) -> dict:
    def value(x: torch.Tensor) -> float | None:
        v = float(x)
        return None if math.isnan(v) else v

    return {
        format_threshold(a): {
            "per_image": value(per_image[i]),
            "per_keypoint": value(per_keypoint[i]),
        }
        for i, a in enumerate(thresholds)
    }


class PCKAccumulator:
    """Streams pairs in and summarises PCK per category, overall and on the geometry-aware subset.

    Memory holds a few running sums per category, whatever the number of pairs.

    Args:
        thresholds: the α values.
        average: how the overall per-image PCK is formed: ``pairs`` (mean over all pairs) or
            ``categories`` (mean over categories of their per-image PCK). The overall
            per-keypoint PCK is always pooled over all keypoints.

    Example:
        >>> acc = PCKAccumulator([0.1])
        >>> acc.add("cat", pck_correct(pred, gt, 50.0, [0.1]))
        >>> acc.summary()["pck"]["0.10"]["per_image"]
    """

    def __init__(
        self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, average: str = "pairs"
    ) -> None:
        if average not in ("pairs", "categories"):
            raise ValueError(f"average must be 'pairs' or 'categories', not {average!r}")
        if not thresholds:
            raise ValueError("at least one threshold is needed")
        self.thresholds = tuple(float(a) for a in thresholds)
        self.average = average
        self._all = _Sums(len(self.thresholds))
        self._geo = _Sums(len(self.thresholds))
        self._categories: dict[str, _Sums] = {}
        self._geo_categories: dict[str, _Sums] = {}

    def add(
        self, category: str, correct: torch.Tensor, geo_aware: torch.Tensor | None = None
    ) -> None:
        """Add one pair.

        Args:
            category: the pair's category.
            correct: ``(n, T)`` bool for the pair's visible keypoints only.
            geo_aware: ``(n,)`` bool, which of them are geometry-aware.
        """
        if correct.dim() != 2 or correct.shape[1] != len(self.thresholds):
            raise ValueError(
                f"correct must be (n, {len(self.thresholds)}), got {tuple(correct.shape)}"
            )
        size = len(self.thresholds)
        self._all.add(correct)
        self._categories.setdefault(category, _Sums(size)).add(correct)
        if geo_aware is not None:
            geo = correct[geo_aware.to(correct.device)]
            self._geo.add(geo)
            self._geo_categories.setdefault(category, _Sums(size)).add(geo)

    def _overall_per_image(self) -> torch.Tensor:
        if self.average == "pairs" or not self._categories:
            return self._all.per_image()
        means = torch.stack([s.per_image() for s in self._categories.values() if s.pairs])
        return means.mean(dim=0)

    def summary(self) -> dict:
        """Results as plain Python (thresholds keyed with two decimals, PCK in [0, 1]).

        Returns:
            ``pck``: ``{"0.10": {"per_image": float, "per_keypoint": float}, ...}``;
            ``per_category``: ``{name: {"0.10": {...}, ...}}``;
            ``counts``: ``{name: {"pairs": int, "keypoints": int}}`` and ``all``;
            ``geo_aware``: ``{"pck": ..., "per_category": ..., "pairs": int, "keypoints": int,
            "fraction_of_keypoints": float}``.
        """
        t = self.thresholds
        cats = sorted(self._categories)
        geo_cats = sorted(c for c, s in self._geo_categories.items() if s.pairs)
        geo_fraction = self._geo.keypoints / self._all.keypoints if self._all.keypoints else None
        return {
            "pck": _table(t, self._overall_per_image(), self._all.per_keypoint()),
            "per_category": {
                c: _table(t, self._categories[c].per_image(), self._categories[c].per_keypoint())
                for c in cats
            },
            "counts": {
                "all": {"pairs": self._all.pairs, "keypoints": self._all.keypoints},
                **{
                    c: {
                        "pairs": self._categories[c].pairs,
                        "keypoints": self._categories[c].keypoints,
                    }
                    for c in cats
                },
            },
            "geo_aware": {
                "pck": _table(t, self._geo.per_image(), self._geo.per_keypoint()),
                "per_category": {
                    c: _table(
                        t,
                        self._geo_categories[c].per_image(),
                        self._geo_categories[c].per_keypoint(),
                    )
                    for c in geo_cats
                },
                "pairs": self._geo.pairs,
                "keypoints": self._geo.keypoints,
                "fraction_of_keypoints": geo_fraction,
            },
        }


class _Spread:
    """Running mean and standard deviation of per-pair PCK and of pooled keypoint hits."""

    def __init__(self, size: int) -> None:
        self.pairs = 0
        self.pair_sum = torch.zeros(size, dtype=torch.float64)
        self.pair_sq = torch.zeros(size, dtype=torch.float64)
        self.keypoints = 0
        self.hits = torch.zeros(size, dtype=torch.float64)

    def add(self, correct: torch.Tensor) -> None:
        """One pair's ``(n, T)`` correctness (n > 0)."""
        hits = correct.double().sum(dim=0).cpu()
        pck = hits / correct.shape[0]
        self.pairs += 1
        self.pair_sum += pck
        self.pair_sq += pck * pck
        self.keypoints += correct.shape[0]
        self.hits += hits

    def summary(self, keys: Sequence[str]) -> dict:
        def leaf(mean: torch.Tensor, std: torch.Tensor, i: int) -> dict:
            return {"mean": float(mean[i]), "std": float(std[i])}

        image_mean = self.pair_sum / self.pairs
        image_std = (self.pair_sq / self.pairs - image_mean * image_mean).clamp_min(0).sqrt()
        point_mean = self.hits / self.keypoints
        point_std = (point_mean * (1 - point_mean)).clamp_min(0).sqrt()  # of 0/1 outcomes
        return {
            "pairs": self.pairs,
            "keypoints": self.keypoints,
            "per_image": {k: leaf(image_mean, image_std, i) for i, k in enumerate(keys)},
            "per_keypoint": {k: leaf(point_mean, point_std, i) for i, k in enumerate(keys)},
        }


class PCKStatistics:
    """PCK mean ± standard deviation, overall, by category and by difficulty level.

    Per image, the samples are the pairs' PCK (mean over the pair's keypoints); per keypoint,
    the samples are the keypoints' 0/1 correctness (pooled). Standard deviations are the
    population's (divided by n). Memory holds a few sums per group.

    Args:
        thresholds: the α values, in the order of ``correct``'s columns.
        fields: difficulty fields read from each pair's ``extra`` (SPair-71k's by default).
    """

    def __init__(self, thresholds: Sequence[float],
                 fields: Sequence[str] = ("viewpoint_variation", "scale_variation",
                                          "truncation", "occlusion")) -> None:
        self.keys = [format_threshold(a) for a in thresholds]
        self.fields = tuple(fields)
        self._groups: dict[tuple[str, str], _Spread] = {}

    def _add(self, table: str, name: str, correct: torch.Tensor) -> None:
        self._groups.setdefault((table, name), _Spread(len(self.keys))).add(correct)

    def add(self, category: str, correct: torch.Tensor, extra: dict | None = None) -> None:
        """Add one pair: ``correct`` ``(n, T)`` bool over its visible keypoints."""
        if correct.shape[0] == 0:
            return
        self._add("all", "all", correct)
        self._add("category", category, correct)
        for name in self.fields:
            value = (extra or {}).get(name)
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                self._add(name, str(value), correct)

    def summary(self) -> dict:
        """``{"overall", "by_category": {name: ...}, "by_difficulty": {field: {level: ...}}}``,
        each leaf ``{"pairs", "keypoints", "per_image": {α: {"mean", "std"}}, "per_keypoint":
        {...}}`` with PCK in [0, 1]."""

        def table(name: str) -> dict:
            return {g: s.summary(self.keys)
                    for (t, g), s in sorted(self._groups.items()) if t == name}

        overall = self._groups.get(("all", "all"))
        return {
            "overall": overall.summary(self.keys) if overall else None,
            "by_category": table("category"),
            "by_difficulty": {f: table(f) for f in self.fields
                              if any(t == f for t, _ in self._groups)},
        }

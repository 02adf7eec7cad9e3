"""Video label-propagation metrics: DAVIS-2017 J and F, JHMDB PCK.

DAVIS (as davis2017-evaluation computes them, ``davis2017/metrics.py``, ``evaluation.py``,
``utils.py`` and ``evaluation_method.py``):

* **J** (region similarity): intersection over union of a predicted and a ground-truth object
  mask; ``1`` when both are empty.
* **F** (boundary measure): the 1-pixel boundaries of both masks (``seg2bmap``), each dilated
  by a disk of radius ``ceil(0.008 * image diagonal)``; precision = predicted boundary pixels
  within the ground-truth band, recall = ground-truth boundary pixels within the predicted
  band; F their harmonic mean.
* Per object: the mean (and recall ``> 0.5``, decay first-quarter minus last-quarter) over the
  frames **without the first and the last**; J-Mean, F-Mean: means over every object of every
  sequence; J&F-Mean: their average.

JHMDB (as CRW's ``code/eval/eval_pck.py`` computes it, followed by DIFT): every frame but the
first, distance to the ground truth divided by ``0.6 *`` the diagonal of the box of that frame's
ground-truth joints; PCK@α per joint over all frames of all videos (``distance <= α``), then
the mean over joints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "BOUNDARY_THRESHOLD",
    "JHMDB_BOX_FACTOR",
    "JHMDB_THRESHOLDS",
    "boundary_f",
    "boundary_map",
    "davis_sequence_scores",
    "davis_statistics",
    "davis_summary",
    "jhmdb_normalised_distances",
    "jhmdb_pck",
    "region_similarity",
]

#: Boundary tolerance of the DAVIS F measure, as a fraction of the image diagonal.
BOUNDARY_THRESHOLD = 0.008
#: JHMDB: the PCK reference is this factor times the diagonal of the ground-truth joints' box.
JHMDB_BOX_FACTOR = 0.6
#: The thresholds CRW and DIFT report on JHMDB.
JHMDB_THRESHOLDS = (0.1, 0.2)


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Jaccard index of binary masks, frame by frame.

    Args:
        gt, pred: ``(T, H, W)`` (or ``(H, W)``) masks, any non-zero pixel on.

    Returns:
        ``(T,)`` (or a 0-d array) IoU; ``1`` where both masks are empty.
    """
    gt, pred = gt.astype(bool), pred.astype(bool)
    inter = (gt & pred).sum(axis=(-2, -1))
    union = (gt | pred).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """1-pixel boundaries of masks ``(..., H, W)`` (``seg2bmap`` at the mask's own size):
    a pixel is on the boundary when it differs from its right, lower or lower-right neighbour
    (the last row compares to the right only, the last column downwards only, the corner is
    off)."""
    seg = seg.astype(bool)
    east, south, southeast = (np.zeros_like(seg) for _ in range(3))
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    southeast[..., :-1, :-1] = seg[..., 1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ southeast)
    bmap[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    bmap[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    bmap[..., -1, -1] = False
    return bmap


def _dilate(bmap: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation of ``(H, W)`` by the disk ``x² + y² <= radius²`` (outside = off): a
    pixel is on when a boundary pixel lies within Euclidean distance ``radius``."""
    from scipy.ndimage import distance_transform_edt

    if not bmap.any():
        return bmap.copy()
    return distance_transform_edt(~bmap) <= radius


def _band_radius(shape: Sequence[int], bound_th: float) -> float:
    return bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*shape))


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUNDARY_THRESHOLD
               ) -> np.ndarray:
    """DAVIS boundary F-measure, frame by frame.

    Args:
        gt, pred: ``(T, H, W)`` binary masks.
        bound_th: tolerance; a fraction of the diagonal when ``< 1``, else pixels.

    Returns:
        ``(T,)`` F in [0, 1]: ``1`` when neither mask has a boundary, ``0`` when only one has.
    """
    radius = _band_radius(gt.shape[-2:], bound_th)
    gt_b, pred_b = boundary_map(gt), boundary_map(pred)
    gt_band = np.stack([_dilate(b, radius) for b in gt_b])  # one image at a time: 2-D bands
    pred_band = np.stack([_dilate(b, radius) for b in pred_b])
    n_pred, n_gt = pred_b.sum(axis=(-2, -1)), gt_b.sum(axis=(-2, -1))
    precision = np.where(n_pred == 0, 1.0, (pred_b & gt_band).sum(axis=(-2, -1))
                         / np.maximum(n_pred, 1))
    recall = np.where(n_gt == 0, 1.0, (gt_b & pred_band).sum(axis=(-2, -1)) / np.maximum(n_gt, 1))
    precision = np.where((n_pred > 0) & (n_gt == 0), 0.0, precision)
    recall = np.where((n_pred == 0) & (n_gt > 0), 0.0, recall)
    total = precision + recall
    return np.where(total == 0, 0.0, 2 * precision * recall / np.where(total == 0, 1, total))


def davis_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall (fraction ``> 0.5``) and decay (mean of the first of four temporal bins
    minus the last's) of per-frame values ``(T,)``, NaNs ignored."""
    import warnings

    values = np.asarray(values, dtype=np.float64)
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    with warnings.catch_warnings():  # an all-NaN bin is NaN, as in the official code
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
        decay = float(np.nanmean(values[ids[0]:ids[1] + 1]) - np.nanmean(values[ids[3]:ids[4] + 1]))
    return mean, recall, decay


def davis_sequence_scores(gt: np.ndarray, pred: np.ndarray, bound_th: float =
                          BOUNDARY_THRESHOLD) -> dict[str, dict[str, list[float]]]:
    """Per-object, per-frame J and F of one sequence, first and last frames excluded.

    Args:
        gt: ``(T, H, W)`` ground-truth labels (``0`` background, void already removed); the
            objects are ``1..max`` of the first frame.
        pred: ``(T, H, W)`` predicted labels (labels above the objects' count are ignored).

    Returns:
        ``{"<k>": {"J": [...], "F": [...]}}`` for each object ``k`` (``T - 2`` values each).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    objects = int(gt[0].max())
    gt, pred = gt[1:-1], pred[1:-1]
    scores = {}
    for k in range(1, objects + 1):  # a handful of objects per sequence
        gt_k, pred_k = gt == k, pred == k
        scores[str(k)] = {"J": region_similarity(gt_k, pred_k).tolist(),
                          "F": boundary_f(gt_k, pred_k, bound_th).tolist()}
    return scores


def davis_summary(sequences: dict[str, dict[str, dict[str, list[float]]]]) -> dict[str, Any]:
    """The global DAVIS table from :func:`davis_sequence_scores` of every sequence.

    Returns:
        ``{"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}``
        (fractions) plus ``"per_object"``: ``{"<seq>_<k>": {"J-Mean", "F-Mean"}}`` and
        ``"objects"``.
    """
    stats: dict[str, list[tuple[float, float, float]]] = {"J": [], "F": []}
    per_object = {}
    for name, objects in sequences.items():
        for k, values in objects.items():
            row = {}
            for metric in ("J", "F"):
                stats[metric].append(davis_statistics(np.asarray(values[metric])))
                row[f"{metric}-Mean"] = stats[metric][-1][0]
            per_object[f"{name}_{k}"] = row
    table: dict[str, Any] = {}
    for metric in ("J", "F"):
        values = np.asarray(stats[metric], dtype=np.float64).reshape(-1, 3)
        for column, label in enumerate(("Mean", "Recall", "Decay")):
            table[f"{metric}-{label}"] = float(values[:, column].mean()) if len(values) else None
    if per_object:
        table["J&F-Mean"] = (table["J-Mean"] + table["F-Mean"]) / 2
    else:
        table["J&F-Mean"] = None
    order = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    return {**{k: table[k] for k in order}, "objects": len(per_object),
            "per_object": per_object}


def jhmdb_normalised_distances(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """CRW's normalised errors of one video.

    Args:
        pred, gt: ``(T, J, 2)`` predicted and ground-truth points in pixels.

    Returns:
        ``(T - 1, J)`` distance / (0.6 x diagonal of the box of the frame's ground-truth joints)
        for every frame but the first; NaN where a prediction's x is negative (CRW's
        "invisible"; such joints also leave the box).
    """
    pred, gt = np.asarray(pred, np.float64)[1:], np.asarray(gt, np.float64)[1:]
    counted = pred[..., 0] >= 0  # (T-1, J); CRW tests the x coordinate only
    low = np.where(counted[..., None], gt, np.inf).min(axis=1)
    high = np.where(counted[..., None], gt, -np.inf).max(axis=1)
    with np.errstate(invalid="ignore"):
        reference = JHMDB_BOX_FACTOR * np.linalg.norm(high - low, axis=-1)  # (T-1,)
        distance = np.linalg.norm(pred - gt, axis=-1) / reference[:, None]
    return np.where(counted, distance, np.nan)


def jhmdb_pck(distances: Iterable[np.ndarray], thresholds: Sequence[float] = JHMDB_THRESHOLDS
              ) -> dict[str, Any]:
    """PCK over videos from :func:`jhmdb_normalised_distances`: per joint over every counted
    frame of every video (``distance <= α``), then the mean over joints.

    Returns:
        ``{"pck": {"0.1": fraction, ...}, "per_joint": {"0.1": [J fractions], ...},
        "frames": frames scored}``.
    """
    stacked = [np.asarray(d, np.float64).reshape(-1, np.shape(d)[-1]) for d in distances]
    all_d = np.concatenate(stacked) if stacked else np.zeros((0, 0))
    counted = ~np.isnan(all_d)
    result: dict[str, Any] = {"pck": {}, "per_joint": {}, "frames": int(all_d.shape[0])}
    for alpha in thresholds:
        hits = ((all_d <= alpha) & counted).sum(axis=0)
        per_joint = hits / np.maximum(counted.sum(axis=0), 1)
        key = f"{alpha:g}"
        result["per_joint"][key] = per_joint.tolist()
        result["pck"][key] = float(per_joint.mean()) if per_joint.size else None
    return result

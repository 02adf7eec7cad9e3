"""Pass 2 of :func:`semcorr.eval.benchmark.evaluate`: PCK streamed from a predictions file.

It reads only ``predictions.jsonl`` records (never a model or an image), so it scores a finished
or a foreign export alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from semcorr.data.base import ALTERNATIVES_KEY, alternatives_problem
from semcorr.eval.groups import GroupAccumulator, groups_problem, headline_of
from semcorr.eval.pck import PCKAccumulator, PCKStatistics, format_threshold
from semcorr.eval.protocols import PCKProtocol, get_protocol

__all__ = ["CURVE_ALPHAS", "any_correct", "compute_metrics", "read_predictions", "record_problem"]

#: α values of the PCK-vs-α curve (0.01 to 0.20), added to the reported thresholds.
CURVE_ALPHAS: tuple[float, ...] = tuple(round(0.01 * k, 2) for k in range(1, 21))
_MAX_LISTED_SKIPS = 100


def _points(value: Any, name: str) -> torch.Tensor:
    """``(N, 2)`` float64 points of a record field; ``ValueError`` naming ``name``."""
    try:
        points = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name!r} must be a list of [x, y] numbers") from None
    if points.numel() and (points.dim() != 2 or points.shape[1] != 2):
        raise ValueError(f"{name!r} must be a list of [x, y] numbers")
    if not torch.isfinite(points).all():
        raise ValueError(f"{name!r} holds a number that is not finite")
    return points.reshape(-1, 2)


def record_problem(record: Any) -> str | None:
    """Why a predictions record cannot be scored (``None`` when it is sound): not an object, no
    string ``pair_id``, or (unless ``skipped``) a ``category``, ``pred``/``gt`` of ``(N, 2)``
    finite numbers, ``geo_aware`` of N booleans and a positive finite ``reference``."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("pair_id"), str):
        return "'pair_id' must be a string"
    if "skipped" in record:
        return None if isinstance(record["skipped"], str) else "'skipped' must be a string"
    if not isinstance(record.get("category"), str):
        return "'category' must be a string"
    try:
        pred, gt = _points(record.get("pred"), "pred"), _points(record.get("gt"), "gt")
    except ValueError as exc:
        return str(exc)
    geo = record.get("geo_aware")
    if pred.shape != gt.shape or not isinstance(geo, list) or len(geo) != len(gt) or not all(
            isinstance(g, bool) for g in geo):
        return "'pred', 'gt' and 'geo_aware' must hold one entry per keypoint"
    ids = record.get("keypoint_ids", [0] * len(gt))
    if not isinstance(ids, list) or len(ids) != len(gt) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return "'keypoint_ids' must hold one integer per keypoint"
    if not isinstance(record.get("extra", {}), dict):
        return "'extra' must be an object"
    if "groups" in record and (problem := groups_problem(record["groups"], len(gt))):
        return problem
    if "gt_any" in record and (problem := alternatives_problem(record["gt_any"], len(gt))):
        return problem.replace(repr(ALTERNATIVES_KEY), "'gt_any'")
    try:
        headline_of(record)
    except ValueError as exc:
        return str(exc)
    clamped = record.get("source_clamped", 0)
    if isinstance(clamped, bool) or not isinstance(clamped, int) or not 0 <= clamped <= len(gt):
        return "'source_clamped' must be a count of keypoints"
    reference = record.get("reference")
    if isinstance(reference, bool) or not isinstance(reference, (int, float)) or not (
            0 < reference < float("inf")):
        return "'reference' must be a positive finite number"
    return None


def read_predictions(path: Path) -> Iterator[dict[str, Any]]:
    """Stream the records of a predictions file, ignoring a torn last line (a killed run's).

    Raises:
        InputError: naming the file and line of a record that is not JSON or cannot be scored
            (see :func:`record_problem`).
    """
    from semcorr.errors import InputError

    if not path.is_file():
        return
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                return  # torn write of a killed run
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                problem: str | None = "not valid JSON"
            else:
                problem = record_problem(record)
            if problem is not None:
                raise InputError(f"{path}:{number}: {problem} (a damaged predictions file: "
                                 "use --overwrite or another --out)")
            yield record


def compute_metrics(
    predictions: Path,
    pair_ids: set[str] | None,
    thresholds: Sequence[float] | None = None,
    average: str = "pairs",
    protocol: PCKProtocol | None = None,
) -> dict[str, Any]:
    """PCK from a predictions file, streamed.

    Args:
        predictions: a ``predictions.jsonl`` written by :func:`export_predictions`.
        pair_ids: the pairs to count (all when ``None``).
        thresholds: reported α values (default: the protocol's).
        average: see :class:`~semcorr.eval.pck.PCKAccumulator`.
        protocol: the comparison and precision (default ``geoaware``: strict ``<`` in
            float64); with ``statistics``, adds ``statistics``
            (:class:`~semcorr.eval.pck.PCKStatistics`).

    Returns:
        The accumulator's summary plus ``pairs``, ``skipped``, ``skipped_pairs``,
        ``source_keypoints_clamped`` (visible source keypoints within
        :data:`~semcorr.data.base.OUTSIDE_TOLERANCE` outside their image, pulled onto its
        border),
        ``pose_alignment`` (``distance_used``: pairs aligned with each instance matching
        distance, ``mask`` or ``mutual-nn``), ``curve`` (``alpha``, ``per_image``,
        ``per_keypoint`` over :data:`CURVE_ALPHAS`) and ``breakdowns``
        (:class:`~semcorr.analysis.breakdowns.BreakdownAccumulator`: by difficulty, category,
        keypoint id, geometry-aware vs the rest; mean and std).
    """
    from semcorr.analysis.breakdowns import BreakdownAccumulator

    protocol = protocol or get_protocol("geoaware")
    thresholds = list(protocol.thresholds if thresholds is None else thresholds)
    alphas = sorted(set(CURVE_ALPHAS) | {round(float(a), 6) for a in thresholds})
    accumulator = PCKAccumulator(alphas, average=average)
    columns = [alphas.index(round(float(a), 6)) for a in thresholds]
    breakdowns = BreakdownAccumulator([format_threshold(a) for a in thresholds])
    statistics = PCKStatistics(thresholds) if protocol.statistics else None
    groups = GroupAccumulator([format_threshold(a) for a in thresholds], average=average)
    headlines: set[tuple[str, str]] = set()
    seen: set[str] = set()
    skipped: list[dict[str, str]] = []
    pairs = clamped = 0
    pose_distances: dict[str, int] = {}
    for record in read_predictions(predictions):
        pair_id = record.get("pair_id")
        if pair_id in seen or (pair_ids is not None and pair_id not in pair_ids):
            continue
        seen.add(pair_id)
        if "skipped" in record:
            skipped.append({"pair_id": pair_id, "reason": record["skipped"]})
            continue
        pairs += 1
        clamped += int(record.get("source_clamped", 0))
        if "pose_distance" in record:
            metric = record["pose_distance"]
            pose_distances[metric] = pose_distances.get(metric, 0) + 1
        pred = torch.tensor(record["pred"], dtype=torch.float64).reshape(-1, 2)
        gt = torch.tensor(record["gt"], dtype=torch.float64).reshape(-1, 2)
        correct = (protocol.correct(pred, gt, float(record["reference"]), alphas)
                   if "gt_any" not in record else
                   any_correct(protocol, pred, record["gt_any"], float(record["reference"]),
                               alphas))
        geo = torch.tensor(record["geo_aware"], dtype=torch.bool).reshape(-1)
        accumulator.add(record["category"], correct, geo)
        breakdowns.add(correct[:, columns], record["category"], record.get("keypoint_ids"), geo,
                       record.get("extra"))
        if statistics is not None:
            statistics.add(record["category"], correct[:, columns], record.get("extra"))
        groups.add(correct[:, columns], record.get("groups"), record["category"])
        if "headline_group" in record:
            headlines.add(tuple(record["headline_group"]))
    summary = accumulator.summary()
    wanted = [format_threshold(a) for a in thresholds]

    def pick(table: dict[str, Any]) -> dict[str, Any]:
        return {k: table[k] for k in wanted}

    curve = {
        "alpha": alphas,
        "per_image": [summary["pck"][format_threshold(a)]["per_image"] for a in alphas],
        "per_keypoint": [summary["pck"][format_threshold(a)]["per_keypoint"] for a in alphas],
    }
    geo = summary["geo_aware"]
    group_summary = groups.summary()
    return {
        "pairs": pairs,
        "skipped": len(skipped),
        "skipped_pairs": skipped[:_MAX_LISTED_SKIPS],
        "source_keypoints_clamped": clamped,
        **_headline(pick(summary["pck"]), group_summary, headlines, wanted),
        "groups": group_summary,
        "per_category": {c: pick(t) for c, t in summary["per_category"].items()},
        "counts": summary["counts"],
        "geo_aware": {
            **geo,
            "pck": pick(geo["pck"]),
            "per_category": {c: pick(t) for c, t in geo["per_category"].items()},
        },
        "curve": curve,
        "breakdowns": breakdowns.summary(),
        **({"statistics": statistics.summary()} if statistics is not None else {}),
        "pose_alignment": {"distance_used": dict(sorted(pose_distances.items()))},
    }


def any_correct(protocol: PCKProtocol, pred: torch.Tensor, targets: Sequence[Sequence[Any]],
                reference: float, alphas: Sequence[float]) -> torch.Tensor:
    """``(N, T)`` bool: each prediction ``(N, 2)`` within ``α · reference`` of any of its row's
    targets (``targets``: N non-empty lists of ``[x, y]``), under ``protocol``'s comparison."""
    counts = torch.tensor([len(row) for row in targets], dtype=torch.long)  # (N,)
    flat = torch.tensor([p for row in targets for p in row], dtype=torch.float64).reshape(-1, 2)
    owner = torch.repeat_interleave(torch.arange(len(targets)), counts)  # (P,)
    hits = protocol.correct(pred[owner], flat, reference, alphas)  # (P, T)
    out = torch.zeros(len(targets), hits.shape[1], dtype=torch.long)
    return out.index_add_(0, owner, hits.long()) > 0


def _headline(pck: dict[str, Any], groups: dict[str, Any], headlines: set[tuple[str, str]],
              keys: Sequence[str]) -> dict[str, Any]:
    """``pck`` (the headline numbers), ``headline`` (what they are) and, when the headline is a
    keypoint group (:mod:`semcorr.eval.groups`), ``pck_all_keypoints``.

    Raises:
        InputError: when the pairs name different headline groups.
    """
    from semcorr.errors import InputError

    if not headlines:
        return {"pck": pck, "headline": "all visible keypoints"}
    if len(headlines) > 1:
        raise InputError(f"the pairs name different headline groups: {sorted(headlines)}")
    name, label = next(iter(headlines))
    leaf = groups.get(name, {}).get(label)
    chosen = {k: {"per_image": None if leaf is None else leaf[k]["per_image"],
                  "per_keypoint": None if leaf is None else leaf[k]["per_keypoint"]}
              for k in keys}
    return {"pck": chosen, "pck_all_keypoints": pck,
            "headline": f"{name}={label}: the visible keypoints labelled {label!r} in the "
                        f"breakdown {name!r} (see 'groups'); all of them in 'pck_all_keypoints'"}

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

from semcorr.eval.pck import PCKAccumulator, PCKStatistics, format_threshold
from semcorr.eval.protocols import PCKProtocol, get_protocol

__all__ = ["CURVE_ALPHAS", "compute_metrics", "read_predictions"]

#: α values of the PCK-vs-α curve (0.01 to 0.20), added to the reported thresholds.
CURVE_ALPHAS: tuple[float, ...] = tuple(round(0.01 * k, 2) for k in range(1, 21))
_MAX_LISTED_SKIPS = 100


def read_predictions(path: Path) -> Iterator[dict[str, Any]]:
    """Stream the records of a predictions file, ignoring a torn last line."""
    if not path.is_file():
        return
    with path.open("r", encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # torn write of a killed run
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


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
    seen: set[str] = set()
    skipped: list[dict[str, str]] = []
    pairs = 0
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
        if "pose_distance" in record:
            metric = record["pose_distance"]
            pose_distances[metric] = pose_distances.get(metric, 0) + 1
        pred = torch.tensor(record["pred"], dtype=torch.float64).reshape(-1, 2)
        gt = torch.tensor(record["gt"], dtype=torch.float64).reshape(-1, 2)
        correct = protocol.correct(pred, gt, float(record["reference"]), alphas)
        geo = torch.tensor(record["geo_aware"], dtype=torch.bool).reshape(-1)
        accumulator.add(record["category"], correct, geo)
        breakdowns.add(correct[:, columns], record["category"], record.get("keypoint_ids"), geo,
                       record.get("extra"))
        if statistics is not None:
            statistics.add(record["category"], correct[:, columns], record.get("extra"))
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
    return {
        "pairs": pairs,
        "skipped": len(skipped),
        "skipped_pairs": skipped[:_MAX_LISTED_SKIPS],
        "pck": pick(summary["pck"]),
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

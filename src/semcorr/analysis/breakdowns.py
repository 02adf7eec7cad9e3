"""PCK broken down by pair difficulty, keypoint id, category and geometry-awareness.

Fed one evaluated pair at a time (running sums: memory flat in the number of pairs). For the
groups made of pairs (a difficulty level, a category, geometry-aware vs the rest) each pair's
PCK (mean over its keypoints in the group) is one sample: the tables give its mean and standard
deviation over pairs. Per keypoint id, the samples are the keypoints themselves (pooled).

Difficulty fields are SPair-71k's pair annotations (``viewpoint_variation``,
``scale_variation``, ``truncation``, ``occlusion``); any other integer/string field in a pair's
``extra`` listed in ``fields`` works the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["DIFFICULTY_FIELDS", "BreakdownAccumulator", "breakdown_tables"]

DIFFICULTY_FIELDS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")


class _Moments:
    """Count, sum and sum of squares per threshold."""

    def __init__(self, size: int) -> None:
        self.n = 0
        self.sum = torch.zeros(size, dtype=torch.float64)
        self.sq = torch.zeros(size, dtype=torch.float64)

    def add(self, values: torch.Tensor) -> None:
        """One sample ``(T,)``."""
        self.n += 1
        self.sum += values
        self.sq += values * values

    def summary(self, keys: Sequence[str]) -> dict[str, Any]:
        if not self.n:
            return {"n": 0, **{k: {"mean": None, "std": None} for k in keys}}
        mean = self.sum / self.n
        var = (self.sq / self.n - mean * mean).clamp_min(0)
        return {"n": self.n, **{k: {"mean": float(mean[i]), "std": float(math.sqrt(var[i]))}
                                for i, k in enumerate(keys)}}


class BreakdownAccumulator:
    """Running PCK breakdowns.

    Args:
        keys: names of the thresholds (e.g. ``"0.10"``), in the order of ``correct``'s columns.
        fields: difficulty fields read from each pair's ``extra``.
    """

    def __init__(self, keys: Sequence[str], fields: Sequence[str] = DIFFICULTY_FIELDS) -> None:
        self.keys = list(keys)
        self.fields = tuple(fields)
        self._groups: dict[tuple[str, str], _Moments] = {}
        self._kp_hits = torch.zeros(0, len(self.keys), dtype=torch.float64)  # (K, T)
        self._kp_count = torch.zeros(0, dtype=torch.float64)  # (K,)

    def _group(self, table: str, name: str) -> _Moments:
        return self._groups.setdefault((table, name), _Moments(len(self.keys)))

    def add(
        self,
        correct: torch.Tensor,
        category: str,
        keypoint_ids: Sequence[int] | None,
        geo_aware: torch.Tensor,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one pair.

        Args:
            correct: ``(n, T)`` bool, the pair's visible keypoints.
            category: the pair's category.
            keypoint_ids: ``n`` dataset keypoint ids (``None``: no per-keypoint table).
            geo_aware: ``(n,)`` bool.
            extra: the pair's dataset fields (difficulty levels).
        """
        if correct.shape[0] == 0:
            return
        correct = correct.to(torch.float64)
        pair_pck = correct.mean(dim=0)
        self._group("category", category).add(pair_pck)
        for name in self.fields:
            value = (extra or {}).get(name)
            if isinstance(value, (int, str, bool)):
                self._group(name, str(int(value) if isinstance(value, bool) else value)).add(
                    pair_pck)
        geo = geo_aware.to(torch.bool)
        for label, rows in (("geo-aware", geo), ("rest", ~geo)):
            if rows.any():
                self._group("geometry", label).add(correct[rows].mean(dim=0))
        if keypoint_ids is None or len(keypoint_ids) != correct.shape[0]:
            return
        ids = torch.as_tensor(list(keypoint_ids), dtype=torch.long).clamp_min(0)
        size = int(ids.max()) + 1
        if size > self._kp_count.numel():  # grow the per-id sums
            grow = size - self._kp_count.numel()
            zeros = self._kp_hits.new_zeros(grow, len(self.keys))
            self._kp_hits = torch.cat([self._kp_hits, zeros])
            self._kp_count = torch.cat([self._kp_count, self._kp_count.new_zeros(grow)])
        self._kp_hits.index_add_(0, ids, correct)
        self._kp_count.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))

    def _keypoint_table(self) -> dict[str, Any]:
        """Pooled per keypoint id: mean and binomial standard deviation of 0/1 correctness."""
        table = {}
        for kp in self._kp_count.nonzero().flatten().tolist():
            n = float(self._kp_count[kp])
            p = self._kp_hits[kp] / n
            std = (p * (1 - p)).clamp_min(0).sqrt()
            table[str(kp)] = {"n": int(n), **{k: {"mean": float(p[i]), "std": float(std[i])}
                                              for i, k in enumerate(self.keys)}}
        return table

    def summary(self) -> dict[str, Any]:
        """``{"by_category", "by_difficulty": {field: {level: ...}}, "geometry", "by_keypoint"}``;
        each leaf is ``{"n": pairs (keypoints for by_keypoint), threshold: {"mean", "std"}}``
        with PCK in [0, 1]."""

        def table(name: str) -> dict[str, Any]:
            rows = {g: m for (t, g), m in self._groups.items() if t == name}
            return {g: rows[g].summary(self.keys) for g in sorted(rows, key=_order)}

        return {
            "by_category": table("category"),
            "by_difficulty": {f: table(f) for f in self.fields if any(
                t == f for t, _ in self._groups)},
            "geometry": table("geometry"),
            "by_keypoint": self._keypoint_table(),
        }


def _order(name: str) -> tuple[int, float | str]:
    try:
        return (0, float(name))
    except ValueError:
        return (1, name)


def _rows(title: str, table: Mapping[str, Any], keys: Sequence[str], unit: str) -> list[str]:
    lines = [f"### {title}", "", f"| {unit} | n | " + " | ".join(f"PCK@{k} (mean ± std)"
                                                               for k in keys) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for name, leaf in table.items():
        cells = [("-" if leaf[k]["mean"] is None else
                  f"{100 * leaf[k]['mean']:.1f} ± {100 * leaf[k]['std']:.1f}") for k in keys]
        lines.append(f"| {name} | {leaf['n']} | " + " | ".join(cells) + " |")
    return lines + [""]


def breakdown_tables(breakdowns: Mapping[str, Any], keys: Sequence[str]) -> str:
    """Markdown tables of a :meth:`BreakdownAccumulator.summary` (PCK in %)."""
    lines: list[str] = []
    for field, table in breakdowns.get("by_difficulty", {}).items():
        lines += _rows(f"by {field.replace('_', ' ')}", table, keys, "level")
    if breakdowns.get("geometry"):
        lines += _rows("geometry-aware keypoints vs the rest (per pair)", breakdowns["geometry"],
                       keys, "keypoints")
    lines += _rows("by category (mean ± std over pairs)", breakdowns.get("by_category", {}),
                   keys, "category")
    lines += _rows("by keypoint id (pooled)", breakdowns.get("by_keypoint", {}), keys,
                   "keypoint")
    return "\n".join(lines)

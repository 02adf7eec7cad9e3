"""PCK broken down by keypoint groups a dataset declares (seen vs unseen keypoints, categories,
correspondence types).

The contract with the loaders: a :class:`~semcorr.data.base.PairSample` may carry

* ``extra["keypoint_groups"]``: ``{breakdown: [label of row 0, ..., label of row N-1]}``, one
  label per keypoint row (aligned with ``source_points``), e.g. ``{"keypoint_set": ["seen",
  ..., "unseen"]}`` for SPair-U, ``{"category_split": ["unseen"] * N}`` for MP-100,
  ``{"correspondence_type": [...]}`` for SOCO;
* ``extra["headline_group"]``: ``(breakdown, label)``, the group whose PCK is the headline
  ``pck`` of ``results.json`` (SPair-U: ``("keypoint_set", "unseen")``, the paper's figure).

For every breakdown and label the evaluator reports, at every threshold:

* **per image**: the mean over pairs of each pair's PCK on that label's visible keypoints
  (pairs with no visible keypoint of that label are left out of that label's mean); when the
  protocol averages over categories (SOCO), the mean over pairs of each category, then the
  mean over that label's categories;
* **per keypoint**: that label's visible keypoints pooled;

with the counts (``pairs``, ``keypoints``). Only the rows visible in both images count; the
predictions record keeps the labels of those rows alone (``groups``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from semcorr.data.base import GROUPS_KEY, HEADLINE_KEY

__all__ = [
    "GROUPS_KEY",
    "HEADLINE_KEY",
    "GroupAccumulator",
    "group_labels",
    "group_tables",
    "groups_problem",
    "headline_of",
]



def groups_problem(groups: Any, rows: int) -> str | None:
    """Why ``groups`` is not ``{name: [rows labels]}`` (``None`` when it is)."""
    if not isinstance(groups, Mapping):
        return f"{GROUPS_KEY!r} must be an object of breakdown -> labels"
    for name, labels in groups.items():
        if not isinstance(name, str) or not isinstance(labels, (list, tuple)):
            return f"{GROUPS_KEY!r}: {name!r} must map to a list of labels"
        if len(labels) != rows or not all(isinstance(label, str) for label in labels):
            return f"{GROUPS_KEY!r}: {name!r} must hold one string label per keypoint ({rows})"
    return None


def group_labels(extra: Mapping[str, Any], rows: torch.Tensor) -> dict[str, list[str]]:
    """The labels of the keypoint ``rows`` (``(n,)`` long, e.g. the visible rows) of a
    sample's ``extra``; ``{}`` when it declares no groups.

    Raises:
        ValueError: when the declared groups are malformed (message names the problem).
    """
    groups = extra.get(GROUPS_KEY)
    if groups is None:
        return {}
    wanted = rows.tolist()
    size = max(wanted) + 1 if wanted else 0
    for labels in groups.values() if isinstance(groups, Mapping) else ():
        size = max(size, len(labels) if isinstance(labels, (list, tuple)) else 0)
    problem = groups_problem(groups, size)
    if problem is not None:
        raise ValueError(problem)
    return {name: np.asarray(labels, dtype=object)[wanted].tolist()
            for name, labels in groups.items()}


def headline_of(extra: Mapping[str, Any]) -> list[str] | None:
    """``[breakdown, label]`` of a sample's headline group, or ``None``.

    Raises:
        ValueError: when it is not a pair of strings.
    """
    value = extra.get(HEADLINE_KEY)
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, str) for v in value)):
        raise ValueError(f"{HEADLINE_KEY!r} must be (breakdown, label)")
    return [value[0], value[1]]


class _Sums:
    """Running sums of one group: pairs, keypoints, sum of pair PCK, sum of hits ``(T,)``, and
    per category its pairs and sum of pair PCK."""

    def __init__(self, size: int) -> None:
        self.pairs = 0
        self.keypoints = 0
        self.pair_sum = torch.zeros(size, dtype=torch.float64)
        self.hits = torch.zeros(size, dtype=torch.float64)
        self.by_category: dict[str, list[Any]] = {}

    def per_image(self, average: str) -> torch.Tensor:
        """``(T,)``: mean over pairs, or over categories of their means over pairs."""
        if average != "categories":
            return self.pair_sum / self.pairs
        means = [pair_sum / pairs for pairs, pair_sum in self.by_category.values()]
        return torch.stack(means).mean(dim=0)


class GroupAccumulator:
    """Running per-image and per-keypoint PCK of every (breakdown, label) group.

    Args:
        keys: threshold names (``"0.10"``) in the order of ``correct``'s columns.
        average: per image over ``pairs`` or ``categories`` (see the module docstring).
    """

    def __init__(self, keys: Sequence[str], average: str = "pairs") -> None:
        self.keys = list(keys)
        self.average = average
        self._sums: dict[str, dict[str, _Sums]] = {}

    def add(self, correct: torch.Tensor, groups: Mapping[str, Sequence[str]] | None,
            category: str = "") -> None:
        """Add one pair.

        Args:
            correct: ``(n, T)`` bool, the pair's visible keypoints.
            groups: ``{breakdown: n labels}`` of those keypoints (see :func:`group_labels`).
            category: the pair's category (for the average over categories).
        """
        if not groups or correct.shape[0] == 0:
            return
        correct = correct.to(torch.float64)
        for name, labels in groups.items():
            names, inverse = _codes(labels)
            count = torch.zeros(len(names), dtype=torch.float64).index_add_(
                0, inverse, torch.ones(inverse.numel(), dtype=torch.float64))  # (L,)
            hits = torch.zeros(len(names), correct.shape[1], dtype=torch.float64).index_add_(
                0, inverse, correct)  # (L, T)
            table = self._sums.setdefault(name, {})
            for code, label in enumerate(names):
                sums = table.setdefault(label, _Sums(len(self.keys)))
                sums.pairs += 1
                sums.keypoints += int(count[code])
                pair_pck = hits[code] / count[code]
                sums.pair_sum += pair_pck
                sums.hits += hits[code]
                cell = sums.by_category.setdefault(category, [0, torch.zeros_like(pair_pck)])
                cell[0] += 1
                cell[1] += pair_pck

    def summary(self) -> dict[str, Any]:
        """``{breakdown: {label: {"pairs", "keypoints", threshold: {"per_image",
        "per_keypoint"}}}}`` with PCK in [0, 1], labels sorted."""
        out: dict[str, Any] = {}
        for name in sorted(self._sums):
            table = self._sums[name]
            out[name] = {}
            for label in sorted(table):
                sums = table[label]
                per_image = sums.per_image(self.average)
                per_keypoint = sums.hits / sums.keypoints
                out[name][label] = {
                    "pairs": sums.pairs,
                    "keypoints": sums.keypoints,
                    **{k: {"per_image": float(per_image[i]),
                           "per_keypoint": float(per_keypoint[i])}
                       for i, k in enumerate(self.keys)},
                }
        return out


def _codes(labels: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Distinct labels (sorted) and each row's index among them ``(n,)``."""
    names, inverse = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    return names.tolist(), torch.from_numpy(inverse.reshape(-1).astype(np.int64))


def group_tables(groups: Mapping[str, Any], keys: Sequence[str]) -> str:
    """Markdown tables of a :meth:`GroupAccumulator.summary` (PCK in %), one per breakdown."""
    lines: list[str] = []
    for name, table in groups.items():
        lines += [f"### by {name.replace('_', ' ')}", "",
                  "| label | pairs | keypoints | " + " | ".join(
                      f"PCK@{k} img / kpt" for k in keys) + " |",
                  "|---|---:|---:|" + "---:|" * len(keys)]
        for label, leaf in table.items():
            cells = [f"{100 * leaf[k]['per_image']:.1f} / {100 * leaf[k]['per_keypoint']:.1f}"
                     for k in keys]
            lines.append(f"| {label} | {leaf['pairs']} | {leaf['keypoints']} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)

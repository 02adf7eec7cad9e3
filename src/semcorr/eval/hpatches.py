"""HPatches sequences: mean matching accuracy of local features, as D2-Net and R2D2 report it.

Layout (``hpatches-sequences-release``)::

    ROOT/v_<name>/1.ppm .. 6.ppm, H_1_2 .. H_1_6     viewpoint sequences
    ROOT/i_<name>/1.ppm .. 6.ppm, H_1_2 .. H_1_6     illumination sequences

``H_1_k`` maps pixels of image 1 to image ``k``. The protocol of D2-Net's
``hpatches_sequences`` evaluation, which R2D2 reuses:

* the 8 sequences with images larger than 1200 x 1600 are left out (``i_contruction``,
  ``i_crownnight``, ``i_dc``, ``i_pencils``, ``i_whitebuilding``, ``v_artisans``,
  ``v_astronautis``, ``v_talent``), leaving 108 (52 illumination, 56 viewpoint);
* each sequence gives the 5 pairs (1, k), k = 2..6;
* matches are mutual nearest neighbours of the descriptors (no ratio test);
* a match is correct when keypoint 1 mapped by ``H_1_k`` is within ``t`` pixels (``<=``) of
  its partner, for t = 1..10; a pair's accuracy is its share of correct matches;
* MMA@t of a split is the mean over its pairs (every sequence has 5, so this is also the mean
  of the per-sequence means); "overall" is the mean over all pairs.

A pair without any match counts as 0 (D2-Net's mean of an empty array would be ``nan``).
R2D2's published row (``r2d2_WASF_N16.pt``: MMA@3 0.721 overall) uses the multi-scale
extraction with the top 5000 keypoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from semcorr.errors import InputError
from semcorr.eval.homography import (
    DEFAULT_THRESHOLDS,
    evaluate_pair,
    mean_matching_accuracy,
    read_homography,
)

__all__ = ["HIGH_RESOLUTION", "SPLITS", "evaluate_hpatches", "list_sequences"]

#: Sequences D2-Net's protocol leaves out (images larger than 1200 x 1600).
HIGH_RESOLUTION = ("i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
                   "v_artisans", "v_astronautis", "v_talent")
#: Split name by sequence prefix.
SPLITS = {"v": "viewpoint", "i": "illumination"}
_TARGETS = (2, 3, 4, 5, 6)


def list_sequences(root: str | os.PathLike[str], exclude: Sequence[str] = HIGH_RESOLUTION
                   ) -> list[Path]:
    """The sequence folders (``v_*``, ``i_*``) of ``root``, sorted, minus ``exclude``.

    Raises:
        InputError: when ``root`` has no sequence, or a sequence misses a file (named).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such HPatches folder")
    sequences = sorted(p for p in root.iterdir() if p.is_dir() and p.name[:2] in ("v_", "i_")
                       and p.name not in exclude)
    if not sequences:
        raise InputError(f"{root}: no HPatches sequences (v_*/ or i_*/ folders)")
    for folder in sequences:
        needed = [f"{k}.ppm" for k in (1, *_TARGETS)] + [f"H_1_{k}" for k in _TARGETS]
        missing = [name for name in needed if not (folder / name).is_file()]
        if missing:
            raise InputError(f"{folder}: missing {', '.join(missing)}")
    return sequences


def evaluate_hpatches(
    extract: Callable[[Path], dict[str, torch.Tensor]],
    root: str | os.PathLike[str],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    exclude: Sequence[str] = HIGH_RESOLUTION,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """MMA of a local-feature extractor on HPatches (see the module docstring).

    Args:
        extract: image path → ``keypoints`` ``(N, 2+)`` and ``descriptors`` ``(N, D)``.
        root: the ``hpatches-sequences-release`` folder.
        thresholds: in pixels.
        exclude: sequence names left out.
        progress: called with each sequence's name before it is evaluated.

    Returns:
        ``{"thresholds", "mma": {"viewpoint", "illumination", "overall": [T floats]},
        "sequences": {split: count}, "pairs": {"<seq>/1-<k>": {"mma", "matches",
        "keypoints"}}}``; a split without sequences is absent from ``mma``.
    """
    sequences = list_sequences(root, exclude)
    per_split: dict[str, list[torch.Tensor]] = {name: [] for name in SPLITS.values()}
    pairs: dict[str, Any] = {}
    for folder in sequences:
        if progress is not None:
            progress(folder.name)
        homographies = {k: read_homography(folder / f"H_1_{k}") for k in _TARGETS}
        first = extract(folder / "1.ppm")
        for k in _TARGETS:
            result = evaluate_pair(first, extract(folder / f"{k}.ppm"), homographies[k],
                                   thresholds, f"{folder.name}/1-{k}")
            per_split[SPLITS[folder.name[0]]].append(result.accuracy)
            pairs[result.name] = {"mma": result.accuracy.tolist(),
                                  "matches": result.num_matches,
                                  "keypoints": list(result.num_keypoints)}
    mma = {split: mean_matching_accuracy(values).tolist()
           for split, values in per_split.items() if values}
    mma["overall"] = mean_matching_accuracy(
        [v for values in per_split.values() for v in values]).tolist()
    counts = {split: sum(SPLITS[f.name[0]] == split for f in sequences)
              for split in SPLITS.values()}
    return {"thresholds": list(thresholds), "mma": mma, "sequences": counts, "pairs": pairs}

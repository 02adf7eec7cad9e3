"""CUB-200-2011 (Wah et al., 2011) keypoints in the official layout.

::

    ROOT/images.txt                 <image_id> <class_folder>/<file>.jpg
    ROOT/image_class_labels.txt     <image_id> <class_id>
    ROOT/classes.txt                <class_id> <class_name>
    ROOT/train_test_split.txt       <image_id> <is_training_image>
    ROOT/bounding_boxes.txt         <image_id> <x> <y> <width> <height>
    ROOT/parts/parts.txt            <part_id> <part name>          (15 parts)
    ROOT/parts/part_locs.txt        <image_id> <part_id> <x> <y> <visible>
    ROOT/images/<class_folder>/<file>.jpg

CUB has no official pair list. Pairs come either from a ``pairs`` file (one
``<source_image_id> <target_image_id>`` per line) or are drawn per class from the split's
images with a local, seeded generator: ``pairs_per_class`` ordered pairs of distinct images with
at least ``min_common`` keypoints visible in both. PCK uses α times the larger side of the
target bounding box. Left/right partners: eyes, legs, wings (parts 7/11, 8/12, 9/13); the same
pairs are the symmetry groups of the geometry-aware subset (GeoAware-SC defines none for CUB).
Coordinates are used as annotated.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from semcorr.data.base import (
    PairDataset,
    PairSample,
    flip_permutation_from_pairs,
    group_ids_from_groups,
    image_size,
    register_dataset,
    require_dir,
    require_file,
)
from semcorr.errors import InputError

__all__ = ["CUB200", "CUB_FLIP_PAIRS"]

#: Left/right partner part ids, 0-based (left/right eye, leg, wing).
CUB_FLIP_PAIRS = ((6, 10), (7, 11), (8, 12))


def _table(path: Path, columns: int) -> list[list[str]]:
    require_file(path, "file of the CUB-200-2011 layout")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=columns - 1)
        if len(parts) != columns:
            raise InputError(f"{path}: line {number}: expected {columns} fields")
        rows.append(parts)
    return rows


def _ints(rows: list[list[str]], path: Path) -> dict[int, list[str]]:
    try:
        return {int(r[0]): r[1:] for r in rows}
    except ValueError:
        raise InputError(f"{path}: image ids must be integers") from None


class CUB200(PairDataset):
    """CUB-200-2011 keypoint-transfer pairs.

    Args:
        root: the ``CUB_200_2011`` folder.
        split: ``test`` or ``train`` (from ``train_test_split.txt``).
        pairs: optional file of ``<source_id> <target_id>`` lines (overrides sampling).
        pairs_per_class: pairs drawn per class when ``pairs`` is not given.
        min_common: least number of keypoints visible in both images of a drawn pair.
        seed: seed of the local generator that draws the pairs.
        category: restrict to one class name (e.g. ``001.Black_footed_Albatross``).
    """

    name = "cub"
    protocol = {"normalisation": "bbox", "average": "pairs"}

    def __init__(
        self,
        root: Path,
        split: str = "test",
        pairs: str | Path | None = None,
        pairs_per_class: int = 25,
        min_common: int = 3,
        seed: int = 0,
        category: str | None = None,
    ) -> None:
        split = "train" if split == "trn" else split
        if split not in ("train", "test"):
            raise InputError(f"cub split must be train or test, not {split!r}")
        self.root = require_dir(Path(root), "CUB-200-2011 folder")
        self.split = split
        require_dir(self.root / "images", "folder of the CUB-200-2011 layout")
        self._load_tables()
        chosen = [
            i
            for i in self._ids
            if self._training[i] == (split == "train")
            and (category is None or self._category[i] == category)
        ]
        if pairs is not None:
            self._pairs = self._read_pairs(Path(pairs))
        else:
            self._pairs = self._draw_pairs(chosen, pairs_per_class, min_common, seed)

    def _load_tables(self) -> None:
        root = self.root
        images = _ints(_table(root / "images.txt", 2), root / "images.txt")
        labels = _ints(_table(root / "image_class_labels.txt", 2), root / "image_class_labels.txt")
        classes = {r[0]: r[1] for r in _table(root / "classes.txt", 2)}
        split = _ints(_table(root / "train_test_split.txt", 2), root / "train_test_split.txt")
        boxes = _ints(_table(root / "bounding_boxes.txt", 5), root / "bounding_boxes.txt")
        parts = _table(root / "parts" / "parts.txt", 2)
        locs_path = root / "parts" / "part_locs.txt"
        loc_rows = _table(locs_path, 5)
        try:
            locs = torch.tensor([[float(v) for v in r] for r in loc_rows])
        except ValueError:
            raise InputError(f"{locs_path}: expected numbers only") from None
        self._ids = sorted(images)
        missing = [i for i in self._ids if i not in labels or i not in split or i not in boxes]
        if missing:
            raise InputError(f"{root}: image {missing[0]} lacks a class, split or bounding box")
        self._path = {i: root / "images" / images[i][0] for i in self._ids}
        self._category = {i: classes.get(labels[i][0], labels[i][0]) for i in self._ids}
        self._training = {i: split[i][0] == "1" for i in self._ids}
        self._box = {i: [float(v) for v in boxes[i]] for i in self._ids}
        k = len(parts)
        index = {image_id: row for row, image_id in enumerate(self._ids)}
        table = torch.full((len(self._ids), k, 3), -1.0)
        if locs.numel():
            rows = torch.tensor([index.get(int(i), -1) for i in locs[:, 0].tolist()])
            part = locs[:, 1].long() - 1
            ok = (rows >= 0) & (part >= 0) & (part < k)
            table[rows[ok], part[ok]] = locs[ok, 2:5]
        self._row = index
        self._keypoints = table  # (images, K, 3): x, y, visible

    def _points(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self._keypoints[self._row[image_id]]
        visible = entry[:, 2] > 0
        return torch.where(visible[:, None], entry[:, :2], -1.0), visible

    def _read_pairs(self, path: Path) -> list[tuple[int, int]]:
        pairs = []
        for number, fields in enumerate(_table(path, 2), start=1):
            try:
                src, trg = int(fields[0]), int(fields[1])
            except ValueError:
                raise InputError(f"{path}: line {number}: expected two image ids") from None
            if src not in self._row or trg not in self._row:
                raise InputError(f"{path}: line {number}: unknown image id")
            pairs.append((src, trg))
        return pairs

    def _draw_pairs(
        self, ids: list[int], per_class: int, min_common: int, seed: int
    ) -> list[tuple[int, int]]:
        rng = random.Random(seed)
        by_class: dict[str, list[int]] = {}
        for i in ids:
            by_class.setdefault(self._category[i], []).append(i)
        pairs: list[tuple[int, int]] = []
        for name in sorted(by_class):
            members = by_class[name]
            vis = (self._keypoints[[self._row[i] for i in members], :, 2] > 0).float()
            common = vis @ vis.T  # (M, M) keypoints visible in both
            common.fill_diagonal_(-1)
            candidates = (common >= min_common).nonzero().tolist()
            rng.shuffle(candidates)
            pairs.extend((members[a], members[b]) for a, b in sorted(candidates[:per_class]))
        return pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def image_paths(self) -> list[Path]:
        return sorted({self._path[i] for pair in self._pairs for i in pair})

    def sample(self, index: int) -> PairSample:
        src, trg = self._pairs[index]
        src_pts, src_vis = self._points(src)
        trg_pts, trg_vis = self._points(trg)
        k = src_pts.shape[0]
        sx, sy, sw, sh = self._box[src]
        tx, ty, tw, th = self._box[trg]
        return PairSample(
            source_path=self._path[src],
            target_path=self._path[trg],
            source_points=src_pts,
            target_points=trg_pts,
            visible=src_vis & trg_vis,
            category=self._category[trg],
            source_bbox=torch.tensor([sx, sy, sx + sw, sy + sh]),
            target_bbox=torch.tensor([tx, ty, tx + tw, ty + th]),
            source_size=image_size(self._path[src]),
            target_size=image_size(self._path[trg]),
            pck_reference=float(max(tw, th)),
            keypoint_ids=torch.arange(k),
            flip_permutation=flip_permutation_from_pairs(k, CUB_FLIP_PAIRS),
            pair_id=f"{src}-{trg}",
            extra={"source_id": src, "target_id": trg},
            target_visible=trg_vis,
            symmetry_groups=group_ids_from_groups(k, CUB_FLIP_PAIRS),
        )


@register_dataset("cub", "cub-200-2011")
def cub(
    *,
    root: Path,
    split: str = "test",
    pairs: str | Path | None = None,
    pairs_per_class: int = 25,
    min_common: int = 3,
    seed: int = 0,
    category: str | None = None,
) -> CUB200:
    """CUB-200-2011 keypoint pairs (see :class:`CUB200`)."""
    return CUB200(root, split, pairs, pairs_per_class, min_common, seed, category)

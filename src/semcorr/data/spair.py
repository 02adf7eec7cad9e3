"""SPair-71k (Min et al., 2019) in its official layout.

::

    ROOT/JPEGImages/<category>/<name>.jpg
    ROOT/ImageAnnotation/<category>/<name>.json     kps {"0": [x, y] | null, ...}, bndbox, ...
    ROOT/PairAnnotation/{trn,val,test}/<id>-<src>-<trg>:<category>.json
    ROOT/Layout/{large,small}/{trn,val,test}.txt   one pair file name per line, no ".json"
    ROOT/Segmentation/<category>/<name>.png         (optional: instance masks for pose alignment)

Each sample carries every keypoint id of its category; ``visible`` marks those annotated in both
images (read from the image annotations, as GeoAware-SC does). PCK uses α times the larger side
of the **target** bounding box. The left/right partners (for flip-aware matching) and the
symmetry groups (for the geometry-aware subset) are GeoAware-SC's, written as raw SPair keypoint
ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from semcorr.data.base import (
    PairDataset,
    PairSample,
    flip_permutation_from_pairs,
    group_ids_from_groups,
    read_json,
    register_dataset,
    require_dir,
    require_file,
)
from semcorr.errors import InputError

__all__ = ["SPAIR_CATEGORIES", "SPAIR_FLIP_PAIRS", "SPAIR_SYMMETRY_GROUPS", "SPair71k",
           "keypoints_from_annotation", "required_field"]

SPAIR_CATEGORIES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
)  # fmt: skip

#: Left/right partner keypoint ids per category (GeoAware-SC's flip lists, raw ids).
SPAIR_FLIP_PAIRS: dict[str, tuple[tuple[int, int], ...]] = {
    "aeroplane": (
        (4, 5),
        (6, 7),
        (8, 9),
        (10, 11),
        (12, 13),
        (14, 15),
        (16, 17),
        (18, 19),
        (20, 21),
    ),
    "bicycle": ((2, 3), (6, 7), (9, 10)),
    "bird": ((1, 2), (4, 5), (7, 8), (10, 11), (12, 13), (14, 15)),
    "boat": ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)),
    "bottle": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)),
    "bus": (
        (0, 1),
        (2, 3),
        (5, 6),
        (10, 20),
        (13, 23),
        (11, 21),
        (14, 24),
        (12, 22),
        (15, 25),
        (16, 17),
        (26, 27),
        (18, 19),
        (28, 29),
    ),
    "car": (
        (0, 1),
        (2, 3),
        (6, 7),
        (10, 20),
        (13, 23),
        (11, 21),
        (14, 24),
        (12, 22),
        (15, 25),
        (16, 17),
        (26, 27),
        (18, 19),
        (28, 29),
    ),
    "cat": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12)),
    "chair": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13)),
    "cow": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)),
    "dog": ((0, 1), (2, 3), (4, 5), (9, 10), (11, 12)),
    "horse": ((0, 1), (2, 3), (4, 5), (6, 7), (10, 11), (12, 13), (16, 17), (18, 19)),
    "motorbike": ((0, 1), (2, 3)),
    "person": ((0, 1), (2, 3), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)),
    "pottedplant": ((0, 2), (4, 5), (6, 8)),
    "sheep": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)),
    "train": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17)),
    "tvmonitor": ((0, 2), (4, 6), (3, 7), (8, 10), (12, 14), (11, 15)),
}

#: Symmetry groups per category (GeoAware-SC's geometry-aware lists, groups of 2+ ids only).
SPAIR_SYMMETRY_GROUPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "aeroplane": (
        (4, 5),
        (6, 7),
        (8, 9),
        (10, 11),
        (12, 13),
        (14, 15),
        (16, 17),
        (18, 19),
        (20, 21),
    ),
    "bicycle": ((2, 3), (6, 7), (9, 10)),
    "bird": ((1, 2), (10, 11), (12, 13), (14, 15)),
    "boat": ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)),
    "bottle": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)),
    "bus": (
        (0, 1),
        (2, 3, 5, 6),
        (4, 7),
        (10, 13, 20, 23),
        (11, 14, 21, 24),
        (12, 15, 22, 25),
        (16, 17, 26, 27),
        (18, 19, 28, 29),
    ),
    "car": (
        (0, 1),
        (2, 3, 6, 7),
        (4, 8),
        (5, 9),
        (10, 13, 20, 23),
        (11, 14, 21, 24),
        (12, 15, 22, 25),
        (16, 17, 26, 27),
        (18, 19, 28, 29),
    ),
    "cat": ((2, 3), (9, 10, 11, 12)),
    "chair": ((0, 1), (2, 3), (4, 5, 6, 7), (8, 9), (10, 11), (12, 13)),
    "cow": ((2, 3), (9, 10, 11, 12), (15, 16, 17, 18), (19, 20)),
    "dog": ((2, 3), (9, 10, 11, 12)),
    "horse": ((2, 3), (10, 11, 12, 13), (16, 17, 18, 19)),
    "motorbike": ((0, 1), (2, 3)),
    "person": ((8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)),
    "pottedplant": ((0, 1, 2, 3), (4, 5), (6, 8)),
    "sheep": ((2, 3), (9, 10, 11, 12), (15, 16, 17, 18), (19, 20)),
    "train": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17)),
    "tvmonitor": ((0, 2, 4, 6), (1, 3, 5, 7), (8, 10, 12, 14), (9, 11, 13, 15)),
}

SPLITS = ("trn", "val", "test")
_DIFFICULTY = ("viewpoint_variation", "scale_variation", "truncation", "occlusion", "mirror")


def keypoints_from_annotation(kps: dict[str, Any], path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """SPair ``kps`` dict → points ``(K, 2)`` (``-1`` where null) and annotated mask ``(K,)``.

    Raises:
        InputError: naming ``path`` when the keypoint ids are not ``"0"..."K-1"``.
    """
    if not isinstance(kps, dict):
        raise InputError(f"{path}: 'kps' must be an object of id -> [x, y] or null")
    try:
        ids = sorted(int(k) for k in kps)
    except ValueError:
        raise InputError(f"{path}: keypoint ids must be integers") from None
    if ids != list(range(len(ids))):
        raise InputError(f"{path}: keypoint ids must be 0..{len(ids) - 1}")
    values = [kps[str(i)] for i in ids]
    annotated = torch.tensor([v is not None for v in values], dtype=torch.bool)
    try:
        points = torch.tensor(
            [[-1.0, -1.0] if v is None else [float(v[0]), float(v[1])] for v in values],
            dtype=torch.float32,
        ).reshape(-1, 2)
    except (TypeError, IndexError, ValueError):
        raise InputError(f"{path}: a keypoint is not [x, y] or null") from None
    return points, annotated


def required_field(data: dict[str, Any], key: str, path: Path) -> Any:
    """``data[key]``, or an :class:`InputError` naming ``path`` and the missing field."""
    if key not in data:
        raise InputError(f"{path}: missing field {key!r}")
    return data[key]


class SPair71k(PairDataset):
    """SPair-71k pairs of one split.

    Args:
        root: the ``SPair-71k`` folder.
        split: ``trn``, ``val`` or ``test`` (``train`` is accepted for ``trn``).
        layout: ``large`` (the standard benchmark) or ``small``.
        category: restrict to one category.
    """

    name = "spair"
    protocol = {"normalisation": "bbox", "average": "pairs"}

    def __init__(
        self, root: Path, split: str = "test", layout: str = "large", category: str | None = None
    ) -> None:
        split = "trn" if split == "train" else split
        if split not in SPLITS:
            raise InputError(f"spair split must be one of {', '.join(SPLITS)}, not {split!r}")
        self.root = require_dir(Path(root), "SPair-71k folder")
        self.split = split
        for sub in ("JPEGImages", "ImageAnnotation", f"PairAnnotation/{split}"):
            require_dir(self.root / sub, "folder of the SPair-71k layout")
        listing = require_file(self.root / "Layout" / layout / f"{split}.txt", "pair list")
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if category is not None:
            names = [n for n in names if n.endswith(f":{category}")]
        self._names = names
        for name in names:  # fail now, naming the file, rather than hours into a run
            require_file(self._pair_file(name), "pair annotation")

    def _pair_file(self, name: str) -> Path:
        return self.root / "PairAnnotation" / self.split / f"{name}.json"

    def __len__(self) -> int:
        return len(self._names)

    def _image(self, category: str, filename: str) -> tuple[Path, Path]:
        image = self.root / "JPEGImages" / category / filename
        return image, self.root / "ImageAnnotation" / category / f"{Path(filename).stem}.json"

    def _mask(self, category: str, filename: str) -> Path | None:
        path = self.root / "Segmentation" / category / f"{Path(filename).stem}.png"
        return path if path.is_file() else None

    def image_paths(self) -> list[Path]:
        paths: set[Path] = set()
        for name in self._names:  # "<id>-<src>-<trg>:<category>"
            stem, _, category = name.rpartition(":")
            _, src, trg = stem.split("-", 2)
            paths.add(self.root / "JPEGImages" / category / f"{src}.jpg")
            paths.add(self.root / "JPEGImages" / category / f"{trg}.jpg")
        return sorted(paths)

    def sample(self, index: int) -> PairSample:
        path = self._pair_file(self._names[index])
        pair = read_json(path)
        category = str(required_field(pair, "category", path))
        src_image, src_json = self._image(category, str(required_field(pair, "src_imname", path)))
        trg_image, trg_json = self._image(category, str(required_field(pair, "trg_imname", path)))
        src_pts, src_vis = keypoints_from_annotation(
            required_field(read_json(src_json), "kps", src_json), src_json
        )
        trg_pts, trg_vis = keypoints_from_annotation(
            required_field(read_json(trg_json), "kps", trg_json), trg_json
        )
        if src_pts.shape != trg_pts.shape:
            raise InputError(f"{path}: source and target have different keypoint counts")
        k = src_pts.shape[0]
        src_box = torch.tensor(required_field(pair, "src_bndbox", path), dtype=torch.float32)
        trg_box = torch.tensor(required_field(pair, "trg_bndbox", path), dtype=torch.float32)
        src_size = required_field(pair, "src_imsize", path)
        trg_size = required_field(pair, "trg_imsize", path)
        extra = {key: pair[key] for key in (*_DIFFICULTY, "src_pose", "trg_pose") if key in pair}
        return PairSample(
            source_path=src_image,
            target_path=trg_image,
            source_points=src_pts,
            target_points=trg_pts,
            visible=src_vis & trg_vis,
            category=category,
            source_bbox=src_box,
            target_bbox=trg_box,
            source_size=(int(src_size[0]), int(src_size[1])),
            target_size=(int(trg_size[0]), int(trg_size[1])),
            pck_reference=float(max(trg_box[2] - trg_box[0], trg_box[3] - trg_box[1])),
            keypoint_ids=torch.arange(k),
            flip_permutation=flip_permutation_from_pairs(k, SPAIR_FLIP_PAIRS.get(category, ())),
            pair_id=self._names[index],
            extra=extra,
            target_visible=trg_vis,
            symmetry_groups=group_ids_from_groups(k, SPAIR_SYMMETRY_GROUPS.get(category, ())),
            source_mask_path=self._mask(category, src_image.name),
            target_mask_path=self._mask(category, trg_image.name),
        )


@register_dataset("spair", "spair-71k")
def spair(
    *, root: Path, split: str = "test", layout: str = "large", category: str | None = None
) -> SPair71k:
    """SPair-71k from its official layout (see :class:`SPair71k`)."""
    return SPair71k(root, split, layout, category)

"""Your own annotated images: a simple JSON layout or COCO keypoints, pairs within a category.

Simple layout (``ROOT/annotations.json``; image paths relative to ``ROOT``; points in semcorr's
frame, ``(0, 0)`` = centre of the top-left pixel)::

    {"categories": [{"name": "mug", "keypoints": ["handle", "rim_left", "rim_right"],
                     "flip_pairs": [["rim_left", "rim_right"]]}],
     "images": [{"file": "mugs/001.jpg", "category": "mug", "split": "trn",
                 "bbox": [x1, y1, x2, y2],
                 "keypoints": {"handle": [120.0, 88.5], "rim_left": null}}]}

COCO keypoints (``ROOT/annotations.json`` holding ``annotations``; ``file_name`` relative to
``ROOT`` or ``ROOT/images``): one annotation per image is used (the first with keypoints);
``keypoints`` is ``[x, y, v] * K`` with ``v > 0`` = annotated; COCO's continuous coordinates
(``(0, 0)`` = the top-left *corner*) are shifted by -0.5 into semcorr's frame; ``bbox`` is
``[x, y, w, h]``; the split comes from an optional ``split`` field of the image.

An image without a ``split`` belongs to every split. The pairs of a split are the ordered pairs
of distinct images of the same category sharing at least one keypoint, optionally thinned to
``pairs_per_category`` (a deterministic choice). PCK uses α times the larger side of the
target's bbox when given, else of its annotated keypoints' bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semcorr.data.base import (
    PairDataset,
    PairSample,
    flip_permutation_from_pairs,
    read_json,
    register_dataset,
    require_dir,
)
from semcorr.errors import InputError

__all__ = ["AnnotatedImage", "KeypointsJSON", "read_annotations"]

ANNOTATIONS = "annotations.json"
MISSING = -1.0


@dataclass(frozen=True)
class AnnotatedImage:
    """One image of the layout.

    Attributes:
        path: the image file.
        category: its category.
        points: ``(K, 2)`` keypoints of the category, ``(-1, -1)`` where not annotated.
        annotated: ``(K,)`` bool.
        bbox: ``(4,)`` ``x1, y1, x2, y2`` or ``None``.
        split: ``None`` = every split.
    """

    path: Path
    category: str
    points: torch.Tensor
    annotated: torch.Tensor
    bbox: torch.Tensor | None
    split: str | None


#: Keypoint names per category, flip permutation per category, the images.
Layout = tuple[dict[str, list[str]], dict[str, torch.Tensor], list[AnnotatedImage]]


def _point(value: Any, where: str) -> list[float] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) for v in value)):
        raise InputError(f"{where}: a keypoint is [x, y] or null, got {value!r}")
    return [float(value[0]), float(value[1])]


def _bbox(value: Any, where: str, xywh: bool = False) -> torch.Tensor | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise InputError(f"{where}: bbox must hold 4 numbers, got {value!r}")
    box = torch.tensor([float(v) for v in value])
    if xywh:
        box = torch.stack([box[0], box[1], box[0] + box[2], box[1] + box[3]]) - 0.5
    return box


def _simple_layout(data: dict[str, Any], root: Path, file: Path) -> Layout:
    categories: dict[str, list[str]] = {}
    flips: dict[str, torch.Tensor] = {}
    for i, cat in enumerate(data.get("categories", [])):
        where = f"{file}: categories[{i}]"
        if not isinstance(cat, dict) or not isinstance(cat.get("name"), str):
            raise InputError(f"{where}: needs a 'name'")
        names = cat.get("keypoints")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{where}: 'keypoints' must be a list of names")
        categories[cat["name"]] = names
        pairs = [[names.index(a), names.index(b)] for a, b in cat.get("flip_pairs", [])
                 if a in names and b in names]
        flips[cat["name"]] = flip_permutation_from_pairs(len(names), pairs)
    images = []
    for i, item in enumerate(data.get("images", [])):
        where = f"{file}: images[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            raise InputError(f"{where}: needs a 'file'")
        category = item.get("category")
        if category not in categories:
            raise InputError(f"{where}: unknown category {category!r}")
        names = categories[category]
        given = item.get("keypoints", {})
        if not isinstance(given, dict):
            raise InputError(f"{where}: 'keypoints' maps names to [x, y]")
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise InputError(f"{where}: keypoints {unknown} are not in category {category!r}")
        points = [_point(given.get(n), f"{where}.keypoints.{n}") for n in names]
        images.append(_image(root / item["file"], category, points,
                             _bbox(item.get("bbox"), where), item.get("split")))
    return categories, flips, images


def _image(path: Path, category: str, points: list[list[float] | None], bbox: torch.Tensor | None,
           split: Any) -> AnnotatedImage:
    annotated = torch.tensor([p is not None for p in points], dtype=torch.bool)
    coords = torch.tensor([p if p is not None else [MISSING, MISSING] for p in points],
                          dtype=torch.float32).reshape(-1, 2)
    return AnnotatedImage(path, category, coords, annotated, bbox,
                          None if split is None else str(split))


def _coco_layout(data: dict[str, Any], root: Path, file: Path) -> Layout:
    categories: dict[str, list[str]] = {}
    flips: dict[str, torch.Tensor] = {}
    by_id: dict[Any, str] = {}
    for cat in data.get("categories", []):
        if "keypoints" not in cat or "name" not in cat:
            raise InputError(f"{file}: COCO category {cat.get('id')} lacks name/keypoints")
        categories[cat["name"]] = list(cat["keypoints"])
        flips[cat["name"]] = torch.full((len(cat["keypoints"]),), -1, dtype=torch.long)
        by_id[cat.get("id")] = cat["name"]
    files = {img["id"]: img for img in data.get("images", []) if "id" in img}
    images, seen = [], set()
    for i, ann in enumerate(data["annotations"]):
        where = f"{file}: annotations[{i}]"
        if ann.get("image_id") in seen or not ann.get("keypoints"):
            continue
        image = files.get(ann.get("image_id"))
        category = by_id.get(ann.get("category_id"))
        if image is None or category is None:
            raise InputError(f"{where}: unknown image_id or category_id")
        names = categories[category]
        values = ann["keypoints"]
        if len(values) != 3 * len(names):
            raise InputError(f"{where}: {len(values)} keypoint values, expected 3 x {len(names)}")
        triples = torch.tensor(values, dtype=torch.float32).reshape(-1, 3)
        points = [[float(x) - 0.5, float(y) - 0.5] if v > 0 else None
                  for x, y, v in triples.tolist()]
        path = root / image["file_name"]
        if not path.is_file() and (root / "images" / image["file_name"]).is_file():
            path = root / "images" / image["file_name"]
        seen.add(ann["image_id"])
        images.append(_image(path, category, points, _bbox(ann.get("bbox"), where, xywh=True),
                             image.get("split")))
    return categories, flips, images


def read_annotations(root: Path) -> Layout:
    """Categories (keypoint names), flip permutations and images of ``ROOT/annotations.json``.

    Raises:
        InputError: naming the file and the entry that is malformed.
    """
    file = root / ANNOTATIONS
    data = read_json(file)
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise InputError(f"{file}: expected an object with 'categories' and 'images'")
    if "annotations" in data:
        return _coco_layout(data, root, file)
    return _simple_layout(data, root, file)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


@register_dataset("keypoints-json", "coco-keypoints")
class KeypointsJSON(PairDataset):
    """Pairs within each category of user-annotated images (see the module docstring).

    Args:
        root: folder holding ``annotations.json``.
        split: images whose ``split`` equals this (or have none).
        category: restrict to one category.
        pairs_per_category: keep at most this many pairs per category (deterministic).
        seed: seed of that choice.
    """

    name = "keypoints-json"
    protocol = {"normalisation": "bbox (target keypoints' box when none)", "average": "pairs"}

    def __init__(self, root: Path, split: str = "test", category: str | None = None,
                 pairs_per_category: int | None = None, seed: int = 0) -> None:
        self.root = require_dir(Path(root), "annotation folder")
        self.split = split
        categories, self.flips, images = read_annotations(self.root)
        if category is not None and category not in categories:
            raise InputError(f"{self.root / ANNOTATIONS}: no category {category!r}")
        self.images = [im for im in images if (im.split in (None, split))
                       and (category is None or im.category == category)]
        self.pairs = self._pairs(pairs_per_category, seed)

    def _pairs(self, per_category: int | None, seed: int) -> list[tuple[int, int]]:
        pairs: list[tuple[int, int]] = []
        for cat in sorted({im.category for im in self.images}):
            members = [i for i, im in enumerate(self.images) if im.category == cat]
            found = [(a, b) for a in members for b in members if a != b
                     and bool((self.images[a].annotated & self.images[b].annotated).any())]
            if per_category is not None and len(found) > per_category:
                order = torch.randperm(len(found), generator=torch.Generator().manual_seed(seed))
                found = [found[i] for i in sorted(order[:per_category].tolist())]
            pairs.extend(found)
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def image_paths(self) -> list[Path]:
        return sorted({self.images[i].path for pair in self.pairs for i in pair})

    def sample(self, index: int) -> PairSample:
        from semcorr.data.base import image_size
        from semcorr.data.pfwillow import keypoint_extent

        a, b = self.pairs[index]
        src, tgt = self.images[a], self.images[b]
        visible = src.annotated & tgt.annotated
        if tgt.bbox is not None:
            reference = float((tgt.bbox[2:] - tgt.bbox[:2]).max())
        else:
            reference = float(keypoint_extent(tgt.points[tgt.annotated]))
        n = visible.shape[0]
        return PairSample(
            source_path=src.path, target_path=tgt.path,
            source_points=src.points.clone(), target_points=tgt.points.clone(),
            visible=visible, category=src.category, source_bbox=src.bbox, target_bbox=tgt.bbox,
            source_size=image_size(src.path), target_size=image_size(tgt.path),
            pck_reference=reference, keypoint_ids=torch.arange(n),
            flip_permutation=self.flips[src.category].clone(),
            pair_id=f"{src.category}:{_relative(src.path, self.root)}->"
                    f"{_relative(tgt.path, self.root)}",
            target_visible=tgt.annotated.clone(),
        )

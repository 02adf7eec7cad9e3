"""The annotated sources of a transfer job (COCO keypoints or the JSON of ``semcorr match``),
their keypoint schema (names, left/right partners) and the list of target images."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semcorr.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "KeypointSchema",
    "SourceAnnotation",
    "TransferSources",
    "flip_permutation_from_names",
    "list_images",
    "load_annotations",
]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# --- annotations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeypointSchema:
    """The keypoint category being transferred.

    Attributes:
        category: the COCO category dict (``id``, ``name``, ``keypoints``, ``skeleton``, ...).
        flip_permutation: ``(N,)`` left/right partner of each keypoint, ``-1`` for none.
    """

    category: dict[str, Any]
    flip_permutation: tuple[int, ...]

    @property
    def names(self) -> list[str]:
        return list(self.category["keypoints"])

    @property
    def num_keypoints(self) -> int:
        return len(self.category["keypoints"])


@dataclass
class SourceAnnotation:
    """One annotated instance.

    Attributes:
        image: the image file.
        points: ``(N, 2)`` (x, y) in original pixels.
        labelled: ``(N,)`` boolean, False where the annotation has visibility 0.
    """

    image: Path
    points: torch.Tensor
    labelled: torch.Tensor


@dataclass
class TransferSources:
    """The schema and the annotated sources read from one file."""

    schema: KeypointSchema
    sources: list[SourceAnnotation]


_SIDES = (("left", "right"), ("l", "r"))


def flip_permutation_from_names(names: Sequence[str]) -> tuple[int, ...]:
    """Left/right partners from keypoint names (``left_eye`` ↔ ``right_eye``, ``l_knee`` ↔
    ``r_knee``, ``Left Wing`` ↔ ``Right Wing``); ``-1`` where a name has no partner."""
    index = {name.lower(): i for i, name in enumerate(names)}
    perm = []
    for name in names:
        partner = -1
        for a, b in _SIDES:
            for x, y in ((a, b), (b, a)):
                swapped = re.sub(rf"(?<![a-z]){x}(?![a-z])", y, name.lower())
                if swapped != name.lower() and swapped in index:
                    partner = index[swapped]
        perm.append(partner)
    return tuple(perm)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"{path}: no such annotation file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def _resolve(name: str, roots: Sequence[Path]) -> Path:
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate
    for root in roots:
        if (root / candidate).is_file():
            return root / candidate
    return roots[0] / candidate


def _pick_category(path: Path, data: Mapping[str, Any], category: str | None) -> dict[str, Any]:
    cats = [c for c in data.get("categories", []) if isinstance(c, dict) and c.get("keypoints")]
    if not cats:
        raise InputError(f"{path}: no category with a 'keypoints' list")
    for cat in cats:
        names = cat["keypoints"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{path}: category {cat.get('name')!r}: 'keypoints' must be a list "
                             f"of names, got {str(names)[:60]!r}")
    if category is not None:
        chosen = [c for c in cats if str(c.get("name")) == category or str(c.get("id")) == category]
        if not chosen:
            names = ", ".join(str(c.get("name")) for c in cats)
            raise InputError(f"{path}: no keypoint category {category!r} (have: {names})")
        return chosen[0]
    used = {a.get("category_id") for a in data.get("annotations", []) if isinstance(a, dict)}
    cats_used = [c for c in cats if c.get("id") in used] or cats
    if len(cats_used) > 1:
        names = ", ".join(str(c.get("name")) for c in cats_used)
        raise InputError(f"{path}: several keypoint categories ({names}); choose one with "
                         "--category")
    return cats_used[0]


def _coco_sources(
    path: Path, data: Mapping[str, Any], category: str | None, roots: Sequence[Path]
) -> TransferSources:
    cat = _pick_category(path, data, category)
    n = len(cat["keypoints"])
    images = {im.get("id"): im for im in data.get("images", []) if isinstance(im, dict)}
    sources = []
    for k, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict) or ann.get("category_id") != cat.get("id"):
            continue
        image = images.get(ann.get("image_id"))
        if image is None or "file_name" not in image:
            raise InputError(f"{path}: annotation {k} refers to unknown image "
                             f"{ann.get('image_id')!r}")
        kps = ann.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in kps
        ):
            raise InputError(f"{path}: annotation {k} needs 'keypoints' of {3 * n} numbers "
                             f"(x, y, v for each of the {n} keypoints of {cat.get('name')!r})")
        triplets = torch.tensor(kps, dtype=torch.float32).view(n, 3)
        sources.append(SourceAnnotation(_resolve(str(image["file_name"]), roots),
                                        triplets[:, :2].clone(), triplets[:, 2] > 0))
    perm = cat.get("flip_permutation") or flip_permutation_from_names(cat["keypoints"])
    if not (isinstance(perm, (list, tuple)) and len(perm) == n and all(
            isinstance(i, int) and not isinstance(i, bool) and -1 <= i < n for i in perm)):
        raise InputError(f"{path}: category {cat.get('name')!r}: 'flip_permutation' must list, "
                         f"for each of the {n} keypoints, its partner's index in [0, {n}) or "
                         f"-1; got {str(perm)[:60]!r}")
    schema = KeypointSchema(dict(cat), tuple(int(i) for i in perm))
    return TransferSources(schema, sources)


def _simple_sources(path: Path, data: Any, roots: Sequence[Path]) -> TransferSources:
    items = data if isinstance(data, list) else [data]
    sources = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or "source" not in item or "points" not in item:
            raise InputError(f"{path}: entry {k} needs 'source' (image) and 'points' [[x, y], ...]")
        try:
            points = torch.tensor(item["points"], dtype=torch.float32).reshape(-1, 2)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{path}: entry {k}: 'points' must be [[x, y], ...]") from None
        sources.append(SourceAnnotation(_resolve(str(item["source"]), roots), points,
                                        torch.ones(points.shape[0], dtype=torch.bool)))
    counts = {s.points.shape[0] for s in sources}
    if len(counts) != 1:
        raise InputError(f"{path}: every source needs the same number of points, got {counts}")
    n = counts.pop()
    names = [str(i) for i in range(n)]
    category = {"id": 1, "name": "object", "supercategory": "object", "keypoints": names,
                "skeleton": []}
    return TransferSources(KeypointSchema(category, (-1,) * n), sources)


def load_annotations(
    path: str | os.PathLike[str],
    category: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> TransferSources:
    """Read annotated sources from COCO keypoints JSON or the JSON of ``semcorr match``.

    Relative image names are looked up under ``image_root`` (if given), then beside the file.

    Args:
        path: the annotation file.
        category: name or id of the COCO category to transfer (needed when several are used).
        image_root: folder of the source images.

    Raises:
        InputError: naming the file and the problem (missing, not JSON, wrong fields, no
            labelled source, a source image that does not exist).
    """
    path = Path(path)
    data = _read_json(path)
    roots = ([Path(image_root)] if image_root is not None else []) + [path.parent]
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        result = _coco_sources(path, data, category, roots)
    elif isinstance(data, (dict, list)):
        result = _simple_sources(path, data, roots)
    else:
        raise InputError(f"{path}: expected COCO keypoints or semcorr match JSON")
    result.sources = [s for s in result.sources if bool(s.labelled.any())]
    if not result.sources:
        raise InputError(f"{path}: no annotation with a labelled keypoint")
    for source in result.sources:
        if not source.image.is_file():
            raise InputError(f"{path}: source image {source.image} does not exist")
    return result


def list_images(spec: str | os.PathLike[str]) -> list[Path]:
    """Target images: a folder (its image files, sorted) or a text file with one path a line
    (relative paths are relative to the text file).

    Raises:
        InputError: when the folder or list does not exist or holds no image.
    """
    spec = Path(spec)
    if spec.is_dir():
        images = sorted(p for p in spec.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif spec.is_file():
        lines = [line.strip() for line in spec.read_text().splitlines()]
        images = [_resolve(line, [spec.parent]) for line in lines if line and line[0] != "#"]
    else:
        raise InputError(f"{spec}: no such folder or image list")
    if not images:
        raise InputError(f"{spec}: no target images")
    return images

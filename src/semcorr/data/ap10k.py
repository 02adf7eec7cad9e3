"""AP-10K as the GeoAware-SC correspondence benchmark (Zhang et al., CVPR 2024).

GeoAware-SC's preparation (``prepare_ap10k.ipynb``) turns AP-10K into an SPair-like layout::

    ROOT/ImageAnnotation/<family>/<species>/<id, 17 chars>.json
        one COCO annotation merged with its image record: ``keypoints`` (17 x [x, y, v] flat,
        v = 0 absent, 2 visible), ``bbox`` [left, top, width, height], ``width``, ``height``,
        ``name`` (species), ``supercategory`` (family), ...
    ROOT/JPEGImages/<family>/<species>/<same stem>.jpg
    ROOT/PairAnnotation/<split>[_cross_species|_cross_family]/<src>-<trg>:<category>.json
        ``{"src_json_path": ".../ImageAnnotation/...json", "trg_json_path": ...}``

Test subsets: ``intra-species`` (folder ``test``, category = species), ``cross-species``
(``test_cross_species``, category = family) and ``cross-family`` (``test_cross_family``,
category ``all``). PCK uses α times the larger side of the target bounding box.
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
)
from semcorr.errors import InputError

__all__ = ["AP10K", "AP10K_FLIP_PAIRS", "AP10K_KEYPOINTS", "AP10K_SYMMETRY_GROUPS", "SUBSETS"]

AP10K_KEYPOINTS = (
    "left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
    "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip",
    "left_knee", "left_back_paw", "right_hip", "right_knee", "right_back_paw",
)  # fmt: skip

#: Left/right partner keypoint ids (GeoAware-SC's flip list).
AP10K_FLIP_PAIRS = ((0, 1), (5, 8), (6, 9), (12, 15), (7, 10), (13, 16), (11, 14))
#: Symmetry groups (GeoAware-SC's geometry-aware list, groups of 2+ ids only).
AP10K_SYMMETRY_GROUPS = ((5, 8), (6, 9, 12, 15), (7, 10, 13, 16), (11, 14))

#: Subset name → suffix of the pair folder.
SUBSETS = {"intra-species": "", "cross-species": "_cross_species", "cross-family": "_cross_family"}


def keypoints_from_coco(values: Any, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """COCO ``keypoints`` (3K numbers) → points ``(K, 2)`` (``-1`` where absent), mask ``(K,)``."""
    try:
        flat = torch.tensor(values, dtype=torch.float32).reshape(-1, 3)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{path}: 'keypoints' must be a flat list of x, y, v triples") from None
    annotated = flat[:, 2] > 0
    points = torch.where(annotated[:, None], flat[:, :2], torch.full_like(flat[:, :2], -1.0))
    return points, annotated


class AP10K(PairDataset):
    """AP-10K pairs of one split and subset, in GeoAware-SC's layout.

    Args:
        root: the ``ap-10k`` folder.
        split: ``test``, ``val`` or ``trn``.
        subset: ``intra-species``, ``cross-species`` or ``cross-family``.
        category: restrict to one category (species, family or ``all`` by subset).
    """

    name = "ap10k"
    protocol = {"normalisation": "bbox", "average": "pairs"}

    def __init__(
        self,
        root: Path,
        split: str = "test",
        subset: str = "intra-species",
        category: str | None = None,
    ) -> None:
        split = "trn" if split == "train" else split
        if split not in ("trn", "val", "test"):
            raise InputError(f"ap10k split must be trn, val or test, not {split!r}")
        if subset not in SUBSETS:
            raise InputError(f"ap10k subset must be one of {', '.join(SUBSETS)}, not {subset!r}")
        if subset != "intra-species" and split == "trn":
            raise InputError(f"ap10k has no {subset} training pairs")
        self.root = require_dir(Path(root), "AP-10K folder")
        self.split = split
        self.subset = subset
        for sub in ("ImageAnnotation", "JPEGImages"):
            require_dir(self.root / sub, "folder of GeoAware-SC's AP-10K layout")
        self._pairs_dir = require_dir(
            self.root / "PairAnnotation" / f"{split}{SUBSETS[subset]}", "pair folder"
        )
        files = sorted(p.name for p in self._pairs_dir.glob("*.json"))
        if category is not None:
            files = [f for f in files if f.endswith(f":{category}.json")]
        self._files = files

    def __len__(self) -> int:
        return len(self._files)

    def _local(self, stored: str, path: Path) -> tuple[Path, Path]:
        """Annotation and image paths under ROOT for a path stored by the preparation."""
        marker = "ImageAnnotation/"
        text = str(stored).replace("\\", "/")
        if marker not in text:
            raise InputError(f"{path}: {stored!r} is not under an ImageAnnotation folder")
        relative = Path(text.split(marker, 1)[1])
        return (
            self.root / "ImageAnnotation" / relative,
            self.root / "JPEGImages" / relative.with_suffix(".jpg"),
        )

    def _pair(self, index: int) -> tuple[Path, Path, Path, Path, Path]:
        path = self._pairs_dir / self._files[index]
        pair = read_json(path)
        if not isinstance(pair, dict) or not {"src_json_path", "trg_json_path"} <= set(pair):
            raise InputError(f"{path}: expected 'src_json_path' and 'trg_json_path'")
        return (
            path,
            *self._local(pair["src_json_path"], path),
            *self._local(pair["trg_json_path"], path),
        )

    def image_paths(self) -> list[Path]:
        images: set[Path] = set()
        for index in range(len(self)):
            _, _, src_image, _, trg_image = self._pair(index)
            images.update((src_image, trg_image))
        return sorted(images)

    @staticmethod
    def _bbox(record: dict[str, Any], path: Path) -> torch.Tensor:
        try:
            left, top, width, height = (float(v) for v in record["bbox"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: expected 'bbox' = [left, top, width, height]") from None
        return torch.tensor([left, top, left + width, top + height])

    @staticmethod
    def _size(record: dict[str, Any], path: Path) -> tuple[int, int]:
        try:
            return int(record["width"]), int(record["height"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: expected integer 'width' and 'height'") from None

    def sample(self, index: int) -> PairSample:
        path, src_json, src_image, trg_json, trg_image = self._pair(index)
        src, trg = read_json(src_json), read_json(trg_json)
        src_pts, src_vis = keypoints_from_coco(src.get("keypoints"), src_json)
        trg_pts, trg_vis = keypoints_from_coco(trg.get("keypoints"), trg_json)
        if src_pts.shape != trg_pts.shape:
            raise InputError(f"{path}: source and target have different keypoint counts")
        k = src_pts.shape[0]
        src_box, trg_box = self._bbox(src, src_json), self._bbox(trg, trg_json)
        category = self._files[index].rsplit(":", 1)[-1].removesuffix(".json")
        return PairSample(
            source_path=src_image,
            target_path=trg_image,
            source_points=src_pts,
            target_points=trg_pts,
            visible=src_vis & trg_vis,
            category=category,
            source_bbox=src_box,
            target_bbox=trg_box,
            source_size=self._size(src, src_json),
            target_size=self._size(trg, trg_json),
            pck_reference=float(max(trg_box[2] - trg_box[0], trg_box[3] - trg_box[1])),
            keypoint_ids=torch.arange(k),
            flip_permutation=flip_permutation_from_pairs(k, AP10K_FLIP_PAIRS),
            pair_id=self._files[index].removesuffix(".json"),
            extra={
                "subset": self.subset,
                "source_species": src.get("name"),
                "target_species": trg.get("name"),
                "source_family": src.get("supercategory"),
                "target_family": trg.get("supercategory"),
            },
            target_visible=trg_vis,
            symmetry_groups=group_ids_from_groups(k, AP10K_SYMMETRY_GROUPS),
        )


@register_dataset("ap10k", "ap-10k")
def ap10k(
    *, root: Path, split: str = "test", subset: str = "intra-species", category: str | None = None
) -> AP10K:
    """AP-10K in GeoAware-SC's benchmark layout (see :class:`AP10K`)."""
    return AP10K(root, split, subset, category)

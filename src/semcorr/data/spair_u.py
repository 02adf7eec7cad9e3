"""SPair-U (Mariotti et al., "Jamais Vu", NeurIPS 2025): SPair-71k's test pairs annotated with
new keypoints, as released in VICO-UoE/JamaisVu.

::

    ROOT/JPEGImages/<category>/<name>.jpg                  SPair-71k's images
    ROOT/ImageAnnotation/<category>/<name>.json            SPair-71k's keypoints ("seen")
    EXTRA/ExtraPairAnnotation/test/<id>-<src>-<trg>:<category>.json
    EXTRA/ExtraImageAnnotation/<category>/<name>.json      the new keypoints ("unseen")

``ROOT`` is the SPair-71k folder; ``EXTRA`` is ``ROOT`` itself (where the released code reads the
Extra* folders) or a sibling ``SPair-U`` (where its README unpacks them). Pairs are found by glob,
not from SPair's Layout lists, sorted by category then file name (the released loader's order).

Each sample holds SPair-71k's own keypoints of the pair ("seen", the ids supervised heads are
trained on) followed by the new ones ("unseen"); ``extra["keypoint_groups"]["keypoint_set"]``
labels every row and the headline is the unseen set (the paper's SPair-U figure). A keypoint
counts when it is annotated in both images. The new ids reuse 0..29: a row is unseen because of
the file it comes from, and its ``keypoint_ids`` entry is :data:`UNSEEN_ID_OFFSET` plus its id so
that per-id tables never merge a new keypoint with an old one. SPair's left/right partners and
symmetry groups are never applied to the new rows (``flip_permutation`` and ``symmetry_groups``
``-1``). PCK uses α times the larger side of the target box of the Extra pair file (as
Jamais Vu's ``load_spair_data``).
"""

from __future__ import annotations

from pathlib import Path

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
from semcorr.data.spair import (
    SPAIR_FLIP_PAIRS,
    SPAIR_SYMMETRY_GROUPS,
    keypoints_from_annotation,
)
from semcorr.errors import InputError
from semcorr.eval.groups import GROUPS_KEY, HEADLINE_KEY

__all__ = ["EXTRA_FOLDERS", "KEYPOINT_SET", "UNSEEN_ID_OFFSET", "SPairU", "find_extra_root"]

#: The folders SPair-U adds.
EXTRA_FOLDERS = ("ExtraPairAnnotation", "ExtraImageAnnotation")
#: ``keypoint_ids`` of an unseen row: this offset plus its SPair-U id.
UNSEEN_ID_OFFSET = 100
#: The breakdown name of the seen/unseen labels.
KEYPOINT_SET = "keypoint_set"
_DIFFICULTY = ("viewpoint_variation", "scale_variation", "truncation", "occlusion", "mirror")


def find_extra_root(root: Path) -> Path | None:
    """The folder holding SPair-U's Extra* folders: ``root`` or its sibling ``SPair-U``."""
    for candidate in (root, root.parent / "SPair-U"):
        if all((candidate / name).is_dir() for name in EXTRA_FOLDERS):
            return candidate
    return None


def _field(data: dict, key: str, path: Path) -> object:
    if key not in data:
        raise InputError(f"{path}: missing field {key!r}")
    return data[key]


class SPairU(PairDataset):
    """SPair-U pairs: SPair-71k's keypoints (seen) and SPair-U's (unseen) per pair.

    Args:
        root: the ``SPair-71k`` folder.
        split: ``test`` (the only split SPair-U annotates).
        category: restrict to one category.
    """

    name = "spair-u"
    protocol = {"normalisation": "bbox", "average": "pairs"}

    def __init__(self, root: Path, split: str = "test", category: str | None = None) -> None:
        self.root = require_dir(Path(root), "SPair-71k folder")
        for sub in ("JPEGImages", "ImageAnnotation"):
            require_dir(self.root / sub, "folder of the SPair-71k layout")
        extra = find_extra_root(self.root)
        if extra is None:
            raise InputError(
                f"{self.root}: SPair-U's {' and '.join(EXTRA_FOLDERS)} are neither in this "
                f"SPair-71k folder nor in {self.root.parent / 'SPair-U'}; get them with "
                f"'semcorr data prepare spair-u --root {self.root}'")
        self.extra_root = extra
        self.split = split
        folder = require_dir(extra / "ExtraPairAnnotation" / split, f"SPair-U {split} pairs")
        pattern = "*:*.json" if category is None else f"*:{category}.json"
        files = sorted(folder.glob(pattern), key=lambda p: (p.stem.rpartition(":")[2], p.name))
        self._files = files

    def __len__(self) -> int:
        return len(self._files)

    def image_paths(self) -> list[Path]:
        paths: set[Path] = set()
        for path in self._files:  # "<id>-<src>-<trg>:<category>"
            stem, _, category = path.stem.rpartition(":")
            _, src, trg = stem.split("-", 2)
            paths |= {self.root / "JPEGImages" / category / f"{n}.jpg" for n in (src, trg)}
        return sorted(paths)

    def _keypoints(self, folder: Path, category: str, image: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, 2)`` points and ``(K,)`` annotated mask of one image's annotation file."""
        path = folder / category / f"{Path(image).stem}.json"
        return keypoints_from_annotation(_field(read_json(path), "kps", path), path)

    def sample(self, index: int) -> PairSample:
        path = self._files[index]
        pair = read_json(path)
        category = str(_field(pair, "category", path))
        names = [str(_field(pair, key, path)) for key in ("src_imname", "trg_imname")]
        seen = [self._keypoints(self.root / "ImageAnnotation", category, n) for n in names]
        unseen = [self._keypoints(self.extra_root / "ExtraImageAnnotation", category, n)
                  for n in names]
        for label, (src, trg) in (("ImageAnnotation", seen), ("ExtraImageAnnotation", unseen)):
            if src[0].shape != trg[0].shape:
                raise InputError(f"{path}: the two images' {label} files have different "
                                 "keypoint counts")
        k_seen, k_unseen = seen[0][0].shape[0], unseen[0][0].shape[0]
        src_pts, trg_pts = (torch.cat([seen[i][0], unseen[i][0]]) for i in (0, 1))
        src_vis, trg_vis = (torch.cat([seen[i][1], unseen[i][1]]) for i in (0, 1))
        no_partner = torch.full((k_unseen,), -1, dtype=torch.long)
        src_box = torch.tensor(_field(pair, "src_bndbox", path), dtype=torch.float32)
        trg_box = torch.tensor(_field(pair, "trg_bndbox", path), dtype=torch.float32)
        sizes = [_field(pair, key, path) for key in ("src_imsize", "trg_imsize")]
        extra: dict[str, object] = {key: pair[key] for key in (*_DIFFICULTY, "src_pose",
                                                                "trg_pose") if key in pair}
        extra[GROUPS_KEY] = {KEYPOINT_SET: ["seen"] * k_seen + ["unseen"] * k_unseen}
        extra[HEADLINE_KEY] = (KEYPOINT_SET, "unseen")
        return PairSample(
            source_path=self.root / "JPEGImages" / category / names[0],
            target_path=self.root / "JPEGImages" / category / names[1],
            source_points=src_pts,
            target_points=trg_pts,
            visible=src_vis & trg_vis,
            category=category,
            source_bbox=src_box,
            target_bbox=trg_box,
            source_size=(int(sizes[0][0]), int(sizes[0][1])),
            target_size=(int(sizes[1][0]), int(sizes[1][1])),
            pck_reference=float(max(trg_box[2] - trg_box[0], trg_box[3] - trg_box[1])),
            keypoint_ids=torch.cat([torch.arange(k_seen), UNSEEN_ID_OFFSET
                                    + torch.arange(k_unseen)]),
            flip_permutation=torch.cat([flip_permutation_from_pairs(
                k_seen, SPAIR_FLIP_PAIRS.get(category, ())), no_partner]),
            pair_id=f"{self.split}/{path.stem}",
            extra=extra,
            target_visible=trg_vis,
            symmetry_groups=torch.cat([group_ids_from_groups(
                k_seen, SPAIR_SYMMETRY_GROUPS.get(category, ())), no_partner]),
        )


@register_dataset("spair-u")
def spair_u(*, root: Path, split: str = "test", category: str | None = None) -> SPairU:
    """SPair-U from SPair-71k's folder plus the released Extra* folders (see :class:`SPairU`)."""
    return SPairU(root, split, category)

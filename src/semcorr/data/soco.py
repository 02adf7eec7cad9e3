"""SOCO (Dünkel et al., 2026, "Benchmarking Semantic Object Correspondence") in its layout.

Layout (GenIntel/SOCO ``docs/dataset_structure.md``, ``soco/data.py``; data on Hugging Face
``GenIntelLab/SOCO``, CC BY 4.0)::

    ROOT/Images/<category>/*.JPEG
    ROOT/PairAnnotations/intra/<category>/*.json        within-category pairs (SOC)
    ROOT/PairAnnotations/cross/<pair-group>/*.json      across categories (Cross-SOC)
    ROOT/PairAnnotations/trainsplits/{train,test}/<category>/*.json   probe splits of intra
    ROOT/KeypointAnnotations/, ROOT/Metadata/            (not needed for PCK)

One pair file: ``pair_id``, ``pair_group``, ``src_category``/``trg_category`` (or
``category``), ``src_image``/``trg_image`` (names inside ``Images/<category>/``),
``src_imsize``/``trg_imsize`` ``[w, h]``, ``src_bndbox``/``trg_bndbox`` ``[l, t, r, b]``,
``src_keypoints``/``trg_keypoints`` (``id``, ``name``, ``pos`` = [x, y], ``concept_id``,
``concept_name``, ``kind``), ``semantic_overlap`` (names matched one to one) and
``concept_matches`` (``concept_name``, ``src_keypoints``, ``trg_keypoints``: every target name
of the group is a correct match of every source name).

Rows: first one per ``semantic_overlap`` name, source and target point of that name (SOC on
intra pairs, Cross-SOC on cross pairs: ``extra["keypoint_groups"]["correspondence_type"]``, and
``keypoint_kind`` from ``kind`` when every keypoint has one). Then one row per source point of
the concept correspondences (CC on intra pairs, Cross-CC on cross pairs), as the official
script scores them (``_pck``): a source point's correct targets are every target of every
``concept_matches`` group that lists it (merged over groups), in the order of
``trg_keypoints``; ``extra["target_alternatives"]`` holds each row's correct targets (one for
SOC rows), ``target_points`` the first. A row is correct when it is within reach of any of them.
Each pair also carries its groups in ``extra["concept_matches"]``. The headline ``pck`` is SOC's
(``extra["headline_group"]``; Cross-SOC's when only cross pairs are loaded); every row's PCK
(SOC and CC) is pooled in ``pck_all_keypoints``.

Protocol: ``--protocol soco`` (:mod:`semcorr.eval.protocols`, the default) is
``scripts/evaluate_dinov2.py``'s: whole-pixel ground truth in the padded square, ``distance <
α · max side of the target box`` (``[l, t, r, b]``; the larger image side when there is no box),
per pair, then per ``pair_group``, then over groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from semcorr.data.base import (
    ALTERNATIVES_KEY,
    GROUPS_KEY,
    HEADLINE_KEY,
    PairDataset,
    PairSample,
    read_json,
    register_dataset,
    require_dir,
)
from semcorr.errors import InputError

__all__ = ["PAIR_FOLDERS", "SOCO", "check_soco"]

#: ``pairs=`` → folder under ``PairAnnotations`` (``both`` = intra then cross).
PAIR_FOLDERS = {"intra": "intra", "cross": "cross", "train": "trainsplits/train",
                "test": "trainsplits/test"}


def _points(items: Any, names: list[str], path: Path, side: str) -> tuple[torch.Tensor, list]:
    """``(N, 2)`` positions of ``names`` among ``items`` and the matching records."""
    by_name = {str(item["name"]): item for item in items}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"{path}: {side} keypoint {missing[0]!r} is matched but not listed")
    records = [by_name[n] for n in names]
    points = torch.tensor([[float(v) for v in r["pos"]] for r in records], dtype=torch.float32)
    return points.reshape(-1, 2), records


def _concept_rows(data: dict[str, Any], path: Path) -> tuple[list[int], list[list[int]]]:
    """CC rows: source indices (order of first mention) and each one's target indices (sorted),
    merged over the ``concept_matches`` groups that list it."""
    src = {str(k["name"]): i for i, k in enumerate(data["src_keypoints"])}
    trg = {str(k["name"]): i for i, k in enumerate(data["trg_keypoints"])}
    targets: dict[int, set[int]] = {}
    try:
        for group in data.get("concept_matches", []):
            wanted = {trg[str(n)] for n in group["trg_keypoints"]}
            for name in group["src_keypoints"]:
                targets.setdefault(src[str(name)], set()).update(wanted)
    except KeyError as exc:
        raise InputError(f"{path}: concept match names {exc} that is not listed") from None
    rows = [i for i, found in targets.items() if found]
    return rows, [sorted(targets[i]) for i in rows]


def _concepts(data: dict[str, Any]) -> list[dict[str, Any]]:
    """CC groups as points: ``[{"concept", "source": [[x, y], ...], "target": [...]}]``."""
    src = {str(k["name"]): [float(v) for v in k["pos"]] for k in data["src_keypoints"]}
    trg = {str(k["name"]): [float(v) for v in k["pos"]] for k in data["trg_keypoints"]}
    return [{"concept": str(g["concept_name"]),
             "source": [src[str(n)] for n in g["src_keypoints"]],
             "target": [trg[str(n)] for n in g["trg_keypoints"]]}
            for g in data.get("concept_matches", [])]


class SOCO(PairDataset):
    """SOCO pairs of one or both released sets.

    Args:
        root: the ``SOCOv1`` folder.
        split: ``test`` (the released evaluation pairs).
        pairs: ``both`` (intra, then cross), ``intra``, ``cross``, or the probe splits
            ``train`` / ``test`` (subsets of intra).
        category: restrict to one pair group (category for intra pairs).
    """

    name = "soco"
    protocol = {"normalisation": "bbox", "average": "categories"}

    def __init__(self, root: Path, split: str = "test", pairs: str = "both",
                 category: str | None = None) -> None:
        self.root = require_dir(Path(root), "SOCO folder")
        if split != "test":
            raise InputError(f"soco split must be 'test', not {split!r} (probe splits: pairs=)")
        if pairs not in (*PAIR_FOLDERS, "both"):
            raise InputError(f"soco pairs must be both, {', '.join(PAIR_FOLDERS)}, not {pairs!r}")
        self.split, self.pairs = split, pairs
        self._images = require_dir(self.root / "Images", "SOCO image folder")
        kinds = ("intra", "cross") if pairs == "both" else (pairs,)
        self._files: list[tuple[str, Path]] = []
        for kind in kinds:
            folder = require_dir(self.root / "PairAnnotations" / PAIR_FOLDERS[kind],
                                 "SOCO pair folder")
            groups = sorted(p.name for p in folder.iterdir() if p.is_dir())
            for group in groups if category is None else [g for g in groups if g == category]:
                self._files += [(kind, p) for p in sorted((folder / group).glob("*.json"))]
        #: SOCO's main figure is SOC (intra pairs); Cross-SOC when only cross pairs are loaded.
        self._headline = "Cross-SOC" if pairs == "cross" else "SOC"

    def __len__(self) -> int:
        return len(self._files)

    def _image(self, data: dict[str, Any], side: str) -> Path:
        category = data.get(f"{side}_category") or data.get("category")
        return self._images / str(category) / str(data[f"{side}_image"])

    def image_paths(self) -> list[Path]:
        images: set[Path] = set()
        for _, path in self._files:
            data = read_json(path)
            images.update((self._image(data, "src"), self._image(data, "trg")))
        return sorted(images)

    def sample(self, index: int) -> PairSample:
        kind, path = self._files[index]
        data = read_json(path)
        names = [str(n) for n in data["semantic_overlap"]]
        src_pts, src_records = _points(data["src_keypoints"], names, path, "source")
        trg_pts, _ = _points(data["trg_keypoints"], names, path, "target")
        cc_rows, cc_targets = _concept_rows(data, path)
        src_all, trg_all = _all_points(data["src_keypoints"]), _all_points(data["trg_keypoints"])
        src_records += [data["src_keypoints"][i] for i in cc_rows]
        alternatives = ([[p] for p in trg_pts.tolist()]
                        + [trg_all[t].tolist() for t in cc_targets])
        src_pts = torch.cat([src_pts, src_all[cc_rows].reshape(-1, 2)])
        trg_pts = torch.cat([trg_pts, torch.tensor([a[0] for a in alternatives[len(names):]],
                                                   dtype=torch.float32).reshape(-1, 2)])
        src_box, trg_box = (_box(data.get(f"{s}_bndbox"), path) for s in ("src", "trg"))
        trg_size = _size(data, "trg", path)
        group = str(data.get("pair_group") or data.get("category"))
        n = len(src_records)
        prefix = "Cross-" if kind == "cross" else ""
        groups = {"correspondence_type": [f"{prefix}SOC"] * len(names)
                  + [f"{prefix}CC"] * len(cc_rows)}
        if src_records and all("kind" in r for r in src_records):
            groups["keypoint_kind"] = [str(r["kind"]) for r in src_records]
        return PairSample(
            source_path=self._image(data, "src"),
            target_path=self._image(data, "trg"),
            source_points=src_pts,
            target_points=trg_pts,
            visible=torch.ones(n, dtype=torch.bool),
            category=f"cross:{group}" if kind == "cross" else group,
            source_bbox=src_box,
            target_bbox=trg_box,
            source_size=_size(data, "src", path),
            target_size=trg_size,
            pck_reference=_reference(data, trg_size),
            keypoint_ids=torch.tensor([int(r["id"]) for r in src_records], dtype=torch.long),
            flip_permutation=torch.full((n,), -1, dtype=torch.long),
            pair_id=f"{kind}/{path.parent.name}/{path.stem}",
            extra={"pair_type": kind, "keypoint_names": names, GROUPS_KEY: groups,
                   HEADLINE_KEY: ["correspondence_type", self._headline],
                   "concept_matches": _concepts(data), ALTERNATIVES_KEY: alternatives},
        )


def _all_points(items: Any) -> torch.Tensor:
    """``(K, 2)`` positions of every listed keypoint, in list order."""
    return torch.tensor([[float(v) for v in k["pos"]] for k in items],
                        dtype=torch.float32).reshape(-1, 2)


def _reference(data: dict[str, Any], size: tuple[int, int]) -> float:
    """The larger side of the target box in the file's own numbers (the larger image side
    without a box), as the official script computes it in Python floats."""
    box = data.get("trg_bndbox")
    if box is None:
        return float(max(size))
    left, top, right, bottom = (float(v) for v in box)
    return max(right - left, bottom - top)


def _box(value: Any, path: Path) -> torch.Tensor | None:
    if value is None:
        return None
    box = torch.tensor([float(v) for v in value], dtype=torch.float32)
    if box.shape != (4,):
        raise InputError(f"{path}: a box must be [left, top, right, bottom]")
    return box


def _size(data: dict[str, Any], side: str, path: Path) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in data[f"{side}_imsize"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: expected {side}_imsize = [width, height]") from None
    return width, height


def check_soco(root: Path) -> list[str]:
    """What SOCO lacks under ``root``: its folders, then every image a pair file names."""
    problems = [f"{d}/" for d in ("Images", "PairAnnotations/intra", "PairAnnotations/cross")
                if not (root / d).is_dir()]
    if problems:
        return problems
    wanted: dict[str, None] = {}
    for path in sorted((root / "PairAnnotations").glob("*/*/*.json")):
        data = read_json(path)
        for side in ("src", "trg"):
            category = data.get(f"{side}_category") or data.get("category")
            wanted[f"Images/{category}/{data.get(f'{side}_image')}"] = None
    return [name for name in wanted if not (root / name).is_file()]


@register_dataset("soco")
def soco(*, root: Path, split: str = "test", pairs: str = "both",
         category: str | None = None) -> SOCO:
    """SOCO in its released layout (see :class:`SOCO`)."""
    return SOCO(root, split, pairs, category)

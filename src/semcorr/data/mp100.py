"""MP-100 (Xu et al., ECCV 2022, "Pose for Everything") as a semantic-correspondence benchmark.

Layout (luminxu/Pose-for-Everything ``mp100/README.md``; MARCO's ``docs/data.md`` adds
``pairs/``)::

    ROOT/annotations/mp100_split{1..5}_{train,val,test}.json
        COCO keypoint files: ``images`` (``id``, ``file_name`` = ``<category>/...``, ``width``,
        ``height``), ``annotations`` (``image_id``, ``category_id``, ``bbox`` = [x, y, w, h],
        ``keypoints`` = K x [x, y, v] flat, ``num_keypoints``, ``iscrowd``), ``categories``.
    ROOT/images/<category>/...   (POMNet's configs: ``img_prefix=data/mp100/images/``), or
    ROOT/mp100/<category>/...    (MARCO: ``data/mp100_all/mp100``), or ROOT/<category>/...
    ROOT/pairs/pairs_<subset>.json   (MARCO only) ``[{"src_file", "trg_file",
        "category_id"}, ...]`` for the subsets clothing, animal_face, animal_body_unseen,
        furniture, human_face.

Two ways of forming pairs (``pairs=``):

* ``marco``: MARCO's released pair lists (visinf/MARCO ``datasets/mp100.py``): every entry of
  every ``pairs/pairs_<subset>.json`` present (or of ``subsets``), in file order. Keypoints come
  from the union of ``annotations/*test*.json`` (``datasets/mp100.py`` l. 27-52). The PCK
  reference is the larger side of the query image's box (l. 131-135; the largest over its
  annotations).
* ``episodes``: POMNet's test episodes (``pomnet/datasets/datasets/mp100/transformer_dataset.py``
  l. 85-98, configs ``num_shots=1, num_queries=15, num_episodes=200``): from
  ``mp100_split<k>_test.json``, ``random.seed(1)``, then for each category in file order and
  each episode ``random.sample(objects, 1 + queries)``; the first object is the source
  (support), each of the others a target (query). Deterministic, seeded, ``episodes x
  queries`` pairs per category (3 000 by default; 20 test categories per split). The PCK
  reference is the larger side of the query's sanitised box (``transformer_dataset.py``
  l. 163-169: ``x2 = min(width - 1, x1 + max(0, w - 1))``) as in
  ``transformer_base_dataset.py`` l. 109-112 (mmpose's ``keypoint_pck_accuracy``, strict
  ``<``, mean over pairs).

Keypoint rows are the category's K keypoint ids; a keypoint counts when ``v > 0`` in both
images (POMNet l. 103-107). MARCO's loader instead lists each image's visible points in order
and pairs the first ``min(n_src, n_trg)`` by position (``datasets/mp100.py`` l. 93-129): the
same rows whenever both images show the same keypoints; semcorr pairs them by id unless
``rows="marco"`` asks for MARCO's rows. MARCO
measures PCK in images stretched to 770 x 770 (``configs/dataset/mp-100.yaml``) with
``<=`` (``util/evaluator.py``): ``--protocol marco``, mp100's default (its reference is the
stretched box of the target's annotation, where MARCO takes the largest over the image's
annotations). POMNet's episodes are measured in the original image with ``<`` against the
sanitised box: ``--protocol generalisation``.

Seen vs unseen (``extra["keypoint_groups"]["category_split"]``): MARCO trains on SPair-71k and
calls its MP-100 subsets unseen categories; its README drops exactly the MP-100 categories that
are SPair-71k classes (cat, cow, dog, horse, sheep bodies; chair). semcorr applies that rule to
all 100: a category is ``seen`` when it is a SPair-71k class (:data:`SEEN_CATEGORIES`: those six,
``human_body`` = person, ``bus``, ``car``, ``suv`` = car, and the eight CUB bird groups = bird),
else ``unseen``. The headline ``pck`` is the unseen categories' (``extra["headline_group"]``)
whenever the pairs include one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semcorr.data.ap10k import keypoints_from_coco
from semcorr.data.base import (
    GROUPS_KEY,
    HEADLINE_KEY,
    PairDataset,
    PairSample,
    read_json,
    register_dataset,
    require_dir,
)
from semcorr.errors import InputError

__all__ = ["MARCO_SUBSETS", "MP100", "SEEN_CATEGORIES", "category_split", "check_mp100"]

#: MARCO's pair lists (``docs/data.md``), one file ``pairs/pairs_<subset>.json`` each.
MARCO_SUBSETS = ("clothing", "animal_face", "animal_body_unseen", "furniture", "human_face")

#: MP-100 categories that are SPair-71k classes (the rest are unseen by a SPair-trained model).
SEEN_CATEGORIES = frozenset({
    "cat_body", "cow_body", "dog_body", "horse_body", "sheep_body", "chair", "human_body",
    "bus", "car", "suv", "grebe_body", "gull_body", "kingfisher_body", "sparrow_body",
    "tern_body", "warbler_body", "woodpecker_body", "wren_body",
})  # fmt: skip

#: POMNet's test episodes (``configs/mp100/*/*_1shot.py``, ``make_paired_samples``).
EPISODES, QUERIES, EPISODE_SEED = 200, 15, 1


def category_split(category: str) -> str:
    """``seen`` when ``category`` is a SPair-71k class, else ``unseen``."""
    return "seen" if category in SEEN_CATEGORIES else "unseen"


@dataclass(frozen=True)
class _Object:
    """One annotated object: its image record and COCO annotation."""

    image: dict[str, Any]
    annotation: dict[str, Any]
    category: str


def _coco(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise InputError(f"{path}: expected a COCO file with images, annotations, categories")
    return data


def _clean_box(obj: _Object) -> list[float] | None:
    """POMNet's sanitised ``[x1, y1, w, h]`` (``None`` for an unusable box)."""
    ann, width, height = obj.annotation, obj.image["width"], obj.image["height"]
    if "bbox" not in ann or ann.get("area", 1) <= 0:
        return None
    x, y, w, h = (float(v) for v in ann["bbox"])
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(width - 1.0, x1 + max(0.0, w - 1)), min(height - 1.0, y1 + max(0.0, h - 1))
    return [x1, y1, x2 - x1, y2 - y1] if x2 > x1 and y2 > y1 else None


def _usable(obj: _Object) -> bool:
    """POMNet's ``_get_db`` filter: a sane box and at least one non-zero keypoint value."""
    ann = obj.annotation
    return (not ann.get("iscrowd", 0) and _clean_box(obj) is not None
            and bool(ann.get("keypoints")) and max(ann["keypoints"]) != 0
            and ann.get("num_keypoints", 1) != 0)


def _objects(data: dict[str, Any]) -> list[_Object]:
    """Every annotation in image order, then annotation order (POMNet's ``cat2obj`` order)."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return [_Object(img, ann, names[ann["category_id"]])
            for img in data["images"] for ann in by_image.get(img["id"], [])]


def _episode_pairs(data: dict[str, Any], episodes: int, queries: int,
                   seed: int, path: Path) -> list[tuple[_Object, _Object, str]]:
    """POMNet's ``make_paired_samples`` (1 shot): ``(source, target, pair name)``."""
    objects = [o for o in _objects(data) if _usable(o)]
    rng = random.Random(seed)
    pairs = []
    for cat in data["categories"]:
        pool = list(range(len(objects)))
        pool = [i for i in pool if objects[i].annotation["category_id"] == cat["id"]]
        if len(pool) < 1 + queries:
            raise InputError(f"{path}: category {cat['name']} has {len(pool)} usable objects, "
                             f"fewer than 1 + {queries} queries")
        for episode in range(episodes):
            drawn = rng.sample(pool, 1 + queries)
            for q, target in enumerate(drawn[1:]):
                name = (f"{cat['name']}/{episode:03d}-{q:02d}:{objects[drawn[0]].annotation['id']}"
                        f"-{objects[target].annotation['id']}")
                pairs.append((objects[drawn[0]], objects[target], name))
    return pairs


class MP100(PairDataset):
    """MP-100 pairs (see the module docstring for both ways of forming them).

    Args:
        root: the MP-100 folder (``annotations/`` inside).
        split: ``test`` (MP-100's unseen-category split), or ``val``/``train`` (episodes only).
        pairs: ``marco`` (``pairs/`` lists), ``episodes`` (POMNet), or ``None``: ``marco`` when
            ``ROOT/pairs`` holds a pair list, else ``episodes``.
        subsets: MARCO subsets to load, a list or ``"a,b"`` (default: every list present).
        mp_split: which of MP-100's five category splits (episodes).
        episodes, queries, seed: episode sampling (POMNet's 200, 15, 1 by default).
        category: restrict to one category name.
        rows: ``ids`` (one row per keypoint id, visible in both images) or, with MARCO's
            pairs, ``marco``: MARCO's own rows, each image's visible points (over all its
            annotations) in order, the first ``min(n_src, n_trg)`` paired by position.
    """

    name = "mp100"
    protocol = {"normalisation": "bbox", "average": "pairs"}

    def __init__(self, root: Path, split: str = "test", pairs: str | None = None,
                 subsets: Sequence[str] | None = None, mp_split: int = 1,
                 episodes: int = EPISODES, queries: int = QUERIES, seed: int = EPISODE_SEED,
                 category: str | None = None, rows: str = "ids") -> None:
        self.root = require_dir(Path(root), "MP-100 folder")
        self.split = split
        annotations = require_dir(self.root / "annotations", "MP-100 annotations folder")
        if pairs is None:
            pairs = "marco" if list((self.root / "pairs").glob("pairs_*.json")) else "episodes"
        if pairs not in ("marco", "episodes"):
            raise InputError(f"mp100 pairs must be 'marco' or 'episodes', not {pairs!r}")
        if rows not in ("ids", "marco") or (rows == "marco" and pairs != "marco"):
            raise InputError(f"mp100 rows must be 'ids', or 'marco' with MARCO's pairs, not "
                             f"{rows!r} with pairs {pairs!r}")
        self.pairs, self.rows = pairs, rows
        self._images = self._image_root()
        self._largest_side: dict[str, float] = {}
        self._visible_points: dict[str, list[list[float]]] = {}
        if pairs == "marco":
            if split != "test":
                raise InputError("mp100: MARCO's pair lists are test pairs (split 'test')")
            self._pairs = self._marco_pairs(annotations, subsets)
        else:
            if mp_split not in range(1, 6) or split not in ("train", "val", "test"):
                raise InputError("mp100: mp_split must be 1..5 and split train, val or test")
            if episodes < 1 or queries < 1:
                raise InputError("mp100: episodes and queries must be at least 1")
            path = annotations / f"mp100_split{mp_split}_{split}.json"
            self._pairs = _episode_pairs(_coco(path), episodes, queries, seed, path)
        if category is not None:
            self._pairs = [p for p in self._pairs if p[1].category == category]
        #: MARCO's figure is the unseen categories': the headline when the pairs hold any.
        self._headline = any(category_split(p[1].category) == "unseen" for p in self._pairs)

    def _image_root(self) -> Path:
        for candidate in (self.root / "images", self.root / "mp100"):
            if candidate.is_dir():
                return candidate
        return self.root

    def _marco_pairs(self, annotations: Path,
                     subsets: Sequence[str] | None) -> list[tuple[_Object, _Object, str]]:
        files = sorted(annotations.glob("*test*.json"))
        if not files:
            raise InputError(f"{annotations}: no MP-100 test annotation file (*test*.json)")
        index: dict[tuple[str, int], _Object] = {}
        for path in files:  # later files do not replace an image's first record
            for obj in _objects(_coco(path)):
                index.setdefault((obj.image["file_name"], obj.annotation["category_id"]), obj)
                if obj.annotation.get("keypoints") and obj.annotation.get("num_keypoints", 0):
                    self._add_marco_record(obj)
        if isinstance(subsets, str):  # from the command line: "furniture,clothing"
            subsets = [s.strip() for s in subsets.split(",") if s.strip()]
        wanted = subsets or [s for s in MARCO_SUBSETS
                             if (self.root / "pairs" / f"pairs_{s}.json").is_file()]
        out = []
        for subset in wanted:
            path = self.root / "pairs" / f"pairs_{subset}.json"
            for i, entry in enumerate(read_json(path)):
                try:
                    key = int(entry["category_id"])
                    src, trg = index[(entry["src_file"], key)], index[(entry["trg_file"], key)]
                except (KeyError, TypeError, ValueError):
                    raise InputError(f"{path}: entry {i} names an image or category absent from "
                                     "the test annotations") from None
                out.append((src, trg, f"{subset}/{i:05d}"))
        return out

    def _add_marco_record(self, obj: _Object) -> None:
        """MARCO's per-image record (``datasets/mp100.py`` l. 36-52, 93-110): the largest box side
        and the visible points of every annotation, in order."""
        name, ann = obj.image["file_name"], obj.annotation
        side = max(float(v) for v in ann["bbox"][2:4])
        self._largest_side[name] = max(side, self._largest_side.get(name, 0.0))
        triples = torch.tensor(ann["keypoints"], dtype=torch.float32).reshape(-1, 3)
        visible = triples[triples[:, 2] > 0, :2].tolist()
        self._visible_points.setdefault(name, []).extend(visible)

    def __len__(self) -> int:
        return len(self._pairs)

    def image_paths(self) -> list[Path]:
        return sorted({self._images / o.image["file_name"] for p in self._pairs for o in p[:2]})

    def _reference(self, target: _Object) -> float:
        if self.pairs == "episodes":
            box = _clean_box(target)
            return max(box[2], box[3]) if box else float("nan")
        return self._largest_side.get(target.image["file_name"], float("nan"))

    def _rows(self, src: _Object, trg: _Object, name: str) -> tuple[torch.Tensor, ...]:
        """Source and target points ``(N, 2)`` and their masks ``(N,)`` (see ``rows``)."""
        if self.rows == "marco":
            points = [torch.tensor(self._visible_points.get(o.image["file_name"], []),
                                   dtype=torch.float32).reshape(-1, 2) for o in (src, trg)]
            n = min(len(points[0]), len(points[1]))
            shown = torch.ones(n, dtype=torch.bool)
            return points[0][:n], points[1][:n], shown, shown
        where = self.root / "annotations"
        src_pts, src_vis = keypoints_from_coco(src.annotation["keypoints"], where)
        trg_pts, trg_vis = keypoints_from_coco(trg.annotation["keypoints"], where)
        if src_pts.shape != trg_pts.shape:
            raise InputError(f"{name}: source and target have different keypoint counts")
        return src_pts, trg_pts, src_vis, trg_vis

    def sample(self, index: int) -> PairSample:
        src, trg, name = self._pairs[index]
        src_pts, trg_pts, src_vis, trg_vis = self._rows(src, trg, name)
        k = src_pts.shape[0]
        return PairSample(
            source_path=self._images / src.image["file_name"],
            target_path=self._images / trg.image["file_name"],
            source_points=src_pts,
            target_points=trg_pts,
            visible=src_vis & trg_vis,
            category=trg.category,
            source_bbox=_xyxy(src.annotation["bbox"]),
            target_bbox=_xyxy(trg.annotation["bbox"]),
            source_size=(int(src.image["width"]), int(src.image["height"])),
            target_size=(int(trg.image["width"]), int(trg.image["height"])),
            pck_reference=float(self._reference(trg)),
            keypoint_ids=torch.arange(k),
            flip_permutation=torch.full((k,), -1, dtype=torch.long),  # POMNet: no flip pairs
            pair_id=name,
            extra={"pairs": self.pairs, "rows": self.rows,
                   GROUPS_KEY: {"category_split": [category_split(trg.category)] * k},
                   **({HEADLINE_KEY: ["category_split", "unseen"]} if self._headline
                      else {})},
            target_visible=trg_vis,
        )


def _xyxy(bbox: Sequence[float]) -> torch.Tensor:
    x, y, w, h = (float(v) for v in bbox)
    return torch.tensor([x, y, x + w, y + h])


def check_mp100(root: Path) -> list[str]:
    """What MP-100 lacks under ``root``: the five test annotation files, then every image that
    MARCO's pair lists name (when ``pairs/`` holds any), else every test image."""
    names = [f"annotations/mp100_split{k}_test.json" for k in range(1, 6)]
    problems = [n for n in names if not (root / n).is_file()]
    if problems:
        return problems
    images = next((c for c in (root / "images", root / "mp100") if c.is_dir()), root)
    wanted: dict[str, None] = {}
    for path in sorted((root / "pairs").glob("pairs_*.json")):
        for entry in read_json(path):
            wanted.update({entry.get("src_file", ""): None, entry.get("trg_file", ""): None})
    if not wanted:
        for name in names:
            wanted.update({r["file_name"]: None for r in _coco(root / name)["images"]})
    return [f"{images.relative_to(root)}/{n}".removeprefix("./") for n in wanted
            if not (images / n).is_file()]


@register_dataset("mp100", "mp-100")
def mp100(*, root: Path, split: str = "test", pairs: str | None = None,
          subsets: Sequence[str] | None = None, mp_split: int = 1, episodes: int = EPISODES,
          queries: int = QUERIES, seed: int = EPISODE_SEED, category: str | None = None,
          subset: str | None = None, rows: str = "ids") -> MP100:
    """MP-100 in its official layout (see :class:`MP100`; ``subset``, as ``--subset`` passes it,
    is one MARCO subset)."""
    chosen = subsets if subset is None else [subset]
    return MP100(root, split, pairs, chosen, mp_split, episodes, queries, seed, category, rows)

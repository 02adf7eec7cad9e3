"""Build GeoAware-SC's AP-10K correspondence benchmark from the original AP-10K annotations.

The recipe follows GeoAware-SC's ``prepare_ap10k.ipynb`` (Zhang et al., CVPR 2024), rewritten
to be reproducible from one seed (the original walks the file system in directory order):

1. Merge ``annotations/ap10k-{train,test,val}-split1.json``; keep the first annotation of each
   image. Each becomes ``ImageAnnotation/<family>/<species>/<image id, 12 digits>.json``
   (annotation, image record, ``name`` = species, ``supercategory`` = family) and its image
   ``JPEGImages/<family>/<species>/<same>.jpg``.
2. Per species, drop crowded images and those with fewer than 3 keypoints; in name order the
   last 30 are *test*, the 20 before *val*, the rest *trn*. GeoAware-SC marks crowded images
   with a list it ships (``ap-10k_is_crowd.txt``); here an image is crowded when it carries
   more than one annotation, or when it is in a list given by ``crowd_list``.
3. Pairs need at least 3 keypoints visible in both images (sum of ``v/2 * v'/2`` >= 3):
   *intra-species*: all such pairs of a species (``trn``: at most 50 per image);
   *cross-species*: within a family of several species, pairs of images of different
   species, at most 900 (test) / 400 (val) per family, category = family;
   *cross-family*: for each pair of families, at most 30 (test) / 20 (val), category ``all``.
   The source/target order of each pair is drawn at random.

With ``split_files`` (the released benchmark's pair files, ``PairAnnotation/<split>/
<src>-<trg>:<category>.json`` holding ``src_json_path``/``trg_json_path``), steps 2 and 3 are
skipped: the pairs are exactly the released ones, checked against the image annotations of
step 1.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from semcorr.errors import InputError

__all__ = ["SPLIT_SIZES", "build_ap10k_benchmark", "copy_split_files", "sample_pairs",
           "split_species"]

SOURCES = ("train", "test", "val")
#: (test, val) images per species; the rest is training.
SPLIT_SIZES = (30, 20)
MIN_KEYPOINTS = 3
TRAIN_PAIRS_PER_IMAGE = 50
CROSS_SPECIES = {"test": 900, "val": 400}
CROSS_FAMILY = {"test": 30, "val": 20}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable AP-10K annotation file ({exc})") from None


def merge_annotations(root: Path, crowd: set[int]) -> list[dict[str, Any]]:
    """Merged records (one per image, first annotation wins) with ``is_crowd`` set."""
    annotations, images, categories = [], {}, {}
    for split in SOURCES:
        data = _read(root / "annotations" / f"ap10k-{split}-split1.json")
        annotations += data.get("annotations", [])
        images.update({img["id"]: img for img in data.get("images", [])})
        categories = categories or {c["id"]: c for c in data.get("categories", [])}
    per_image = Counter(a["image_id"] for a in {a["id"]: a for a in annotations}.values())
    records, seen = [], set()
    for ann in annotations:
        image_id = ann["image_id"]
        if image_id in seen or image_id not in images or ann.get("category_id") not in categories:
            continue
        seen.add(image_id)
        category = categories[ann["category_id"]]
        record = {**ann, **images[image_id], "name": category["name"],
                  "supercategory": category["supercategory"]}
        record["is_crowd"] = int(per_image[image_id] > 1 or image_id in crowd)
        records.append(record)
    return records


def split_species(stems: list[str]) -> dict[str, list[str]]:
    """Sorted stems of one species → ``{"trn", "val", "test"}`` (test = the last 30)."""
    stems = sorted(stems)
    n_test = min(SPLIT_SIZES[0], len(stems))
    n_val = min(SPLIT_SIZES[1], len(stems) - n_test)
    n_trn = len(stems) - n_test - n_val
    return {"trn": stems[:n_trn], "val": stems[n_trn : n_trn + n_val],
            "test": stems[len(stems) - n_test :]}


def _visibility(records: dict[str, dict[str, Any]], stems: list[str]) -> np.ndarray:
    kps = [np.asarray(records[s]["keypoints"], dtype=np.float64).reshape(-1, 3) for s in stems]
    return np.stack([k[:, 2] / 2 for k in kps]) if kps else np.zeros((0, 17))


def sample_pairs(
    rng: np.random.Generator,
    records: dict[str, dict[str, Any]],
    sources: list[str],
    targets: list[str] | None,
    limit: int | None,
) -> list[tuple[str, str]]:
    """Candidate pairs with >= 3 mutually visible keypoints, sampled without replacement.

    Args:
        rng: the generator (all randomness comes from it).
        records: stem → annotation.
        sources: stems; with ``targets=None`` the pairs are the combinations of ``sources``.
        targets: stems of the other group (the pairs are then the product).
        limit: the most pairs kept (``None``: all).

    Returns:
        ``(source stem, target stem)`` pairs, each in a random order.
    """
    a = _visibility(records, sources)
    if targets is None:
        common = a @ a.T
        i, j = np.triu_indices(len(sources), k=1)
        keep = common[i, j] >= MIN_KEYPOINTS
        pairs = [(sources[p], sources[q]) for p, q in zip(i[keep], j[keep], strict=True)]
    else:
        common = a @ _visibility(records, targets).T
        i, j = np.nonzero(common >= MIN_KEYPOINTS)
        pairs = [(sources[p], targets[q]) for p, q in zip(i, j, strict=True)]
    if limit is not None and len(pairs) > limit:
        chosen = rng.choice(len(pairs), size=limit, replace=False)
        pairs = [pairs[k] for k in sorted(chosen)]
    swap = rng.random(len(pairs)) < 0.5
    return [(t, s) if flip else (s, t) for (s, t), flip in zip(pairs, swap, strict=True)]


def _place_image(source: Path, target: Path) -> None:
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_pairs(root: Path, folder: str, pairs: list[tuple[str, str]], where: dict[str, str],
                 category: dict[str, str] | str) -> int:
    out = root / "PairAnnotation" / folder
    out.mkdir(parents=True, exist_ok=True)
    for src, trg in pairs:
        cat = category if isinstance(category, str) else category[src]
        data = {"src_json_path": f"ImageAnnotation/{where[src]}/{src}.json",
                "trg_json_path": f"ImageAnnotation/{where[trg]}/{trg}.json"}
        (out / f"{src}-{trg}:{cat}.json").write_text(json.dumps(data, indent=1))
    return len(pairs)


_IMAGE_ANNOTATION = "ImageAnnotation/"


def _pair_files(folder: Path) -> list[Path]:
    """The released pair files under ``folder`` (itself ``PairAnnotation`` or its parent)."""
    folder = folder / "PairAnnotation" if (folder / "PairAnnotation").is_dir() else folder
    if not folder.is_dir():
        raise InputError(f"{folder}: --split-files must be a folder of PairAnnotation/<split>/"
                         "*.json files")
    files = sorted(folder.glob("*/*.json"))
    if not files:
        raise InputError(f"{folder}: no <split>/*.json pair files (the released "
                         "PairAnnotation folder)")
    return files


def copy_split_files(root: str | os.PathLike[str], split_files: str | os.PathLike[str]
                     ) -> dict[str, int]:
    """Write the released pairs into ``root/PairAnnotation``, their image annotations pointing
    into ``root/ImageAnnotation`` (which must hold every one of them).

    Args:
        root: the benchmark folder (``ImageAnnotation`` already written).
        split_files: the released ``PairAnnotation`` folder (or its parent).

    Returns:
        Number of pairs per ``PairAnnotation`` folder.

    Raises:
        InputError: naming a pair file that is unreadable, lacks a path, or refers to an image
            annotation that the original annotations did not produce.
    """
    root = Path(root)
    files = _pair_files(Path(split_files))
    released = {f"{f.parent.name}/{f.name}" for f in files}
    present = {f"{f.parent.name}/{f.name}" for f in (root / "PairAnnotation").glob("*/*.json")}
    if present - released:
        raise InputError(f"{root / 'PairAnnotation'} holds {len(present - released)} pair(s) "
                         "that are not in the released split files (a sampled benchmark?); "
                         "remove that folder to rebuild from the split files")
    counts: dict[str, int] = {}
    missing: list[str] = []
    for file in files:
        pair = _read(file)
        local = {}
        for key in ("src_json_path", "trg_json_path"):
            stored = str(pair.get(key, ""))
            if _IMAGE_ANNOTATION not in stored:
                raise InputError(f"{file}: {key} {stored!r} is not under an ImageAnnotation "
                                 "folder")
            local[key] = _IMAGE_ANNOTATION + stored.split(_IMAGE_ANNOTATION, 1)[1]
            if not (root / local[key]).is_file():
                missing.append(f"{file.name}: {local[key]}")
        out = root / "PairAnnotation" / file.parent.name
        out.mkdir(parents=True, exist_ok=True)
        (out / file.name).write_text(json.dumps(local, indent=1))
        counts[file.parent.name] = counts.get(file.parent.name, 0) + 1
    if missing:
        raise InputError(f"{len(missing)} released pair(s) refer to images the AP-10K "
                         f"annotations do not have (wrong AP-10K version?), e.g. "
                         f"{'; '.join(missing[:3])}")
    return counts


def build_ap10k_benchmark(
    root: str | os.PathLike[str],
    seed: int = 42,
    crowd_list: str | os.PathLike[str] | None = None,
    split_files: str | os.PathLike[str] | None = None,
) -> dict[str, int]:
    """Write ``ImageAnnotation``, ``JPEGImages`` and ``PairAnnotation`` under ``root``.

    Args:
        root: holds the original ``annotations/ap10k-*-split1.json`` and ``data/*.jpg``.
        seed: the only source of randomness (same seed, same benchmark).
        crowd_list: optional file of image stems (one per line) to treat as crowded, e.g.
            GeoAware-SC's ``ap-10k_is_crowd.txt``.
        split_files: the released ``PairAnnotation`` folder: its pairs are used as they are
            (no sampling; ``seed`` and ``crowd_list`` then play no part).

    Returns:
        Number of pairs written per ``PairAnnotation`` folder, plus ``images``.
    """
    root = Path(root)
    crowd = set()
    if crowd_list is not None:
        crowd = {int(s) for s in Path(crowd_list).read_text().split() if s.strip().isdigit()}
    records = merge_annotations(root, crowd)
    rng = np.random.default_rng(seed)
    by_stem: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    species: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in records:
        stem = f"{int(record['id']):012d}"
        family, name = record["supercategory"], record["name"]
        folder = root / "ImageAnnotation" / family / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.json").write_text(json.dumps(record))
        image = root / "data" / record.get("file_name", f"{stem}.jpg")
        if image.is_file():
            _place_image(image, root / "JPEGImages" / family / name / f"{stem}.jpg")
        by_stem[stem], where[stem] = record, f"{family}/{name}"
        if not record["is_crowd"] and record.get("num_keypoints", 0) >= MIN_KEYPOINTS:
            species[(family, name)].append(stem)
    if split_files is not None:
        return {"images": len(records), **copy_split_files(root, split_files)}
    splits = {key: split_species(stems) for key, stems in sorted(species.items())}
    counts: dict[str, int] = {"images": len(records)}
    species_of = {s: key[1] for key, parts in splits.items() for p in parts.values() for s in p}
    family_of = {s: key[0] for key, parts in splits.items() for p in parts.values() for s in p}
    for split in ("trn", "val", "test"):
        pairs = []
        for parts in splits.values():
            stems = parts[split]
            limit = TRAIN_PAIRS_PER_IMAGE * len(stems) if split == "trn" else None
            pairs += sample_pairs(rng, by_stem, stems, None, limit)
        counts[split] = _write_pairs(root, split, pairs, where, species_of)
    families: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in splits:
        families[key[0]].append(key)
    for split in ("val", "test"):
        pairs = []
        for family in sorted(families):
            if len(families[family]) < 2:
                continue
            candidates = []
            for a, b in combinations(families[family], 2):
                candidates += sample_pairs(rng, by_stem, splits[a][split], splits[b][split], None)
            pairs += _limit(rng, candidates, CROSS_SPECIES[split])
        counts[f"{split}_cross_species"] = _write_pairs(
            root, f"{split}_cross_species", pairs, where, family_of)
        pairs = []
        for f1, f2 in combinations(sorted(families), 2):
            one = [s for key in families[f1] for s in splits[key][split]]
            two = [s for key in families[f2] for s in splits[key][split]]
            pairs += sample_pairs(rng, by_stem, one, two, CROSS_FAMILY[split])
        counts[f"{split}_cross_family"] = _write_pairs(
            root, f"{split}_cross_family", pairs, where, "all")
    return counts


def _limit(rng: np.random.Generator, pairs: list[tuple[str, str]], limit: int) -> list:
    if len(pairs) <= limit:
        return pairs
    return [pairs[k] for k in sorted(rng.choice(len(pairs), size=limit, replace=False))]

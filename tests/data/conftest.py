"""Tiny datasets written in each official on-disk layout (images + annotation files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A small random RGB image (JPEG or PNG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# --- SPair-71k ---------------------------------------------------------------------------------

SPAIR_CAT_KPS = 15  # SPair's cat has keypoint ids 0..14


def spair_image_annotation(
    name: str,
    size: tuple[int, int],
    bbox: list[float],
    kps: dict[int, list[float]],
    pose: str = "Frontal",
) -> dict:
    return {
        "filename": f"{name}.jpg",
        "src_database": "PASCAL VOC 2012",
        "annotation": "PASCAL VOC 2012",
        "image": "flickr",
        "image_width": size[0],
        "image_height": size[1],
        "image_depth": 3,
        "category": "cat",
        "pose": pose,
        "truncated": 0,
        "occluded": 0,
        "difficult": 0,
        "bndbox": bbox,
        "kps": {str(i): kps.get(i) for i in range(SPAIR_CAT_KPS)},
        "azimuth_id": 0,
    }


@pytest.fixture
def spair_root(tmp_path: Path) -> Path:
    """SPair-71k with 3 cat images and 2 test pairs (plus a trn pair)."""
    root = tmp_path / "SPair-71k"
    images = {
        "2008_000001": (
            (40, 30),
            [2.0, 3.0, 30.0, 25.0],
            {0: [5.0, 6.0], 2: [10.0, 4.0], 3: [20.0, 4.0], 9: [8.0, 20.0]},
        ),
        "2008_000002": (
            (36, 32),
            [1.0, 1.0, 35.0, 21.0],
            {0: [6.0, 7.0], 2: [11.0, 5.0], 3: [21.0, 6.0], 9: [9.0, 22.0], 10: [12.0, 22.0]},
        ),
        "2008_000003": (
            (30, 30),
            [0.0, 0.0, 20.0, 29.0],
            {0: [4.0, 4.0], 2: [9.0, 3.0], 14: [15.0, 15.0]},
        ),
    }
    for seed, (name, (size, bbox, kps)) in enumerate(images.items()):
        write_image(root / "JPEGImages" / "cat" / f"{name}.jpg", *size, seed=seed)
        write_json(
            root / "ImageAnnotation" / "cat" / f"{name}.json",
            spair_image_annotation(name, size, bbox, kps),
        )
        (root / "Segmentation" / "cat").mkdir(parents=True, exist_ok=True)

    def pair(pid: int, src: str, trg: str, split: str) -> str:
        name = f"{pid:06d}-{src}-{trg}:cat"
        (s_size, s_box, s_kps), (t_size, t_box, t_kps) = images[src], images[trg]
        common = sorted(set(s_kps) & set(t_kps))
        write_json(
            root / "PairAnnotation" / split / f"{name}.json",
            {
                "pair_id": pid,
                "filename": name,
                "src_imname": f"{src}.jpg",
                "trg_imname": f"{trg}.jpg",
                "src_imsize": [*s_size, 3],
                "trg_imsize": [*t_size, 3],
                "src_bndbox": s_box,
                "trg_bndbox": t_box,
                "category": "cat",
                "src_pose": "Frontal",
                "trg_pose": "Left",
                "src_kps": [s_kps[i] for i in common],
                "trg_kps": [t_kps[i] for i in common],
                "kps_ids": [str(i) for i in common],
                "mirror": 0,
                "viewpoint_variation": 1,
                "scale_variation": 2,
                "truncation": 0,
                "occlusion": 1,
            },
        )
        return name

    test = [
        pair(1, "2008_000001", "2008_000002", "test"),
        pair(2, "2008_000002", "2008_000003", "test"),
    ]
    trn = [pair(3, "2008_000003", "2008_000001", "trn")]
    for layout in ("large", "small"):
        folder = root / "Layout" / layout
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "test.txt").write_text("\n".join(test) + "\n")
        (folder / "trn.txt").write_text("\n".join(trn) + "\n")
        (folder / "val.txt").write_text("")
    (root / "PairAnnotation" / "val").mkdir(parents=True, exist_ok=True)
    return root


# --- PF-PASCAL ---------------------------------------------------------------------------------


@pytest.fixture
def pfpascal_root(tmp_path: Path) -> Path:
    """PF-dataset-PASCAL with 3 images, annotations and a 2-pair test list."""
    root = tmp_path / "PF-dataset-PASCAL"
    sizes = {"2009_000001": (50, 40), "2009_000002": (44, 60), "2009_000003": (30, 30)}
    kps = {
        "2009_000001": [[5, 6], [10, 12], [20, 30]],
        "2009_000002": [[7, 8], [12, 14], [np.nan, np.nan]],
        "2009_000003": [[3, 3], [9, 9], [15, 15]],
    }
    boxes = {
        "2009_000001": [1, 2, 45, 38],
        "2009_000002": [2, 3, 40, 50],
        "2009_000003": [0, 0, 20, 25],
    }
    for seed, (name, size) in enumerate(sizes.items()):
        write_image(root / "JPEGImages" / f"{name}.jpg", *size, seed=seed)
        mat = root / "Annotations" / "cat" / f"{name}.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(
            str(mat),
            {"kps": np.array(kps[name], dtype=float), "bbox": np.array([boxes[name]], dtype=float)},
        )
    header = "source_image,target_image,class,XA,YA,XB,YB\n"
    rows = [
        # class 8 = cat (1-based)
        "PF-dataset-PASCAL/JPEGImages/2009_000001.jpg,PF-dataset-PASCAL/JPEGImages/2009_000002.jpg,"
        "8,5;10,6;12,7;12,8;14\n",
        "PF-dataset-PASCAL/JPEGImages/2009_000003.jpg,PF-dataset-PASCAL/JPEGImages/2009_000001.jpg,"
        "8,3;9;15,3;9;15,5;10;20,6;12;30\n",
    ]
    (root / "test_pairs_pf_pascal.csv").write_text(header + "".join(rows))
    (root / "val_pairs_pf_pascal.csv").write_text(header + rows[1])
    (root / "train_pairs_pf_pascal.csv").write_text(
        "source_image,target_image,class,flip\n"
        "PF-dataset-PASCAL/JPEGImages/2009_000001.jpg,PF-dataset-PASCAL/JPEGImages/2009_000002.jpg,"
        "8,1\n"
    )
    return root


# --- PF-WILLOW ---------------------------------------------------------------------------------


def write_willow(root: Path, classes: dict[str, int], width: int = 48, height: int = 40) -> Path:
    """PF-WILLOW class folders with ``n`` PNG + .mat (pts_coord 2 x 10, 1-based) each."""
    rng = np.random.default_rng(0)
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            stem = root / name / f"img_{i:03d}"
            write_image(stem.with_suffix(".png"), width, height, seed=10 * c + i)
            xy = np.stack([rng.uniform(1, width, 10), rng.uniform(1, height, 10)])
            scipy.io.savemat(str(stem.with_suffix(".mat")), {"pts_coord": xy})
    return root


@pytest.fixture
def willow_root(tmp_path: Path) -> Path:
    return write_willow(tmp_path / "PF-WILLOW", {"car(G)": 3, "duck(S)": 2})


# --- AP-10K (GeoAware-SC layout) ---------------------------------------------------------------


def ap10k_record(
    ann_id: int,
    family: str,
    species: str,
    size: tuple[int, int],
    bbox: list[float],
    visible: dict[int, list[float]],
) -> dict:
    keypoints = []
    for k in range(17):
        keypoints += [*visible[k], 2] if k in visible else [0, 0, 0]
    return {
        "id": ann_id,
        "image_id": ann_id,
        "category_id": 1,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
        "num_keypoints": len(visible),
        "keypoints": keypoints,
        "file_name": f"{ann_id:012d}.jpg",
        "width": size[0],
        "height": size[1],
        "background": 0,
        "name": species,
        "supercategory": family,
    }


@pytest.fixture
def ap10k_root(tmp_path: Path) -> Path:
    root = tmp_path / "ap-10k"
    animals = {
        1: (
            "Felidae",
            "cat",
            (40, 30),
            [2, 2, 30, 20],
            {0: [5, 5], 1: [9, 5], 2: [7, 8], 5: [10, 15], 8: [14, 15]},
        ),
        2: (
            "Felidae",
            "cat",
            (36, 36),
            [0, 0, 20, 34],
            {0: [6, 6], 1: [10, 6], 2: [8, 9], 5: [11, 16]},
        ),
        3: (
            "Felidae",
            "lion",
            (30, 40),
            [1, 1, 25, 25],
            {0: [4, 4], 1: [8, 4], 2: [6, 7], 8: [12, 20]},
        ),
        4: ("Canidae", "dog", (32, 32), [3, 3, 20, 20], {0: [5, 5], 1: [9, 5], 2: [7, 9]}),
    }
    stored = {}
    for seed, (ann_id, (family, species, size, bbox, vis)) in enumerate(animals.items()):
        stem = f"{ann_id}.json".zfill(17)[:-5]
        rel = Path(family) / species / f"{stem}.json"
        write_json(
            root / "ImageAnnotation" / rel, ap10k_record(ann_id, family, species, size, bbox, vis)
        )
        write_image(root / "JPEGImages" / rel.with_suffix(".jpg"), *size, seed=seed)
        stored[ann_id] = (f"data/ap-10k/ImageAnnotation/{rel.as_posix()}", stem)

    def pair(folder: str, a: int, b: int, category: str) -> None:
        write_json(
            root / "PairAnnotation" / folder / f"{stored[a][1]}-{stored[b][1]}:{category}.json",
            {"src_json_path": stored[a][0], "trg_json_path": stored[b][0]},
        )

    pair("test", 1, 2, "cat")
    pair("test", 2, 1, "cat")
    pair("test_cross_species", 1, 3, "Felidae")
    pair("test_cross_family", 3, 4, "all")
    return root


# --- CUB-200-2011 ------------------------------------------------------------------------------

CUB_PARTS = [
    "back",
    "beak",
    "belly",
    "breast",
    "crown",
    "forehead",
    "left eye",
    "left leg",
    "left wing",
    "nape",
    "right eye",
    "right leg",
    "right wing",
    "tail",
    "throat",
]


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    """CUB_200_2011 with 2 classes x 3 images (ids 1..6), images 1, 4 for training."""
    root = tmp_path / "CUB_200_2011"
    classes = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross"}
    lines: dict[str, list[str]] = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    rng = np.random.default_rng(1)
    for image_id in range(1, 7):
        cls = 1 if image_id <= 3 else 2
        rel = f"{classes[cls]}/{classes[cls][4:]}_{image_id:04d}_{100 + image_id}.jpg"
        write_image(root / "images" / rel, 40, 30, seed=image_id)
        lines["images"].append(f"{image_id} {rel}")
        lines["labels"].append(f"{image_id} {cls}")
        lines["split"].append(f"{image_id} {1 if image_id in (1, 4) else 0}")
        lines["boxes"].append(f"{image_id} 2.0 3.0 {20 + image_id}.0 15.0")
        for part in range(1, 16):
            visible = int(part <= 10 or image_id % 2 == 0)
            x, y = (rng.uniform(0, 39), rng.uniform(0, 29)) if visible else (0.0, 0.0)
            lines["locs"].append(f"{image_id} {part} {x:.1f} {y:.1f} {visible}")
    (root / "parts").mkdir(parents=True)
    (root / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(lines["boxes"]) + "\n")
    (root / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in classes.items()))
    (root / "parts" / "parts.txt").write_text(
        "".join(f"{i} {name}\n" for i, name in enumerate(CUB_PARTS, start=1))
    )
    (root / "parts" / "part_locs.txt").write_text("\n".join(lines["locs"]) + "\n")
    return root

"""A tiny SPair-U in the released layout (SPair-71k images and annotations plus the Extra*
folders), importable from any test folder.

Three pairs: two ``car`` (A→B, B→C) and one ``aeroplane`` (D→E, no unseen keypoint visible in
both images). The new (unseen) ids reuse SPair's 0..29 at other positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

#: name -> (category, (w, h), box, seen kps, unseen kps)
IMAGES: dict[str, tuple[str, tuple[int, int], list[float], dict[int, list[float]],
                        dict[int, list[float]]]] = {
    "2010_000001": ("car", (40, 30), [2.0, 3.0, 30.0, 25.0],
                    {0: [5.0, 6.0], 4: [10.0, 4.0], 9: [20.0, 20.0]},
                    {0: [6.0, 6.0], 1: [12.0, 8.0], 3: [25.0, 10.0]}),
    "2010_000002": ("car", (36, 32), [1.0, 1.0, 35.0, 21.0],
                    {0: [6.0, 7.0], 4: [11.0, 5.0], 12: [9.0, 22.0]},
                    {0: [7.0, 7.0], 1: [13.0, 9.0], 2: [3.0, 3.0], 3: [26.0, 11.0]}),
    "2010_000003": ("car", (30, 30), [0.0, 0.0, 20.0, 29.0],
                    {0: [4.0, 4.0], 9: [15.0, 15.0]},
                    {1: [10.0, 10.0], 2: [5.0, 5.0]}),
    "2010_000004": ("aeroplane", (20, 20), [0.0, 0.0, 19.0, 19.0], {0: [5.0, 5.0]},
                    {5: [3.0, 3.0]}),
    "2010_000005": ("aeroplane", (20, 20), [0.0, 0.0, 10.0, 19.0], {0: [6.0, 6.0]}, {}),
}
#: SPair keypoint slots per category (SPair-U always has 30).
SEEN_SLOTS = {"car": 30, "aeroplane": 25}
PAIRS = (("2010_000001", "2010_000002"), ("2010_000002", "2010_000003"),
         ("2010_000004", "2010_000005"))
#: pair ids in the loader's order (category, then file name)
PAIR_IDS = ("test/000003-2010_000004-2010_000005:aeroplane",
            "test/000001-2010_000001-2010_000002:car",
            "test/000002-2010_000002-2010_000003:car")


def _json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _slots(kps: dict[int, list[float]], count: int) -> dict[str, list[float] | None]:
    return {str(i): kps.get(i) for i in range(count)}


def build_spair_u(base: Path, sibling: bool = False) -> Path:
    """Write the fixture under ``base``; returns the SPair-71k folder. With ``sibling`` the
    Extra* folders go to ``base/SPair-U`` (the README's place) instead of inside SPair-71k."""
    root = base / "SPair-71k"
    extra = base / "SPair-U" if sibling else root
    for seed, (name, (category, size, box, seen, unseen)) in enumerate(IMAGES.items()):
        path = root / "JPEGImages" / category / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        _json(root / "ImageAnnotation" / category / f"{name}.json",
              {"filename": f"{name}.jpg", "category": category, "image_width": size[0],
               "image_height": size[1], "bndbox": box,
               "kps": _slots(seen, SEEN_SLOTS[category])})
        _json(extra / "ExtraImageAnnotation" / category / f"{name}.json",
              {"filename": f"{name}.jpg", "category": category, "kps": _slots(unseen, 30)})
    for number, (src, trg) in enumerate(PAIRS, start=1):
        category = IMAGES[src][0]
        name = f"{number:06d}-{src}-{trg}:{category}"
        _json(extra / "ExtraPairAnnotation" / "test" / f"{name}.json", {
            "pair_id": number, "filename": name, "category": category,
            "src_imname": f"{src}.jpg", "trg_imname": f"{trg}.jpg",
            "src_imsize": [*IMAGES[src][1], 3], "trg_imsize": [*IMAGES[trg][1], 3],
            "src_bndbox": IMAGES[src][2], "trg_bndbox": IMAGES[trg][2],
            "viewpoint_variation": 1, "scale_variation": 0, "truncation": 0, "occlusion": 0,
        })
    return root

"""Writes a tiny PF-WILLOW-layout dataset whose pairs are pure translations of one texture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from scipy.ndimage import gaussian_filter

#: Keypoints in the frame of the big texture (x, y).
WORLD_POINTS = np.array(
    [[40, 40], [60, 42], [80, 45], [45, 70], [70, 75], [90, 60], [55, 55], [75, 90],
     [50, 95], [95, 85]], dtype=float
)  # fmt: skip
OFFSETS = [(0, 0), (7, 3), (3, 9)]
SIZE = (96, 96)  # width, height of each crop


def write_translated_willow(root: Path, classes: tuple[str, ...] = ("car(G)", "duck(S)")) -> Path:
    """Class folders of crops of a smooth texture; pts_coord is 1-based, as in PF-WILLOW."""
    rng = np.random.default_rng(3)
    for c, name in enumerate(classes):
        texture = gaussian_filter(rng.normal(size=(140, 140, 3)), sigma=(2.0, 2.0, 0))
        texture = (255 * (texture - texture.min()) / np.ptp(texture)).astype(np.uint8)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, (dx, dy) in enumerate(OFFSETS):
            crop = texture[dy : dy + SIZE[1], dx : dx + SIZE[0]]
            Image.fromarray(crop).save(folder / f"im{c}_{i}.png")
            points = WORLD_POINTS - np.array([dx, dy]) + 1.0
            scipy.io.savemat(str(folder / f"im{c}_{i}.mat"), {"pts_coord": points.T})
    return root

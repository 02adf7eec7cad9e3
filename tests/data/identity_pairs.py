"""Helpers for PCK by hand: every image of a fixture has the same pixels, so a matcher maps each
source point onto itself and a target point's error is its offset from the source point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 128


def write_texture(path: Path, seed: int = 0) -> None:
    """A smooth random texture (noise upsampled 8x, bicubic); the same for the same seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).integers(0, 255, (SIZE // 8, SIZE // 8, 3), dtype=np.uint8)
    Image.fromarray(noise).resize((SIZE, SIZE), Image.BICUBIC).save(path)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def identity_matcher():
    """Weight-free dense SIFT with a window soft-argmax: on identical images it recovers the
    source point within about a pixel (far below 0.05 x the fixtures' 100 px boxes)."""
    from semcorr import Matcher, create_backbone

    backbone = create_backbone("dense-sift", image_size=SIZE, stride=4, bin_sizes=(4, 8, 16))
    return Matcher(backbone, refine="window", window=3, temperature=0.02)

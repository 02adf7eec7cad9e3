"""Synthetic clips for the tracking tests, made from the bundled and the shared photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from semcorr.io import load_image
from semcorr.samples import load_samples
from semcorr.track.outputs import davis_palette, write_index_png
from semcorr.track.synthetic import SyntheticClip, make_clip
from shared_data import shared_path


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]


def bundled_clip(num_frames: int, size: tuple[int, int], leaves: bool = True) -> SyntheticClip:
    """Chelsea (bundled) as the scene, a corner of the mirrored Chelsea as the object."""
    samples = load_samples()
    h, w = size
    scene = _resized(load_image(samples.source), (2 * h, int(2.4 * w)))
    mirrored = load_image(samples.targets[0])
    patch = _resized(mirrored[:, :120, :120], (h // 3, h // 3))
    return make_clip(scene, patch, num_frames, size, leaves)


def photo_clip(num_frames: int, size: tuple[int, int], leaves: bool = True) -> SyntheticClip:
    """Brooklyn (../shared) as the scene, the peppers as the object."""
    root = shared_path("r2d2")
    h, w = size
    scene = _resized(load_image(root / "brooklyn.png"), (2 * h, int(2.4 * w)))
    patch = _resized(load_image(root / "peppers.png"), (h // 3, h // 3))
    return make_clip(scene, patch, num_frames, size, leaves)


def save_clip(clip: SyntheticClip, folder: Path) -> list[Path]:
    """Frames as ``folder/00000.png ...`` and the first mask as ``folder.parent/mask.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, frame in enumerate(clip.frames):
        array = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        paths.append(folder / f"{t:05d}.png")
        Image.fromarray(array).save(paths[-1])
    write_index_png(folder.parent / "mask.png", clip.masks[0], davis_palette())
    return paths


def read_masks(files: list[Path]) -> torch.Tensor:
    """Index PNGs → ``(T, H, W)`` int64."""
    return torch.stack([torch.from_numpy(np.asarray(Image.open(f)).astype(np.int64))
                        for f in files])

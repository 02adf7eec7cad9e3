"""Tiny DAVIS-2017 and JHMDB folders in their official layouts, made from a shared photo.

Frames are 128 x 128 crops of ../shared/data/r2d2/boat.png (so a 128-pixel backbone sees them
with no resizing or padding; small, so that the tests stay fast); masks are full-height bands
with edges on multiples of 4 pixels (dense-sift's stride), so that mask -> feature grid -> mask
is exact and every number in the tests is hand-computed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from semcorr.data.video import write_index_png
from shared_data import shared_path

SIZE = 128


def photo(dx: int = 0, dy: int = 0) -> np.ndarray:
    """A ``SIZE x SIZE`` RGB crop of the shared boat photo, ``(dx, dy)`` from (192, 192)."""
    image = np.asarray(Image.open(shared_path("r2d2", "boat.png")).convert("RGB"))
    return image[192 + dy:192 + dy + SIZE, 192 + dx:192 + dx + SIZE].copy()


def band_mask(shift_1: int = 0, shift_2: int = 0) -> np.ndarray:
    """Index mask ``(SIZE, SIZE)`` of two full-height bands: object 1 on columns
    ``0 .. 63 + shift_1``, object 2 on ``96 + shift_2 .. 127``. Each has a single vertical edge
    inside the image (no corner, which bilinear upsampling would round off), on a multiple of 4
    when unshifted, so mask -> feature grid -> mask gives it back exactly."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[:, :64 + shift_1] = 1
    mask[:, 96 + shift_2:] = 2
    return mask


def write_davis(root: Path, sequences: dict[str, tuple[list[np.ndarray], list[np.ndarray]]],
                split: str = "val") -> Path:
    """``root/JPEGImages/480p/<seq>/00000.jpg``, ``Annotations/480p/<seq>/00000.png`` (DAVIS
    palette) and ``ImageSets/2017/<split>.txt`` listing the sequences."""
    for name, (frames, masks) in sequences.items():
        for t, (frame, mask) in enumerate(zip(frames, masks)):
            path = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(path, quality=95)
            write_index_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", mask)
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{name}\n" for name in sequences))
    return root


#: 15 joints (0-based pixels): the box corners (20, 20) .. (100, 100), then 11 inside it.
JOINTS = np.array([[20, 20], [100, 20], [20, 100], [100, 100],
                   [40, 40], [60, 40], [80, 40], [40, 60], [60, 60],
                   [80, 60], [40, 80], [60, 80], [80, 80], [50, 50], [70, 70]],
                  dtype=np.float64)
#: JHMDB reference of these joints: 0.6 x the diagonal of their box (67.9 px).
JOINTS_REFERENCE = 0.6 * np.hypot(80, 80)


def write_jhmdb(root: Path, videos: dict[tuple[str, str], tuple[list[np.ndarray], np.ndarray,
                                                                 str]]) -> Path:
    """``Rename_Images/<action>/<video>/00001.png ...``, ``joint_positions/<action>/<video>/
    joint_positions.mat`` (``pos_img`` 2 x 15 x T, 1-based, as JHMDB ships it) and
    ``splits/<action>_test_split1.txt`` (``<video>.avi <flag>``)."""
    lines: dict[str, list[str]] = {}
    for (action, video), (frames, points, flag) in videos.items():
        folder = root / "Rename_Images" / action / video
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{t + 1:05d}.png")
        mat = root / "joint_positions" / action / video / "joint_positions.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        pos_img = np.asarray(points, np.float64).transpose(2, 1, 0) + 1.0  # (T,15,2) -> 2x15xT
        scipy.io.savemat(str(mat), {"pos_img": pos_img, "scale": np.ones(len(frames))})
        lines.setdefault(action, []).append(f"{video}.avi {flag}")
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for action, rows in lines.items():
        (root / "splits" / f"{action}_test_split1.txt").write_text("\n".join(rows) + "\n")
    return root

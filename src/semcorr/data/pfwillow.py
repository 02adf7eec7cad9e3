"""PF-WILLOW (Ham et al., "Proposal Flow", CVPR 2016) in its original layout.

::

    ROOT/<class>/<name>.png      e.g. ROOT/car(G)/Cars_006a.png
    ROOT/<class>/<name>.mat      ``pts_coord``: 2 x 10 (row 0 = x, row 1 = y), MATLAB 1-based

The 10 class folders hold 10 images each; the benchmark uses all 90 ordered pairs of distinct
images per class (900 pairs). PCK uses α times the larger side of the bounding box of the
*target* keypoints, is averaged over the pairs of a class, then over the classes.

PF-WILLOW ships no training split. semcorr declares one for choosing its own defaults
(docs/protocol.md): ``dev`` holds the alphabetically first subclass of each object that has
several (:data:`DEV_CLASSES`), ``heldout`` the other seven, ``test`` (or ``all``) all ten.
"""

from __future__ import annotations

from pathlib import Path

import torch

from semcorr.data.base import (
    BadPair,
    PairDataset,
    PairSample,
    image_size,
    register_dataset,
    require_dir,
)
from semcorr.errors import InputError

__all__ = ["DEV_CLASSES", "SPLITS", "PFWillow", "keypoint_extent", "read_willow_points",
           "split_classes"]

#: The development classes: defaults may be tuned on these only (docs/protocol.md).
DEV_CLASSES: tuple[str, ...] = ("car(G)", "motorbike(G)", "winebottle(M)")
#: Split name → which classes it keeps: ``test`` and ``all`` are the whole benchmark.
SPLITS: tuple[str, ...] = ("test", "all", "dev", "heldout")


def split_classes(classes: list[str], split: str) -> list[str]:
    """The classes of ``split`` among ``classes`` (see :data:`SPLITS`).

    Raises:
        InputError: for an unknown split name.
    """
    if split not in SPLITS:
        raise InputError(f"pf-willow split must be one of {', '.join(SPLITS)}, not {split!r}")
    if split == "dev":
        return [c for c in classes if c in DEV_CLASSES]
    if split == "heldout":
        return [c for c in classes if c not in DEV_CLASSES]
    return list(classes)


def read_willow_points(path: Path) -> torch.Tensor:
    """Keypoints ``(N, 2)`` of a PF-WILLOW ``.mat`` in semcorr's frame (1-based offset removed).

    Raises:
        InputError: naming the file when it is missing, unreadable or lacks ``pts_coord``.
    """
    import scipy.io

    if not path.is_file():
        raise InputError(f"{path}: missing keypoint file")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # noqa: BLE001  (scipy raises many types for a bad file)
        raise InputError(f"{path}: not a readable .mat file ({' '.join(str(exc).split())})"
                         ) from None
    coords = mat.get("pts_coord")
    if coords is None or coords.ndim != 2 or coords.shape[0] != 2 or coords.shape[1] == 0:
        raise InputError(f"{path}: expected a non-empty 2 x N array 'pts_coord'")
    return torch.as_tensor(coords.T.astype("float32")) - 1.0


def keypoint_extent(points: torch.Tensor) -> torch.Tensor:
    """Larger side of the bounding box of points ``(..., N, 2)`` → ``(...)``."""
    extent = points.amax(dim=-2) - points.amin(dim=-2)
    return extent.amax(dim=-1)


class PFWillow(PairDataset):
    """PF-WILLOW: 10 classes, 900 ordered pairs.

    Args:
        root: the folder holding the class folders.
        split: ``test`` or ``all`` (the 10 classes), ``dev`` (the 3 development classes on
            which defaults may be tuned) or ``heldout`` (the other 7); see :data:`SPLITS`.
        category: restrict to one class folder (of the split).
    """

    name = "pf-willow"
    protocol = {"normalisation": "keypoints", "average": "categories"}

    def __init__(self, root: Path, split: str = "test", category: str | None = None) -> None:
        if split not in SPLITS:
            raise InputError(f"pf-willow split must be one of {', '.join(SPLITS)}, not "
                             f"{split!r}")
        self.root = require_dir(Path(root), "PF-WILLOW folder")
        self.split = split
        classes = split_classes(sorted(p.name for p in self.root.iterdir() if p.is_dir()), split)
        if category is not None:
            if category not in classes:
                raise InputError(f"{self.root / category}: missing class folder (or not in "
                                 f"the {split!r} split)")
            classes = [category]
        if not classes:
            raise InputError(f"{self.root}: no class folders (expected e.g. 'car(G)/')")
        self._images: dict[str, list[Path]] = {}
        self._points: dict[Path, torch.Tensor | str] = {}  # str: why the file is unusable
        for cls in classes:
            images = sorted((self.root / cls).glob("*.png"))
            if len(images) < 2:
                raise InputError(f"{self.root / cls}: fewer than 2 .png images")
            for image in images:  # a missing file is an incomplete dataset; an unreadable one
                if not image.with_suffix(".mat").is_file():  # spoils its pairs only (skipped)
                    raise InputError(f"{image.with_suffix('.mat')}: missing keypoint file")
                try:
                    self._points[image] = read_willow_points(image.with_suffix(".mat"))
                except InputError as exc:
                    self._points[image] = str(exc)
            self._images[cls] = images
        self._pairs = [
            (cls, i, j)
            for cls, images in self._images.items()
            for i in range(len(images))
            for j in range(len(images))
            if i != j
        ]

    def __len__(self) -> int:
        return len(self._pairs)

    def image_paths(self) -> list[Path]:
        return sorted(self._points)

    def sample(self, index: int) -> PairSample:
        cls, i, j = self._pairs[index]
        source, target = self._images[cls][i], self._images[cls][j]
        src_pts, trg_pts = self._points[source], self._points[target]
        pair_id = f"{cls}/{source.stem}-{target.stem}"
        for found in (src_pts, trg_pts):
            if isinstance(found, str):  # an unreadable .mat spoils its pairs only
                raise BadPair(pair_id, found)
        n = min(src_pts.shape[0], trg_pts.shape[0])
        src_pts, trg_pts = src_pts[:n], trg_pts[:n]
        return PairSample(
            source_path=source,
            target_path=target,
            source_points=src_pts,
            target_points=trg_pts,
            visible=torch.ones(n, dtype=torch.bool),
            category=cls,
            source_bbox=None,
            target_bbox=None,
            source_size=image_size(source),
            target_size=image_size(target),
            pck_reference=float(keypoint_extent(trg_pts)),
            keypoint_ids=torch.arange(n),
            flip_permutation=torch.full((n,), -1, dtype=torch.long),
            pair_id=pair_id,
        )


@register_dataset("pf-willow")
def pf_willow(*, root: Path, split: str = "test", category: str | None = None) -> PFWillow:
    """PF-WILLOW from its class folders (see :class:`PFWillow`)."""
    return PFWillow(root, split, category)

"""Video benchmarks (label propagation): the :class:`VideoSample` every video loader yields.

A video dataset is not a :class:`~semcorr.data.base.PairDataset`: each sample is a whole clip,
its frames in order, the labels of its first frame and the ground truth of every frame. Two
kinds of ground truth exist:

* **masks** (DAVIS-2017): one index PNG per frame (``0`` background, ``1..K`` objects, ``255``
  void), read with :meth:`VideoSample.read_masks`;
* **points** (JHMDB): ``(T, K, 2)`` keypoints per frame, ``(x, y)`` in original pixels with
  ``(0, 0)`` the centre of the top-left pixel (:mod:`semcorr.conventions`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semcorr.errors import InputError
from semcorr.registry import Registry

__all__ = [
    "DAVIS_VOID",
    "VIDEO_DATASETS",
    "VideoDataset",
    "VideoSample",
    "create_video_dataset",
    "davis_palette",
    "list_video_datasets",
    "read_index_png",
    "register_video_dataset",
    "write_index_png",
]

#: Label of DAVIS's "void" pixels (object borders left unlabelled); counted as background.
DAVIS_VOID = 255


def read_index_png(path: Path) -> np.ndarray:
    """The label indices ``(H, W)`` uint8 of an index (palette or grey) PNG.

    Raises:
        InputError: naming the file when it is unreadable or holds colours, not indices.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise InputError(f"{path}: a label image must be an index PNG (palette or "
                                 f"grey), not {image.mode}")
            return np.array(image)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{path}: unreadable label image ({exc})") from None


def davis_palette() -> np.ndarray:
    """``(256, 3)`` uint8 colours of the DAVIS (PASCAL VOC) palette: the bits of each index,
    three at a time, fill red, green and blue from the most significant bit down."""
    index = np.arange(256)
    colours = np.zeros((256, 3), dtype=np.int64)
    for j in range(8):  # 8 bit planes, vectorised over the 256 indices
        for channel in range(3):
            bit = (index >> (3 * j + channel)) & 1
            colours[:, channel] |= bit << (7 - j)
    return colours.astype(np.uint8)


def write_index_png(path: Path, labels: np.ndarray) -> None:
    """Write labels ``(H, W)`` (0-255) as an index PNG in the DAVIS palette (atomically)."""
    from PIL import Image

    from semcorr.io import atomic_write_bytes

    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise InputError(f"{path}: label indices must lie in 0..255")
    image = Image.fromarray(labels.astype(np.uint8))  # mode L; the palette makes it P
    image.putpalette(davis_palette().ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass(frozen=True)
class VideoSample:
    """One annotated clip.

    Attributes:
        name: the clip's stable name (DAVIS sequence, JHMDB ``action/video``).
        frames: image files in temporal order.
        annotations: mask datasets: one index PNG per frame (same order as ``frames``).
        points: point datasets: ``(T, K, 2)`` float ground truth of each frame.
        category: class of the clip (JHMDB action; DAVIS: empty).
    """

    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path, ...] = ()
    points: torch.Tensor | None = None
    category: str = ""

    @property
    def kind(self) -> str:
        """``"masks"`` or ``"points"``: what the ground truth is."""
        return "points" if self.points is not None else "masks"

    def read_masks(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Ground-truth labels ``(T, H, W)`` int64 of the frames ``indices`` (all by default),
        void pixels set to background as the DAVIS evaluation does."""
        chosen = range(len(self.annotations)) if indices is None else indices
        masks = np.stack([read_index_png(self.annotations[i]) for i in chosen]).astype(np.int64)
        masks[masks == DAVIS_VOID] = 0
        return masks

    def first_labels(self) -> np.ndarray | torch.Tensor:
        """The first frame's labels: its mask ``(H, W)`` or its points ``(K, 2)``."""
        return self.points[0] if self.points is not None else self.read_masks([0])[0]


class VideoDataset(Sequence[VideoSample]):
    """Base class of the video benchmarks: a sequence of :class:`VideoSample`.

    Subclasses set ``name``, ``split``, ``root`` and ``kind`` (``masks`` or ``points``) and fill
    ``self.samples`` (cheap: paths and small annotations only).
    """

    name: str = ""
    kind: str = "masks"

    def __init__(self, root: str | os.PathLike[str], split: str) -> None:
        self.root = Path(root)
        self.split = split
        self.samples: list[VideoSample] = []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> VideoSample:  # type: ignore[override]
        return self.samples[index]

    def __iter__(self) -> Iterator[VideoSample]:
        return iter(self.samples)

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the dataset (recorded in ``results.json``)."""
        return {"dataset": self.name, "split": self.split, "root": str(self.root),
                "videos": len(self)}


VIDEO_DATASETS: Registry[VideoDataset] = Registry("video dataset")
register_video_dataset = VIDEO_DATASETS.register


def create_video_dataset(name: str, root: str | os.PathLike[str], split: str | None = None,
                         **options: Any) -> VideoDataset:
    """Open the video benchmark registered as ``name`` from its official layout under ``root``
    (``split``: the dataset's default when ``None``)."""
    factory = VIDEO_DATASETS.get(name)
    if split is None:
        return factory(root=root, **options)
    return factory(root=root, split=split, **options)


def list_video_datasets() -> list[str]:
    """Names of the registered video benchmarks."""
    return VIDEO_DATASETS.names()

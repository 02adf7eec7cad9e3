"""DAVIS-2017 semi-supervised video object segmentation, in its official layout.

::

    ROOT/JPEGImages/480p/<sequence>/00000.jpg ...
    ROOT/Annotations/480p/<sequence>/00000.png ...   (index PNGs in the DAVIS palette)
    ROOT/ImageSets/2017/val.txt                       (one sequence name per line)

As davis2017-evaluation's ``DAVIS`` class reads it: frames and annotations are the sorted
``*.jpg`` / ``*.png`` of each sequence folder; the objects are ``1..max`` of the first frame's
annotation; ``255`` is void (treated as background by the semi-supervised evaluation).
"""

from __future__ import annotations

import os
from pathlib import Path

from semcorr.data.base import require_dir, require_file
from semcorr.data.video import VideoDataset, VideoSample, register_video_dataset
from semcorr.errors import InputError

__all__ = ["DAVIS_SPLITS", "DAVIS_TRAINVAL_URL", "Davis2017", "check_davis2017",
           "davis_sequence_names"]

DAVIS_SPLITS = ("train", "val")


def davis_sequence_names(root: Path, split: str) -> list[str]:
    """The sequences of ``ImageSets/2017/<split>.txt`` (blank lines skipped)."""
    if split not in DAVIS_SPLITS:
        raise InputError(f"davis2017: unknown split {split!r} (known: {', '.join(DAVIS_SPLITS)})")
    listing = require_file(root / "ImageSets" / "2017" / f"{split}.txt", "DAVIS-2017 split list")
    return [line.strip() for line in listing.read_text().splitlines() if line.strip()]


def _sequence(root: Path, resolution: str, name: str) -> VideoSample:
    frames = sorted(require_dir(root / "JPEGImages" / resolution / name,
                                f"frames folder of sequence {name!r}").glob("*.jpg"))
    masks = sorted(require_dir(root / "Annotations" / resolution / name,
                               f"annotations folder of sequence {name!r}").glob("*.png"))
    if not frames:
        raise InputError(f"{root / 'JPEGImages' / resolution / name}: no .jpg frame")
    if [p.stem for p in masks] != [p.stem for p in frames]:
        raise InputError(f"{root / 'Annotations' / resolution / name}: the annotations "
                         f"({len(masks)} .png) do not name the {len(frames)} frames one for one")
    return VideoSample(name=name, frames=tuple(frames), annotations=tuple(masks))


@register_video_dataset("davis2017")
class Davis2017(VideoDataset):
    """DAVIS-2017 (Pont-Tuset et al., 2017), semi-supervised task.

    Args:
        root: the ``DAVIS`` folder (``JPEGImages``, ``Annotations``, ``ImageSets``).
        split: ``val`` (the benchmark) or ``train``.
        resolution: ``480p`` (the benchmark) or ``Full-Resolution``.
        sequences: comma-separated sequence names to keep (default: the whole split).
    """

    name = "davis2017"
    kind = "masks"

    def __init__(self, root: str | os.PathLike[str], split: str = "val",
                 resolution: str = "480p", sequences: str | None = None) -> None:
        super().__init__(root, split)
        require_dir(self.root, "DAVIS-2017 folder")
        names = davis_sequence_names(self.root, split)
        if sequences:
            wanted = [s.strip() for s in str(sequences).split(",") if s.strip()]
            unknown = sorted(set(wanted) - set(names))
            if unknown:
                raise InputError(f"davis2017: sequences {unknown} are not in the {split} split")
            names = [n for n in names if n in wanted]
        self.resolution = resolution
        self.samples = [_sequence(self.root, resolution, n) for n in names]


#: The official DAVIS-2017 train+val archive (480p), as davis-2017's get_davis.sh fetches it.
DAVIS_TRAINVAL_URL = ("https://data.vision.ee.ethz.ch/csergi/share/davis/"
                      "DAVIS-2017-trainval-480p.zip")


def check_davis2017(root: Path) -> list[str]:
    """What ``root`` lacks for the DAVIS-2017 benchmark: the split lists, and for every ``val``
    sequence its frames and annotations folders, named one for one (relative paths)."""
    problems = [p for p in ("ImageSets/2017/val.txt", "ImageSets/2017/train.txt")
                if not (root / p).is_file()]
    if "ImageSets/2017/val.txt" in problems:
        return problems
    for name in davis_sequence_names(root, "val"):
        frames = root / "JPEGImages" / "480p" / name
        masks = root / "Annotations" / "480p" / name
        missing = [f"{p.relative_to(root)}/" for p in (frames, masks) if not p.is_dir()]
        problems += missing
        if not missing and ({p.stem for p in frames.glob("*.jpg")}
                            != {p.stem for p in masks.glob("*.png")} or
                            not any(frames.glob("*.jpg"))):
            problems.append(f"{masks.relative_to(root)}/: the annotations do not name the "
                            "frames one for one")
    return problems

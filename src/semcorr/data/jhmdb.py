"""JHMDB keypoint propagation, in the official layout, with the split CRW and DIFT use.

::

    ROOT/Rename_Images/<action>/<video>/00001.png ...
    ROOT/joint_positions/<action>/<video>/joint_positions.mat   (pos_img: 2 x 15 x T)
    ROOT/splits/<action>_test_split<N>.txt                     (``<video>.avi 1|2``)

The protocol of CRW (Jabri et al., 2020; ``code/data/jhmdb.py`` and ``code/eval/eval_pck.py``
of ajabri/videowalk), followed by DIFT: the videos of the split-1 test set (flag ``2`` in the
official split files), frames sorted by number, ``pos_img - 1`` as the 0-based keypoints (the
same pixel-centre convention as semcorr's). A CRW-style file list (``frames_folder mat_file``
per line) can replace the split files: ``filelist=PATH``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from semcorr.data.base import require_dir, require_file
from semcorr.data.video import VideoDataset, VideoSample, register_video_dataset
from semcorr.errors import InputError

__all__ = ["JHMDB_ARCHIVES", "JHMDB_BASE_URL", "JHMDB_JOINTS", "JHMDB_SPLITS", "Jhmdb",
           "check_jhmdb", "read_joint_positions", "split_videos"]

#: The 15 puppet joints of JHMDB, in ``pos_img`` order.
JHMDB_JOINTS = ("neck", "belly", "face", "right shoulder", "left shoulder", "right hip",
                "left hip", "right elbow", "left elbow", "right knee", "left knee",
                "right wrist", "left wrist", "right ankle", "left ankle")
#: split name -> flag in the official split files.
JHMDB_SPLITS = {"train": "1", "test": "2"}


def read_joint_positions(path: Path) -> torch.Tensor:
    """``(T, 15, 2)`` float64 0-based keypoints of a ``joint_positions.mat`` (``pos_img - 1``;
    float64 as in the file: CRW's eval_pck.py measures distances to these exact values).

    Raises:
        InputError: naming the file when it is unreadable or has no ``2 x J x T`` ``pos_img``.
    """
    import scipy.io

    require_file(path, "joint_positions.mat")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # noqa: BLE001  (scipy raises many types for a bad file)
        raise InputError(f"{path}: unreadable .mat ({type(exc).__name__}: {exc})") from None
    pos = np.asarray(mat.get("pos_img", np.zeros(0)), dtype=np.float64)
    if pos.ndim != 3 or pos.shape[0] != 2 or pos.shape[2] < 1:
        raise InputError(f"{path}: expected 'pos_img' of shape 2 x joints x frames, "
                         f"got {pos.shape}")
    return torch.from_numpy(pos - 1.0).permute(2, 1, 0).contiguous()


def split_videos(root: Path, split: str, number: int = 1) -> list[tuple[str, str]]:
    """``(action, video)`` of the official split files ``splits/*_test_split<number>.txt``
    whose flag is the split's (``1`` train, ``2`` test), actions sorted, file order kept."""
    if split not in JHMDB_SPLITS:
        raise InputError(f"jhmdb: unknown split {split!r} (known: {', '.join(JHMDB_SPLITS)})")
    folder = require_dir(root / "splits", "JHMDB split files folder (splits/)")
    suffix = f"_test_split{number}.txt"
    files = sorted(folder.glob(f"*{suffix}"))
    if not files:
        raise InputError(f"{folder}: no *{suffix} split file")
    videos = []
    for path in files:
        action = path.name[: -len(suffix)]
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == JHMDB_SPLITS[split]:
                videos.append((action, parts[0].removesuffix(".avi")))
    return videos


def _frames(folder: Path) -> list[Path]:
    """The ``*.png`` frames of a folder sorted by their number (as CRW sorts them)."""
    frames = list(require_dir(folder, "JHMDB frames folder").glob("*.png"))
    try:
        frames.sort(key=lambda p: int(p.stem))
    except ValueError:
        raise InputError(f"{folder}: frame names must be numbers (00001.png ...)") from None
    if not frames:
        raise InputError(f"{folder}: no .png frame")
    return frames


def _video(name: str, category: str, frames_dir: Path, mat: Path) -> VideoSample:
    frames = _frames(frames_dir)
    points = read_joint_positions(mat)
    count = min(len(frames), points.shape[0])  # CRW scores the frames that have both
    return VideoSample(name=name, frames=tuple(frames[:count]), points=points[:count],
                       category=category)


def _filelist_entries(root: Path, filelist: Path) -> list[tuple[str, str, Path, Path]]:
    entries = []
    for number, line in enumerate(require_file(filelist, "JHMDB file list").read_text()
                                  .splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise InputError(f"{filelist}:{number}: expected 'frames_folder mat_file'")
        frames_dir, mat = (root / p for p in parts)  # an absolute path stays absolute
        category = frames_dir.parent.name
        entries.append((f"{category}/{frames_dir.name}", category, frames_dir, mat))
    return entries


@register_video_dataset("jhmdb")
class Jhmdb(VideoDataset):
    """JHMDB (Jhuang et al., 2013) keypoint propagation.

    Args:
        root: the folder holding ``Rename_Images``, ``joint_positions`` and ``splits``.
        split: ``test`` (CRW/DIFT's evaluation set) or ``train``.
        split_number: official split 1, 2 or 3 (CRW and DIFT: 1).
        filelist: a CRW-style list (``frames_folder mat_file`` per line, relative to ``root``
            or absolute) used instead of the split files.
    """

    name = "jhmdb"
    kind = "points"

    def __init__(self, root: str | os.PathLike[str], split: str = "test", split_number: int = 1,
                 filelist: str | None = None) -> None:
        super().__init__(root, split)
        require_dir(self.root, "JHMDB folder")
        if filelist:
            entries = _filelist_entries(self.root, Path(filelist))
        else:
            entries = [(f"{a}/{v}", a, self.root / "Rename_Images" / a / v,
                        self.root / "joint_positions" / a / v / "joint_positions.mat")
                       for a, v in split_videos(self.root, split, int(split_number))]
        self.samples = [_video(*entry) for entry in entries]


#: The official JHMDB files (jhmdb.is.tue.mpg.de), as used by CRW's data preparation.
JHMDB_BASE_URL = "http://files.is.tue.mpg.de/jhmdb/"
JHMDB_ARCHIVES = {"Rename_Images.tar.gz": "Rename_Images", "joint_positions.zip":
                  "joint_positions", "splits.zip": "splits"}


def check_jhmdb(root: Path) -> list[str]:
    """What ``root`` lacks for the JHMDB protocol: the split-1 files, and for every test video
    its frames folder and ``joint_positions.mat`` (relative paths)."""
    if not any((root / "splits").glob("*_test_split1.txt")):
        return ["splits/*_test_split1.txt"]
    problems = []
    for action, video in split_videos(root, "test", 1):
        frames = Path("Rename_Images") / action / video
        mat = Path("joint_positions") / action / video / "joint_positions.mat"
        if not (root / frames).is_dir() or not any((root / frames).glob("*.png")):
            problems.append(f"{frames}/")
        if not (root / mat).is_file():
            problems.append(str(mat))
    return problems

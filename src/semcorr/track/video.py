"""Reading the frames of a clip (a folder of images, or a video file through PyAV) and writing
an mp4 (PyAV).

A video file is decoded once into numbered PNG frames (written atomically, with a
``frames.json`` marker written last), so the features of each frame can go through the feature
cache by file like any image, and a re-run or a killed run finds the frames already there.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from semcorr.errors import InputError
from semcorr.io import atomic_write_bytes, atomic_write_json, quick_stamp

__all__ = [
    "FRAME_SUFFIXES",
    "VIDEO_SUFFIXES",
    "check_clip",
    "clip_frames",
    "decode_video",
    "have_av",
    "read_video",
    "video_size",
    "write_video",
]

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
_INSTALL = "pip install 'semcorr[video]'"


def have_av() -> bool:
    """Whether PyAV (the ``video`` extra) is importable."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()
                  and p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith("."))


def check_clip(source: str | os.PathLike[str]) -> str:
    """Check a clip before any work: ``"frames"`` for a folder holding image files, ``"video"``
    for a video file (PyAV must be installed).

    Raises:
        InputError: naming ``source`` (missing, empty folder, unknown kind, no PyAV).
    """
    path = Path(source)
    if path.is_dir():
        if len(_frame_files(path)) < 1:
            raise InputError(f"{path}: no frames (image files {', '.join(FRAME_SUFFIXES)})")
        return "frames"
    if not path.is_file():
        raise InputError(f"{path}: no such video file or frame folder")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"{path}: not a video ({', '.join(VIDEO_SUFFIXES)}) nor a frame folder")
    if not have_av():
        raise InputError(f"{path}: reading a video file needs PyAV: {_INSTALL} "
                         "(or give a folder of frames)")
    return "video"


def read_video(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """The frames of a video file, one ``(H, W, 3)`` uint8 RGB array at a time.

    Raises:
        InputError: naming the file when PyAV cannot open or decode it.
    """
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, IndexError) as exc:
        raise InputError(f"{path}: cannot decode the video ({exc})") from None


def video_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(H, W)`` of a video's first frame (only that frame is decoded).

    Raises:
        InputError: naming the file when it has no decodable frame.
    """
    for array in read_video(path):
        return array.shape[0], array.shape[1]
    raise InputError(f"{path}: the video has no frames")


def decode_video(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> list[Path]:
    """Decode a video into ``folder/00000.png, ...`` once; later calls reuse the frames while
    the video file is unchanged (``folder/frames.json`` records its stamp and frame count)."""
    folder = Path(folder)
    marker = folder / "frames.json"
    stamp = quick_stamp(path)
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except ValueError:
            done = {}
        names = [folder / f"{i:05d}.png" for i in range(int(done.get("frames", 0)))]
        if done.get("source") == stamp and names and all(p.is_file() for p in names):
            return names
    names = []
    for index, array in enumerate(read_video(path)):
        name = folder / f"{index:05d}.png"
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        atomic_write_bytes(name, buffer.getvalue())
        names.append(name)
    if not names:
        raise InputError(f"{path}: the video has no frames")
    atomic_write_json(marker, {"source": stamp, "frames": len(names)})
    return names


def clip_frames(source: str | os.PathLike[str], work: str | os.PathLike[str]) -> list[Path]:
    """Frame files of a clip: a folder's image files in name order, or a video's frames
    decoded into ``work``."""
    path = Path(source)
    if check_clip(path) == "frames":
        return _frame_files(path)
    return decode_video(path, work)


def write_video(path: str | os.PathLike[str], frames: Iterable[np.ndarray], fps: int = 10
                ) -> None:
    """Write ``(H, W, 3)`` uint8 RGB frames (even sizes are safest) as an H.264 mp4 (MPEG-4
    part 2 when the FFmpeg build has no H.264 encoder), atomically."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = None
        for array in frames:
            if stream is None:
                stream = _video_stream(container, fps, array.shape[1], array.shape[0])
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    atomic_write_bytes(path, buffer.getvalue())


def _video_stream(container: object, fps: int, width: int, height: int) -> object:
    import av

    for codec in ("libx264", "h264", "mpeg4"):
        try:
            stream = container.add_stream(codec, rate=Fraction(fps))  # type: ignore[attr-defined]
        except (av.error.FFmpegError, ValueError):
            continue
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}
        return stream
    raise RuntimeError("this FFmpeg build has no H.264 or MPEG-4 encoder")  # pragma: no cover

"""R2D2's released training data (the "WASF" mix) in its released layout under one ROOT.

::

    ROOT/revisitop1m/<hex3>/<name>.jpg          W: web images (Revisited Oxford/Paris 1M
    ROOT/revisitop1m/image_list_<i>.txt            distractors); list i names the images of
                                                   folders 4i .. 4i+3 (hex, 3 digits), one
                                                   file name per line; lists 0..51 are used
    ROOT/aachen/images_upright/db/<tag>.jpg     A: Aachen Day-Night database images
    ROOT/aachen/style_transfer/<tag>.jpg.st_*   S: night-like renderings of DB image <tag>
    ROOT/aachen/optical_flow/flow/<a>_<b>.png   F: flow from DB image <a> to DB image <b>
    ROOT/aachen/optical_flow/mask/<a>_<b>.png      and its validity mask (same names)

Flow files are PNGs holding int16 ``(dx, dy)`` per pixel (little-endian, as the 4 bytes of an
RGBA pixel), in 1/16 pixel; a flow stored instead as a raw file beside the PNG path (without
``.png``: float32 magic ``202021.25``, int32 width and height, then float32 ``(H, W, 2)``, the
Middlebury ``.flo`` layout) is read too. Masks are 8-bit images, non-zero = valid.

When an ``image_list_<i>.txt`` is missing, its four folders are listed instead (sorted ``.jpg``
names; nothing is written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semcorr.errors import InputError

__all__ = [
    "FlowPairFiles",
    "WEB_LISTS",
    "aachen_db_images",
    "check_r2d2_training",
    "optical_flow_pairs",
    "read_flow",
    "read_mask",
    "style_transfer_pairs",
    "web_images",
]

#: The image lists of the web images the released training uses (``RandomWebImages(0, 52)``).
WEB_LISTS = range(0, 52)
#: Folders per web image list.
_FOLDERS_PER_LIST = 4
#: Magic number of raw (``.flo``) flow files.
_FLO_MAGIC = 202021.25


def _root(root: str | os.PathLike[str], *parts: str) -> Path:
    path = Path(root).joinpath(*parts)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder (see 'semcorr data prepare r2d2-training')")
    return path


def _web_list(folder: Path, index: int) -> list[str]:
    listing = folder / f"image_list_{index}.txt"
    if listing.is_file():
        return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    names: list[str] = []
    for number in range(index * _FOLDERS_PER_LIST, (index + 1) * _FOLDERS_PER_LIST):
        sub = folder / f"{number:03x}"
        if sub.is_dir():
            names += sorted(p.name for p in sub.iterdir() if p.suffix == ".jpg")
    return names


def web_images(root: str | os.PathLike[str], lists: range = WEB_LISTS) -> list[Path]:
    """Paths of the web images of ``lists`` (each name lives in the folder of its first three
    characters)."""
    folder = _root(root, "revisitop1m")
    names = [name for index in lists for name in _web_list(folder, index)]
    if not names:
        raise InputError(f"{folder}: no web images (no image_list_*.txt, no <hex>/*.jpg)")
    return [folder / name[:3] / name for name in names]


def aachen_db_images(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Aachen database images by tag (file name without ``.jpg``), sorted by tag."""
    folder = _root(root, "aachen", "images_upright", "db")
    images = {p.stem: p for p in sorted(folder.rglob("*.jpg"))}
    if not images:
        raise InputError(f"{folder}: no .jpg images")
    return dict(sorted(images.items()))


def style_transfer_pairs(root: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """``(day DB image, its night-like rendering)`` pairs, sorted by rendering name."""
    db = aachen_db_images(root)
    folder = _root(root, "aachen", "style_transfer")
    pairs = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        tag = path.name.split(".jpg.st_")[0]
        if tag not in db:
            raise InputError(f"{path}: no database image {tag}.jpg in aachen/images_upright/db")
        pairs.append((db[tag], path))
    if not pairs:
        raise InputError(f"{folder}: no style-transfer images")
    return pairs


@dataclass(frozen=True)
class FlowPairFiles:
    """The files of one optical-flow pair."""

    image1: Path
    image2: Path
    flow: Path
    mask: Path


def optical_flow_pairs(root: str | os.PathLike[str]) -> list[FlowPairFiles]:
    """Optical-flow pairs (``<a>_<b>.png`` in ``flow/`` and ``mask/``), sorted by name."""
    db = aachen_db_images(root)
    folder = _root(root, "aachen", "optical_flow")
    flows = {p.name for p in _root(folder, "flow").glob("*.png")}
    masks = {p.name for p in _root(folder, "mask").glob("*.png")}
    if flows != masks:
        odd = sorted(flows ^ masks)[:5]
        raise InputError(f"{folder}: flow/ and mask/ differ ({', '.join(odd)} ...)")
    pairs = []
    for name in sorted(flows):
        tags = name[:-4].split("_")
        if len(tags) != 2 or any(t not in db for t in tags):
            raise InputError(f"{folder / 'flow' / name}: not <db tag>_<db tag>.png")
        pairs.append(FlowPairFiles(db[tags[0]], db[tags[1]], folder / "flow" / name,
                                   folder / "mask" / name))
    if not pairs:
        raise InputError(f"{folder}: no flow pairs")
    return pairs


def _read_flow_png(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            data = np.asarray(image)
    except OSError:
        return None
    if data.dtype != np.uint8 or data.ndim != 3 or data.shape[2] != 4:
        raise InputError(f"{path}: a flow PNG holds 4 bytes per pixel, got {data.shape}")
    return np.ascontiguousarray(data).view("<i2").astype(np.float32) / 16


def _read_flow_raw(raw: Path) -> np.ndarray:
    with open(raw, "rb") as handle:
        magic = np.fromfile(handle, "<f4", 1)
        if magic.size != 1 or magic[0] != _FLO_MAGIC:
            raise InputError(f"{raw}: not a flow file (magic {magic})")
        width, height = (int(v) for v in np.fromfile(handle, "<i4", 2))
        values = np.fromfile(handle, "<f4")
    if values.size != width * height * 2:
        raise InputError(f"{raw}: {values.size} values for a {width} x {height} flow")
    return values.reshape(height, width, 2)


def read_flow(path: str | os.PathLike[str]) -> np.ndarray:
    """A stored flow ``(H, W, 2)`` float32 in pixels: the PNG, or when it is absent or does not
    decode, the raw file beside it (its path without ``.png``)."""
    path = Path(path)
    flow = _read_flow_png(path) if path.is_file() else None
    if flow is not None:
        return flow
    raw = path.with_suffix("")
    if not raw.is_file():
        raise InputError(f"{path}: missing or unreadable flow PNG, and no raw {raw.name}")
    return _read_flow_raw(raw)


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """A validity mask ``(H, W)`` uint8 (as stored: non-zero = valid)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image, dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"{path}: unreadable mask ({exc})") from None


def check_r2d2_training(root: Path) -> list[str]:
    """What is missing from ``root`` for the WASF mix (relative paths)."""
    problems = []
    web = root / "revisitop1m"
    for index in WEB_LISTS:
        folders = [f"{n:03x}" for n in range(index * _FOLDERS_PER_LIST,
                                              (index + 1) * _FOLDERS_PER_LIST)]
        if not (web / f"image_list_{index}.txt").is_file() and not any(
                (web / f).is_dir() for f in folders):
            problems.append(f"revisitop1m/{folders[0]}/ .. {folders[-1]}/ (web image list "
                            f"{index})")
    for folder, pattern in (("aachen/images_upright/db", "*.jpg"),
                            ("aachen/style_transfer", "*.jpg.st_*"),
                            ("aachen/optical_flow/flow", "*.png"),
                            ("aachen/optical_flow/mask", "*.png")):
        if not any((root / folder).glob(pattern)):
            problems.append(f"{folder}/{pattern}")
    return problems

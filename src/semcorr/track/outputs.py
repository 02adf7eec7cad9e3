"""What ``semcorr track`` writes: DAVIS-style index PNGs, COCO-keypoints JSON, an overlay.

* ``masks/00000.png ...``: palette ("P" mode) PNGs, pixel value = object index, with the
  palette of the input mask (DAVIS's, when the input was a DAVIS annotation) or the
  PASCAL VOC / DAVIS colour map;
* ``points.json``: COCO keypoints, one annotation per frame: ``keypoints`` ``[x, y, v, ...]``
  (``v = 2`` tracked, ``v = 0`` lost, with ``x = y = -1``; pixel centres at integers) and a
  per-point ``scores`` list;
* ``overlay.jpg``: a strip of a few frames with the masks blended and the points drawn;
  ``overlay.mp4`` of every frame as well when PyAV is installed.
"""

from __future__ import annotations

import colorsys
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from semcorr.conventions import UNMATCHED
from semcorr.data.video import davis_palette
from semcorr.errors import ImageError
from semcorr.io import atomic_write_bytes, atomic_write_json, open_image

__all__ = [
    "coco_keypoints",
    "davis_palette",
    "overlay_frame",
    "read_index_png",
    "save_points",
    "write_index_png",
    "write_overlays",
]


def _point_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct saturated colours (hues evenly spaced)."""
    return [tuple(round(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0))
            for i in range(n)]  # type: ignore[misc]


def read_index_png(path: str | os.PathLike[str]) -> tuple[torch.Tensor, np.ndarray]:
    """An index mask ``(H, W)`` int64 and its ``(256, 3)`` palette (the DAVIS palette when the
    file is not a palette image; then every distinct grey or colour value is an object, in
    sorted order, 0 = background)."""
    with open_image(path) as image:
        try:
            image.load()
        except OSError as exc:
            raise ImageError(f"{path}: not a readable image ({exc})") from None
        if image.mode == "P":
            raw = image.getpalette() or []
            pal = np.zeros((256, 3), dtype=np.uint8)
            values = np.asarray(raw[:768], dtype=np.uint8).reshape(-1, 3)
            pal[: len(values)] = values
            return torch.from_numpy(np.asarray(image).astype(np.int64)), pal
        array = np.asarray(image.convert("L"))
    _, inverse = np.unique(array, return_inverse=True)
    return torch.from_numpy(inverse.reshape(array.shape).astype(np.int64)), davis_palette()


def write_index_png(path: str | os.PathLike[str], mask: torch.Tensor, pal: np.ndarray) -> None:
    """Write an index mask ``(H, W)`` as a palette PNG, atomically."""
    image = Image.fromarray(mask.cpu().numpy().astype(np.uint8), mode="P")
    image.putpalette(pal.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def coco_keypoints(frames: Sequence[Path], sizes: Sequence[tuple[int, int]],
                   points: torch.Tensor, scores: torch.Tensor, names: Sequence[str]
                   ) -> dict[str, object]:
    """COCO keypoints of a tracked clip.

    Args:
        frames: frame files; ``sizes``: their ``(H, W)``.
        points: ``(T, P, 2)`` pixels, ``-1`` where lost; ``scores``: ``(T, P)``.
        names: the point names.
    """
    lost = (points == UNMATCHED).all(-1)
    visibility = torch.where(lost, 0, 2)
    triples = torch.cat([points, visibility[..., None].float()], -1)  # (T, P, 3)
    images, annotations = [], []
    for t, (frame, (h, w)) in enumerate(zip(frames, sizes, strict=True)):
        images.append({"id": t, "file_name": frame.name, "height": h, "width": w})
        annotations.append({
            "id": t, "image_id": t, "category_id": 1,
            "num_keypoints": int((~lost[t]).sum()),
            "keypoints": [round(float(v), 2) for v in triples[t].flatten()],
            "scores": [round(float(s), 4) for s in scores[t]],
        })
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "tracked", "keypoints": list(names)}]}


def overlay_frame(frame: Image.Image, mask: torch.Tensor | None, pal: np.ndarray,
                  points: torch.Tensor | None) -> Image.Image:
    """A frame with its mask blended (objects in their palette colours) and points drawn."""
    rgb = np.asarray(frame.convert("RGB")).astype(np.float32)
    if mask is not None:
        index = mask.cpu().numpy()
        colour = pal[index].astype(np.float32)
        blend = np.where(index[..., None] > 0, 0.5 * rgb + 0.5 * colour, rgb)
        rgb = blend
    canvas = Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8))
    if points is not None:
        draw = ImageDraw.Draw(canvas)
        radius = max(2, max(canvas.size) // 100)
        for (x, y), colour in zip(points.tolist(), _point_colours(len(points)), strict=True):
            if x == UNMATCHED and y == UNMATCHED:
                continue
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour,
                         outline="black")
    return canvas


def write_overlays(out: Path, frames: Sequence[Path], masks: Sequence[Path] | None,
                   pal: np.ndarray, points: torch.Tensor | None, strip_frames: int = 6,
                   video: bool = False, fps: int = 10) -> list[Path]:
    """``overlay.jpg`` (``strip_frames`` evenly spaced frames side by side, height <= 240) and,
    when ``video``, ``overlay.mp4``; returns the files written."""
    def picture(t: int) -> Image.Image:
        mask = None
        if masks is not None:
            mask = torch.from_numpy(np.asarray(Image.open(masks[t])).astype(np.int64))
        return overlay_frame(Image.open(frames[t]), mask, pal,
                             None if points is None else points[t])

    chosen = np.unique(np.linspace(0, len(frames) - 1, min(strip_frames, len(frames))).round())
    tiles = [picture(int(t)) for t in chosen]
    scale = min(1.0, 240 / max(t.height for t in tiles))
    tiles = [t.resize((max(1, round(t.width * scale)), max(1, round(t.height * scale))))
             for t in tiles]
    strip = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)))
    left = 0
    for tile in tiles:
        strip.paste(tile, (left, 0))
        left += tile.width
    buffer = io.BytesIO()
    strip.save(buffer, format="JPEG", quality=90)
    written = [out / "overlay.jpg"]
    atomic_write_bytes(written[0], buffer.getvalue())
    if video:
        from semcorr.track.video import write_video

        def even(image: Image.Image) -> np.ndarray:
            array = np.asarray(image)
            return array[: array.shape[0] // 2 * 2, : array.shape[1] // 2 * 2]

        write_video(out / "overlay.mp4", (even(picture(t)) for t in range(len(frames))), fps)
        written.append(out / "overlay.mp4")
    return written


def save_points(path: Path, payload: dict[str, object]) -> None:
    """Write ``points.json`` atomically."""
    atomic_write_json(path, payload)

"""Contact sheets: a grid of thumbnails with transferred keypoints, for quick visual review."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from semcorr.io.files import atomic_write_bytes
from semcorr.io.image import load_pil
from semcorr.viz.matches import palette

__all__ = ["contact_sheet", "contact_sheet_from_coco", "save_contact_sheet"]


def _thumbnail(image: Image.Image, size: int) -> tuple[Image.Image, float]:
    scale = size / max(image.width, image.height)
    thumb = image.convert("RGB").resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BILINEAR,
    )
    return thumb, scale


def contact_sheet(
    images: Sequence[Image.Image],
    points: Sequence[torch.Tensor],
    confident: Sequence[torch.Tensor],
    labels: Sequence[str] | None = None,
    columns: int = 8,
    size: int = 160,
) -> Image.Image:
    """A grid of thumbnails with keypoints.

    Each keypoint has its own colour (the same in every cell); confident points are filled
    discs, the others hollow circles.

    Args:
        images: the images (any size).
        points: per image ``(N, 2)`` (x, y) in its original pixels.
        confident: per image ``(N,)`` boolean.
        labels: optional caption per image.
        columns: thumbnails per row.
        size: longer side of a thumbnail in pixels.

    Returns:
        The sheet, ``columns * size`` pixels wide.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * size, rows * size), "black")
    draw = ImageDraw.Draw(sheet)
    n = max((p.shape[0] for p in points), default=0)
    colours = palette(n)
    radius = max(2, size // 60)
    for index, image in enumerate(images):
        thumb, scale = _thumbnail(image, size)
        left = (index % columns) * size + (size - thumb.width) // 2
        top = (index // columns) * size + (size - thumb.height) // 2
        sheet.paste(thumb, (left, top))
        xy = ((points[index].float() + 0.5) * scale).tolist()
        for j, ((x, y), ok) in enumerate(zip(xy, confident[index].tolist(), strict=True)):
            box = [left + x - radius, top + y - radius, left + x + radius, top + y + radius]
            if ok:
                draw.ellipse(box, fill=colours[j], outline="black")
            else:
                draw.ellipse(box, outline=colours[j], width=1)
        if labels is not None:
            corner = ((index % columns) * size + 2, (index // columns) * size + 2)
            draw.rectangle(draw.textbbox(corner, labels[index][:28]), fill="black")
            draw.text(corner, labels[index][:28], fill="white")
    return sheet


def contact_sheet_from_coco(
    document: Mapping[str, Any],
    image_root: str | os.PathLike[str] | None = None,
    limit: int = 64,
    columns: int = 8,
    size: int = 160,
) -> Image.Image:
    """:func:`contact_sheet` of the first ``limit`` images of a COCO keypoints document (visibility
    2 = confident); relative file names are read under ``image_root``."""
    root = Path(image_root) if image_root is not None else None
    by_image = {a["image_id"]: a for a in document.get("annotations", [])}
    images, points, confident, labels = [], [], [], []
    for entry in document.get("images", [])[:limit]:
        annotation = by_image.get(entry["id"])
        if annotation is None:
            continue
        path = Path(entry["file_name"])
        images.append(load_pil(root / path if root is not None and not path.is_absolute()
                               else path))
        triplets = torch.tensor(annotation["keypoints"], dtype=torch.float32).view(-1, 3)
        points.append(triplets[:, :2])
        confident.append(triplets[:, 2] > 0)
        labels.append(path.name)
    return contact_sheet(images, points, confident, labels, columns, size)


def save_contact_sheet(path: str | os.PathLike[str], sheet: Image.Image) -> None:
    """Write a sheet as PNG (or JPEG by suffix), atomically."""
    buffer = io.BytesIO()
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    sheet.save(buffer, format=fmt)
    atomic_write_bytes(path, buffer.getvalue())

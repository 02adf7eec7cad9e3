"""Side-by-side pictures of a source, a target and the matched points."""

from __future__ import annotations

import colorsys
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from semcorr.io.files import atomic_write_bytes
from semcorr.pipeline import MatchResult

__all__ = ["palette", "match_picture", "save_match_picture"]


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct saturated colours."""
    return [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0))  # type: ignore[misc]
        for i in range(n)
    ]


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def match_picture(
    source: torch.Tensor,
    target: torch.Tensor,
    source_points: torch.Tensor,
    result: MatchResult,
    height: int = 384,
    true_points: torch.Tensor | None = None,
) -> Image.Image:
    """Source and target side by side at a common height, with a coloured marker per point
    (filled on the target with the score written beside it) and a line joining each pair;
    optional true target points are drawn as hollow squares."""
    left, right = _to_pil(source), _to_pil(target)
    s0, s1 = height / left.height, height / right.height
    left = left.resize((max(1, round(left.width * s0)), height), Image.Resampling.LANCZOS)
    right = right.resize((max(1, round(right.width * s1)), height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (left.width + right.width, height), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    draw = ImageDraw.Draw(canvas)
    colours = palette(source_points.shape[0])
    radius = max(3, height // 80)
    for i, colour in enumerate(colours):
        x0, y0 = ((source_points[i] + 0.5) * s0).tolist()
        x1, y1 = ((result.points[i] + 0.5) * s1).tolist()
        x1 += left.width
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=1)
        draw.ellipse([x0 - radius, y0 - radius, x0 + radius, y0 + radius], outline=colour, width=2)
        draw.ellipse([x1 - radius, y1 - radius, x1 + radius, y1 + radius], fill=colour,
                     outline="black")
        draw.text((x1 + radius + 1, y1 - radius), f"{float(result.scores[i]):.2f}", fill=colour)
        if true_points is not None:
            tx, ty = ((true_points[i] + 0.5) * s1).tolist()
            tx += left.width
            draw.rectangle([tx - radius, ty - radius, tx + radius, ty + radius], outline=colour)
    draw.text((4, 4), "source", fill="white")
    draw.text((left.width + 4, 4), f"target (pose: {result.pose})", fill="white")
    return canvas


def save_match_picture(
    path: str | os.PathLike[str],
    source: torch.Tensor,
    target: torch.Tensor,
    source_points: torch.Tensor,
    result: MatchResult,
    true_points: torch.Tensor | None = None,
) -> None:
    """Write :func:`match_picture` as a PNG, atomically."""
    import io

    buffer = io.BytesIO()
    match_picture(source, target, source_points, result, true_points=true_points).save(
        buffer, format="PNG"
    )
    atomic_write_bytes(path, buffer.getvalue())

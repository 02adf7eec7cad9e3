"""Qualitative galleries: the best and worst pairs of an evaluation, as pictures + HTML.

Everything is drawn from ``predictions.jsonl`` (written by :mod:`semcorr.eval.benchmark`),
so a gallery can be made again from the cache without running the matcher. Each picture shows
the source with its query points, the target with the predicted points (filled: green when
correct at the chosen α, red otherwise), the true points (hollow squares) joined to their
prediction, and the circle of radius α · reference around each true point. ``index.html``
uses relative links only and opens offline.
"""

from __future__ import annotations

import html
import io
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from semcorr.io import atomic_write_bytes, load_image

__all__ = ["example_picture", "rank_pairs", "save_gallery"]

CORRECT = (40, 200, 60)
WRONG = (230, 40, 40)


def pair_pck(record: dict[str, Any], alpha: float) -> tuple[float, torch.Tensor]:
    """A record's PCK at ``alpha`` (strict ``<``) and its ``(n,)`` correctness."""
    pred = torch.tensor(record["pred"], dtype=torch.float64).reshape(-1, 2)
    gt = torch.tensor(record["gt"], dtype=torch.float64).reshape(-1, 2)
    correct = (pred - gt).norm(dim=1) < alpha * float(record["reference"])
    return (float(correct.double().mean()) if correct.numel() else math.nan), correct


def _drawable(record: dict[str, Any]) -> bool:
    return ("skipped" not in record and bool(record.get("pred"))
            and {"source_path", "target_path", "src"} <= set(record))


def rank_pairs(
    records: Iterable[dict[str, Any]], alpha: float, count: int
) -> tuple[list[str], list[str]]:
    """Pair ids of the ``count`` best and ``count`` worst pairs by PCK at ``alpha``.

    Ties go to the pair with more keypoints, then to the smaller pair id (deterministic).
    Only pairs that can be drawn (recorded with their images and source points) count.

    Returns:
        ``(best, worst)``, best first / worst first; disjoint.
    """
    scored = []
    for record in records:
        if _drawable(record):
            pck, _ = pair_pck(record, alpha)
            scored.append((pck, len(record["pred"]), record["pair_id"]))
    best = sorted(scored, key=lambda s: (-s[0], -s[1], s[2]))[:count]
    chosen = {s[2] for s in best}
    worst = [s for s in sorted(scored, key=lambda s: (s[0], -s[1], s[2])) if s[2] not in chosen]
    return [s[2] for s in best], [s[2] for s in worst[:count]]


def _scaled(path: str, height: int) -> tuple[Image.Image, float]:
    from semcorr.viz.matches import _to_pil

    image = _to_pil(load_image(path))
    scale = height / image.height
    size = (max(1, round(image.width * scale)), height)
    return image.resize(size, Image.Resampling.LANCZOS), scale


def example_picture(record: dict[str, Any], alpha: float, height: int = 320) -> Image.Image:
    """Source | target picture of one prediction record (see the module docstring)."""
    left, s0 = _scaled(record["source_path"], height)
    right, s1 = _scaled(record["target_path"], height)
    canvas = Image.new("RGB", (left.width + right.width, height + 18), "white")
    canvas.paste(left, (0, 18))
    canvas.paste(right, (left.width, 18))
    draw = ImageDraw.Draw(canvas)
    pck, correct = pair_pck(record, alpha)
    r = max(3, height // 90)
    tolerance = alpha * float(record["reference"]) * s1

    def at(point: list[float], scale: float, dx: int) -> tuple[float, float]:
        return (point[0] + 0.5) * scale + dx, (point[1] + 0.5) * scale + 18

    for src, pred, gt, ok in zip(record["src"], record["pred"], record["gt"], correct.tolist(),
                                 strict=True):
        colour = CORRECT if ok else WRONG
        (x0, y0), (x1, y1) = at(src, s0, 0), at(pred, s1, left.width)
        tx, ty = at(gt, s1, left.width)
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], outline=colour, width=2)
        draw.ellipse([tx - tolerance, ty - tolerance, tx + tolerance, ty + tolerance],
                     outline=(255, 255, 255))
        draw.line([(tx, ty), (x1, y1)], fill=colour, width=2)
        draw.rectangle([tx - r, ty - r, tx + r, ty + r], outline="black", width=2)
        draw.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=colour, outline="black")
    draw.text((4, 3), f"{record['pair_id']}  PCK@{alpha:g} = {100 * pck:.0f}% "
              f"({int(correct.sum())}/{correct.numel()})  pose: {record.get('pose', '?')}",
              fill="black")
    return canvas


def _file_name(rank: str, index: int, pair_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", pair_id)[:80]
    return f"{rank}_{index:02d}_{safe}.jpg"


def _index_html(title: str, sections: list[tuple[str, list[tuple[str, str]]]]) -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1em}figure{display:inline-block;"
             "margin:.5em}img{max-width:100%;border:1px solid #ccc}</style>",
             f"<h1>{html.escape(title)}</h1>",
             "<p>Filled dots: predictions (green = correct, red = wrong); squares: true points;"
             " white circles: the PCK tolerance; hollow dots on the left: query points.</p>"]
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts += [f"<figure><a href='{html.escape(name)}'><img src='{html.escape(name)}' "
                  f"alt='{html.escape(caption)}'></a><figcaption>{html.escape(caption)}"
                  "</figcaption></figure>" for name, caption in items]
    return "\n".join(parts) + "\n"


def save_gallery(
    records: Callable[[], Iterable[dict[str, Any]]],
    out_dir: str | os.PathLike[str],
    count: int,
    alpha: float = 0.1,
    pair_ids: set[str] | None = None,
    title: str = "semcorr examples",
) -> dict[str, Any]:
    """Write the ``count`` best and worst pairs as JPEGs and an offline ``index.html``.

    Args:
        records: returns a fresh iterable of prediction records each time it is called (it is
            read twice: to rank, then to draw), e.g. one reading ``predictions.jsonl``.
        out_dir: the gallery folder (created).
        count: pairs per side.
        alpha: the PCK threshold that colours the points and ranks the pairs.
        pair_ids: restrict to these pairs (``None``: all recorded).
        title: page title.

    Returns:
        ``{"index": path, "alpha", "best": [{"pair_id", "pck", "file"}], "worst": [...]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def chosen() -> Iterable[dict[str, Any]]:
        return (r for r in records() if pair_ids is None or r.get("pair_id") in pair_ids)

    best, worst = rank_pairs(chosen(), alpha, count)
    wanted = {pid: ("best", i) for i, pid in enumerate(best, 1)}
    wanted.update({pid: ("worst", i) for i, pid in enumerate(worst, 1)})
    written: dict[str, dict[str, Any]] = {}
    for record in chosen():
        pid = record.get("pair_id")
        if pid in wanted and pid not in written:
            rank, i = wanted[pid]
            buffer = io.BytesIO()
            example_picture(record, alpha).save(buffer, format="JPEG", quality=88)
            name = _file_name(rank, i, pid)
            atomic_write_bytes(out / name, buffer.getvalue())
            written[pid] = {"pair_id": pid, "pck": pair_pck(record, alpha)[0], "file": name}
    summary = {"alpha": alpha, "best": [written[p] for p in best],
               "worst": [written[p] for p in worst]}
    sections = [(f"{side} {len(summary[side])} pairs (PCK@{alpha:g})",
                 [(e["file"], f"{e['pair_id']}: {100 * e['pck']:.0f}%") for e in summary[side]])
                for side in ("best", "worst")]
    atomic_write_bytes(out / "index.html", _index_html(title, sections).encode("utf-8"))
    return {"index": str(out / "index.html"), **summary}

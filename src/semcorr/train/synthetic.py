"""Training pairs made from photographs by known similarity warps (optionally mirrored): a
benchmark-free training and validation set for the trainers' tests and smoke runs."""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn.functional as F

from semcorr.data.base import PairSample
from semcorr.errors import InputError
from semcorr.io import atomic_write_bytes, load_image

__all__ = ["make_synthetic_pairs"]


def _photo_paths(root: Path) -> list[Path]:
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise InputError(f"{root}: no .png/.jpg photographs for synthetic pairs")
    return paths


def make_synthetic_pairs(
    photos: str | Path,
    out: str | Path,
    count: int,
    size: int = 160,
    seed: int = 0,
    mirror_rate: float = 0.0,
    grid: int = 5,
) -> list[PairSample]:
    """Pairs of real photographs and their warps by known similarities (optionally mirrored).

    Each source is a ``size``-pixel square crop of a photograph; the target is the source
    rotated (±25°), zoomed (0.8–1.2) and shifted, then mirrored with probability
    ``mirror_rate``. Keypoints are a ``grid x grid`` lattice on the source; those landing
    outside the target are not visible. Images are written to ``out`` once (idempotent).

    Returns:
        ``count`` :class:`PairSample` s (no left/right partners: ``flip_permutation`` is -1).
    """
    from PIL import Image

    from semcorr.geometry.warp import hflip_matrix, similarity_matrix, warp_image, warp_points

    photos, out = Path(photos), Path(out)
    paths = _photo_paths(photos)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    lattice = torch.linspace(0.15 * (size - 1), 0.85 * (size - 1), grid)
    points = torch.stack(torch.meshgrid(lattice, lattice, indexing="xy"), -1).reshape(-1, 2)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    loaded: dict[Path, torch.Tensor] = {}
    for index in range(count):
        path = paths[index % len(paths)]
        photo = loaded[path] if path in loaded else loaded.setdefault(path, load_image(path))
        h, w = photo.shape[-2:]
        side = min(h, w, 2 * size)
        x0 = int(uniform(0, w - side))
        y0 = int(uniform(0, h - side))
        crop = photo[:, y0:y0 + side, x0:x0 + side]
        source = F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)[0]
        matrix = similarity_matrix(size, size, uniform(-25, 25), uniform(0.8, 1.2),
                                   (uniform(-10, 10), uniform(-10, 10)))
        mirrored = uniform(0, 1) < mirror_rate
        if mirrored:
            matrix = hflip_matrix(size) @ matrix
        target = warp_image(source, matrix, (size, size))
        target_points = warp_points(points, matrix)
        inside = ((target_points >= 0) & (target_points <= size - 1)).all(-1)
        files = [out / f"pair{index:04d}_s{seed}_{size}px_{k}.png" for k in ("a", "b")]
        for file, image in zip(files, (source, target), strict=True):
            if not file.is_file():
                array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                out.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="PNG")
                atomic_write_bytes(file, buffer.getvalue())
        n = points.shape[0]
        samples.append(PairSample(
            source_path=files[0], target_path=files[1], source_points=points.clone(),
            target_points=torch.where(inside[:, None], target_points, torch.full_like(
                target_points, -1.0)),
            visible=inside, category="synthetic", source_bbox=None, target_bbox=None,
            source_size=(size, size), target_size=(size, size), pck_reference=float(size),
            keypoint_ids=torch.arange(n), flip_permutation=torch.full((n,), -1),
            pair_id=f"synthetic-{seed}-{index}", extra={"mirrored": mirrored},
        ))
    return samples

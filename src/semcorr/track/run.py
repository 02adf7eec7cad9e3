"""The tracking job: first-frame points and/or mask, through every frame of a clip.

``track_clip`` reads each frame's features through the feature cache (computed once per frame;
a re-run or a killed run finds them there), propagates one stack of soft labels (point
heatmaps and the mask's one-hot channels side by side: the propagation is the same linear map
for every channel) with :class:`~semcorr.track.propagate.LabelPropagator`, and writes every
output atomically. A resumed run recomputes the propagation from the cached features (cheap
next to the backbone) and so writes byte-identical outputs.

Geometry: a backbone sees each frame resized and padded to a square of side ``S``
(:class:`~semcorr.geometry.ResizePad`); labels live on that square's feature grid. Points go
there with ``ResizePad.to_input`` and the CRW pixel → cell rule, and come back the same way.
Masks are resized with nearest-neighbour sampling onto the square (padding = background), then
onto the grid (DIFT resizes the original mask to the grid in one nearest-neighbour step; here
there are two, because of the padding), and decoded at the square's resolution (bilinear,
DIFT's ``norm_mask``, argmax), cropped to the frame and resized back with nearest-neighbour
sampling, as DIFT does from its working size to the original size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semcorr.conventions import UNMATCHED
from semcorr.errors import InputError
from semcorr.features.base import Backbone
from semcorr.features.cache import FeatureCache, cached_features
from semcorr.features.fusion import resample_parts
from semcorr.geometry import ResizePad
from semcorr.io import load_image, open_image
from semcorr.track.labels import (
    MASK_NORMALISE,
    labels_to_mask,
    labels_to_points,
    mask_to_labels,
    points_to_labels,
)
from semcorr.track.outputs import (
    coco_keypoints,
    davis_palette,
    save_points,
    write_index_png,
    write_overlays,
)
from semcorr.track.propagate import LabelPropagator, PropagationConfig

__all__ = ["TrackResult", "chroma_on_grid", "frame_features", "frame_sizes", "mask_from_square",
           "mask_on_square", "points_from_square", "track_clip"]


@dataclass
class TrackResult:
    """What :func:`track_clip` produced.

    Attributes:
        points: ``(T, P, 2)`` pixels (``-1`` = lost) or ``None``; ``scores``: ``(T, P)``.
        masks: mask files, one per frame, or ``None``.
        files: every file written besides the masks.
        seconds: wall-clock time.
    """

    points: torch.Tensor | None
    scores: torch.Tensor | None
    masks: list[Path] | None
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def frame_sizes(frames: Sequence[Path]) -> list[tuple[int, int]]:
    """``(H, W)`` of every frame, read from the headers.

    Raises:
        ImageError / InputError: naming an unreadable frame or one whose size differs from the
        first's.
    """
    sizes = []
    for path in frames:
        with open_image(path) as image:
            sizes.append((image.height, image.width))
        if sizes[-1] != sizes[0]:
            raise InputError(f"{path}: frame is {sizes[-1][1]}x{sizes[-1][0]}, the first frame "
                             f"is {sizes[0][1]}x{sizes[0][0]}; all frames need one size")
    return sizes


def frame_features(backbone: Backbone, cache: FeatureCache, path: Path
                   ) -> tuple[torch.Tensor, ResizePad]:
    """One frame's features ``(C, h, w)`` through the cache (several parts are brought to the
    finest grid, each L2-normalised, and concatenated) and its transform."""
    parts, transform = cached_features(backbone, cache, path)
    maps = list(parts.values())
    if len(maps) == 1:
        return maps[0][0], transform
    finest = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    maps = [torch.nn.functional.normalize(m, dim=1) for m in resample_parts(maps, finest)]
    return torch.cat(maps, dim=1)[0], transform


def chroma_on_grid(path: Path, transform: ResizePad, grid: tuple[int, int]) -> torch.Tensor:
    """The frame's colour without its brightness, ``(3, h, w)`` on the feature grid: the image
    as the backbone sees it (resized and padded to the square), averaged over each cell, minus
    the mean of its three channels (so grey is 0 and only hue and saturation remain)."""
    square = transform.apply(load_image(path)[None])[0]  # (3, S, S) in [0, 1]
    cells = torch.nn.functional.adaptive_avg_pool2d(square, grid)
    return cells - cells.mean(0, keepdim=True)


def mask_on_square(mask: torch.Tensor, transform: ResizePad) -> torch.Tensor:
    """Index mask ``(H, W)`` → ``(S, S)`` on the backbone's square (nearest; padding = 0)."""
    w, h = transform.resized
    left, top = transform.pad
    small = Image.fromarray(mask.numpy().astype(np.uint8)).resize((w, h), Image.NEAREST)
    square = torch.zeros(transform.size, transform.size, dtype=torch.long)
    square[top:top + h, left:left + w] = torch.from_numpy(np.asarray(small).astype(np.int64))
    return square


def mask_from_square(labels: torch.Tensor, transform: ResizePad,
                      normalise: str = "minmax") -> torch.Tensor:
    """Soft labels ``(K, h, w)`` on the square's grid → index mask ``(H, W)`` of the frame
    (``normalise``: :func:`~semcorr.track.labels.labels_to_mask`'s read-out)."""
    square = labels_to_mask(labels, (transform.size, transform.size), normalise)
    w, h = transform.resized
    left, top = transform.pad
    crop = square[top:top + h, left:left + w].numpy().astype(np.uint8)
    full = Image.fromarray(crop).resize((transform.width, transform.height), Image.NEAREST)
    return torch.from_numpy(np.asarray(full).astype(np.int64))


def points_from_square(labels: torch.Tensor, transform: ResizePad
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps ``(P, h, w)`` → frame pixels ``(P, 2)`` (``-1`` = lost) and scores ``(P,)``."""
    square, scores = labels_to_points(labels, (transform.size, transform.size))
    lost = (square == UNMATCHED).all(-1, keepdim=True)
    points = torch.where(lost, float(UNMATCHED), transform.from_input(square))
    return points, scores


def track_clip(
    backbone: Backbone,
    cache: FeatureCache,
    frames: Sequence[Path],
    out: Path,
    config: PropagationConfig,
    *,
    points: torch.Tensor | None = None,
    point_names: Sequence[str] | None = None,
    mask: torch.Tensor | None = None,
    palette: np.ndarray | None = None,
    sigma: float = 0.5,
    overlay: bool = True,
    video: bool = False,
    progress: Callable[[int], None] | None = None,
    mask_normalise: str = "minmax",
    presence_colour: float = 0.0,
) -> TrackResult:
    """Track first-frame ``points`` ``(P, 2)`` and/or an index ``mask`` ``(H, W)`` through
    ``frames`` and write ``out/points.json``, ``out/masks/*.png``, ``out/overlay.jpg``
    (``overlay.mp4`` too when ``video``).

    Args:
        backbone: the feature extractor (the cache's configuration).
        cache: the feature cache.
        frames: frame files in order, all of one size.
        out: the output folder.
        config: propagation settings.
        points: first-frame pixels; ``point_names`` names them (default ``p0, p1, ...``).
        mask: first-frame object indices (0 = background); ``palette`` ``(256, 3)`` for the
            output PNGs (default: DAVIS's).
        sigma: Gaussian of a point's heatmap, in cells.
        overlay, video: write the overlay strip / the overlay mp4.
        progress: called with 1 after each frame.
        mask_normalise: the mask read-out, ``"minmax"`` (DIFT's ``norm_mask``) or ``"none"``
            (:func:`~semcorr.track.labels.labels_to_mask`).
        presence_colour: with ``config.presence_margin``, the out-of-view decision compares
            the features (L2-normalised) with each cell's colour (:func:`chroma_on_grid`)
            times this weight appended; 0: the features alone. For backbones blind to colour
            (dense-sift sees gradients only).
    """
    if points is None and mask is None:
        raise InputError("nothing to track: give --points and/or --mask")
    if mask_normalise not in MASK_NORMALISE:
        raise InputError(f"--mask-normalise must be one of {', '.join(MASK_NORMALISE)}, "
                         f"got {mask_normalise!r}")
    start = time.perf_counter()
    sizes = frame_sizes(frames)
    palette = davis_palette() if palette is None else palette
    num_points = 0 if points is None else points.shape[0]
    propagator = LabelPropagator(config)
    with_colour = (mask is not None and config.presence_margin is not None
                   and presence_colour > 0)
    track_points, track_scores, mask_files = [], [], []
    for t, path in enumerate(frames):  # a loop over frames; the propagator is vectorised
        features, transform = frame_features(backbone, cache, path)
        grid = tuple(features.shape[-2:])
        appearance = None
        if with_colour:
            appearance = torch.cat([torch.nn.functional.normalize(features.float(), dim=0),
                                    presence_colour * chroma_on_grid(path, transform, grid)])
        if t == 0:
            labels = _first_labels(points, mask, transform, grid, sigma)
            propagator.start(features, labels,
                             mask_channels=0 if mask is None else labels.shape[0] - num_points,
                             appearance=appearance)
            if points is not None:
                track_points.append(points.float())
                track_scores.append(torch.ones(num_points))
            first_mask = mask
        else:
            labels = propagator.step(features, appearance)
            if points is not None:
                p, s = points_from_square(labels[:num_points], transform)
                track_points.append(p)
                track_scores.append(s)
        if mask is not None:
            name = out / "masks" / f"{t:05d}.png"
            frame_mask = first_mask if t == 0 else mask_from_square(
                labels[num_points:], transform, mask_normalise)
            write_index_png(name, frame_mask, palette)
            mask_files.append(name)
        if progress is not None:
            progress(1)
    result = TrackResult(None, None, mask_files or None)
    if points is not None:
        result.points, result.scores = torch.stack(track_points), torch.stack(track_scores)
        names = list(point_names or [f"p{i}" for i in range(num_points)])
        save_points(out / "points.json",
                    coco_keypoints(frames, sizes, result.points, result.scores, names))
        result.files.append(out / "points.json")
    if overlay:
        result.files += write_overlays(out, frames, result.masks, palette, result.points,
                                       video=video)
    result.seconds = time.perf_counter() - start
    return result


def _first_labels(points: torch.Tensor | None, mask: torch.Tensor | None, transform: ResizePad,
                  grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """First-frame soft labels ``(P + K, h, w)``: point heatmaps, then the mask's one-hot."""
    square = (transform.size, transform.size)
    labels = []
    if points is not None:
        labels.append(points_to_labels(transform.to_input(points.float()), square, grid, sigma))
    if mask is not None:
        labels.append(mask_to_labels(mask_on_square(mask, transform), int(mask.max()), grid))
    return torch.cat(labels, dim=0)

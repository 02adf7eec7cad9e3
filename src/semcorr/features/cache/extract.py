"""Extraction jobs over a cache: compute the features of the images that are missing or
stale, write each entry as soon as its batch is done, and summarise what was done."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from semcorr.errors import ImageError, InputError
from semcorr.features.base import Backbone
from semcorr.features.cache.encoding import FLIPPED, ORIGINAL, CacheError
from semcorr.features.cache.store import FeatureCache, file_stamp
from semcorr.geometry import ResizePad
from semcorr.io import load_image

__all__ = ["ExtractSummary", "cached_extract", "cached_features", "extract_parts"]


def extract_parts(
    backbone: Backbone, images: Sequence[torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[ResizePad]]:
    """Named feature parts of original images ``(3, H_i, W_i)``.

    In order of preference: the backbone's own ``extract_parts(images)`` (same contract as this
    function: for backbones that prepare several inputs from the originals, like SD + DINO at
    two resolutions), its ``feature_parts(normalised batch)`` (multi-part backbones such as
    Stable Diffusion's s3/s4/s5), else its single feature map named after the backbone.

    Returns:
        ``{part: (B, C_k, h_k, w_k)}`` and one transform per image.
    """
    own = getattr(backbone, "extract_parts", None)
    if own is not None:
        with torch.inference_mode():
            parts, transforms = own(images)
        return dict(parts), list(transforms)
    parts_fn = getattr(backbone, "feature_parts", None)
    if parts_fn is None:
        features, transforms = backbone.extract(images)
        return {backbone.info.name: features}, transforms
    batch, transforms = backbone.prepare(images)
    with torch.inference_mode():
        return dict(parts_fn(backbone.normalize(batch))), transforms


def _image_features(
    backbone: Backbone, images: Sequence[torch.Tensor], flip: bool
) -> tuple[list[dict[str, dict[str, torch.Tensor]]], list[ResizePad]]:
    """Per image ``{"original": {part: (C, h, w)}, ["flipped": ...]}`` and transforms."""
    orientations = {ORIGINAL: list(images)}
    if flip:
        orientations[FLIPPED] = [img.flip(-1) for img in images]
    per_image: list[dict[str, dict[str, torch.Tensor]]] = [{} for _ in images]
    transforms: list[ResizePad] = []
    for orientation, batch in orientations.items():
        parts, transforms = extract_parts(backbone, batch)
        for index, item in enumerate(per_image):
            item[orientation] = {name: x[index] for name, x in parts.items()}
    return per_image, transforms


@dataclass
class ExtractSummary:
    """What an extraction job did.

    Attributes:
        images: images asked for.
        computed: entries computed and written by this job.
        skipped: images whose entry was already there (same config, same source content).
        failed: ``(image id, reason)`` of images that could not be read.
        bytes: bytes written.
        seconds: wall-clock time.
    """

    images: int = 0
    computed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def merge(self, other: ExtractSummary) -> ExtractSummary:
        """Sum of two summaries (e.g. of two ranks); time is the longest of the two."""
        return ExtractSummary(
            self.images + other.images,
            self.computed + other.computed,
            self.skipped + other.skipped,
            self.failed + other.failed,
            self.bytes + other.bytes,
            max(self.seconds, other.seconds),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "computed": self.computed,
            "skipped": self.skipped,
            "failed": [list(item) for item in self.failed],
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        }


def _pending(
    cache: FeatureCache, items: Sequence[tuple[str, Path]], overwrite: bool,
    summary: ExtractSummary,
) -> list[tuple[str, Path, dict[str, Any]]]:
    """The items whose entry must be computed, with their source stamps."""
    todo = []
    for image_id, path in items:
        try:
            stamp = file_stamp(path)
        except ImageError as exc:
            summary.failed.append((image_id, str(exc)))
            continue
        if not overwrite and cache.contains(image_id, stamp, verify=True):
            summary.skipped += 1
        else:
            todo.append((image_id, path, stamp))
    return todo


def _compute_batch(
    backbone: Backbone,
    cache: FeatureCache,
    batch: Sequence[tuple[str, Path, dict[str, Any]]],
    summary: ExtractSummary,
    delay_per_image: float,
) -> None:
    """Load, extract and write one batch of ``(image id, path, stamp)``; updates ``summary``."""
    loaded = []
    for image_id, path, stamp in batch:
        try:
            loaded.append((image_id, load_image(path), stamp))
        except ImageError as exc:
            summary.failed.append((image_id, str(exc)))
    if not loaded:
        return
    features, transforms = _image_features(backbone, [x[1] for x in loaded], cache.flip)
    for (image_id, _, stamp), item, transform in zip(loaded, features, transforms, strict=True):
        if delay_per_image > 0:
            time.sleep(delay_per_image)
        summary.bytes += cache.put(image_id, item, transform, stamp)
        summary.computed += 1


def cached_extract(
    backbone: Backbone,
    cache: FeatureCache,
    paths: Sequence[str | os.PathLike[str]],
    ids: Sequence[str] | None = None,
    *,
    batch_size: int = 1,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    delay_per_image: float = 0.0,
) -> ExtractSummary:
    """Make sure the cache holds the features of every image; compute only what is missing.

    Images already cached with the same configuration and the same file content are skipped;
    unreadable images are reported in the summary and skipped; every entry is written
    atomically as soon as its batch is done, so an interrupted job resumes where it stopped.

    Args:
        backbone: built with the configuration the cache was created for.
        cache: the cache (see :meth:`FeatureCache.create`).
        paths: image files.
        ids: the image identities (default: each resolved path).
        batch_size: images per backbone call.
        overwrite: recompute entries that exist.
        progress: called with the number of images finished (computed, skipped or failed).
        delay_per_image: seconds to sleep per computed image before writing it — a test hook
            that makes a job slow enough to be interrupted; leave at 0.

    Returns:
        An :class:`ExtractSummary` of this call.
    """
    if cache.config.get("backbone") != backbone.info.name:
        raise InputError(
            f"{cache.root}: the cache holds {cache.config.get('backbone')} features, "
            f"not {backbone.info.name}"
        )
    if ids is None:
        ids = [str(Path(p).resolve()) for p in paths]
    if len(ids) != len(paths):
        raise ValueError("ids and paths must have the same length")
    start = time.perf_counter()
    summary = ExtractSummary(images=len(paths))
    todo = _pending(cache, list(zip(ids, map(Path, paths), strict=True)), overwrite, summary)
    if progress is not None:
        progress(summary.skipped + len(summary.failed))
    for begin in range(0, len(todo), max(1, batch_size)):
        batch = todo[begin : begin + max(1, batch_size)]
        _compute_batch(backbone, cache, batch, summary, delay_per_image)
        if progress is not None:
            progress(len(batch))
    summary.seconds = time.perf_counter() - start
    return summary


def cached_features(
    backbone: Backbone,
    cache: FeatureCache,
    path: str | os.PathLike[str],
    image_id: str | None = None,
    flip: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, torch.Tensor], ResizePad]:
    """The features of one image from the cache, computed and stored first when missing,
    stale (the file changed) or corrupt.

    Args:
        backbone: built with the cache's configuration.
        cache: the cache.
        path: the image file.
        image_id: its identity (default: the resolved path).
        flip: the features of the horizontally flipped image (the cache must hold them).
        dtype: dtype of the returned tensors.

    Returns:
        ``{part: (1, C, h, w)}`` on the CPU and the image's transform.
    """
    image_id = image_id if image_id is not None else str(Path(path).resolve())
    stamp = file_stamp(path)
    for attempt in range(2):
        entry = None
        if cache.contains(image_id, stamp):
            entry = cache.entry(image_id)
        if entry is not None:
            try:
                parts = entry.tensors(flip=flip, dtype=dtype)
                return {k: v[None] for k, v in parts.items()}, entry.transform
            except CacheError:
                if attempt:
                    raise
        cached_extract(backbone, cache, [path], [image_id], overwrite=True)
    raise CacheError(f"{cache.root}: could not cache {path}")  # pragma: no cover

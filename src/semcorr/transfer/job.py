"""The transfer stage, :func:`main`: load the sources, shard and stream the targets in
batches, write one part per batch, and assemble the output (rank 0)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import torch

from semcorr.errors import ImageError, InputError
from semcorr.features.base import Backbone
from semcorr.io import atomic_write_json, load_image, quick_stamp
from semcorr.io.stream import prefetch
from semcorr.match.refine import refiner_with_options
from semcorr.pipeline import Matcher
from semcorr.transfer.annotations import TransferSources, list_images, load_annotations
from semcorr.transfer.options import TransferConfig
from semcorr.transfer.output import _assemble, _job_fingerprint, _open_state, _record, read_parts
from semcorr.transfer.voting import _cached_target_features, _prepare_source, _transfer_batch

__all__ = ["main"]


# --- the stage -----------------------------------------------------------------------------------


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last one shorter), read lazily."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _try_load(path: Path) -> torch.Tensor | str:
    """The image of ``path``, or the message saying why it cannot be read (not fatal)."""
    try:
        return load_image(path)
    except (ImageError, InputError) as exc:
        return str(exc)


def _split_batch(batch: Sequence[tuple[Path, torch.Tensor | str]]
                 ) -> tuple[list[Path], list[torch.Tensor], dict[str, Any]]:
    """The readable targets of a batch and their images, and the records of the others."""
    ok, images, errors = [], [], {}
    for path, image in batch:
        if isinstance(image, str):
            errors[str(path)] = {"error": image}
        else:
            ok.append(path)
            images.append(image)
    return ok, images, errors


def _still_current(record: dict[str, Any] | None, path: Path) -> bool:
    """Whether a resumed job may keep ``record`` of target ``path``: it exists and was made from
    the same file content (a replaced or edited image is done again)."""
    return record is not None and record.get("stamp") == quick_stamp(path)


def _next_generation(parts: Path) -> int:
    """One more than the newest run that wrote into ``parts`` (0 for a fresh job). Part names
    carry it, so a resumed run, whose batch may start at the index of an earlier batch and hold
    fewer targets, never overwrites an earlier part; its records sort after (and win)."""
    runs = [int(p.name.split("-")[1][1:]) for p in parts.glob("part-g*-*.json")]
    return max(runs, default=-1) + 1


def main(
    annotations: str | os.PathLike[str],
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    backbone: Backbone,
    config: TransferConfig | None = None,
    *,
    backbone_name: str | None = None,
    category: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    cache: Any = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    fingerprint_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Transfer annotated keypoints to every target image and write COCO keypoints JSON.

    Args:
        annotations: COCO keypoints or ``semcorr match`` JSON with the annotated sources.
        images: folder of target images, text file listing them, or a sequence of paths.
            Source images are never targets.
        out: the output JSON; the resume state lives in ``<out>.parts/``.
        backbone: the dense backbone (on its device).
        config: the job's options (see :class:`TransferConfig`).
        backbone_name: recorded in the output (default: the backbone's name).
        category: COCO category to transfer, when the file has several.
        image_root: folder of the source images (default: beside the annotation file).
        cache: an optional :class:`~semcorr.features.cache.FeatureCache` for target features.
        overwrite: discard earlier results of ``out`` instead of resuming.
        progress: called with the number of targets done after each batch.
        on_start: called once with the number of targets this process still has to do.
        rank, world_size: this process's share of the targets (torchrun); rank 0 assembles.
        fingerprint_extra: more settings that determine the output (e.g. weights, head).

    Returns:
        The path of the output file (written by rank 0 once every share is done).
    """
    from semcorr import distributed

    config = config or TransferConfig()
    out = Path(out)
    name = backbone_name or backbone.info.name
    sources = load_annotations(annotations, category, image_root)
    source_files = {s.image.resolve() for s in sources.sources}
    if isinstance(images, (str, os.PathLike)):
        targets, base = list_images(images), Path(images) if Path(images).is_dir() else None
    else:
        targets, base = [Path(p) for p in images], None
    targets = [t for t in targets if t.resolve() not in source_files]
    fingerprint = _job_fingerprint(config, sources, name, fingerprint_extra or {})
    parts = _open_state(out, fingerprint, overwrite, rank == 0)
    distributed.barrier()
    done = read_parts(parts)
    pending = [t for t in distributed.shard(targets, rank, world_size)
               if not _still_current(done.get(str(t)), t)]
    position = {t: i for i, t in enumerate(targets)}
    if on_start is not None:
        on_start(len(pending))
    if pending:
        _run(backbone, sources, pending, parts, config, cache, progress, rank,
             [position[t] for t in pending])
    distributed.barrier()
    if rank == 0:
        document = _assemble(targets, read_parts(parts), sources, config, name, base)
        atomic_write_json(out, document)
    return out


def _run(
    backbone: Backbone,
    sources: TransferSources,
    pending: Sequence[Path],
    parts: Path,
    config: TransferConfig,
    cache: Any,
    progress: Callable[[int], None] | None,
    rank: int,
    indices: Sequence[int],
) -> None:
    """Transfer to the pending targets, one atomically written part file per batch.

    The targets are decoded by ``config.workers`` threads while the backbone runs on the
    previous batch (at most one batch ahead); batches, their order and their part files are
    those of the sequential path (``workers=0``), so the output is the same byte for byte.
    """
    refiner = refiner_with_options(config.refine, radius=config.window,
                                   temperature=config.temperature, sigma=config.sigma,
                                   weighting=config.kernel_weighting)
    matcher = Matcher(backbone, refine=refiner, pose_align=config.pose_align,
                      batch_size=config.batch_size, workers=config.workers,
                      memory_budget=config.memory_budget)
    perm = sources.schema.flip_permutation
    prepared = [_prepare_source(matcher, s, perm) for s in sources.sources]
    size = matcher.batch_size_for(prepared[0].features,
                                  len(prepared) * prepared[0].descriptors.shape[1])
    generation = _next_generation(parts)
    index_of = dict(zip(pending, indices, strict=True))
    loaded = prefetch(pending, lambda p: (p, _try_load(p)), config.workers,
                      size + config.workers)
    with closing(loaded):
        for pairs in _batches(loaded, size):
            _write_batch(backbone, matcher, prepared, pairs, parts, config, cache,
                         f"part-g{generation:04d}-{rank:03d}-{index_of[pairs[0][0]]:07d}.json")
            if progress is not None:
                progress(len(pairs))


def _write_batch(
    backbone: Backbone,
    matcher: Matcher,
    prepared: Sequence[Any],
    pairs: Sequence[tuple[Path, torch.Tensor | str]],
    parts: Path,
    config: TransferConfig,
    cache: Any,
    name: str,
) -> None:
    """Transfer to one batch of decoded targets and write its part file ``parts/name``."""
    paths, images, records = _split_batch(pairs)
    if paths:
        if cache is not None:
            features, transforms = _cached_target_features(backbone, cache, paths)
        else:
            features, transforms = backbone.extract(images)
        with torch.inference_mode():
            result = _transfer_batch(matcher, prepared, features, transforms, config)
        for i, (path, transform) in enumerate(zip(paths, transforms, strict=True)):
            records[str(path)] = _record(result, i, transform)
    for path, _ in pairs:
        records[str(path)]["stamp"] = quick_stamp(path)
    atomic_write_json(parts / name, {"targets": records}, indent=None)

"""``semcorr extract``: fill a feature cache, resumably, on one or many processes.

Examples::

    semcorr extract --backbone dense-sift --cache feats/ images/*.jpg
    semcorr extract --backbone dense-sift --dataset pf-willow --root data/pf-willow \\
        --cache feats/ --flip --dtype int8 --compress
    torchrun --nproc_per_node 2 -m semcorr extract ... # same arguments, images split over ranks

Every rank takes every ``world_size``-th image (see :func:`semcorr.distributed.shard`) and writes
its own entries; rank 0 shows the progress bar of its share (the shares are balanced, so its ETA
is the job's) and prints the summary of all ranks, also written to ``CACHE/last_run.json``.

Test hook: the environment variable ``SEMCORR_TEST_DELAY_PER_IMAGE`` (seconds, default 0)
makes the job sleep that long per computed image before writing it, so that tests can kill a
run midway. It changes no result.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from semcorr.cli.common import (
    DEFAULT_BACKBONE,
    add_backbone_options,
    choose_device,
    with_precision,
)
from semcorr.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    cleanup,
    init_from_env,
    local_device,
    shard,
)
from semcorr.errors import InputError, JobFailed
from semcorr.features import create_backbone
from semcorr.features.base import resolve_precision
from semcorr.features.cache import (
    STORAGE_DTYPES,
    ExtractSummary,
    FeatureCache,
    cached_extract,
    extraction_config,
)
from semcorr.io import atomic_write_json, check_output_dir

__all__ = ["add_parser", "image_list", "parse_options", "run_extract"]

DELAY_VARIABLE = "SEMCORR_TEST_DELAY_PER_IMAGE"


def _relative_id(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise InputError(f"{path}: not inside --root {root}") from None


def image_list(args: argparse.Namespace) -> tuple[list[str], list[Path]]:
    """The image ids and files named on the command line (dataset or explicit files).

    Ids are paths relative to ``--root`` when it is given, else resolved paths. Duplicates are
    dropped, the order kept, and ``--limit`` applied.
    """
    if args.dataset and args.images:
        raise InputError("give either --dataset or image files, not both")
    if args.dataset:
        if args.root is None:
            raise InputError("--dataset needs --root (the dataset folder)")
        try:
            from semcorr.data import create_dataset
        except ImportError:
            raise InputError("--dataset needs semcorr.data, which this installation lacks; "
                             "pass image files instead") from None
        paths = [Path(p) for p in create_dataset(args.dataset, args.root, args.split).image_paths()]
    elif args.images:
        paths = [Path(p) for p in args.images]
    else:
        raise InputError("no images: give image files or --dataset NAME --root DIR")
    root = Path(args.root) if args.root is not None else None
    ids = [_relative_id(p, root) if root else str(p.resolve()) for p in paths]
    seen: dict[str, Path] = {}
    for image_id, path in zip(ids, paths, strict=True):
        seen.setdefault(image_id, path)
    items = list(seen.items())
    if args.limit is not None:
        if args.limit < 0:
            raise InputError(f"--limit must be >= 0, got {args.limit}")
        items = items[: args.limit]
    return [i for i, _ in items], [p for _, p in items]


def parse_options(items: list[str] | None) -> dict[str, object]:
    """Backbone options from ``KEY=VALUE`` strings; values are JSON when they parse as JSON
    (``image_size=448``, ``layers=[2,5]``), else plain strings."""
    options: dict[str, object] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"malformed --option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def _delay() -> float:
    text = os.environ.get(DELAY_VARIABLE, "0")
    try:
        return max(0.0, float(text))
    except ValueError:
        raise InputError(f"{DELAY_VARIABLE}={text!r} is not a number") from None


def _open_cache(args: argparse.Namespace, config: dict, info: DistInfo) -> FeatureCache:
    """Rank 0 creates (or checks) the cache and removes stale temporary files, then the
    others open it."""
    cache = None
    if info.is_main:
        cache = FeatureCache.create(args.cache, config, compress=args.compress)
        cache.clean_temporary()
    barrier()
    if cache is None:
        cache = FeatureCache.create(args.cache, config, compress=args.compress)
    return cache


def _report(summary: ExtractSummary, cache: FeatureCache, info: DistInfo) -> None:
    """Print the job's summary and write it beside the cache."""
    payload = {"config_hash": cache.config_hash, "world_size": info.world_size,
               **summary.as_dict()}
    atomic_write_json(cache.root / "last_run.json", payload)
    per_image = summary.bytes / summary.computed if summary.computed else 0
    print(
        f"{cache.root}: {summary.images} images, {summary.computed} computed, "
        f"{summary.skipped} skipped, {len(summary.failed)} failed; "
        f"{summary.bytes / 1e6:.1f} MB written ({per_image / 1e6:.2f} MB/image) "
        f"in {summary.seconds:.1f} s on {info.world_size} process(es)"
    )
    for image_id, reason in summary.failed:
        print(f"  failed: {image_id}: {reason}")  # stderr keeps the one error line


def run_extract(args: argparse.Namespace) -> ExtractSummary:
    """Run the job described by parsed arguments; returns the summary of all ranks."""
    check_output_dir(args.cache, "--cache")
    device = choose_device(args.device)
    info = init_from_env(use_cuda=device.type == "cuda")
    try:
        device = local_device(device, info)
        ids, paths = image_list(args)
        if not any(path.is_file() for path in paths):  # nothing to do: create no cache
            raise InputError(f"none of the {len(paths)} image file(s) exists (first: {paths[0]})")
        options = with_precision(parse_options(args.option), args)
        if options.get("precision") == "auto":  # the cache records what really ran
            options["precision"] = resolve_precision("auto", device)
        args.backbone = args.backbone or DEFAULT_BACKBONE
        backbone = create_backbone(args.backbone, weights=args.weights, **options)
        backbone = backbone.to(device).eval()
        config = extraction_config(backbone, args.weights, args.dtype, args.flip, options)
        cache = _open_cache(args, config, info)
        my_ids = shard(ids, info.rank, info.world_size)
        my_paths = shard(paths, info.rank, info.world_size)
        label = "extract" if info.world_size == 1 else f"extract (rank 0 of {info.world_size})"
        bar = tqdm(total=len(my_ids), desc=label, unit="image",
                   disable=not info.is_main or args.quiet)
        summary = cached_extract(
            backbone, cache, my_paths, my_ids, batch_size=args.batch_size,
            overwrite=args.overwrite, progress=bar.update, delay_per_image=_delay(),
        )
        bar.close()
        total = ExtractSummary()
        for part in all_gather_objects(summary):
            total = total.merge(part)
        if info.is_main:
            _report(total, cache, info)
        barrier()
        return total
    finally:
        cleanup()


def _verify(args: argparse.Namespace) -> int:
    """``extract --cache DIR --verify``: read every entry, check every checksum."""
    cache = FeatureCache(args.cache)
    total, bad = cache.verify()
    print(f"{cache.root}: {total - len(bad)} of {total} entries sound")
    for _, reason in bad:
        print(f"  bad: {reason}")
    if bad:
        raise JobFailed(f"extract --verify: {len(bad)} corrupt of {total} entries (listed above;"
                        " a new extract run recomputes them)")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.verify:
        if args.images or args.dataset:
            raise InputError("--verify checks an existing --cache; give no images or dataset")
        return _verify(args)
    summary = run_extract(args)
    if summary.failed and not (summary.computed or summary.skipped):
        raise JobFailed(f"extract: all {len(summary.failed)} image(s) failed (listed above)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="cache the features of many images (resumable, torchrun-aware)",
        description="Compute dense features of images into a feature cache, skipping images "
        "already cached with the same configuration. Run under torchrun to split the images "
        "over processes.",
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files")
    parser.add_argument("--dataset", default=None, help="dataset name (with --root)")
    parser.add_argument("--root", default=None,
                        help="dataset folder; with image files, ids are paths relative to it")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    add_backbone_options(parser)
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="backbone option (repeatable; JSON values), e.g. image_size=448")
    parser.add_argument("--cache", required=True, help="feature cache folder")
    parser.add_argument("--flip", action="store_true",
                        help="cache the horizontally flipped image's features too")
    parser.add_argument("--dtype", default="float16", choices=list(STORAGE_DTYPES),
                        help="storage type (int8 = per-channel quantised; default float16)")
    parser.add_argument("--compress", action="store_true",
                        help="deflate entries losslessly (smaller, slower to read)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per backbone call")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute images that are already cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verify", action="store_true",
                        help="read every entry of --cache and check its checksums, then exit "
                        "(1 when an entry is corrupt); an extract run also verifies each entry "
                        "it skips")
    parser.set_defaults(func=_run)

"""``semcorr transfer``: propagate annotated keypoints from a few sources to many images.

Examples::

    semcorr transfer --sources landmarks.json --images specimens/ --out transferred.json
    semcorr transfer --sources coco.json --category bird --images list.txt --out out.json \\
        --pose-align --min-score 0.5 --sheet review.png --cache feats/
    torchrun --nproc_per_node 4 -m semcorr transfer ...   # targets split over the ranks

The output is COCO keypoints JSON (visibility 2 for confident points, 0 below ``--min-score``)
with per-point ``keypoint_scores``, ``keypoint_uncertainty`` (spread of the sources' votes in
pixels) and ``keypoint_support``. A killed run resumes from ``OUT.parts/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm.auto import tqdm

from semcorr.cli.common import (
    add_backbone_options,
    add_refine_options,
    backbone_from_args,
    choose_device,
    refine_settings,
)
from semcorr.errors import JobFailed
from semcorr.io import check_output_dir, check_output_file
from semcorr.options import finite_number, int_at_least, positive_number

__all__ = ["add_parser", "run_transfer"]


def _check_numbers(args: argparse.Namespace) -> None:
    """The numeric options, refused before any file is read or any weights are loaded
    (:class:`~semcorr.transfer.TransferConfig` and the refinement rule check them again once the
    backbone's preferred rule fills in what was not given)."""
    if args.window is not None:
        int_at_least("window radius", args.window, 0)
    if args.temperature is not None:
        positive_number("temperature", args.temperature)
    if getattr(args, "sigma", None) is not None:
        positive_number("sigma", args.sigma)
    if args.batch_size is not None:
        int_at_least("batch_size", args.batch_size, 1)
    int_at_least("workers", args.workers, 0)
    if args.memory_budget is not None:
        positive_number("--memory-budget", args.memory_budget)
    positive_number("cycle_radius", args.cycle_radius)
    finite_number("min_score", args.min_score)


def run_transfer(args: argparse.Namespace) -> Path:
    """Run the job described by parsed arguments; returns the output path."""
    from semcorr.distributed import cleanup, init_from_env, local_device
    from semcorr.transfer import TransferConfig, list_images, load_annotations, main

    _check_numbers(args)
    check_output_file(args.out)
    if args.sheet is not None:
        check_output_file(args.sheet, "--sheet")
    if args.cache is not None:
        check_output_dir(args.cache, "--cache")
    load_annotations(args.sources, args.category, args.image_root)  # inputs before any weights
    list_images(args.images)
    device = choose_device(args.device)
    info = init_from_env(use_cuda=device.type == "cuda")
    try:
        args.device = str(local_device(device, info))
        backbone = backbone_from_args(args)
        refine = refine_settings(args, backbone)
        config = TransferConfig(
            batch_size=args.batch_size, workers=args.workers,
            memory_budget=None if args.memory_budget is None else int(args.memory_budget * 2**30),
            refine=refine["name"], window=refine["radius"],
            temperature=refine["temperature"], sigma=refine["sigma"],
            kernel_weighting=refine["weighting"], pose_align=args.pose_align,
            min_score=args.min_score, cycle=not args.no_cycle, cycle_radius=args.cycle_radius,
        )
        cache = None
        if args.cache is not None:
            from semcorr.features.cache import FeatureCache

            cache = FeatureCache.for_backbone(args.cache, backbone, args.weights,
                                              storage=args.cache_dtype)
        bars: list[tqdm] = []  # opened when the work starts, after every input is read

        def start(total: int) -> None:
            bars.append(tqdm(total=total, desc="transfer", unit="image",
                             disable=not info.is_main or args.quiet))

        out = main(
            args.sources, args.images, args.out, backbone, config,
            backbone_name=args.backbone, category=args.category, image_root=args.image_root,
            cache=cache, overwrite=args.overwrite, progress=lambda n: bars[-1].update(n),
            on_start=start,
            rank=info.rank, world_size=info.world_size,
            fingerprint_extra={"weights": args.weights, "head": args.head,
                               "head_weights": args.head_weights},
        )
        for bar in bars:
            bar.close()
        if info.is_main:
            _report(out, args)
        return out
    finally:
        cleanup()


def _report(out: Path, args: argparse.Namespace) -> None:
    document = json.loads(out.read_text())
    annotations = document["annotations"]
    points = sum(len(a["keypoint_scores"]) for a in annotations)
    confident = sum(a["num_keypoints"] for a in annotations)
    print(f"wrote {out}: {len(annotations)} image(s), {confident}/{points} points with score "
          f">= {args.min_score:g}")
    for failure in document["semcorr"]["failed"]:
        print(f"  skipped {failure['file_name']}: {failure['error']}")
    if args.sheet is not None and annotations:
        from semcorr.viz.contact_sheet import contact_sheet_from_coco, save_contact_sheet

        root = Path(args.images) if Path(args.images).is_dir() else None
        sheet = contact_sheet_from_coco(document, root, limit=args.sheet_limit)
        save_contact_sheet(args.sheet, sheet)
        print(f"wrote {args.sheet}")


def _run(args: argparse.Namespace) -> int:
    out = run_transfer(args)
    document = json.loads(Path(out).read_text())
    failed = document["semcorr"]["failed"]
    if failed and not document["annotations"]:  # leave only the resumable state
        Path(out).unlink(missing_ok=True)
        raise JobFailed(f"transfer: all {len(failed)} target image(s) failed (listed above; "
                        f"resumable state in {out}.parts)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "transfer",
        help="transfer annotated keypoints to many images (COCO out)",
        description="Transfer keypoints from a few annotated sources to every target image, "
                    "with a consensus of the sources, a score and an uncertainty per point.",
    )
    parser.add_argument("--sources", required=True,
                        help="COCO keypoints JSON, or the JSON of 'semcorr match'")
    parser.add_argument("--images", required=True,
                        help="folder of target images, or a text file with one path a line")
    parser.add_argument("--out", required=True, help="output COCO keypoints JSON")
    parser.add_argument("--category", default=None,
                        help="category (name or id) to transfer when the file has several")
    parser.add_argument("--image-root", default=None,
                        help="folder of the source images (default: beside --sources)")
    add_backbone_options(parser)
    add_refine_options(parser)
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="points below this score get visibility 0 (default 0)")
    parser.add_argument("--no-cycle", action="store_true",
                        help="skip the target -> source cycle-consistency check")
    parser.add_argument("--cycle-radius", type=float, default=0.1,
                        help="cycle radius as a fraction of the source's longer side")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="targets per batch (default: as many as fit in --memory-budget, "
                             "at most 8 on a CPU, 32 on a GPU)")
    parser.add_argument("--memory-budget", type=float, default=None, metavar="GB",
                        help="memory a batch may use, for the automatic batch size "
                             "(default: half the memory available)")
    parser.add_argument("--workers", type=int, default=2,
                        help="threads decoding the next images while the model runs "
                             "(0 = none; default 2)")
    parser.add_argument("--cache", default=None, help="feature cache folder for the targets")
    parser.add_argument("--cache-dtype", default="float16",
                        help="storage type of a new feature cache (default float16)")
    parser.add_argument("--sheet", default=None, help="write a contact sheet PNG here")
    parser.add_argument("--sheet-limit", type=int, default=64,
                        help="images on the contact sheet (default 64)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard earlier results of --out instead of resuming")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)

"""``semcorr eval --dataset NAME --root DIR``: PCK of a matcher on a benchmark."""

from __future__ import annotations

import argparse

from semcorr.cli.common import (
    add_backbone_options,
    add_refine_options,
    backbone_from_args,
    parse_key_values,
    refiner_from_args,
)
from semcorr.errors import InputError

__all__ = ["add_parser", "parse_dataset_options", "parse_thresholds"]


def parse_thresholds(text: str) -> list[float]:
    """``"0.05,0.1"`` → ``[0.05, 0.1]``."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"malformed --thresholds {text!r}: expected e.g. '0.05,0.1'") from None
    if not values:
        raise InputError("--thresholds: no value given")
    return values


def parse_dataset_options(items: list[str] | None) -> dict[str, int | float | str]:
    """Loader options from ``KEY=VALUE`` strings (numbers converted).

    Example:
        ``["layout=small", "pairs_per_class=10"]`` → ``{"layout": "small", "pairs_per_class": 10}``
    """
    return parse_key_values(items, "--dataset-option")


def _run(args: argparse.Namespace) -> int:
    from semcorr.data import create_dataset
    from semcorr.eval.benchmark import evaluate
    from semcorr.eval.report import markdown_table
    from semcorr.pipeline import Matcher

    thresholds = parse_thresholds(args.thresholds)
    if args.save_examples < 0 or not 0 < args.examples_alpha < 1:
        raise InputError("--save-examples must be >= 0 and --examples-alpha between 0 and 1")
    options = parse_dataset_options(args.dataset_option)
    if args.category:
        options["category"] = args.category
    if args.subset:
        options["subset"] = args.subset
    dataset = create_dataset(args.dataset, args.root, split=args.split, **options)
    backbone = backbone_from_args(args)
    matcher = Matcher(backbone, refine=refiner_from_args(args, backbone),
                      pose_align=args.pose_align)
    out = args.out or f"semcorr-eval-{args.dataset}-{args.split}"
    results = evaluate(
        matcher,
        dataset,
        out,
        thresholds=thresholds,
        limit=args.limit,
        overwrite=args.overwrite,
        progress=not args.quiet,
        save_examples=args.save_examples,
        examples_alpha=args.examples_alpha,
    )
    print(markdown_table(results))
    for item in results["skipped_pairs"]:
        print(f"skipped {item['pair_id']}: {item['reason']}")
    print(f"wrote {out}/results.json, results.md, pck_curve.png")
    if args.save_examples:
        print(f"wrote {results['examples']['index']}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from semcorr.data import list_datasets

    parser = subparsers.add_parser(
        "eval",
        help="PCK on a benchmark dataset",
        description="Export predictions on a benchmark (resumable), then compute PCK per "
        "category, overall and on the geometry-aware subset.",
    )
    parser.add_argument("--dataset", required=True, choices=list_datasets(), help="benchmark")
    parser.add_argument("--root", required=True, help="the dataset folder, as downloaded")
    parser.add_argument("--split", default="test", help="split (default: test)")
    parser.add_argument("--category", default=None, help="evaluate one category only")
    parser.add_argument(
        "--subset",
        default=None,
        help="ap10k test subset: intra-species, cross-species or cross-family",
    )
    parser.add_argument(
        "--dataset-option",
        action="append",
        metavar="KEY=VALUE",
        help="loader option, e.g. layout=small (spair), normalisation=bbox "
        "(pf-pascal), pairs_per_class=50 (cub); repeatable",
    )
    add_backbone_options(parser)
    add_refine_options(parser)
    parser.add_argument(
        "--thresholds",
        default="0.01,0.05,0.10,0.15",
        help="comma-separated PCK thresholds α (default: 0.01,0.05,0.10,0.15)",
    )
    parser.add_argument("--limit", type=int, default=None, help="first N pairs only")
    parser.add_argument(
        "--out", default=None, help="output folder (default: semcorr-eval-DATASET-SPLIT)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="discard earlier predictions in --out instead of resuming",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--save-examples", type=int, default=0, metavar="N",
                        help="write the N best and N worst pairs as pictures and an offline "
                        "OUT/examples/index.html")
    parser.add_argument("--examples-alpha", type=float, default=0.1, metavar="A",
                        help="PCK threshold that ranks and colours the examples (default: 0.1)")
    parser.set_defaults(func=_run)

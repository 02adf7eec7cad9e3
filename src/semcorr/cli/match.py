"""``semcorr match SOURCE TARGET [TARGET ...] --points POINTS``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from semcorr.cli.common import (
    add_backbone_options,
    add_refine_options,
    backbone_from_args,
    refiner_from_args,
)
from semcorr.errors import InputError
from semcorr.io import (
    atomic_write_json,
    check_output_dir,
    load_image,
    open_image,
    parse_points,
)
from semcorr.pipeline import Matcher, MatchResult

__all__ = ["add_parser", "parse_points", "refuse_dense_options", "run_match", "write_matches"]


def write_matches(
    out_dir: Path,
    source: str,
    backbone: str,
    points: torch.Tensor,
    targets: Sequence[str],
    results: Sequence[MatchResult],
) -> Path:
    """Write ``out_dir/matches.json`` (the documented schema) atomically; returns its path."""
    payload = {
        "source": source,
        "backbone": backbone,
        "points": points.tolist(),
        "targets": [
            {
                "image": target,
                "points": result.points.tolist(),
                "scores": result.scores.tolist(),
                "pose": result.pose,
            }
            for target, result in zip(targets, results)
        ],
    }
    path = out_dir / "matches.json"
    atomic_write_json(path, payload)
    return path


def run_match(
    matcher: Matcher,
    source_path: str,
    target_paths: Sequence[str],
    points: torch.Tensor,
    out_dir: Path,
    backbone_name: str,
    show_progress: bool = True,
) -> tuple[Path, list[Path]]:
    """Match, write ``matches.json`` and one side-by-side PNG per target."""
    from semcorr.viz.matches import save_match_picture

    source_image = load_image(source_path)
    for target in target_paths:  # fail early, before any work, on a missing target
        if not Path(target).is_file():
            raise InputError(f"{target}: no such image file")
    # computed once for all targets, unless the features depend on more than the image
    source = (matcher.source_features(source_image)
              if matcher.backbone.condition == "image" else source_image)
    bar = tqdm(total=len(target_paths), unit="image", disable=not show_progress or
               len(target_paths) < 2, desc="matching")
    results = matcher.match(
        source, list(target_paths), points, progress=bar.update
    )
    bar.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = write_matches(out_dir, source_path, backbone_name, points, target_paths, results)
    pictures = []
    for index, (target, result) in enumerate(zip(target_paths, results)):
        picture = out_dir / f"match_{index:03d}_{Path(target).stem}.png"
        save_match_picture(picture, source_image, load_image(target), points, result)
        pictures.append(picture)
    return json_path, pictures


#: Options of dense matching (flag → namespace entry) that sparse local features cannot honour.
DENSE_ONLY_OPTIONS = {
    "--refine": "refine", "--window": "window", "--temperature": "temperature",
    "--sigma": "sigma", "--kernel-weighting": "kernel_weighting", "--pose-align": "pose_align",
    "--head": "head", "--head-weights": "head_weights",
}


def refuse_dense_options(args: argparse.Namespace) -> None:
    """Refuse, in one line, the dense-matching options given with a sparse local-feature model.

    Raises:
        InputError: naming every such option given.
    """
    given = [flag for flag, dest in DENSE_ONLY_OPTIONS.items() if getattr(args, dest, None)]
    if given:
        raise InputError(f"{', '.join(given)}: not applicable to --backbone {args.backbone} "
                         "(sparse keypoints are matched by mutual nearest neighbours)")


def _run(args: argparse.Namespace) -> int:
    from semcorr.features.local import list_local_features

    check_output_dir(args.out)

    if args.backbone in list_local_features():
        from semcorr.cli.keypoints import run_sparse_match

        refuse_dense_options(args)
        return run_sparse_match(args)
    points = parse_points(args.points)
    for path in (args.source, *args.targets):  # headers only: named before any weights
        with open_image(path):
            pass
    backbone = backbone_from_args(args)
    matcher = Matcher(backbone, refine=refiner_from_args(args, backbone),
                      pose_align=args.pose_align, prior=args.prior)
    json_path, pictures = run_match(
        matcher, args.source, args.targets, points, Path(args.out), args.backbone
    )
    print(f"wrote {json_path} and {len(pictures)} picture(s) in {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "match",
        help="find source points in target images",
        description="Transfer points from a source image to one or many target images.",
    )
    parser.add_argument("source", help="source image")
    parser.add_argument("targets", nargs="+", metavar="TARGET", help="target image(s)")
    parser.add_argument("--points", required=True,
                        help="JSON file [[x, y], ...] or inline 'x,y;x,y' (source pixels)")
    add_backbone_options(parser)
    add_refine_options(parser)
    parser.add_argument("--out", default="semcorr-match", help="output folder")
    parser.set_defaults(func=_run)


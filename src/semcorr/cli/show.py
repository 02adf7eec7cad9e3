"""``semcorr show features IMAGE [IMAGE ...]``: PCA pictures of feature maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from semcorr.cli.common import add_backbone_options, backbone_from_args

__all__ = ["add_parser"]


def _features(args: argparse.Namespace) -> int:
    from semcorr.io import check_output_dir, load_image
    from semcorr.viz.features import pca_pictures, save_pca_pictures

    check_output_dir(args.out)
    images = [load_image(path) for path in args.images]  # names a missing/bad file
    backbone = backbone_from_args(args)
    pictures = pca_pictures(backbone, images, args.foreground_threshold, args.invert_foreground)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{i:02d}_{Path(p).stem}_pca.png" for i, p in enumerate(args.images)]
    save_pca_pictures(pictures, paths, images if args.side_by_side else None)
    for path in paths:
        print(f"wrote {path}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show", help="pictures of what a backbone sees",
        description="Visualise features (see 'semcorr show features --help').",
    )
    jobs = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    features = jobs.add_parser(
        "features",
        help="PCA of feature maps as RGB pictures",
        description="Project the feature maps of one or several images jointly to RGB by PCA "
        "(the same projection for all images, so corresponding parts share colours) and save "
        "one PNG per image.",
    )
    features.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_backbone_options(features)
    features.add_argument("--out", default="semcorr-features", help="output folder")
    features.add_argument(
        "--foreground-threshold", type=float, default=None, metavar="T",
        help="keep only cells whose first component (scaled to [0, 1]) exceeds T, recoloured "
        "by a PCA of those cells (e.g. 0.5)",
    )
    features.add_argument("--invert-foreground", action="store_true",
                          help="foreground is below the threshold (the sign of a PCA axis is "
                          "arbitrary)")
    features.add_argument("--side-by-side", action="store_true",
                          help="put each image beside its picture")
    features.set_defaults(func=_features)

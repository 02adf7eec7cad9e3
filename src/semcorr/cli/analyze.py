"""``semcorr analyze pose-awareness``: does a backbone know an object's global pose?"""

from __future__ import annotations

import argparse
from pathlib import Path

from semcorr.cli.common import add_backbone_options, backbone_from_args

__all__ = ["add_parser"]


def _pose_awareness(args: argparse.Namespace) -> int:
    from semcorr.analysis import confusion_table, pose_awareness, read_pose_folder
    from semcorr.io import atomic_write_bytes, atomic_write_json, check_output_dir

    if args.out:
        check_output_dir(args.out)
    templates = read_pose_folder(args.templates, "--templates folder")
    queries = read_pose_folder(args.images, "--images folder")
    summary = pose_awareness(backbone_from_args(args), templates, queries, size=args.grid)
    table = confusion_table(summary)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "pose_awareness.json", summary)
        atomic_write_bytes(out / "pose_awareness.md", (table + "\n").encode("utf-8"))
        print(f"wrote {out}/pose_awareness.json, pose_awareness.md")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze", help="analyses of what features know",
        description="Analyses of features (see 'semcorr analyze pose-awareness --help').",
    )
    jobs = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    pose = jobs.add_parser(
        "pose-awareness",
        help="global pose-awareness test (GeoAware-SC, sec. 3.4)",
        description="Predict each query's pose as the pose of the template with the lowest "
        "instance matching distance; print accuracy per pose and the confusion matrix. "
        "Folders are laid out as DIR/<pose>/<image>.",
    )
    pose.add_argument("--templates", required=True, help="template images: DIR/<pose>/*")
    pose.add_argument("--images", required=True, help="query images with known poses: DIR/<pose>/*")
    add_backbone_options(pose)
    pose.add_argument("--grid", type=int, default=64,
                      help="grid side of the instance matching distance (default: 64)")
    pose.add_argument("--out", default=None, help="also write pose_awareness.json/.md here")
    pose.set_defaults(func=_pose_awareness)

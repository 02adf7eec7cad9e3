"""``semcorr demo``: the main job on the bundled sample images, offline, on the default backbone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from semcorr.cli.common import add_backbone_options, backbone_from_args
from semcorr.cli.match import run_match
from semcorr.pipeline import Matcher
from semcorr.samples import load_samples

__all__ = ["add_parser"]


def _run(args: argparse.Namespace) -> int:
    samples = load_samples()
    matcher = Matcher(backbone_from_args(args), refine="window", pose_align=True)
    out = Path(args.out)
    json_path, pictures = run_match(
        matcher,
        str(samples.source),
        [str(t) for t in samples.targets],
        samples.points,
        out,
        args.backbone,
        show_progress=False,
    )
    found = json.loads(json_path.read_text())["targets"]
    for target, truth in zip(found, samples.target_points):
        error = (torch.tensor(target["points"]) - truth).norm(dim=1)
        print(
            f"{Path(target['image']).name}: pose {target['pose']}, "
            f"mean error {float(error.mean()):.1f} px over {len(truth)} points"
        )
    print(f"wrote {json_path}")
    for picture in pictures:
        print(f"wrote {picture}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="match points on the bundled sample images (offline)",
        description="Find six points of a cat photograph in two warped copies of it (one "
        "mirrored), with pose alignment, and write the pictures.",
    )
    add_backbone_options(parser)
    parser.add_argument("--out", default="semcorr-demo", help="output folder")
    parser.set_defaults(func=_run)

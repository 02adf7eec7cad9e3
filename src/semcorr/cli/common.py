"""Options and helpers shared by several jobs."""

from __future__ import annotations

import argparse

import torch

from semcorr.errors import InputError
from semcorr.features import Backbone, create_backbone
from semcorr.match.refine import list_refiners

__all__ = ["add_backbone_options", "add_refine_options", "backbone_from_args", "choose_device"]


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    """``--backbone``, ``--weights``, ``--device``."""
    parser.add_argument("--backbone", default="dense-sift",
                        help="registered backbone name (default: dense-sift, no download)")
    parser.add_argument("--weights", default=None,
                        help="hub id, local file or folder of the backbone's weights")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")


def choose_device(name: str | None) -> torch.device:
    """The device, chosen once at the boundary."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"bad --device {name!r}: {exc}") from None


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    """Build the backbone named on the command line, on the chosen device."""
    backbone = create_backbone(args.backbone, weights=args.weights)
    return backbone.to(choose_device(args.device)).eval()


def add_refine_options(parser: argparse.ArgumentParser) -> None:
    """``--refine``, ``--window``, ``--temperature``, ``--pose-align``."""
    parser.add_argument("--refine", default="window", choices=list_refiners(),
                        help="refinement rule (default: window)")
    parser.add_argument("--window", type=int, default=None,
                        help="window radius in feature cells (window rule)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="softmax temperature of the soft rules")
    parser.add_argument("--pose-align", action="store_true",
                        help="try the flipped source too and keep the closer pose per target")

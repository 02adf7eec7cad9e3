"""Options and helpers shared by several jobs."""

from __future__ import annotations

import argparse

import torch

from semcorr.errors import InputError
from semcorr.features import Backbone, create_backbone
from semcorr.match.refine import list_refiners

__all__ = ["add_backbone_options", "add_refine_options", "backbone_from_args", "choose_device"]


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    """``--backbone``, ``--weights``, ``--device``, ``--head``, ``--head-weights``."""
    parser.add_argument("--backbone", default="dense-sift",
                        help="registered backbone name (default: dense-sift, no download)")
    parser.add_argument("--weights", default=None,
                        help="hub id, local file or folder of the backbone's weights")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--head", default=None,
                        help="post-processing head on the features (e.g. geoaware)")
    parser.add_argument("--head-weights", default=None,
                        help="weights file of the head (e.g. GeoAware-SC's best_856.PTH)")


def choose_device(name: str | None) -> torch.device:
    """The device, chosen once at the boundary."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"bad --device {name!r}: {exc}") from None


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    """Build the backbone named on the command line (with its head, if any) on the device."""
    head_name = getattr(args, "head", None)
    from semcorr.train.finetune import is_finetune_checkpoint, load_finetuned  # light module

    if head_name is None and is_finetune_checkpoint(args.weights):  # `semcorr train finetune`
        expected = None if args.backbone == "dense-sift" else args.backbone
        backbone = load_finetuned(args.weights, expected_backbone=expected)
    elif head_name is None:
        if getattr(args, "head_weights", None) is not None:
            raise InputError("--head-weights needs --head")
        backbone = create_backbone(args.backbone, weights=args.weights)
    else:
        from semcorr.postprocess import HeadedBackbone, backbone_options_for_head, load_head

        options = backbone_options_for_head(head_name, args.backbone)
        head = load_head(head_name, args.head_weights)
        backbone = HeadedBackbone(
            create_backbone(args.backbone, weights=args.weights, **options), head, head_name
        )
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

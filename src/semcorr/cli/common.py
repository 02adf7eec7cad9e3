"""Options and helpers shared by several jobs."""

from __future__ import annotations

import argparse
from typing import Any

from semcorr.devices import choose_device
from semcorr.errors import InputError
from semcorr.features import Backbone, create_backbone
from semcorr.features.base import PRECISIONS
from semcorr.match.geometric import PRIOR_CHOICES
from semcorr.match.refine import Refiner, list_refiners, refiner_with_options
from semcorr.match.rules import KERNEL_WEIGHTINGS

__all__ = [
    "DEFAULT_BACKBONE",
    "PROMPT_HEADS",
    "add_backbone_options",
    "add_refine_options",
    "backbone_from_args",
    "choose_device",
    "parse_key_values",
    "refine_settings",
    "refiner_from_args",
    "with_precision",
]

#: The backbone used when ``--backbone`` is not given: weight-free, no download, CPU.
DEFAULT_BACKBONE = "dense-sift"

#: Heads that condition the backbone rather than post-process its features: head name → the
#: backbone built for it (its ``--weights``/``--head-weights`` is the prompt file).
PROMPT_HEADS: dict[str, str] = {"sd4match": "sd4match"}


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    """``--backbone``, ``--weights``, ``--backbone-option``, ``--device``, ``--precision``,
    ``--head``, ``--head-weights``."""
    parser.add_argument("--backbone", default=None,
                        help=f"registered backbone name (default: {DEFAULT_BACKBONE}, no "
                        "download)")
    parser.add_argument("--weights", default=None,
                        help="hub id, local file or folder of the backbone's weights")
    parser.add_argument("--backbone-option", action="append", metavar="KEY=VALUE",
                        help="backbone option, e.g. image_size=448, timestep=100, "
                        "dino_weights=DIR (sd4match cpm); repeatable")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--precision", default=None, choices=sorted(PRECISIONS),
                        help="ViT/diffusion backbones: fp32, bf16/fp16 autocast, or auto (bf16 "
                        "where a one-off probe, cached on disk, finds it faster than fp32)")
    parser.add_argument("--head", default=None,
                        help="post-processing head on the features (geoaware, "
                        "geoaware-zero-shot), or sd4match: SD 2.1 under a learned prompt, "
                        "given as --weights PROMPT.safetensors (or --head-weights PROMPT with "
                        "--weights SD21_FOLDER); PROMPT may also be SD4Match's released "
                        "caption.pt / ckpt.pt or its folder")
    parser.add_argument("--head-weights", default=None,
                        help="weights file of the head (e.g. GeoAware-SC's best_856.PTH)")


def _value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, int | float | str]:
    """Options from ``KEY=VALUE`` strings (numbers converted, ``-`` in keys → ``_``).

    Example:
        ``["layout=small", "pairs_per_class=10"]`` → ``{"layout": "small", "pairs_per_class": 10}``

    Raises:
        InputError: naming ``flag`` for an item without ``=`` or key.
    """
    options: dict[str, int | float | str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"malformed {flag} {item!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = _value(value.strip())
    return options


def with_precision(options: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``options`` with ``precision`` set from ``--precision`` when it was given (an explicit
    ``precision=`` backbone option wins)."""
    precision = getattr(args, "precision", None)
    return options if precision is None else {"precision": precision, **options}


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    """Build the backbone named on the command line (with its head, if any) on the device.

    ``args.backbone`` is ``None`` when ``--backbone`` was not given; it is set to the name built
    (:data:`DEFAULT_BACKBONE` unless a head or a fine-tuned checkpoint decides).
    """
    head_name = getattr(args, "head", None)
    given = args.backbone
    if head_name not in PROMPT_HEADS:
        args.backbone = given or DEFAULT_BACKBONE
    options = with_precision(
        parse_key_values(getattr(args, "backbone_option", None), "--backbone-option"), args)
    from semcorr.train.finetune import is_finetune_checkpoint, load_finetuned  # light module

    if head_name in PROMPT_HEADS:
        backbone = _prompted_backbone(args, head_name, options)
    elif head_name is None and is_finetune_checkpoint(args.weights):  # `semcorr train finetune`
        expected = given
        backbone = load_finetuned(args.weights, expected_backbone=expected)
    elif head_name is None:
        if getattr(args, "head_weights", None) is not None:
            raise InputError("--head-weights needs --head")
        backbone = create_backbone(args.backbone, weights=args.weights, **options)
    else:
        from semcorr.postprocess import HeadedBackbone, backbone_options_for_head, load_head

        options = {**backbone_options_for_head(head_name, args.backbone), **options}
        head = load_head(head_name, args.head_weights)
        backbone = HeadedBackbone(
            create_backbone(args.backbone, weights=args.weights, **options), head, head_name
        )
    return backbone.to(choose_device(args.device)).eval()


def _prompted_backbone(args: argparse.Namespace, head_name: str,
                       options: dict[str, int | float | str]) -> Backbone:
    """``--head sd4match``: the prompt file is ``--head-weights``, else ``--weights``; the
    Stable Diffusion weights are ``--weights`` when ``--head-weights`` holds the prompt (else
    ``$SEMCORR_WEIGHTS/sd21`` or the hub). ``--backbone`` may be left at its default."""
    name = PROMPT_HEADS[head_name]
    if args.backbone not in (None, name, "sd21"):
        raise InputError(f"--head {head_name} runs on Stable Diffusion 2.1; leave out --backbone "
                         f"(got {args.backbone!r})")
    prompt = args.head_weights or args.weights
    if prompt is None:
        raise InputError(f"--head {head_name} needs its prompt file: --weights PROMPT.safetensors")
    if args.head_weights is not None and args.weights is not None:
        options = {**options, "sd_weights": args.weights}
    args.backbone = name  # recorded in the job's outputs
    return create_backbone(name, weights=prompt, **options)


def add_refine_options(parser: argparse.ArgumentParser) -> None:
    """``--refine``, ``--window``, ``--temperature``, ``--sigma``, ``--kernel-weighting``,
    ``--pose-align``."""
    parser.add_argument("--refine", default=None, choices=list_refiners(),
                        help="refinement rule (default: the backbone's own, e.g. kernel for "
                        "sd4match, else window)")
    parser.add_argument("--window", type=int, default=None,
                        help="window radius in feature cells (window rule)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="softmax temperature of the soft rules")
    parser.add_argument("--sigma", type=float, default=None,
                        help="Gaussian std in feature cells (kernel rule)")
    parser.add_argument("--kernel-weighting", default=None, choices=KERNEL_WEIGHTINGS,
                        help="where the kernel rule's Gaussian acts: on the probabilities "
                        "(default) or on the similarities (SD4Match's)")
    parser.add_argument("--pose-align", action=argparse.BooleanOptionalAction, default=False,
                        help="try the flipped source too and keep the closer pose per target")
    parser.add_argument("--prior", default="auto", choices=PRIOR_CHOICES,
                        help="global affine prior of the matches: auto (the backbone's own, "
                        "e.g. dense-sift's; none for the others), none, affine (defaults) or "
                        "affine-local (with a local refinement of the fit)")


def refine_settings(args: argparse.Namespace, backbone: Backbone) -> dict[str, Any]:
    """The rule and its options: ``--refine`` and the flags given, on top of the backbone's
    preferred rule (``info.extra["refine"]``, e.g. SD4Match's kernel soft-argmax) when
    ``--refine`` is left out or names that same rule, else ``window``.

    Returns:
        ``{"name", "radius", "temperature", "sigma", "weighting"}`` (``None``: the rule's
        default).
    """
    preferred = dict(backbone.info.extra.get("refine") or {})
    name = args.refine or preferred.get("name", "window")
    settings: dict[str, Any] = {"name": name, "radius": None, "temperature": None,
                                "sigma": None, "weighting": None}
    if preferred.get("name") == name:
        settings.update({k: v for k, v in preferred.items() if k in settings and k != "name"})
    given = {"radius": args.window, "temperature": args.temperature,
             "sigma": getattr(args, "sigma", None),
             "weighting": getattr(args, "kernel_weighting", None)}
    settings.update({k: v for k, v in given.items() if v is not None})
    return settings


def refiner_from_args(args: argparse.Namespace, backbone: Backbone) -> Refiner:
    """The refinement rule of :func:`refine_settings`."""
    settings = refine_settings(args, backbone)
    return refiner_with_options(settings.pop("name"), **settings)

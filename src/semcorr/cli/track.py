"""``semcorr track VIDEO_OR_FRAME_FOLDER --out DIR``: propagate first-frame points and/or an
object mask through a clip (DIFT's label propagation, :mod:`semcorr.track`).

Examples::

    semcorr track frames/ --points first.json --out tracked/
    semcorr track clip.mp4 --mask 00000.png --points "120,80;200,95" --out tracked/
    semcorr track --preset dift-davis --print-config

Writes ``DIR/points.json`` (COCO keypoints per frame with per-point scores),
``DIR/masks/00000.png ...`` (palette PNGs, the input mask's palette), ``DIR/overlay.jpg`` (and
``overlay.mp4`` with PyAV). Features go through a feature cache (``--cache``, default
``DIR/cache``): a re-run or a killed run computes only the frames not cached yet.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from semcorr.cli.common import add_backbone_options, backbone_from_args, parse_key_values
from semcorr.errors import InputError
from semcorr.io import check_output_dir, parse_points
from semcorr.options import positive_number

__all__ = ["add_parser", "read_first_points", "resolve_settings", "run_track"]

#: Backbone options ``semcorr track`` uses for ``dense-sift`` unless given: fine histogram
#: bins (4, 8, 16 px) localise better through time than the wide semantic ones.
DENSE_SIFT_TRACK = {"bin_sizes": [4, 8, 16]}


def read_first_points(text: str) -> torch.Tensor:
    """First-frame points: a CSV file (``x,y`` per row, an optional header) or anything
    :func:`~semcorr.io.parse_points` reads (JSON file, inline ``"x,y;x,y"``) → ``(P, 2)``."""
    path = Path(text)
    if path.suffix.lower() != ".csv":
        return parse_points(text)
    if not path.is_file():
        raise InputError(f"{path}: no such points file")
    rows = [r for r in csv.reader(path.read_text().splitlines()) if r and any(c.strip() for c in r)]
    try:
        values = [[float(r[0]), float(r[1])] for r in rows[1:]] if rows and not _numeric(
            rows[0]) else [[float(r[0]), float(r[1])] for r in rows]
    except (ValueError, IndexError):
        raise InputError(f"{path}: each row must be x,y numbers") from None
    if not values:
        raise InputError(f"{path}: no points given")
    return torch.tensor(values, dtype=torch.float32)


def _numeric(row: list[str]) -> bool:
    try:
        float(row[0])
    except (ValueError, IndexError):
        return False
    return True


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Preset < command line: the backbone, its options, the propagation config, sigma."""
    from semcorr.track import PropagationConfig, get_preset
    from semcorr.track.presets import TRACK_DEFAULT, TRACK_PRESENCE_COLOUR

    preset = get_preset(args.preset) if args.preset else None
    backbone = args.backbone or (preset.backbone if preset else "dense-sift")
    options: dict[str, Any] = {}
    if preset is not None and backbone == preset.backbone:
        options.update(preset.backbone_options)
        if preset.image_size is not None:
            options["image_size"] = preset.image_size
    elif backbone == "dense-sift":
        options.update(DENSE_SIFT_TRACK)
    options.update(parse_key_values(args.backbone_option, "--backbone-option"))
    base = preset.propagation if preset else TRACK_DEFAULT
    given = {k: getattr(args, k) for k in ("context", "topk", "radius", "temperature")
             if getattr(args, k) is not None}
    if args.presence_margin is not None:
        given["presence_margin"] = _off_or_number(args.presence_margin, "--presence-margin")
    if args.presence_ratio is not None:
        given["presence_ratio"] = _off_or_number(args.presence_ratio, "--presence-ratio")
    config = PropagationConfig(**{**asdict(base), **given})
    sigma = args.sigma if args.sigma is not None else (preset.sigma if preset else 0.5)
    positive_number("--sigma", sigma)
    mask_normalise = args.mask_normalise or (preset.mask_normalise if preset else "minmax")
    colour = args.presence_colour
    colour = colour if colour is not None else (0.0 if preset else TRACK_PRESENCE_COLOUR)
    if not colour >= 0:
        raise InputError(f"--presence-colour must be >= 0, got {colour}")
    return {"preset": args.preset, "backbone": backbone, "backbone_options": options,
            "propagation": asdict(config), "sigma": sigma, "mask_normalise": mask_normalise,
            "presence_colour": colour,
            "source": preset.source if preset else "semcorr defaults",
            "published": preset.published if preset else None}


def _off_or_number(text: str, option: str) -> float | None:
    """``--presence-margin`` / ``--presence-ratio``: a number, or ``off``."""
    if text.strip().lower() == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{option} must be a number or 'off', got {text!r}") from None


def _check_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Everything about the input, before any work: the clip, points, mask, output folder."""
    from semcorr.track.outputs import read_index_png
    from semcorr.track.run import frame_sizes
    from semcorr.track.video import check_clip

    if args.clip is None:
        raise InputError("give a VIDEO_OR_FRAME_FOLDER (or --print-config)")
    if args.points is None and args.mask is None:
        raise InputError("nothing to track: give --points and/or --mask")
    kind = check_clip(args.clip)
    out = check_output_dir(args.out)
    if args.cache is not None:
        check_output_dir(args.cache, "--cache")
    found: dict[str, Any] = {"kind": kind, "out": out, "points": None, "mask": None,
                             "palette": None}
    if kind == "frames":
        from semcorr.track.video import clip_frames

        size = frame_sizes(clip_frames(args.clip, out / "frames"))[0]
    else:
        from semcorr.track.video import video_size

        size = video_size(args.clip)
    if args.points is not None:
        points = read_first_points(args.points)
        if not torch.isfinite(points).all():
            raise InputError(f"{args.points}: points must be finite numbers")
        limit = torch.tensor([size[1] - 0.5, size[0] - 0.5])
        if not ((points >= -0.5).all() and (points <= limit).all()):
            raise InputError(f"{args.points}: a point lies outside the {size[1]}x{size[0]} "
                             "first frame")
        found["points"] = points
    if args.mask is not None:
        mask, palette = read_index_png(args.mask)
        if tuple(mask.shape) != tuple(size):
            raise InputError(f"{args.mask}: mask is {mask.shape[1]}x{mask.shape[0]}, the frames "
                             f"are {size[1]}x{size[0]}")
        if int(mask.max()) == 0:
            raise InputError(f"{args.mask}: the mask holds no object (every pixel is 0)")
        found["mask"], found["palette"] = mask, palette
    return found


def run_track(args: argparse.Namespace) -> Path:
    """Run the job described by parsed arguments; returns the output folder."""
    from semcorr.features.cache import FeatureCache
    from semcorr.track import PropagationConfig
    from semcorr.track.run import track_clip
    from semcorr.track.video import clip_frames, have_av

    settings = resolve_settings(args)
    config = PropagationConfig(**settings["propagation"])
    found = _check_inputs(args)
    out = found["out"]
    frames = clip_frames(args.clip, out / "frames")  # a video is decoded once, into out/frames
    args.backbone = settings["backbone"]
    args.backbone_option = [f"{k}={v}" for k, v in settings["backbone_options"].items()
                            if not isinstance(v, (dict, list))]
    backbone = _backbone(args, settings)
    cache = FeatureCache.for_backbone(args.cache or out / "cache", backbone, args.weights,
                                      storage=args.cache_dtype,
                                      options=settings["backbone_options"])
    with tqdm(total=len(frames), desc="track", unit="frame", disable=args.quiet) as bar:
        result = track_clip(
            backbone, cache, frames, out, config, points=found["points"], mask=found["mask"],
            palette=found["palette"], sigma=settings["sigma"], overlay=True,
            video=have_av() and not args.no_video, progress=bar.update,
            mask_normalise=settings["mask_normalise"],
            presence_colour=settings["presence_colour"],
        )
    if not args.quiet:
        print(f"tracked {len(frames)} frame(s) in {result.seconds:.1f} s: "
              + ", ".join(str(p) for p in [*result.files, *(result.masks or [])[:1]]))
    return out


def _backbone(args: argparse.Namespace, settings: dict[str, Any]) -> Any:
    """The backbone with every option (structured ones such as ``bin_sizes`` or ``parts`` are
    passed directly, the rest through the usual ``--backbone-option`` path)."""
    from semcorr.cli.common import choose_device, with_precision
    from semcorr.features import create_backbone

    structured = {k: v for k, v in settings["backbone_options"].items()
                  if isinstance(v, (dict, list))}
    if not structured:
        return backbone_from_args(args)
    options = with_precision(
        {**structured, **parse_key_values(args.backbone_option, "--backbone-option")}, args)
    if args.head is not None:
        raise InputError(f"--head is not supported with {settings['backbone']} options "
                         f"{sorted(structured)} in semcorr track")
    backbone = create_backbone(settings["backbone"], weights=args.weights, **options)
    return backbone.to(choose_device(args.device)).eval()


def _run(args: argparse.Namespace) -> int:
    if args.print_config:
        json.dump(resolve_settings(args), sys.stdout, indent=2)
        print()
        return 0
    run_track(args)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from semcorr.track import PRESETS
    from semcorr.track.labels import MASK_NORMALISE

    parser = subparsers.add_parser(
        "track", help="propagate first-frame points and masks through a video",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    parser.add_argument("clip", nargs="?", metavar="VIDEO_OR_FRAME_FOLDER",
                        help="a folder of frames (sorted by name) or a video file (needs "
                        "PyAV: pip install 'semcorr[video]')")
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument("--points", default=None,
                        help="first-frame points: a JSON [[x, y], ...] or CSV x,y file, or "
                        "inline 'x,y;x,y' (pixels, (0, 0) = centre of the top-left pixel)")
    parser.add_argument("--mask", default=None,
                        help="first-frame label PNG: palette indices (DAVIS), 0 = background")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="published settings (backbone, image size, propagation)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved settings as JSON and exit")
    parser.add_argument("--context", type=int, default=None,
                        help="last n frames kept besides the first (default 20)")
    parser.add_argument("--topk", type=int, default=None,
                        help="context cells each cell takes its label from (default 10)")
    parser.add_argument("--radius", type=float, default=None,
                        help="square window half side in feature cells, 0 = none (default 12)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="softmax temperature on cosine affinities (default 0.1)")
    parser.add_argument("--presence-margin", default=None, metavar="MARGIN|off",
                        help="out-of-view decision for mask objects: an object whose region "
                             "looks more like the first frame's background than its own first-"
                             "frame region, by more than -MARGIN in cosine, is dropped for "
                             "that frame (default -0.0075, chosen on a development clip; "
                             "off with a preset, as DIFT)")
    parser.add_argument("--presence-ratio", default=None, metavar="R|off",
                        help="with --presence-margin, also drop an object whose margin falls "
                             "below R times its margin one frame after it was labelled "
                             "(default 0.1, chosen on development clips; off = the margin "
                             "alone, the default with a preset)")
    parser.add_argument("--presence-colour", type=float, default=None, metavar="W",
                        help="weight of each cell's colour beside the features in the out-of-"
                             "view decision (default 3, chosen on development clips; 0 = the "
                             "features alone, the default with a preset)")
    parser.add_argument("--sigma", type=float, default=None,
                        help="Gaussian of a first-frame point in cells (default 0.5, CRW)")
    parser.add_argument("--mask-normalise", default=None, choices=MASK_NORMALISE,
                        help="mask read-out: minmax = DIFT's per-channel rescaling (default), "
                             "none = the propagated weights as they are")
    parser.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache)")
    parser.add_argument("--cache-dtype", default="float16",
                        choices=["float32", "float16", "bfloat16", "int8"],
                        help="storage of cached features")
    parser.add_argument("--no-video", action="store_true",
                        help="no overlay.mp4 even when PyAV is installed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_backbone_options(parser)
    parser.set_defaults(func=_check_and_run)


def _check_and_run(args: argparse.Namespace) -> int:
    if not args.print_config and args.out is None:
        raise InputError("track: --out is required")
    return _run(args)

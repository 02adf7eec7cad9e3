"""``semcorr eval --dataset davis2017|jhmdb --root DIR``: the video label-propagation protocols
(DAVIS-2017 J&F, JHMDB PCK@0.1/0.2), run by :func:`semcorr.eval.video_benchmark.evaluate_videos`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from semcorr.errors import InputError

__all__ = ["DEFAULT_VIDEO_SPLITS", "add_video_options", "run_video_eval"]

#: The split each video benchmark is scored on when ``--split`` is not given.
DEFAULT_VIDEO_SPLITS = {"davis2017": "val", "jhmdb": "test"}


def add_video_options(parser: argparse.ArgumentParser) -> None:
    """The propagation options of the video benchmarks (``None``: the preset's or the
    propagator's default). They also read ``--temperature`` and ``--sigma``."""
    from semcorr.track import PRESETS

    group = parser.add_argument_group(
        "video benchmarks (davis2017, jhmdb)",
        "label propagation; --temperature is its softmax temperature and --sigma (jhmdb) the "
        "Gaussian of the first-frame points in feature cells")
    group.add_argument("--track-preset", default=None, choices=sorted(PRESETS),
                       help="DIFT's published propagation settings (and, without --backbone, "
                       "its backbone)")
    group.add_argument("--context", type=int, default=None,
                       help="last N frames kept besides the first")
    group.add_argument("--topk", type=int, default=None,
                       help="context cells each cell takes its label from")
    group.add_argument("--radius", type=float, default=None,
                       help="half side, in feature cells, of the window a label may come from")
    # --temperature (softmax temperature on the cosine affinities) and --sigma (jhmdb: Gaussian
    # of the first-frame points, in feature cells) are the refinement options' own flags.


def _propagation(args: argparse.Namespace) -> tuple[Any, float, Any]:
    """The propagation config, sigma and the track preset (or ``None``): option given <
    ``--track-preset`` < the propagator's defaults."""
    from semcorr.track import PropagationConfig, get_preset

    preset = get_preset(args.track_preset) if args.track_preset else None
    base = asdict(preset.propagation) if preset else asdict(PropagationConfig())
    given = {k: getattr(args, k) for k in base if getattr(args, k, None) is not None}
    sigma = args.sigma if args.sigma is not None else (preset.sigma if preset else 0.5)
    return PropagationConfig(**{**base, **given}), sigma, preset


def _backbone(args: argparse.Namespace, preset: Any) -> Any:
    """``--backbone ...`` as for every evaluation; without it, the track preset's backbone."""
    from semcorr.cli.common import backbone_from_args

    if preset is None or args.backbone is not None:
        return backbone_from_args(args)
    from semcorr.devices import choose_device
    from semcorr.features.base import create_backbone

    options = dict(preset.backbone_options)
    if preset.image_size is not None:
        options["image_size"] = preset.image_size
    args.backbone = preset.backbone
    backbone = create_backbone(preset.backbone, weights=args.weights, **options)
    return backbone.to(choose_device(args.device)).eval()


def run_video_eval(args: argparse.Namespace, split_given: bool, thresholds: list[float] | None,
                   options: dict[str, Any]) -> int:
    """Evaluate ``args.dataset`` (a video benchmark) with the parsed ``--thresholds`` (``None``:
    JHMDB's 0.1, 0.2) and ``--dataset-option`` loader ``options``; prints the table, writes
    ``OUT/results.json`` and ``OUT/results.md``."""
    from semcorr.cli.common import DEFAULT_BACKBONE
    from semcorr.data.video import create_video_dataset
    from semcorr.eval.video import JHMDB_THRESHOLDS
    from semcorr.eval.video_benchmark import evaluate_videos, video_table
    from semcorr.io import check_output_dir

    split = args.split if split_given else DEFAULT_VIDEO_SPLITS[args.dataset]
    config, sigma, preset = _propagation(args)
    if args.print_config:
        print(json.dumps({"dataset": args.dataset, "split": split, "root": args.root,
                          "track_preset": args.track_preset,
                          "backbone": args.backbone or (preset.backbone if preset
                                                        else DEFAULT_BACKBONE),
                          "propagation": asdict(config), "sigma": sigma}, indent=2))
        return 0
    if args.root is None:
        raise InputError("--root is required (the dataset folder)")
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    out = args.out or f"semcorr-eval-{args.dataset}-{split}"
    check_output_dir(out)
    dataset = create_video_dataset(args.dataset, args.root, split=split, **options)
    backbone = _backbone(args, preset)
    results = evaluate_videos(backbone, dataset, out, config, sigma=sigma,
                              thresholds=tuple(thresholds or JHMDB_THRESHOLDS),
                              limit=args.limit, overwrite=args.overwrite,
                              progress=not args.quiet,
                              settings={"backbone": args.backbone, "weights": args.weights,
                                        "backbone_option": args.backbone_option,
                                        "track_preset": args.track_preset})
    print(video_table(results))
    print(f"wrote {out}/results.json, results.md")
    return 0

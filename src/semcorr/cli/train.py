"""``semcorr train METHOD ...``: one sub-command per trainable method.

Adding a method is one more entry in :data:`METHODS`: a function that adds the method's
sub-parser (and sets ``func`` on it).

``semcorr train r2d2 IMAGES --out DIR [--steps N] ...`` trains R2D2 on synthetic homography
pairs made from any image folder; settings come from the defaults, then an optional
``--config`` JSON file, then the command line. Re-running the same command resumes from
``DIR/last.pt``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from semcorr.cli.sd4match import add_sd4match_parser

__all__ = ["METHODS", "add_parser"]

_R2D2_OPTIONS: dict[str, tuple[type, str]] = {
    "model": (str, "r2d2 or faster2d2 (default r2d2)"),
    "mchan": (int, "width multiplier (published 4)"),
    "dim": (int, "descriptor dimension (published 128)"),
    "init": (str, "checkpoint to start from (published format)"),
    "steps": (int, "optimisation steps (default 1000)"),
    "batch_size": (int, "pairs per step (default 4)"),
    "crop": (int, "crop side in pixels (default 192)"),
    "lr": (float, "Adam learning rate (default 1e-4)"),
    "weight_decay": (float, "Adam weight decay (default 5e-4)"),
    "seed": (int, "data and sampling seed (default 0)"),
    "patch": (int, "repeatability patch size (default 16)"),
    "base": (float, "AP assumed for unreliable pixels (published 0.5)"),
    "num_bins": (int, "AP quantiser bins (default 20)"),
    "checkpoint_every": (int, "steps between checkpoints (default 100)"),
}


def _run_r2d2(args: argparse.Namespace) -> int:
    from semcorr.config import build_config
    from semcorr.train.r2d2 import R2D2TrainConfig, train_r2d2

    options = {k: getattr(args, k) for k in _R2D2_OPTIONS if getattr(args, k) is not None}
    # defaults < --config file < options; each value type-checked, naming where it came from
    config = build_config(R2D2TrainConfig, args.config,
                          {**options, "images": args.images, "out": args.out})

    def report(step: int, losses: dict[str, float]) -> None:
        if step % max(1, args.log_every) == 0 or step + 1 == config.steps:
            parts = "  ".join(f"{k} {v:.4f}" for k, v in losses.items() if k != "step")
            print(f"step {step + 1}/{config.steps}  {parts}", flush=True)

    path = train_r2d2(config, progress=report)
    print(f"wrote {path}")
    return 0


def _add_r2d2(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "r2d2",
        help="R2D2 local features on synthetic homography pairs",
        description="Train R2D2 (reliability AP + cosim + peaky losses) on random homographies "
        "and photometric changes of the images in a folder; resumable.",
    )
    parser.add_argument("images", help="folder of training images (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (model.pt, last.pt, logs)")
    parser.add_argument("--config", default=None, help="JSON file of settings (CLI wins)")
    for name, (kind, text) in _R2D2_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                            help=text)
    parser.add_argument("--log-every", type=int, default=10, help="print every N steps")
    parser.set_defaults(func=_run_r2d2)


def _run_geoaware(args: argparse.Namespace) -> int:
    from semcorr.train.geoaware import config_from_sources, train_geoaware

    config = config_from_sources(args.config, args.overrides, args.preset)

    def report(step: int, numbers: dict[str, float]) -> None:
        if (step + 1) % max(1, config.log_every) == 0 or "val_pck" in numbers:
            parts = "  ".join(f"{k} {v:.4g}" for k, v in numbers.items())
            print(f"step {step + 1}  {parts}", flush=True)

    path = train_geoaware(config, progress=report)
    if os.environ.get("RANK", "0") == "0":  # the process group is gone by now
        print(f"wrote {path}")
    return 0


def _add_geoaware(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "geoaware",
        help="GeoAware-SC's post-processor on cached features",
        description="Train GeoAware-SC's aggregation network as released (InfoNCE + dense "
        "soft-argmax flow loss with a trained grid, pose-variant pair augmentation, AdamW with "
        "one-cycle or constant rate) on cached features; writes best.safetensors (best "
        "validation PCK) and head.safetensors (last); settings: defaults < --preset < "
        "--config file < key=value overrides; resumable; runs under torchrun.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="settings, e.g. out=runs/spair root=data/SPair-71k steps=100")
    parser.add_argument("--config", default=None, help="YAML or JSON file of settings")
    parser.add_argument("--preset", default=None,
                        help="released configs/train_*.yaml: spair, pfpascal or ap10k")
    parser.set_defaults(func=_run_geoaware)


def _add_finetune(subparsers: argparse._SubParsersAction) -> None:
    from semcorr.cli.finetune import add_finetune_parser

    add_finetune_parser(subparsers)


#: Training methods: name → function adding its sub-parser.
METHODS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "r2d2": _add_r2d2,
    "geoaware": _add_geoaware,
    "finetune": _add_finetune,
    "sd4match": add_sd4match_parser,
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a method", description="Train a method: semcorr train METHOD ..."
    )
    methods = parser.add_subparsers(dest="method", metavar="METHOD", required=True)
    for add in METHODS.values():
        add(methods)

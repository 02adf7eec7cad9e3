"""``semcorr train METHOD ...``: one sub-command per trainable method.

Adding a method is one more entry in :data:`METHODS`: a function that adds the method's
sub-parser (and sets ``func`` on it).

``semcorr train r2d2 [--preset custom] IMAGES --out DIR [--steps N] ...`` trains R2D2 on
synthetic homography pairs made from any image folder; ``semcorr train r2d2 --preset wasf
--root DATA --out DIR`` runs the released schedule on the released WASF mix (see
:mod:`semcorr.train.r2d2.trainer`). Settings come from the defaults, then the preset, then an
optional ``--config`` JSON file, then the command line. Re-running the same command resumes
from ``DIR/last.pt``; ``torchrun --nproc_per_node N -m semcorr train r2d2 ...`` splits each
batch over N processes.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from semcorr.cli.sd4match import add_sd4match_parser
from semcorr.errors import InputError

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
    "workers": (int, "loader processes making the pairs (default 0; the pairs are the same)"),
    "epochs": (int, "wasf: passes over the data (released 25; sets the steps)"),
    "sources": (str, "wasf: letters of the sources mixed (released WASF)"),
}


def _run_r2d2(args: argparse.Namespace) -> int:
    from semcorr.config import load_config_file
    from semcorr.train.r2d2 import config_from_options, train_r2d2

    options = {k: getattr(args, k) for k in _R2D2_OPTIONS if getattr(args, k) is not None}
    options.pop("images", None)
    options.pop("out", None)
    file_values = load_config_file(args.config) if args.config is not None else {}
    options["preset"] = args.preset or file_values.get("preset", "custom")
    data = args.root if options["preset"] == "wasf" else args.images
    if data is None:
        raise InputError("give the image folder (--preset custom IMAGES) or the dataset root "
                         "(--preset wasf --root DIR)")
    if options["preset"] == "wasf" and args.images is not None:
        raise InputError(f"--preset wasf reads --root, not the folder {args.images}")
    # defaults < preset < --config file < options; each value type-checked, naming its source
    config = config_from_options(data, args.out, config_file=args.config, **options)

    def report(step: int, losses: dict[str, float]) -> None:
        if step % max(1, args.log_every) == 0:
            parts = "  ".join(f"{k} {v:.4f}" for k, v in losses.items() if k != "step")
            print(f"step {step + 1}  {parts}", flush=True)

    path = train_r2d2(config, progress=report)
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {path}")
    return 0


def _add_r2d2(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "r2d2",
        help="R2D2 local features (the released WASF run, or any image folder)",
        description="Train R2D2 (reliability AP + cosim + peaky losses). --preset wasf: the "
        "released run (25 epochs x batch 8, Adam lr 1e-4, wd 5e-4) on the WASF mix under "
        "--root (see 'semcorr data prepare r2d2-training'); --preset custom (default): random "
        "homographies and photometric changes of the images in a folder. Resumable; runs "
        "under torchrun.",
    )
    parser.add_argument("images", nargs="?", default=None,
                        help="custom: folder of training images (searched recursively)")
    parser.add_argument("--preset", choices=["custom", "wasf"], default=None,
                        help="custom (default) or wasf (the released data and schedule)")
    parser.add_argument("--root", default=None,
                        help="wasf: the dataset root (revisitop1m/, aachen/)")
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

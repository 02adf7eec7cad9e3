"""``semcorr train sd4match``: its parser and run (the library is :mod:`semcorr.train.sd4match`)."""

from __future__ import annotations

import argparse
import os

from semcorr.train.sd4match import TRAIN_DATASETS, config_from_sources, train_sd4match


def _run(args: argparse.Namespace) -> int:
    config = config_from_sources(args.config, args.overrides, args.prompt,
                                 dataset=args.dataset, root=args.root,
                                 export_official=args.export_official or None)
    every = max(1, args.log_every)

    def report(step: int, numbers: dict[str, float]) -> None:
        if (step + 1) % every == 0 or "val_pck" in numbers:
            parts = "  ".join(f"{k} {v:.4f}" for k, v in numbers.items())
            print(f"step {step + 1}  {parts}", flush=True)

    path = train_sd4match(config, progress=report)
    if os.environ.get("RANK", "0") == "0":  # one line per job under torchrun
        print(f"wrote {path}")
    return 0


def add_sd4match_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``semcorr train sd4match``."""
    parser = subparsers.add_parser(
        "sd4match",
        help="SD4Match prompt tuning of a frozen Stable Diffusion 2.1",
        description="Learn an SD4Match prompt (single, class or cpm) with the Gaussian "
        "cross-entropy loss on a benchmark's training pairs (--dataset spair|pf-pascal|"
        "keypoints-json --root DIR; the official epochs by default) or on synthetic warps "
        "(images=DIR); settings: defaults < --config file < key=value overrides < flags; "
        "resumable; runs under torchrun.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="settings, e.g. images=DIR out=runs/sd4m sd_weights=DIR steps=500")
    parser.add_argument("--prompt", choices=("single", "class", "cpm"), default=None,
                        help="prompt module (default single)")
    parser.add_argument("--dataset", choices=TRAIN_DATASETS, default=None,
                        help="training pairs: a benchmark's training split, or synthetic "
                        "warps of images=DIR (default synthetic)")
    parser.add_argument("--root", default=None, help="the benchmark's folder, as downloaded")
    parser.add_argument("--export-official", action="store_true",
                        help="also write OUT/official/<prompt type>/caption.pt or ckpt.pt, "
                        "SD4Match's released layout")
    parser.add_argument("--config", default=None, help="YAML or JSON file of settings")
    parser.add_argument("--log-every", type=int, default=10, help="print every N steps")
    parser.set_defaults(func=_run)


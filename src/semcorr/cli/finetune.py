"""``semcorr train finetune``: its options, parser and run (the library is
:mod:`semcorr.train.finetune`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semcorr.errors import InputError
from semcorr.io import check_output_dir
from semcorr.train.finetune.checkpoints import BEST
from semcorr.train.finetune.config import build_config_from_sources
from semcorr.train.finetune.report import cross_dataset_report
from semcorr.train.finetune.trainer import train_finetune

#: Command-line options of ``semcorr train finetune``: name → (type, help).
CLI_OPTIONS: dict[str, tuple[type, str]] = {
    "backbone": (str, "registered ViT backbone (default dinov2_vitb14)"),
    "weights": (str, "base weights: hub id, folder or file"),
    "layers": (int, "last blocks trained (default 2)"),
    "dataset": (str, "training dataset (default spair)"),
    "root": (str, "its folder"),
    "train_split": (str, "training split (default trn)"),
    "val_split": (str, "validation split (default val; '' = none)"),
    "out": (str, "output folder (last.pt, best.pt, metrics.json)"),
    "loss": (str, "ce (grid cross-entropy, default) or softargmax (distance)"),
    "temperature": (float, "softmax temperature (default 0.04)"),
    "window": (int, "soft-argmax window radius in cells (default: whole grid)"),
    "steps": (int, "optimisation steps (default 2000)"),
    "batch_size": (int, "pairs per step over all processes (default 8)"),
    "micro_batch": (int, "pairs per forward; gradients accumulated (default 2)"),
    "lr": (float, "AdamW learning rate (default 2e-5)"),
    "weight_decay": (float, "AdamW weight decay (default 0.05)"),
    "warmup": (int, "warm-up steps (default 100)"),
    "precision": (str, "fp32, bf16, fp16 or auto (the faster here; default fp32)"),
    "seed": (int, "data-order seed (default 0)"),
    "val_every": (int, "steps between validations (default 500)"),
    "val_pairs": (int, "validation pairs (default 200)"),
    "checkpoint_every": (int, "steps between checkpoints (default 100)"),
    "device": (str, "torch device"),
}


def _parse_report(items: Sequence[str] | None) -> list[tuple[str, str, str]]:
    out = []
    for item in items or []:
        name, sep, rest = item.partition("=")
        if not sep or not rest:
            raise InputError(f"malformed --report-on {item!r}: expected NAME=ROOT[:SPLIT]")
        root, _, split = rest.rpartition(":") if ":" in rest[2:] else (rest, "", "test")
        out.append((name, root or rest, split or "test"))
    return out


def _run_cli(args: Any) -> int:
    from semcorr.config import parse_overrides

    options = {k: getattr(args, k) for k in CLI_OPTIONS if getattr(args, k) is not None}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"malformed --option {item!r}: expected KEY=VALUE")
        options.update(parse_overrides([f"{key.replace('-', '_')}={value}"]))
    config = build_config_from_sources(args.config, options)
    best = check_output_dir(config.out) / BEST
    reported = [(config.dataset, config.root, args.report_split), *_parse_report(args.report_on)]
    if args.report_on:  # read after training, hours in: named now
        from semcorr.data import create_dataset

        for name, root, split in reported:
            create_dataset(name, root, split=split)
    if args.report_only and not best.is_file():
        raise InputError(f"--report-only: {best}: no such checkpoint")
    if not args.report_only:

        def report(step: int, numbers: dict[str, float]) -> None:
            if step % config.log_every == 0 or "val_pck" in numbers or step == config.steps:
                parts = "  ".join(f"{k} {v:.4g}" for k, v in numbers.items())
                print(f"step {step}/{config.steps}  {parts}", flush=True)

        best = train_finetune(config, resume=args.resume, progress=report)
        print(f"wrote {best}")
    if args.report_on:
        import os

        if os.environ.get("RANK", "0") == "0":  # the process group is gone: ask torchrun's env
            print(cross_dataset_report(best, reported, Path(config.out) / "report",
                                       limit=args.report_limit, device=config.device), end="")
    return 0


def add_finetune_parser(subparsers: Any) -> None:
    """Add ``semcorr train finetune`` to a ``train`` sub-command parser."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune the last blocks of a ViT backbone on keypoint pairs",
        description="Freeze a DINOv2/DINOv3/SAM backbone but its last N blocks (and final "
        "norm/neck), train them with a keypoint loss on annotated pairs (warm-up + cosine "
        "AdamW, optional fp16/bf16, gradient accumulation; runs under torchrun), keep the "
        "best checkpoint by validation PCK. Settings: defaults < --config file < options. "
        "Evaluate with 'semcorr eval --weights OUT/best.pt'.",
    )
    parser.add_argument("--config", default=None, help="YAML or JSON file of settings")
    for name, (kind, text) in CLI_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                            help=text)
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="any other setting, e.g. backbone_options={\"num_patches\":40}")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--report-on", action="append", metavar="NAME=ROOT[:SPLIT]",
                        help="after training, evaluate base and fine-tuned models on the "
                        "training dataset and on these (e.g. pf-willow=data/pf-willow); "
                        "one table in OUT/report/report.md under the foundation-finetune "
                        "protocol (<= alpha * box or image side, alpha 0.05-0.20, per keypoint "
                        "and per image, mean ± std, by category and by difficulty)")
    parser.add_argument("--report-split", default="test",
                        help="split of the training dataset in the report (default test)")
    parser.add_argument("--report-limit", type=int, default=None,
                        help="first N pairs of each dataset in the report")
    parser.add_argument("--report-only", action="store_true",
                        help="skip training; report on OUT/best.pt")
    parser.set_defaults(func=_run_cli)

"""``semcorr eval --dataset NAME --root DIR``: PCK of a matcher on a benchmark, or, for
``--dataset hpatches --model r2d2 --weights W``, the MMA of a local-feature model on HPatches
sequences (:mod:`semcorr.eval.hpatches`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from semcorr.cli.common import (
    add_backbone_options,
    add_refine_options,
    backbone_from_args,
    parse_key_values,
    refiner_from_args,
)
from semcorr.errors import InputError, JobFailed
from semcorr.io import check_output_dir

__all__ = ["add_parser", "parse_dataset_options", "parse_thresholds", "resolve_settings"]


class _Unset:
    """Stands for "not given on the command line" in the parsed namespace."""

    def __repr__(self) -> str:
        return "<not given>"


_UNSET = _Unset()
#: Namespace entries that are not evaluation settings.
_NOT_SETTINGS = {"help", "func", "job", "print_config", "preset"}
#: Repeatable KEY=VALUE options: the preset's items come first, those given override them.
_KEY_VALUE_LISTS = {"dataset_option", "backbone_option"}
#: Heads whose evaluation without their learned weights would measure a random network.
_LEARNED_HEADS = {"geoaware"}


def parse_thresholds(text: str) -> list[float]:
    """``"0.05,0.1"`` → ``[0.05, 0.1]``."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"malformed --thresholds {text!r}: expected e.g. '0.05,0.1'") from None
    if not values:
        raise InputError("--thresholds: no value given")
    return values


def parse_dataset_options(items: list[str] | None) -> dict[str, int | float | str]:
    """Loader options from ``KEY=VALUE`` strings (numbers converted).

    Example:
        ``["layout=small", "pairs_per_class=10"]`` → ``{"layout": "small", "pairs_per_class": 10}``
    """
    return parse_key_values(items, "--dataset-option")


def _defer_defaults(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Replace the parser's defaults by a marker, so that a value given on the command line can be
    told from one left out (even when it equals the default); returns the real defaults."""
    defaults: dict[str, Any] = {}
    for action in parser._actions:
        if action.dest in _NOT_SETTINGS or action.default is argparse.SUPPRESS:
            continue
        defaults[action.dest] = action.default
        if not isinstance(action, argparse._AppendAction):  # an append default must be a list
            action.default = _UNSET
    return defaults


def _given(value: Any) -> bool:
    return value is not _UNSET and value is not None


def resolve_settings(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """Every evaluation setting: option default < ``--preset`` < option given.

    Returns:
        option destination → value (also written back onto ``args``).

    Raises:
        UnknownNameError: for an unknown preset.
    """
    from semcorr.eval.presets import get_eval_preset

    preset = get_eval_preset(args.preset) if args.preset else None
    preset_settings = dict(preset.settings) if preset else {}
    unknown = set(preset_settings) - set(defaults)
    if unknown:  # a preset naming an option `semcorr eval` does not have is a programming error
        raise ValueError(f"preset {args.preset!r} sets unknown options {sorted(unknown)}")
    settings = {}
    for dest, default in defaults.items():
        value = getattr(args, dest, _UNSET)
        if not _given(value):
            value = preset_settings.get(dest, default)
        elif dest in _KEY_VALUE_LISTS and preset_settings.get(dest):
            value = [*preset_settings[dest], *value]  # KEY=VALUE given later win key by key
        settings[dest] = value
        setattr(args, dest, value)
    return settings


def _resolve_protocol(settings: dict[str, Any]) -> None:
    """Fill ``protocol`` (the dataset's default) and ``thresholds`` (the protocol's) when
    neither the command line nor the preset set them."""
    from semcorr.eval.pck import format_threshold
    from semcorr.eval.protocols import default_protocol, get_protocol

    if settings.get("protocol") is None and settings.get("dataset") is not None:
        settings["protocol"] = default_protocol(settings["dataset"])
    if settings.get("thresholds") is None and settings.get("protocol") is not None:
        thresholds = get_protocol(settings["protocol"]).thresholds
        settings["thresholds"] = ",".join(format_threshold(a) for a in thresholds)


def _print_config(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    from semcorr.eval.presets import get_eval_preset

    shown: dict[str, Any] = {"preset": args.preset}
    if args.preset:
        preset = get_eval_preset(args.preset)
        shown.update(source=preset.source, headline=preset.headline,
                     published=dict(preset.published))
    shown["settings"] = settings
    print(json.dumps(shown, indent=2, sort_keys=False, default=str))
    return 0


#: Benchmarks of local-feature models (keypoints + descriptors), measured by MMA.
LOCAL_FEATURE_DATASETS = ("hpatches",)
#: Video label-propagation benchmarks (:mod:`semcorr.cli.eval_video`).
VIDEO_DATASETS = ("davis2017", "jhmdb")


def _run_hpatches(args: argparse.Namespace) -> int:
    from semcorr.devices import choose_device
    from semcorr.eval.hpatches import evaluate_hpatches
    from semcorr.features.local import create_local_features
    from semcorr.io import atomic_write_json, load_image

    if args.root is None:
        raise InputError("--root is required (the hpatches-sequences-release folder)")
    if args.model is None:
        raise InputError("--dataset hpatches evaluates a local-feature model: --model r2d2 "
                         "(or faster2d2) --weights FILE")
    out = args.out or "semcorr-eval-hpatches"
    check_output_dir(out)
    device = choose_device(args.device)
    model = create_local_features(args.model, weights=args.weights, top_k=args.top_k).to(device)
    report = None if args.quiet else (lambda name: print(f"sequence {name}", flush=True))
    results = evaluate_hpatches(lambda path: model.extract(load_image(path)), args.root,
                                progress=report)
    results.update(model=args.model, weights=args.weights, top_k=args.top_k)
    print("| split | sequences | " + " | ".join(f"MMA@{t:g}" for t in results["thresholds"])
          + " |")
    for split, values in results["mma"].items():
        count = results["sequences"].get(split, sum(results["sequences"].values()))
        print(f"| {split} | {count} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    atomic_write_json(f"{out}/results.json", results)
    print(f"wrote {out}/results.json")
    return 0


def _matcher(args: argparse.Namespace) -> Any:
    """The :class:`~semcorr.pipeline.Matcher` the options describe."""
    from semcorr.pipeline import Matcher

    if args.head in _LEARNED_HEADS and args.head_weights is None:
        raise InputError(f"--head {args.head} needs its weights: --head-weights FILE (e.g. "
                         "GeoAware-SC's best_856.PTH)")
    backbone = backbone_from_args(args)
    return Matcher(backbone, refine=refiner_from_args(args, backbone),
                   pose_align=args.pose_align, prior=args.prior,
                   pose_distance=args.pose_distance)


#: Settings of a suite run that do not change its numbers (left out of ``suite.json``).
_SUITE_VOLATILE = {"quiet", "overwrite", "out", "roots", "data_dir", "print_config"}
#: Settings each benchmark of a suite sets itself: refused on the command line, a preset's
#: ignored (its matcher settings are used).
_SUITE_DATASET_SETTINGS = {"dataset": "--dataset", "root": "--root", "split": "--split",
                           "protocol": "--protocol", "thresholds": "--thresholds",
                           "category": "--category", "subset": "--subset",
                           "dataset_option": "--dataset-option"}


def _run_suite(args: argparse.Namespace, settings: dict[str, Any], given: set[str]) -> int:
    """``--suite NAME``: every benchmark of the suite whose data is present (see
    :mod:`semcorr.eval.suite`); ``given``: the dataset settings on the command line."""
    from semcorr.eval.suite import run_suite

    protocol = settings["protocol"] if "protocol" in given else None  # for every benchmark
    clashes = [flag for dest, flag in _SUITE_DATASET_SETTINGS.items()
               if dest in given and dest != "protocol"]
    if clashes:
        raise InputError(f"--suite runs each benchmark with its own dataset and thresholds: "
                         f"drop {', '.join(clashes)} (use --roots or --data-dir)")
    settings = {k: v for k, v in settings.items() if k not in _SUITE_DATASET_SETTINGS}
    settings["protocol"] = protocol
    if args.print_config:
        return _print_config(args, settings)
    if args.head in _LEARNED_HEADS and args.head_weights is None:
        _matcher(args)  # refuses before any benchmark is looked at
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    roots = parse_key_values(args.roots.split(",") if args.roots else None, "--roots")
    out = args.out or f"semcorr-suite-{args.suite}"
    check_output_dir(out)
    report = run_suite(args.suite, lambda: _matcher(args), out,
                       roots={k: str(v) for k, v in roots.items()}, data_dir=args.data_dir,
                       settings={k: v for k, v in settings.items()
                                 if k not in _SUITE_VOLATILE},
                       limit=args.limit, overwrite=args.overwrite, progress=not args.quiet,
                       protocol=protocol)
    print(open(f"{out}/suite.md", encoding="utf-8").read(), end="")
    print(f"wrote {out}/suite.md, suite.csv, suite.png ({len(report['results'])} benchmark(s), "
          f"{len(report['skipped'])} skipped)")
    return 0


def _run(args: argparse.Namespace, defaults: dict[str, Any]) -> int:
    from semcorr.data import create_dataset
    from semcorr.eval.benchmark import evaluate
    from semcorr.eval.report import markdown_table

    given = {dest for dest in _SUITE_DATASET_SETTINGS if _given(getattr(args, dest, _UNSET))}
    split_given = _given(getattr(args, "split", _UNSET))
    settings = resolve_settings(args, defaults)
    if args.dataset in VIDEO_DATASETS and args.suite is None:
        from semcorr.cli.eval_video import run_video_eval

        return run_video_eval(args, split_given, parse_thresholds(args.thresholds)
                              if args.thresholds else None,
                              parse_dataset_options(args.dataset_option))
    if args.dataset in LOCAL_FEATURE_DATASETS and args.suite is None:
        return _run_hpatches(args)
    if args.suite is not None:
        return _run_suite(args, settings, given)
    _resolve_protocol(settings)
    args.protocol, args.thresholds = settings["protocol"], settings["thresholds"]
    if args.print_config:
        return _print_config(args, settings)
    for dest, flag in (("dataset", "--dataset"), ("root", "--root")):
        if getattr(args, dest) is None:
            raise InputError(f"{flag} is required (or a --preset that sets it)")
    if args.head in _LEARNED_HEADS and args.head_weights is None:
        _matcher(args)  # refuses before the dataset is read
    thresholds = parse_thresholds(args.thresholds) if args.thresholds else None
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    if args.save_examples < 0 or not 0 < args.examples_alpha < 1:
        raise InputError("--save-examples must be >= 0 and --examples-alpha between 0 and 1")
    options = parse_dataset_options(args.dataset_option)
    if args.category:
        options["category"] = args.category
    if args.subset:
        options["subset"] = args.subset
    out = args.out or f"semcorr-eval-{args.dataset}-{args.split}"
    check_output_dir(out)
    dataset = create_dataset(args.dataset, args.root, split=args.split, **options)
    results = evaluate(
        _matcher(args),
        dataset,
        out,
        thresholds=thresholds,
        limit=args.limit,
        overwrite=args.overwrite,
        progress=not args.quiet,
        save_examples=args.save_examples,
        examples_alpha=args.examples_alpha,
        protocol=args.protocol,
    )
    print(markdown_table(results))
    for item in results["skipped_pairs"]:
        print(f"skipped {item['pair_id']}: {item['reason']}")
    if results["source_keypoints_clamped"]:
        print(f"{results['source_keypoints_clamped']} source keypoint(s) lay within a pixel "
              "outside their image and were pulled onto its border")
    if not results["pairs"]:
        raise JobFailed(f"eval: none of the {results['skipped']} pair(s) could be scored "
                        "(listed above)")
    print(f"wrote {out}/results.json, results.md, pck_curve.png")
    if args.save_examples:
        print(f"wrote {results['examples']['index']}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from semcorr.data import list_datasets
    from semcorr.match.pose import POSE_DISTANCES

    parser = subparsers.add_parser(
        "eval",
        help="PCK on a benchmark dataset",
        description="Export predictions on a benchmark (resumable), then compute PCK per "
        "category, overall and on the geometry-aware subset.",
    )
    from semcorr.eval.presets import list_eval_presets

    parser.add_argument("--dataset", default=None,
                        choices=[*list_datasets(), *LOCAL_FEATURE_DATASETS, *VIDEO_DATASETS],
                        help="benchmark (required unless the preset sets it); hpatches: MMA "
                        "of a local-feature --model; davis2017, jhmdb: label propagation "
                        "(J&F, PCK)")
    parser.add_argument("--model", default=None,
                        help="hpatches: local-feature model (r2d2, faster2d2) with --weights")
    parser.add_argument("--top-k", type=int, default=5000,
                        help="hpatches: keypoints kept per image (default 5000, as published)")
    parser.add_argument("--root", default=None, help="the dataset folder, as downloaded")
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help="a published evaluation, setting for setting ("
                        f"{', '.join(list_eval_presets()) or 'none registered'}); options "
                        "given on the command line override it")
    parser.add_argument("--print-config", action="store_true",
                        help="print every setting (defaults < preset < options) and exit")
    from semcorr.eval.suite import list_suites

    parser.add_argument("--suite", default=None, choices=list_suites(),
                        help="run every benchmark of a suite whose data is present (skipping "
                        "the others with a line saying how to get them) and write one table: "
                        "generalisation = SPair-U, MP-100, SOCO; resumes after a kill")
    parser.add_argument("--roots", default=None, metavar="KEY=DIR,...",
                        help="--suite: benchmark folders, e.g. spair=DIR (the SPair-71k "
                        "folder, for SPair-U),mp100=DIR,soco=DIR")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="--suite: a folder holding the benchmarks under their official "
                        "names (SPair-71k, mp100 or mp100_all, SOCOv1)")
    parser.add_argument("--split", default="test",
                        help="split (default: test; davis2017: val)")
    parser.add_argument("--category", default=None, help="evaluate one category only")
    parser.add_argument(
        "--subset",
        default=None,
        help="ap10k test subset: intra-species, cross-species or cross-family",
    )
    parser.add_argument(
        "--dataset-option",
        action="append",
        metavar="KEY=VALUE",
        help="loader option, e.g. layout=small (spair), normalisation=bbox "
        "(pf-pascal), pairs_per_class=50 (cub); repeatable",
    )
    add_backbone_options(parser)
    add_refine_options(parser)
    from semcorr.eval.protocols import DEFAULT_PROTOCOLS, list_protocols

    defaults_text = ", ".join(f"{k} {v}" for k, v in DEFAULT_PROTOCOLS.items())
    parser.add_argument("--protocol", default=None, choices=list_protocols(),
                        help="how PCK is measured: geoaware, pf, sd4match (stretched 768 frame, "
                        "<=), foundation-finetune (<= box or image, mean ± std), spair-u "
                        "(Jamais Vu), marco (stretched 770, <=), soco (SOCO's script: whole "
                        "pixels of a padded 798 square, <, SOC and CC) or generalisation (α "
                        "0.01-0.15, keypoint groups); default by "
                        f"dataset: {defaults_text}")
    parser.add_argument("--pose-distance", default="auto", choices=POSE_DISTANCES,
                        help="instance matching distance of --pose-align: auto (the dataset's "
                        "instance masks where a pair has them, else mutual nearest neighbours), "
                        "mask (GeoAware-SC's default; masks required) or mutual-nn; "
                        "results.json records which was used")
    parser.add_argument(
        "--thresholds",
        default=None,
        help="comma-separated PCK thresholds α (default: the protocol's, e.g. "
        "0.01,0.05,0.10,0.15 for geoaware and pf)",
    )
    parser.add_argument("--limit", type=int, default=None, help="first N pairs only")
    parser.add_argument(
        "--out", default=None, help="output folder (default: semcorr-eval-DATASET-SPLIT)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="discard earlier predictions in --out instead of resuming",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--save-examples", type=int, default=0, metavar="N",
                        help="write the N best and N worst pairs as pictures and an offline "
                        "OUT/examples/index.html")
    parser.add_argument("--examples-alpha", type=float, default=0.1, metavar="A",
                        help="PCK threshold that ranks and colours the examples (default: 0.1)")
    from semcorr.cli.eval_video import add_video_options

    add_video_options(parser)
    defaults = _defer_defaults(parser)
    parser.set_defaults(func=lambda args: _run(args, defaults))

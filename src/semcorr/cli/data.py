"""``semcorr data prepare NAME --root DIR``: download or verify a benchmark dataset."""

from __future__ import annotations

import argparse

from semcorr.errors import InputError, JobFailed

__all__ = ["add_parser"]

_SHOWN = 50


def _prepare(args: argparse.Namespace) -> int:
    from semcorr.data.prepare import prepare

    report = prepare(args.name, args.root, fetch=not args.verify_only, mirror=args.mirror,
                     keep_archives=args.keep_archives, seed=args.seed,
                     progress=not args.quiet, crowd_list=args.crowd_list,
                     split_files=args.split_files)
    for name in report["downloaded"]:
        print(f"downloaded {name} ({report['checksums'][name]})")
    for folder, count in report["built"].items():
        print(f"built {folder}: {count}")
    if report["complete"]:
        print(f"{args.name}: {args.root} is complete")
        return 0
    missing = report["missing"]
    print(f"{args.name}: {args.root} is incomplete, {len(missing)} item(s) missing:")
    for item in missing[:_SHOWN]:
        print(f"  missing {item}")
    if len(missing) > _SHOWN:
        print(f"  ... and {len(missing) - _SHOWN} more")
    if report["manual"]:
        print(report["manual"])
    if "error" in report:  # a failure during the work, not bad input: exit 1
        raise JobFailed(report["error"])
    raise InputError(f"{args.name}: {args.root} is incomplete ({len(missing)} item(s) missing, "
                     "listed above)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from semcorr.data.prepare import DATASET_SPECS

    parser = subparsers.add_parser(
        "data", help="download or verify benchmark datasets",
        description="Dataset preparation (see 'semcorr data prepare --help').",
    )
    jobs = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    prep = jobs.add_parser(
        "prepare",
        help="download (resumable, checksummed) or verify a dataset folder",
        description="Check ROOT for the dataset; when files are missing, download them from "
        "the official locations (unless --verify-only), then print exactly what is still "
        "missing or unreadable (every image is decoded, every .mat/.json parsed, kept archives "
        "checked against their known checksums). Exit status 0 = complete, 2 = incomplete, "
        "1 = a download failed. For ap10k, builds GeoAware-SC's "
        "benchmark from the original AP-10K annotations.",
    )
    prep.add_argument("name", choices=sorted(DATASET_SPECS), help="dataset")
    prep.add_argument("--root", required=True, help="the dataset folder")
    prep.add_argument("--verify-only", action="store_true", help="never download")
    prep.add_argument("--mirror", default=None, metavar="URL",
                      help="fetch MIRROR/<archive name> instead of the official locations")
    prep.add_argument("--keep-archives", action="store_true",
                      help="keep downloaded archives in ROOT/.downloads")
    prep.add_argument("--seed", type=int, default=42, help="seed of the AP-10K pair sampling")
    prep.add_argument("--crowd-list", default=None, metavar="FILE",
                      help="ap10k: file of image ids treated as crowded (e.g. GeoAware-SC's "
                      "ap-10k_is_crowd.txt); images with several annotations always are")
    prep.add_argument("--split-files", default=None, metavar="DIR",
                      help="ap10k: the released benchmark's PairAnnotation folder (or its "
                      "parent); its pairs are used as they are instead of sampling new ones")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=_prepare)

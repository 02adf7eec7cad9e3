"""``semcorr`` entry point.

Each job is a module ``semcorr.cli.<job>`` exposing ``add_parser(subparsers)`` (which sets
``func`` on its parser) — adding a job is one more name in :data:`JOBS`. Errors that describe the
user's input (:class:`~semcorr.errors.SemcorrError`) end the run with one line
``semcorr: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from semcorr import __version__
from semcorr.errors import SemcorrError

__all__ = ["JOBS", "build_parser", "main"]

#: Job modules under ``semcorr.cli``, in the order ``semcorr --help`` lists them.
JOBS = [
    "match", "demo", "extract", "eval", "keypoints", "train", "serve", "transfer",
    "show", "analyze", "data",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semcorr",
        description="Image correspondence with visual foundation models.",
    )
    parser.add_argument("--version", action="version", version=f"semcorr {__version__}")
    subparsers = parser.add_subparsers(dest="job", metavar="JOB", required=True)
    for job in JOBS:
        importlib.import_module(f"semcorr.cli.{job}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``semcorr``; returns the exit status (0 success, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except SemcorrError as exc:
        print(f"semcorr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("semcorr: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

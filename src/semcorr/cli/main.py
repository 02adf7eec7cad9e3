"""``semcorr`` entry point.

Each job is a module ``semcorr.cli.<job>`` exposing ``add_parser(subparsers)`` (which sets
``func`` on its parser) — adding a job is one more name in :data:`JOBS`.

Exit statuses, the same for every job:

* ``0``: the work was done;
* ``2``: bad input — a malformed option (argparse's too) or an error describing the user's input
  (:class:`~semcorr.errors.SemcorrError`): one line ``semcorr: error: ...``;
* ``1``: a failure during the work: one line ``semcorr: error: ...`` (``--debug`` shows the
  traceback);
* ``130``: interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from semcorr import __version__
from semcorr.errors import JobFailed, SemcorrError

__all__ = ["JOBS", "OneLineParser", "build_parser", "main"]

#: Job modules under ``semcorr.cli``, in the order ``semcorr --help`` lists them.
JOBS = [
    "match", "demo", "extract", "eval", "keypoints", "train", "serve", "transfer",
    "show", "analyze", "data", "track",
]


class UsageError(Exception):
    """A malformed command line (raised instead of argparse's exit)."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) with exit status 2; its
    sub-parsers are of the same class."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        job = self.prog.partition(" ")[2]  # "semcorr train r2d2" → "train r2d2"
        raise UsageError(f"{job + ': ' if job else ''}{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="semcorr",
        description="Image correspondence with visual foundation models.",
    )
    parser.add_argument("--version", action="version", version=f"semcorr {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a failure during the work")
    subparsers = parser.add_subparsers(dest="job", metavar="JOB", required=True)
    for job in JOBS:
        importlib.import_module(f"semcorr.cli.{job}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``semcorr``; returns the exit status (0 success, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"semcorr: error: {exc}", file=sys.stderr)
        return 2
    try:
        result = args.func(args)
    except SemcorrError as exc:
        _close_progress_bars()
        print(f"semcorr: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("semcorr: interrupted", file=sys.stderr)
        return 130
    except JobFailed as exc:
        _close_progress_bars()
        print(f"semcorr: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001  (a failure during the work: one line, exit 1)
        _close_progress_bars()
        if args.debug:
            raise
        print(f"semcorr: error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for "
              "the traceback)", file=sys.stderr)
        return 1
    return int(result or 0)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:2000] if text else type(exc).__name__


def _close_progress_bars() -> None:
    """Close every open tqdm bar, so that the error is not drawn over."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

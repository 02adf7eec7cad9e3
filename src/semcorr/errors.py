"""The errors semcorr raises for bad input; the CLI turns them into one line and exit status 2."""

from __future__ import annotations

__all__ = ["SemcorrError", "ImageError", "JobFailed", "UnknownNameError", "InputError",
           "WeightsError"]


class SemcorrError(Exception):
    """Base class of the errors that describe a user's input, not a bug."""


class ImageError(SemcorrError):
    """An image file that cannot be used (missing, unreadable, too large)."""


class UnknownNameError(SemcorrError, KeyError):
    """A name not found in a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class InputError(SemcorrError, ValueError):
    """Malformed user input: points, options, annotation files."""


class WeightsError(SemcorrError):
    """Weights that are missing or do not fit the model."""


class JobFailed(Exception):
    """A job that ran but produced nothing: every item failed (each already reported). The CLI
    ends it with one line and exit status 1 (a failure during the work, not bad input)."""

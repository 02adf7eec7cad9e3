"""One validation layer for numeric and device options, shared by the Python API, the command
line and the server: every check raises :class:`~semcorr.errors.InputError` naming the option.

The CLI never checks a range itself; it passes the value to the object that uses it (a refiner,
the server's limits, a device), whose constructor calls these functions. So the same rule holds
whether the value came from ``--window``, a config file, a JSON request or Python.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch

from semcorr.errors import InputError

__all__ = ["check_device", "finite_number", "int_at_least", "positive_number"]


def finite_number(name: str, value: Any) -> float:
    """``value`` as a finite float (``bool`` refused)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def positive_number(name: str, value: Any) -> float:
    """``value`` as a finite float ``> 0`` (a temperature, a Gaussian's sigma)."""
    number = finite_number(name, value)
    if number <= 0:
        raise InputError(f"{name} must be > 0, got {value!r}")
    return number


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int >= minimum`` (a radius, a size, a count; ``bool`` and ``2.5``
    refused, ``2.0`` accepted)."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(value, Real) and not isinstance(value, Integral):
        if not math.isfinite(value) or value != int(value):
            raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
        value = int(value)
    if not isinstance(value, Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_device(name: str | torch.device) -> torch.device:
    """A torch device that exists on this machine (``cpu``, an available ``cuda:N``, ``mps``).

    Raises:
        InputError: for a malformed name, a device this build or machine lacks, or ``meta``.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"bad --device {name!r}: {exc}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine/build")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {name}: MPS is not available on this machine")
        return device
    raise InputError(f"--device {name}: not a device to compute on (use cpu, cuda[:N] or mps)")

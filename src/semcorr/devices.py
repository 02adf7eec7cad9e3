"""Choosing the torch device: once, at the boundary (the CLI, the server, a trainer's entry)."""

from __future__ import annotations

import torch

from semcorr.options import check_device

__all__ = ["choose_device"]


def choose_device(name: str | None) -> torch.device:
    """The device, chosen once at the boundary."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(name)

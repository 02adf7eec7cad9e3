"""Reading query points given by a user: a JSON file or an inline string."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from semcorr.errors import InputError

__all__ = ["parse_points"]


def _is_file(path: Path) -> bool:
    """``path.is_file()``, false for a string the OS cannot take as a name (too long, NUL)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def parse_points(text: str) -> torch.Tensor:
    """Points from a JSON file ``[[x, y], ...]`` or inline ``"x,y;x,y"`` → ``(N, 2)``."""
    path = Path(text)
    if path.suffix.lower() == ".json" or _is_file(path):
        if not path.is_file():
            raise InputError(f"{path}: no such points file")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        source = str(path)
    else:
        try:
            data = [[float(v) for v in item.split(",")] for item in text.split(";") if item.strip()]
        except ValueError:
            data = None
        if data is None or any(len(p) != 2 for p in data):
            raise InputError(f"malformed --points {text!r}: expected 'x,y;x,y'")
        source = "--points"
    if not isinstance(data, list) or not all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
        for p in data
    ):
        raise InputError(f"{source}: points must be a list of [x, y] number pairs")
    if not data:
        raise InputError(f"{source}: no points given")
    return torch.tensor(data, dtype=torch.float32).reshape(-1, 2)

"""Reading torch weight files safely: ``torch.load(weights_only=True)`` and one clear error.

Every torch file semcorr reads goes through :func:`load_torch_file`: nothing is ever unpickled
beyond tensors and plain containers, torch's own warnings stay quiet, and a refusal is one line
naming the file, without torch's advice to set ``weights_only=False`` (which is exactly what a
user handed an untrusted file must not do).
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from semcorr.errors import WeightsError

__all__ = ["load_torch_file"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unpickler_detail(exc: BaseException) -> tuple[bool, str]:
    """From torch's long weights-only message: whether it refused a Python object (a
    ``GLOBAL``), and the reason itself (``"Unsupported operand 103"``), without its advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "unsupported global" in line.lower():  # "... by default. Please use ..." dropped
            return True, line.partition(" Please use")[0][:200]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return False, lines[i + 1][:200]
    first = lines[0] if lines else type(exc).__name__
    return False, ("unreadable" if "weights_only" in first else first[:200])


def load_torch_file(path: str | os.PathLike[str], *, allowed: Sequence[Any] = (),
                    mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with a clear error.

    Args:
        path: the file.
        allowed: extra classes the file may hold (``torch.serialization.safe_globals``), e.g. a
            published checkpoint's ``defaultdict``.
        mmap: memory-map the tensors instead of reading them.

    Raises:
        WeightsError: naming the file when it is missing, not a torch file, or holds objects
            other than weights.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"{file}: no such weights file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(list(allowed)):
                return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        refused_object, detail = _unpickler_detail(exc)
        if refused_object:  # the file is fine, but holds something that would run code
            raise WeightsError(f"{file}: holds Python objects other than tensors and plain "
                               f"containers ({detail}); semcorr reads weights only and never "
                               "unpickles code") from None
        raise WeightsError(f"{file}: not a readable torch weights file ({detail})") from None
    except Exception as exc:  # noqa: BLE001  (torch raises many types for corrupt files)
        raise WeightsError(f"{file}: not a readable torch weights file ({_first_line(exc)})"
                           ) from None

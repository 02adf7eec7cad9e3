"""Training checkpoints: model, optimizer, scheduler, scaler, RNG states and step, atomically.

A checkpoint is one torch file readable with ``torch.load(weights_only=True)``: only tensors and
plain containers are stored (numpy's RNG state is converted). Restoring it and continuing gives
the same steps as a run that was never interrupted, provided every random draw of the trainer
comes from the saved generators.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semcorr.errors import WeightsError
from semcorr.io import atomic_write_bytes
from semcorr.io.weights import load_torch_file

__all__ = [
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "unwrap",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (or itself)."""
    return getattr(model, "module", model)


def capture_rng(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The states of Python's, numpy's and torch's global RNGs, CUDA's and ``generators``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (global state)
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "python_gauss": random.getstate()[2],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any],
                generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`capture_rng` captured."""
    python = list(state["python"])
    random.setstate((python[-1], tuple(python[:-1]), state["python_gauss"]))
    n = state["numpy"]
    numpy_state = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                   n["gauss"])
    np.random.set_state(numpy_state)  # noqa: NPY002 (the global state is what we restore)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", {})
    for name, generator in (generators or {}).items():
        if name in saved:
            generator.set_state(saved[name])


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file + rename).

    Args:
        path: destination file.
        model: the model (DDP wrappers are unwrapped: keys have no ``module.`` prefix).
        step: number of optimisation steps done.
        optimizer, scheduler, scaler: optional states (anything with ``state_dict``).
        generators: named ``torch.Generator`` s whose states are saved with the global RNGs.
        extra: plain data (config, loss history...) stored under ``extra``.

    Returns:
        ``path``.
    """
    payload: dict[str, Any] = {
        "model": unwrap(model).state_dict(),
        "step": int(step),
        "rng": capture_rng(generators),
        "extra": dict(extra or {}),
    }
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is not None:
            payload[name] = obj.state_dict()
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    restore_random: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint` into the given objects.

    Returns:
        ``{"step": int, "extra": dict}``.

    Raises:
        WeightsError: naming the file when it is unreadable or does not fit the objects.
    """
    file = Path(path)
    payload = load_torch_file(file)
    if not isinstance(payload, dict) or "model" not in payload or "step" not in payload:
        raise WeightsError(f"{file}: not a semcorr training checkpoint")
    try:
        unwrap(model).load_state_dict(payload["model"], strict=True)
        for name, obj in (("optimizer", optimizer), ("scheduler", scheduler),
                          ("scaler", scaler)):
            if obj is not None:
                if name not in payload:
                    raise KeyError(f"no {name} state")
                obj.load_state_dict(payload[name])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise WeightsError(f"{file}: checkpoint does not fit ({exc})") from None
    if restore_random:
        restore_rng(payload["rng"], generators)
    return {"step": int(payload["step"]), "extra": payload.get("extra", {})}

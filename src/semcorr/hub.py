"""Where a backbone's weights come from: a hub id, a local file or folder, or a weights folder.

Resolution order of :func:`resolve_weights` for a backbone ``name``:

1. ``weights`` given and an existing path → that file or folder;
2. ``weights`` given and shaped like a hub id (``owner/name``) → the hub (downloaded and cached
   by the hub library when online);
3. ``weights`` given otherwise → :class:`~semcorr.errors.WeightsError` (a missing local path);
4. ``weights`` is ``None`` and ``$SEMCORR_WEIGHTS/<name>`` (a folder, or a file with one of the
   known suffixes) exists → that path;
5. ``weights`` is ``None`` → the backbone's default hub id.

Nothing is ever replaced by another backbone's weights. Loading from the hub while offline
(``HF_HUB_OFFLINE=1``) or without a network raises one :class:`~semcorr.errors.WeightsError`
naming what to download and where to put it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from semcorr.errors import WeightsError
from semcorr.io.weights import load_torch_file

__all__ = [
    "WEIGHTS_ENV",
    "WeightsSource",
    "download_hint",
    "hub_offline",
    "load_from_pretrained",
    "load_state_dict",
    "resolve_weights",
]

#: Environment variable naming a folder of local weights, one entry per backbone name.
WEIGHTS_ENV = "SEMCORR_WEIGHTS"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_TRUE = {"1", "true", "yes", "on"}

T = TypeVar("T")


@dataclass(frozen=True)
class WeightsSource:
    """Resolved weights location.

    Attributes:
        kind: ``"local"`` (a file or folder on disk) or ``"hub"`` (a hub repository id).
        location: the path or the hub id.
        name: the backbone the weights are for (used in messages).
    """

    kind: str
    location: str
    name: str

    @property
    def is_file(self) -> bool:
        """Whether this is a single local file (a state dict), not a folder or hub id."""
        return self.kind == "local" and Path(self.location).is_file()


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` asks the hub to stay offline."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def download_hint(name: str, hub_id: str) -> str:
    """How to get weights for ``name`` onto this machine."""
    folder = os.environ.get(WEIGHTS_ENV) or "<weights folder>"
    return (
        f"download {hub_id!r} from the Hugging Face hub (e.g. `hf download {hub_id} "
        f"--local-dir {Path(folder) / name}`), then pass --weights {Path(folder) / name} or set "
        f"{WEIGHTS_ENV}={folder}"
    )


def _env_candidate(name: str) -> Path | None:
    folder = os.environ.get(WEIGHTS_ENV)
    if not folder:
        return None
    base = Path(folder).expanduser() / name
    if base.is_dir():
        return base
    for suffix in _STATE_DICT_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def resolve_weights(
    weights: str | os.PathLike[str] | None, *, name: str, default: str
) -> WeightsSource:
    """Decide where the weights of backbone ``name`` come from (see the module docstring).

    Args:
        weights: a hub id, a local file or folder, or ``None``.
        name: the backbone's registry name.
        default: the hub id used when ``weights`` is ``None`` and no local copy is configured.

    Returns:
        The resolved :class:`WeightsSource`.

    Raises:
        WeightsError: for a local path that does not exist.
    """
    if weights is None:
        local = _env_candidate(name)
        if local is not None:
            return WeightsSource("local", str(local), name)
        return WeightsSource("hub", default, name)
    text = os.fspath(weights)
    path = Path(text).expanduser()
    if path.exists():
        return WeightsSource("local", str(path), name)
    if _HUB_ID.match(text) and not text.startswith((".", "~")):
        return WeightsSource("hub", text, name)
    raise WeightsError(f"{text}: no such weights file or folder for backbone {name!r}")


def load_from_pretrained(loader: Callable[..., T], source: WeightsSource, **kwargs: object) -> T:
    """Call a hub library's ``from_pretrained`` on ``source``; failures become one clear error.

    Args:
        loader: e.g. ``transformers.Dinov2Model.from_pretrained``.
        source: a folder or hub id from :func:`resolve_weights`.
        **kwargs: passed to ``loader``.

    Raises:
        WeightsError: naming the folder or hub id and what to download when it is missing.
    """
    if source.kind == "hub" and hub_offline():
        kwargs.setdefault("local_files_only", True)
    try:
        return loader(source.location, **kwargs)
    except Exception as exc:  # hub libraries raise many types for missing or corrupt files
        if source.kind == "local":
            raise WeightsError(
                f"{source.location}: cannot load weights for {source.name!r} "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        why = "offline and not in the local cache" if hub_offline() else "could not be fetched"
        raise WeightsError(
            f"weights {source.location!r} for {source.name!r} {why}: "
            f"{download_hint(source.name, source.location)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a flat state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A torch file holding ``{"model": ...}``, ``{"state_dict": ...}`` or ``{"teacher": ...}`` is
    unwrapped.

    Raises:
        WeightsError: for an unreadable file or one that holds no tensors.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_torch_file(path)
    except WeightsError:
        raise
    except Exception as exc:  # torch/safetensors raise many types for corrupt files
        raise WeightsError(f"{path}: not a readable weights file ({_first_line(exc)})") from None
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return state

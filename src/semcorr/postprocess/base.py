"""Stage 2: learned (or fixed) heads on top of a backbone's features, and their registry.

A *head* is an ``nn.Module`` mapping a backbone's dense features ``(B, C_in, h, w)`` to new
dense features ``(B, C_out, h, w)``. :class:`HeadedBackbone` wraps a backbone and a head into a
:class:`~semcorr.features.base.Backbone`, so the Matcher, evaluation and the server use a headed
backbone like any other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.errors import WeightsError
from semcorr.features.base import Backbone
from semcorr.geometry import ResizePad
from semcorr.registry import Registry

__all__ = [
    "HEADS",
    "HeadedBackbone",
    "backbone_options_for_head",
    "create_head",
    "list_heads",
    "load_head",
    "load_head_state",
    "read_head_state",
    "register_head",
    "set_backbone_options",
]

HEADS: Registry[nn.Module] = Registry("head")
register_head = HEADS.register

#: Backbone options a head needs: head name → backbone name → options (e.g. raw SD+DINO parts).
_BACKBONE_OPTIONS: dict[str, dict[str, dict[str, object]]] = {}


def set_backbone_options(head: str, backbone: str, **options: object) -> None:
    """Declare the options ``backbone`` must be built with to feed ``head``."""
    _BACKBONE_OPTIONS.setdefault(head, {})[backbone] = dict(options)


def backbone_options_for_head(head: str, backbone: str) -> dict[str, object]:
    """Options ``backbone`` must be built with to feed ``head`` (empty when none)."""
    return dict(_BACKBONE_OPTIONS.get(head, {}).get(backbone, {}))


def create_head(name: str, weights: str | os.PathLike[str] | None = None, **options: object
                ) -> nn.Module:
    """Build the head registered as ``name`` (random or default initialisation without weights).

    Raises:
        UnknownNameError: for an unknown name.
    """
    return HEADS.get(name)(weights=weights, **options)


def load_head(name: str, path: str | os.PathLike[str] | None, **options: object) -> nn.Module:
    """Build the head ``name`` and load its weights from ``path`` strictly, in eval mode.

    Args:
        name: see :func:`list_heads` (``geoaware``, ``geoaware-zero-shot``, ...).
        path: a ``.safetensors`` or torch file (``torch.load(weights_only=True)``) holding the
            state dict, or a semcorr training checkpoint (``{"model": ...}``); ``None`` for a
            head without weights.
        **options: head-specific options.

    Raises:
        WeightsError: for a missing/unreadable file or keys/shapes that do not fit.
    """
    return create_head(name, weights=path, **options).eval()


def list_heads() -> list[str]:
    """Names of the registered heads."""
    return HEADS.names()


def read_head_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The flat state dict in a weights file (DDP's ``module.`` prefix removed).

    Raises:
        WeightsError: when the file is missing or holds no state dict.
    """
    from semcorr.hub import load_state_dict

    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"{file}: no such weights file")
    state = load_state_dict(file)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_head_state(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` strictly (every key, every shape).

    Raises:
        WeightsError: naming ``source`` and the missing, unexpected or mis-shaped keys.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    problems = [
        f"{label}: {_short(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("wrong shapes", wrong))
        if keys
    ]
    if problems:
        raise WeightsError(f"{source}: weights do not fit the head ({'; '.join(problems)})")
    module.load_state_dict(dict(state), strict=True)


def _short(keys: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


class HeadedBackbone(Backbone):
    """A backbone whose features are ``normalize(head(backbone features))``.

    Args:
        backbone: any registered backbone (its features must be what the head expects).
        head: an ``nn.Module`` ``(B, C_in, h, w) → (B, C_out, h, w)``.
        head_name: name recorded in :attr:`info`.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, head_name: str = "head") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.info = replace(
            backbone.info,
            name=f"{backbone.info.name}+{head_name}",
            extra={**backbone.info.extra, "head": head_name},
        )

    def transform_for(self, width: int, height: int) -> ResizePad:
        """The backbone's transform."""
        return self.backbone.transform_for(width, height)

    def prepare(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[ResizePad]]:
        """The backbone's batching of original images."""
        return self.backbone.prepare(images)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's normalisation."""
        return self.backbone.normalize(images)

    @property
    def condition(self) -> str:
        """The backbone's condition (the head depends on the features only)."""
        return self.backbone.condition

    def conditioned(
        self,
        *,
        category: str | None = None,
        pair: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Backbone:
        """The same head on the backbone with its condition fixed."""
        inner = self.backbone.conditioned(category=category, pair=pair)
        if inner is self.backbone:
            return self
        view = HeadedBackbone(inner, self.head)
        view.info = self.info
        return view

    def apply_head(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, h, w)`` backbone features → ``(B, C_out, h, w)`` unit-norm features."""
        out = self.head(features.to(_dtype_of(self.head, features.dtype)))
        return F.normalize(out, dim=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Headed features ``(B, C_out, h, w)`` of normalised ``(B, 3, S, S)`` images."""
        return self.apply_head(self.backbone.features(images))

    def extract(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[ResizePad]]:
        """Headed features of original images ``(3, H_i, W_i)`` and their transforms."""
        features, transforms = self.backbone.extract(images)
        with torch.inference_mode():
            return self.apply_head(features), transforms


def _dtype_of(module: nn.Module, default: torch.dtype) -> torch.dtype:
    for tensor in module.parameters():
        return tensor.dtype
    return default


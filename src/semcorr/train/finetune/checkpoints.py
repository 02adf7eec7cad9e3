"""Fine-tuning checkpoints: what they record, writing and reading them, and rebuilding a
fine-tuned backbone from one (:func:`load_finetuned`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semcorr.errors import WeightsError
from semcorr.features.base import Backbone, create_backbone
from semcorr.io import atomic_write_bytes
from semcorr.io.weights import load_torch_file
from semcorr.train.finetune.config import FinetuneConfig
from semcorr.train.finetune.surgery import frozen_fingerprint

#: The ``format`` field of fine-tuning checkpoints.
CHECKPOINT_FORMAT = "semcorr-finetune"
LAST = "last.pt"
BEST = "best.pt"


def _base_record(config: FinetuneConfig, backbone: Backbone, trained: Sequence[str]
                 ) -> dict[str, Any]:
    weights = config.weights
    if weights is not None and Path(weights).exists():
        weights = str(Path(weights).resolve())
    return {
        "backbone": config.backbone,
        "weights": weights,
        "options": dict(config.backbone_options),
        "layers": config.layers,
        "fingerprint": frozen_fingerprint(backbone, trained),
    }


def _trained_state(backbone: nn.Module, trained: Sequence[str]) -> dict[str, torch.Tensor]:
    params = dict(backbone.named_parameters())
    return {name: params[name].detach().cpu().clone() for name in trained}


def _save(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _read(path: Path) -> dict[str, Any]:
    payload = load_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a 'semcorr train finetune' checkpoint")
    return payload


def is_finetune_checkpoint(path: str | Path | None) -> bool:
    """Whether ``path`` is a file written by ``semcorr train finetune`` (cheap: memory-mapped)."""
    if path is None or not Path(path).is_file():
        return False
    try:
        payload = load_torch_file(path, mmap=True)
    except WeightsError:  # not a zip torch file, not weights-only, unreadable...
        return False
    return isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT


def _apply_trained(backbone: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    params = dict(backbone.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise WeightsError(f"{path}: parameters {unknown[:5]} are not in the base backbone")
    with torch.no_grad():
        for name, value in state.items():
            if params[name].shape != value.shape:
                raise WeightsError(f"{path}: {name} is {tuple(value.shape)}, the base backbone "
                                   f"has {tuple(params[name].shape)}")
            params[name].copy_(value)


def load_finetuned(
    path: str | Path,
    expected_backbone: str | None = None,
    base_weights: str | None = None,
    device: torch.device | str | None = None,
) -> Backbone:
    """Rebuild the base backbone a checkpoint was trained from and apply its trained parameters.

    Args:
        path: ``best.pt`` or ``last.pt`` of a fine-tuning run.
        expected_backbone: refuse a checkpoint of another backbone (``None``: any).
        base_weights: where the base weights are now (default: as recorded).
        device: where the backbone goes (default: CPU).

    Raises:
        WeightsError: naming the file when it is not such a checkpoint, when the base weights
            differ from those it was trained over, or when the parameters do not fit.
    """
    file = Path(path)
    payload = _read(file)
    base = payload["base"]
    if expected_backbone is not None and expected_backbone != base["backbone"]:
        raise WeightsError(f"{file}: fine-tuned from {base['backbone']!r}, not "
                           f"{expected_backbone!r}")
    backbone = create_backbone(base["backbone"], weights=base_weights or base["weights"],
                               **base["options"])
    trained = payload["trained"]
    if frozen_fingerprint(backbone, list(trained)) != base["fingerprint"]:
        raise WeightsError(
            f"{file}: the base weights {base_weights or base['weights']!r} differ from those "
            "the checkpoint was trained over (frozen parameters do not match)"
        )
    _apply_trained(backbone, trained, file)
    return backbone.to(device or "cpu").eval()

"""What is trained: the last blocks of a ViT (and the module after them), the freezing of
everything else, and the fingerprint of the frozen parameters."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn

from semcorr.errors import InputError


def _block_list(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The backbone's transformer block list: its longest ``nn.ModuleList`` named ``layer(s)``
    or ``blocks``."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in backbone.named_modules():
        leaf = name.rpartition(".")[2]
        if isinstance(module, nn.ModuleList) and leaf in ("layer", "layers", "blocks"):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None or len(best[1]) == 0:
        raise InputError(f"{type(backbone).__name__}: no transformer blocks to fine-tune")
    return best


def _after_blocks(backbone: nn.Module) -> list[str]:
    """Names of the modules applied after the blocks that hold parameters (final norm, neck)."""
    names = []
    for name in ("model.layernorm", "model.norm", "encoder.neck"):
        try:
            module = backbone.get_submodule(name)
        except AttributeError:
            continue
        if name.endswith("neck") and getattr(backbone, "output", "neck") != "neck":
            continue
        if any(True for _ in module.parameters()):
            names.append(name)
    return names


def trainable_modules(backbone: nn.Module, layers: int) -> list[str]:
    """Names of the modules fine-tuned: the last ``layers`` blocks and what follows them.

    Args:
        backbone: a ViT backbone (DINOv2, DINOv3, SAM).
        layers: number of last blocks (at most the number of blocks the features use).

    Raises:
        InputError: when the backbone has fewer blocks or none.
    """
    name, blocks = _block_list(backbone)
    if not 1 <= layers <= len(blocks):
        raise InputError(f"--layers {layers}: the backbone's features use {len(blocks)} blocks")
    chosen = [f"{name}.{i}" for i in range(len(blocks) - layers, len(blocks))]
    return chosen + _after_blocks(backbone)


def freeze_for_finetuning(backbone: nn.Module, layers: int) -> list[str]:
    """Freeze every parameter but those of :func:`trainable_modules`.

    Returns:
        The names of the trainable parameters, in ``named_parameters`` order.
    """
    prefixes = tuple(f"{m}." for m in trainable_modules(backbone, layers))
    trained = []
    for name, param in backbone.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
        if param.requires_grad:
            trained.append(name)
    return trained


def frozen_fingerprint(backbone: nn.Module, trained: Sequence[str]) -> str:
    """SHA-256 of the bytes of every parameter not in ``trained`` (name order)."""
    digest = hashlib.sha256()
    skip = set(trained)
    for name, param in sorted(backbone.named_parameters()):
        if name in skip:
            continue
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

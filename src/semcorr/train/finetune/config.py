"""Settings of a fine-tuning run: :class:`FinetuneConfig` and how it is built."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from semcorr.config import build_config
from semcorr.features.base import PRECISIONS

LOSSES = ("ce", "softargmax")
#: Settings that may change when a run is resumed (they do not change the computation).
_RESUMABLE = {"steps", "device", "val_every", "checkpoint_every", "log_every", "micro_batch",
              "out", "weights"}


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a fine-tuning run (defaults < ``--config`` file < command line).

    Attributes:
        backbone: registered backbone name (a ViT: DINOv2, DINOv3, SAM).
        weights: base weights (hub id, folder or file; ``None`` = the backbone's default).
        backbone_options: options of :func:`~semcorr.features.create_backbone` (e.g.
            ``{"num_patches": 60}``).
        layers: number of last blocks trained (plus the final norm / SAM neck).
        dataset, root: training dataset name and folder (see :func:`semcorr.data.create_dataset`).
        train_split, val_split: splits used for training and validation (``""`` = no validation).
        dataset_options: loader options (e.g. ``{"layout": "small"}``).
        out: output folder (``last.pt``, ``best.pt``, ``metrics.json``).
        loss: ``ce`` (grid cross-entropy) or ``softargmax`` (soft-argmax distance).
        temperature: softmax temperature of both losses.
        window: soft-argmax window radius in cells (``None`` = the whole grid).
        steps: optimisation steps.
        batch_size: pairs per optimisation step (over all processes).
        micro_batch: pairs per forward pass (gradients are accumulated).
        lr, weight_decay: AdamW settings.
        warmup: linear warm-up steps, then cosine decay to ``min_lr_ratio * lr``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        clip_grad: maximum gradient norm (``None`` = no clipping).
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast of the backbone, or ``auto`` (the
            faster of bf16 and fp32 on the device, see :mod:`semcorr.features.precision`).
        seed: seed of the data order.
        val_every: steps between validations (0 = only at the end).
        val_pairs: validation pairs (evenly spread over the split).
        val_alpha: PCK threshold of the validation.
        checkpoint_every: steps between ``last.pt`` writes.
        log_every: steps between progress reports.
        device: torch device (``None`` = cuda if available).
    """

    backbone: str = "dinov2_vitb14"
    weights: str | None = None
    backbone_options: dict[str, Any] = field(default_factory=dict)
    layers: int = 2
    dataset: str = "spair"
    root: str = ""
    train_split: str = "trn"
    val_split: str = "val"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    out: str = "runs/finetune"
    loss: str = "ce"
    temperature: float = 0.04
    window: int | None = None
    steps: int = 2000
    batch_size: int = 8
    micro_batch: int = 2
    lr: float = 2e-5
    weight_decay: float = 0.05
    warmup: int = 100
    min_lr_ratio: float = 0.01
    clip_grad: float | None = 1.0
    precision: str = "fp32"
    seed: int = 0
    val_every: int = 500
    val_pairs: int = 200
    val_alpha: float = 0.1
    checkpoint_every: int = 100
    log_every: int = 10
    device: str | None = None

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"layers must be at least 1, got {self.layers}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}")
        for name in ("steps", "batch_size", "micro_batch", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not self.root:
            raise ValueError("root (the dataset folder) is required")


def build_config_from_sources(
    file: str | None = None, overrides: dict[str, Any] | Sequence[str] = ()
) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from defaults < JSON/YAML ``file`` < ``overrides``."""
    return build_config(FinetuneConfig, file, overrides)

"""GeoAware-SC ("Telling Left from Right", Zhang et al., CVPR 2024): heads and presets.

* ``geoaware``: the learned :class:`~semcorr.postprocess.aggregation.AggregationNetwork` on raw
  ``sd+dino`` parts; loads the official checkpoints (``best_856.PTH``, AP-10k ``last.PTH``)
  strictly, its part widths read from the checkpoint.
* ``geoaware-zero-shot``: no learned weights; the zero-shot fusion recipe (SD parts and DINO
  normalised separately, concatenated, normalised again) applied to raw parts.

:data:`PRESETS` names the paper's settings (training data, schedule, evaluation rule) with the
published numbers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from semcorr.conventions import check_shape
from semcorr.errors import WeightsError
from semcorr.features.fusion import fuse_zero_shot
from semcorr.postprocess.aggregation import AggregationNetwork
from semcorr.postprocess.base import (
    load_head_state,
    read_head_state,
    register_head,
    set_backbone_options,
)

__all__ = [
    "GEOAWARE_DIMS",
    "GeoAwarePreset",
    "PRESETS",
    "ZeroShotFusion",
    "dims_from_state",
    "geoaware_head",
    "geoaware_zero_shot_head",
    "get_preset",
]

#: Part widths of ``sd+dino`` raw features: SD s3, s4, s5, DINOv2 ViT-B/14.
GEOAWARE_DIMS: tuple[int, ...] = (640, 1280, 1280, 768)


class ZeroShotFusion(nn.Module):
    """GeoAware-SC's zero-shot features from raw concatenated parts (no learned weights).

    Args:
        feature_dims: widths of the parts, the last ``dino_parts`` being DINO parts.
        dino_parts: how many trailing parts are DINO's.
    """

    def __init__(self, feature_dims: Sequence[int] = GEOAWARE_DIMS, dino_parts: int = 1) -> None:
        super().__init__()
        self.feature_dims = tuple(int(d) for d in feature_dims)
        self.dino_parts = int(dino_parts)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, sum(feature_dims), h, w)`` → same shape, unit L2 norm per cell."""
        dims = check_shape(features, "B C h w", "features")
        if dims["C"] != sum(self.feature_dims):
            raise ValueError(f"features have {dims['C']} channels, expected "
                             f"{sum(self.feature_dims)}")
        parts = torch.split(features, self.feature_dims, dim=1)
        split = len(parts) - self.dino_parts
        dino = torch.cat(parts[split:], dim=1)
        return fuse_zero_shot(parts[:split], dino, (dims["h"], dims["w"]))


_BRANCH_KEY = re.compile(r"^bottleneck_layers\.(\d+)\.0\.conv1\.weight$")


def dims_from_state(state: Mapping[str, torch.Tensor], source: str) -> tuple[tuple[int, ...], int]:
    """Part widths and projection width of an aggregation-network state dict.

    Raises:
        WeightsError: when the state dict is not an aggregation network's.
    """
    branches = sorted(
        (int(m.group(1)), tuple(v.shape)) for k, v in state.items() if (m := _BRANCH_KEY.match(k))
    )
    conv3 = state.get("bottleneck_layers.0.0.conv3.weight")
    if not branches or conv3 is None or [i for i, _ in branches] != list(range(len(branches))):
        raise WeightsError(
            f"{source}: not a GeoAware-SC aggregation network (no bottleneck_layers.<i>.0.conv1/"
            "conv3 weights)"
        )
    return tuple(shape[1] for _, shape in branches), int(conv3.shape[0])


@register_head("geoaware")
def geoaware_head(
    *,
    weights: str | os.PathLike[str] | None = None,
    feature_dims: Sequence[int] | None = None,
    projection_dim: int | None = None,
    num_groups: int = 32,
    feature_dropout: float = 0.0,
) -> AggregationNetwork:
    """GeoAware-SC's aggregation network, optionally loaded from weights (strictly).

    Args:
        weights: official ``.PTH`` file, a ``.safetensors`` file or a semcorr checkpoint;
            ``None`` for a random initialisation.
        feature_dims: part widths; default: read from ``weights``, else :data:`GEOAWARE_DIMS`.
        projection_dim: output width; default: read from ``weights``, else 768.
        num_groups: GroupNorm groups.
        feature_dropout: input dropout while training (0.2 in the paper).
    """
    state = None
    if weights is not None:
        state = read_head_state(weights)
        found_dims, found_proj = dims_from_state(state, str(weights))
        feature_dims = found_dims if feature_dims is None else feature_dims
        projection_dim = found_proj if projection_dim is None else projection_dim
    model = AggregationNetwork(
        feature_dims=GEOAWARE_DIMS if feature_dims is None else feature_dims,
        projection_dim=768 if projection_dim is None else projection_dim,
        num_groups=num_groups,
        feature_dropout=feature_dropout,
    )
    if state is not None:
        load_head_state(model, state, str(weights))
    return model


@register_head("geoaware-zero-shot")
def geoaware_zero_shot_head(
    *,
    weights: str | os.PathLike[str] | None = None,
    feature_dims: Sequence[int] = GEOAWARE_DIMS,
    dino_parts: int = 1,
) -> ZeroShotFusion:
    """GeoAware-SC's zero-shot fusion of raw parts (takes no weights)."""
    if weights is not None:
        raise WeightsError(f"{weights}: the zero-shot head has no weights")
    return ZeroShotFusion(feature_dims, dino_parts)


for _head in ("geoaware", "geoaware-zero-shot"):  # the features the released head was fed
    set_backbone_options(_head, "sd+dino", mode="raw", recipe="geoaware")


@dataclass(frozen=True)
class GeoAwarePreset:
    """One of the paper's settings.

    Attributes:
        name: preset name.
        description: one line.
        head: head name (``geoaware`` or ``geoaware-zero-shot``).
        train_dataset: dataset trained on (``None`` for zero-shot).
        epochs: training epochs.
        init: preset whose checkpoint initialises training (AP-10k pre-training), or ``None``.
        window: window soft-argmax radius at evaluation, in cells.
        temperature: soft-argmax temperature.
        pose_align: test-time adaptive pose alignment (flip).
        pair_augment: pose-variant pair augmentation in training.
        lr, weight_decay: AdamW settings (one-cycle schedule, batch 1).
        feature_dropout: input dropout of the head in training.
        label_noise: std of the Gaussian label noise as a fraction of the PCK threshold / 2.
        published: published results, metric name → value (PCK in %).
    """

    name: str
    description: str
    head: str = "geoaware"
    train_dataset: str | None = "spair"
    epochs: int = 2
    init: str | None = None
    window: int = 7
    temperature: float = 0.02
    pose_align: bool = False
    pair_augment: bool = True
    lr: float = 1.25e-3
    weight_decay: float = 1e-3
    feature_dropout: float = 0.2
    label_noise: float = 0.1
    published: tuple[tuple[str, float], ...] = ()


PRESETS: dict[str, GeoAwarePreset] = {
    p.name: p
    for p in (
        GeoAwarePreset(
            "ap10k", "AP-10k pre-training (1 epoch), evaluated intra-species on AP-10k",
            train_dataset="ap10k", epochs=1,
        ),
        GeoAwarePreset(
            "spair", "SPair-71k supervised (2 epochs from the AP-10k pre-training)",
            train_dataset="spair", epochs=2, init="ap10k",
            published=(("spair_pck@0.10_per_image", 85.6),),
        ),
        GeoAwarePreset(
            "pfpascal", "PF-Pascal supervised (100 epochs from the AP-10k pre-training)",
            train_dataset="pf-pascal", epochs=100, init="ap10k", pair_augment=False,
        ),
        GeoAwarePreset(
            "zero-shot", "no learned head; fused SD+DINO, window 5, adaptive flip",
            head="geoaware-zero-shot", train_dataset=None, epochs=0, window=5, pose_align=True,
            pair_augment=False, feature_dropout=0.0, label_noise=0.0,
            published=(("spair_pck@0.10_per_keypoint", 65.4),),
        ),
    )
}


def get_preset(name: str) -> GeoAwarePreset:
    """The preset ``name`` (see :data:`PRESETS`)."""
    from semcorr.errors import UnknownNameError

    if name not in PRESETS:
        raise UnknownNameError(f"unknown GeoAware-SC preset {name!r} (known: "
                               f"{', '.join(PRESETS)})")
    return PRESETS[name]

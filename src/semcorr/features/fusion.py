"""``sd+dino``: Stable Diffusion U-Net parts fused with DINOv2 tokens on one grid.

Every part is resampled (bilinear) to the DINO grid (``image_size / stride`` cells, 60² by
default), then combined by one of two recipes:

* ``zero_shot``: the SD parts concatenated and L2-normalised, the DINO part L2-normalised,
  both concatenated and normalised again (GeoAware-SC's zero-shot features);
* ``raw``: the plain concatenation ``[s3, s4, s5, dino]`` (channels 640 + 1280 + 1280 + 768
  with the defaults), the input GeoAware-SC's post-processor expects.

Each backbone sees its own input (SD 960 px, DINOv2 840 px by default), made from the original
image by its own :class:`~semcorr.geometry.ResizePad`; both are the same centred square, so one
grid cell covers the same part of the image in both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from semcorr.conventions import check_shape
from semcorr.errors import InputError, WeightsError
from semcorr.features.base import Backbone, BackboneInfo, create_backbone, register_backbone
from semcorr.geometry import ResizePad

__all__ = [
    "FUSION_MODES",
    "SDDinoFusion",
    "fuse_raw",
    "fuse_zero_shot",
    "resample_parts",
]

FUSION_MODES = ("zero_shot", "raw")


def resample_parts(parts: Sequence[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    """Bring maps ``(B, C_k, h_k, w_k)`` to one grid ``size = (h, w)`` (bilinear, cell centres
    aligned as in :mod:`semcorr.conventions`); maps already on it are returned unchanged."""
    return [
        p if tuple(p.shape[-2:]) == tuple(size)
        else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
        for p in parts
    ]


def fuse_raw(parts: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Concatenate parts in order on one grid.

    Args:
        parts: maps ``(B, C_k, h_k, w_k)``.
        size: output grid ``(h, w)``.

    Returns:
        ``(B, sum C_k, h, w)``.
    """
    return torch.cat(resample_parts(parts, size), dim=1)


def fuse_zero_shot(
    sd_parts: Sequence[torch.Tensor], dino: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """GeoAware-SC's zero-shot fusion: normalise SD and DINO separately, concatenate, normalise.

    Args:
        sd_parts: SD maps ``(B, C_k, h_k, w_k)``.
        dino: ``(B, C_d, h_d, w_d)``.
        size: output grid ``(h, w)``.

    Returns:
        ``(B, sum C_k + C_d, h, w)``, unit L2 norm per cell.
    """
    sd = F.normalize(fuse_raw(sd_parts, size), dim=1)
    dino = F.normalize(resample_parts([dino], size)[0], dim=1)
    return F.normalize(torch.cat([sd, dino], dim=1), dim=1)


class SDDinoFusion(Backbone):
    """Fused Stable Diffusion + DINOv2 features (see the module docstring).

    Inputs to :meth:`forward` are ``(B, 3, S, S)`` squares in [0, 1] with ``S`` the DINO input
    size; the SD input is resized from them. :meth:`extract` instead prepares each backbone's
    input from the original images.

    Args:
        sd: a Stable Diffusion backbone (with :meth:`feature_parts`).
        dino: a DINO backbone.
        mode: ``zero_shot`` or ``raw``.
    """

    def __init__(self, sd: Backbone, dino: Backbone, mode: str = "zero_shot") -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise InputError(f"sd+dino: mode must be one of {FUSION_MODES}, got {mode!r}")
        self.sd = sd
        self.dino = dino
        self.mode = mode
        self.info = BackboneInfo(
            name="sd+dino",
            stride=dino.info.stride,
            image_size=dino.info.image_size,
            weights=f"{sd.info.weights} + {dino.info.weights}",
            license=f"SD: {sd.info.license}; DINO: {dino.info.license}",
            extra={"mode": mode, "sd": sd.info.name, "dino": dino.info.name},
        )

    @property
    def grid(self) -> tuple[int, int]:
        side = self.info.image_size // self.info.stride
        return side, side

    def parts_of(
        self, sd_images: torch.Tensor, dino_images: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Raw parts from each backbone's own square input in [0, 1].

        Returns:
            ``{SD part names..., "dino": (B, C_d, h_d, w_d)}`` on their native grids.
        """
        parts = dict(self.sd.feature_parts(self.sd.normalize(sd_images)))
        if "dino" in parts:
            raise InputError("sd+dino: an SD part may not be called 'dino'")
        parts["dino"] = self.dino.features(self.dino.normalize(dino_images))
        return parts

    def fuse(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Fuse parts from :meth:`parts_of` on the DINO grid: ``(B, C, h, w)``."""
        sd_parts = [v for k, v in parts.items() if k != "dino"]
        if self.mode == "raw":
            return fuse_raw([*sd_parts, parts["dino"]], self.grid)
        return fuse_zero_shot(sd_parts, parts["dino"], self.grid)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Identity: each backbone applies its own mean/std."""
        return images

    def feature_parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw parts of ``(B, 3, S, S)`` squares in [0, 1] (SD input resized from them)."""
        check_shape(images, "B 3 H W", "images")
        size = self.sd.info.image_size
        sd_images = F.interpolate(images, size=(size, size), mode="bilinear",
                                  align_corners=False, antialias=True)
        return self.parts_of(sd_images, images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Fused map ``(B, C, S / stride, S / stride)`` of squares in [0, 1]."""
        return self.fuse(self.feature_parts(images))

    def extract(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[ResizePad]]:
        """Fused features of original images ``(3, H_i, W_i)``; transforms of the DINO frame."""
        sd_batch, _ = self.sd.prepare(images)
        dino_batch, transforms = self.dino.prepare(images)
        with torch.inference_mode():
            return self.fuse(self.parts_of(sd_batch, dino_batch)), transforms


def _sub_weights(weights: str | None, sub: str | None, name: str) -> str | None:
    if sub is not None or weights is None:
        return sub
    path = Path(weights).expanduser() / name
    if not path.exists():
        raise WeightsError(
            f"{weights}: sd+dino expects a weights folder holding {name}/ (and the other "
            "backbone's folder); or pass sd_weights= and dino_weights="
        )
    return str(path)


@register_backbone("sd+dino")
def sd_dino(
    *,
    weights: str | None = None,
    mode: str = "zero_shot",
    sd: str = "sd15",
    dino: str = "dinov2_vitb14",
    sd_weights: str | None = None,
    dino_weights: str | None = None,
    sd_options: Mapping[str, Any] | None = None,
    dino_options: Mapping[str, Any] | None = None,
    recipe: str | None = None,
    captioner: str | None = None,
    captioner_clip: str | None = None,
) -> SDDinoFusion:
    """SD + DINO fusion (GeoAware-SC defaults: SD 1.5 parts s3/s4/s5 at 960 px, DINOv2 ViT-B/14
    last block at 840 px).

    Args:
        weights: a folder holding ``<sd>/`` and ``<dino>/`` (like ``$SEMCORR_WEIGHTS``), or
            ``None`` for each backbone's own default.
        mode: ``zero_shot`` or ``raw``.
        sd, dino: registry names of the two backbones.
        sd_weights, dino_weights: override each backbone's weights.
        sd_options, dino_options: options passed to each backbone.
        recipe: ``"geoaware"``: GeoAware-SC's released feature recipe on both sides (the SD
            recipe of :mod:`semcorr.features.geoaware_sd`, DINOv2 with the official position
            interpolation); ``None``: each backbone's own defaults.
        captioner, captioner_clip: the SD recipe's captioner (see ``create_backbone("sd15")``).
    """
    if mode not in FUSION_MODES:
        raise InputError(f"sd+dino: mode must be one of {FUSION_MODES}, got {mode!r}")
    sd_options, dino_options = dict(sd_options or {}), dict(dino_options or {})
    if recipe is not None:
        given = {"captioner": captioner, "captioner_clip": captioner_clip}
        sd_options = {"recipe": recipe, **{k: v for k, v in given.items() if v is not None},
                      **sd_options}
        dino_options = {"pos_interpolation": "official", **dino_options}
    elif captioner is not None or captioner_clip is not None:
        raise InputError("sd+dino: captioner and captioner_clip need recipe='geoaware'")
    sd_model = create_backbone(sd, weights=_sub_weights(weights, sd_weights, sd), **sd_options)
    if not hasattr(sd_model, "feature_parts"):
        raise InputError(f"sd+dino: {sd!r} has no named parts")
    dino_model = create_backbone(dino, weights=_sub_weights(weights, dino_weights, dino),
                                 **dino_options)
    return SDDinoFusion(sd_model, dino_model, mode)

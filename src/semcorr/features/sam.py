"""SAM image encoder through ``transformers`` (``SamModel.vision_encoder``).

Names: ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h`` (hub ``facebook/sam-vit-{base,large,huge}``
or a ``save_pretrained`` folder). SAM's ViT has absolute position embeddings of a fixed grid, so
the input size is the checkpoint's (1024 px → 64² cells of 16 px). The image is prepared as
SAM's own processor does: long side resized to that size, content at the top-left corner,
padding at the bottom/right that is zero after normalisation (the ImageNet mean before it),
not semcorr's default centred black padding. Outputs:

* ``neck`` (default): the image embedding after SAM's neck, ``(B, 256, 64, 64)``;
* ``vit``: the last ViT block's tokens before the neck, ``(B, 768|1024|1280, 64, 64)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from semcorr.conventions import check_shape
from semcorr.errors import InputError, WeightsError
from semcorr.features.base import (
    PRECISIONS,
    Backbone,
    BackboneInfo,
    autocast,
    inference_precision,
    register_backbone,
)
from semcorr.features.dinov2 import IMAGENET_MEAN, IMAGENET_STD
from semcorr.geometry import ResizePad
from semcorr.hub import WeightsSource, load_from_pretrained, resolve_weights

__all__ = ["SAM_HUB_IDS", "SAM_LICENSE", "SamEncoder", "create_sam"]

SAM_LICENSE = "Apache-2.0 (facebookresearch/segment-anything)"
SAM_HUB_IDS: dict[str, str] = {
    "sam_vit_b": "facebook/sam-vit-base",
    "sam_vit_l": "facebook/sam-vit-large",
    "sam_vit_h": "facebook/sam-vit-huge",
}
_OUTPUTS = ("neck", "vit")


class SamEncoder(Backbone):
    """Dense map of SAM's image encoder.

    Args:
        encoder: a ``transformers`` ``SamVisionEncoder``.
        info: metadata (stride = patch size, image size = the checkpoint's).
        output: ``neck`` or ``vit``.
        precision: ``fp32``, ``bf16``, ``fp16`` autocast or ``auto``.
    """

    def __init__(self, encoder: nn.Module, *, info: BackboneInfo, output: str = "neck",
                 precision: str = "fp32") -> None:
        super().__init__()
        if output not in _OUTPUTS:
            raise InputError(f"{info.name}: output must be one of {_OUTPUTS}, got {output!r}")
        if precision not in PRECISIONS:
            raise InputError(f"{info.name}: precision must be one of {sorted(PRECISIONS)}")
        self.encoder = encoder.eval()
        self.info = info
        self.output = output
        self.precision = precision

    def transform_for(self, width: int, height: int) -> ResizePad:
        """SAM's placement: top-left content, padding equal to the mean (zero once
        normalised)."""
        return ResizePad(width, height, self.info.image_size, self.info.stride,
                         anchor="top_left", fill=tuple(self.info.mean))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """SAM features of normalised images.

        Args:
            images: ``(B, 3, S, S)`` with ``S`` the checkpoint's image size.

        Returns:
            ``(B, C, S / 16, S / 16)``.
        """
        dims = check_shape(images, "B 3 H W", "images")
        size = self.info.image_size
        if dims["H"] != size or dims["W"] != size:
            raise InputError(f"{self.info.name}: input must be {size}x{size} (fixed by SAM)")
        precision = inference_precision(self.encoder, images.device, self.precision)
        with autocast(images.device, precision):
            if self.output == "neck":
                out = self.encoder(pixel_values=images).last_hidden_state
            else:
                hidden = self.encoder(pixel_values=images, output_hidden_states=True)
                out = hidden.hidden_states[-1].permute(0, 3, 1, 2)  # channels-last → (B, C, h, w)
        return out.to(images.dtype).contiguous()


def _load(source: WeightsSource) -> nn.Module:
    from transformers import AutoConfig, SamModel

    config = load_from_pretrained(AutoConfig.from_pretrained, source)
    if config.model_type != "sam":
        raise WeightsError(
            f"{source.location}: holds a {config.model_type!r} model, {source.name!r} needs 'sam'"
        )
    model, info = load_from_pretrained(
        SamModel.from_pretrained, source, config=config, output_loading_info=True
    )
    missing = [k for k in info.get("missing_keys", []) if k.startswith("vision_encoder.")]
    if missing or info.get("mismatched_keys"):
        raise WeightsError(f"{source.location}: weights do not fit {source.name!r} "
                           f"(missing {sorted(missing)[:5]})")
    return model.vision_encoder


def create_sam(
    name: str, *, weights: str | None = None, output: str = "neck", precision: str = "fp32"
) -> SamEncoder:
    """Build the SAM image-encoder backbone ``name`` (see :data:`SAM_HUB_IDS`).

    Args:
        name: registry name.
        weights: ``save_pretrained`` folder of a ``SamModel`` or hub id; ``None`` →
            ``$SEMCORR_WEIGHTS/<name>`` if present, else the hub id.
        output: ``neck`` (256-d image embedding) or ``vit`` (tokens before the neck).
        precision: ``fp32``, ``bf16``, ``fp16`` autocast or ``auto``.
    """
    source = resolve_weights(weights, name=name, default=SAM_HUB_IDS[name])
    if source.is_file:
        raise WeightsError(f"{source.location}: {name!r} loads a transformers SamModel folder")
    encoder = _load(source)
    config = encoder.config
    info = BackboneInfo(
        name=name,
        stride=int(config.patch_size),
        image_size=int(config.image_size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=source.location,
        license=SAM_LICENSE,
        extra={"output": output},
    )
    return SamEncoder(encoder, info=info, output=output, precision=precision)


def _register(name: str) -> None:
    def constructor(*, weights: str | None = None, **options: Any) -> SamEncoder:
        try:
            return create_sam(name, weights=weights, **options)
        except TypeError as exc:
            raise InputError(f"{name}: {exc}") from None

    constructor.__doc__ = f"SAM image encoder {name!r}; see :func:`create_sam` for options."
    register_backbone(name)(constructor)


for _name in SAM_HUB_IDS:
    _register(_name)

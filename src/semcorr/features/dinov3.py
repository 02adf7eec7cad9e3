"""DINOv3 ViT backbones through ``transformers`` (``DINOv3ViTModel``).

Names: ``dinov3_vits16``, ``dinov3_vits16plus``, ``dinov3_vitb16``, ``dinov3_vitl16``,
``dinov3_vith16plus``, ``dinov3_vit7b16`` (the LVD-1689M web-image models). The hub copies are
gated: download them once with an accepted licence and pass the folder as ``weights`` (or put it
at ``$SEMCORR_WEIGHTS/<name>``). Options as for DINOv2
(:func:`semcorr.features.dinov2.create_dinov2`): the chosen block's patch tokens before the
final norm, CLS and the register tokens dropped, reshaped row-major into ``(B, C, h, w)``;
DINOv3's rotary position embeddings need no interpolation at any multiple of the patch size.
"""

from __future__ import annotations

from torch import nn

from semcorr.errors import InputError, WeightsError
from semcorr.features.base import register_variants
from semcorr.features.dinov2 import HFViTBackbone, _check_loading_info, vit_info
from semcorr.hub import WeightsSource, load_from_pretrained, resolve_weights

__all__ = ["DINOV3_HUB_IDS", "DINOV3_LICENSE", "create_dinov3"]

DINOV3_LICENSE = "DINOv3 License (Meta; gated, custom terms)"

#: Registry name → Hugging Face repository (gated).
DINOV3_HUB_IDS: dict[str, str] = {
    f"dinov3_{arch}": f"facebook/dinov3-{arch}-pretrain-lvd1689m"
    for arch in ("vits16", "vits16plus", "vitb16", "vitl16", "vith16plus", "vit7b16")
}


def _load(source: WeightsSource) -> nn.Module:
    from transformers import AutoConfig, DINOv3ViTModel

    config = load_from_pretrained(AutoConfig.from_pretrained, source)
    if config.model_type != "dinov3_vit":
        raise WeightsError(
            f"{source.location}: holds a {config.model_type!r} model, {source.name!r} needs "
            "'dinov3_vit'"
        )
    model, info = load_from_pretrained(
        DINOv3ViTModel.from_pretrained, source, config=config, output_loading_info=True
    )
    _check_loading_info(source, info)
    return model


def create_dinov3(
    name: str,
    *,
    weights: str | None = None,
    layer: int = -1,
    num_patches: int = 60,
    final_norm: bool = False,
    precision: str = "fp32",
) -> HFViTBackbone:
    """Build the DINOv3 backbone ``name`` (see :data:`DINOV3_HUB_IDS`).

    Args:
        name: registry name.
        weights: ``save_pretrained`` folder or hub id; ``None`` → ``$SEMCORR_WEIGHTS/<name>``
            if present, else the (gated) hub id.
        layer: block whose output tokens are the features (default: last).
        num_patches: patches per side of the square input (60 → 960 px).
        final_norm: apply the final LayerNorm.
        precision: ``fp32``, ``bf16``, ``fp16`` autocast or ``auto``.
    """
    if num_patches < 1:
        raise InputError(f"{name}: num_patches must be positive, got {num_patches}")
    source = resolve_weights(weights, name=name, default=DINOV3_HUB_IDS[name])
    if source.is_file:
        raise WeightsError(
            f"{source.location}: {name!r} loads a transformers folder (config.json + "
            "model.safetensors), not a single checkpoint file"
        )
    model = _load(source)
    config = model.config
    info = vit_info(name, config, num_patches, layer, source.location, DINOV3_LICENSE)
    return HFViTBackbone(
        model,
        info=info,
        layers_owner=model.model,
        layers_attr="layer",
        norm_owner=model,
        norm_attr="norm",
        num_prefix_tokens=1 + int(config.num_register_tokens),
        layer=layer,
        final_norm=final_norm,
        precision=precision,
    )


register_variants(DINOV3_HUB_IDS, create_dinov3, "DINOv3")

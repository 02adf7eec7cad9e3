"""DINOv2 ViT backbones (with and without registers) through ``transformers``.

Names: ``dinov2_vit{s,b,l,g}14`` and ``dinov2_vit{s,b,l,g}14_reg``. Weights are a hub id
(default ``facebook/dinov2-<size>`` / ``facebook/dinov2-with-registers-<size>``), a folder written
by ``save_pretrained``, or an official torch-hub checkpoint file (``dinov2_vitb14_pretrain.pth``
key layout: ``blocks.N.attn.qkv.weight``, ``ls1.gamma``, ``pos_embed``, ``register_tokens``...)
converted on load into the ``transformers`` model, so every source runs the same forward.
Position embeddings are resized by ``transformers``' own bicubic interpolation (to the output
size), or with ``pos_interpolation="official"`` by the official torch-hub model's rule, which
GeoAware-SC's extractor runs: bicubic by the scale factor ``(n + 0.1) / M`` (``n`` patches per
side of the input, ``M`` of the pretraining grid), float32, no antialiasing (the models with
registers: offset 0, antialiased, as their hub entries set).

The feature map is the token output of one block (default: the last, before the final norm, as
GeoAware-SC reads block 11 of ViT-B/14), with the CLS and register tokens dropped and the patch
tokens reshaped row-major into ``(B, C, h, w)``: cell ``(i, j)`` is the patch at rows
``[14 i, 14 i + 14)`` and columns ``[14 j, 14 j + 14)`` of the input.
"""

from __future__ import annotations

import math
import re
import types
from dataclasses import dataclass
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
    register_variants,
)
from semcorr.hub import WeightsSource, load_from_pretrained, load_state_dict, resolve_weights

__all__ = [
    "DINOV2_VARIANTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "HFViTBackbone",
    "convert_dinov2_checkpoint",
    "create_dinov2",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_LICENSE = "Apache-2.0 (facebookresearch/dinov2 code and weights)"
_HEAD_DIM = 64  # every official DINOv2 ViT has 64-dim heads
POS_INTERPOLATIONS = ("transformers", "official")
#: The official models' ``interpolate_offset`` (DINOv2 ViT-S/B/L/g without registers).
OFFICIAL_INTERPOLATE_OFFSET = 0.1


@dataclass(frozen=True)
class DinoV2Variant:
    """Pretrained metadata of one DINOv2 backbone.

    Attributes:
        name: registry name.
        hub_id: default Hugging Face repository.
        checkpoint: the official torch-hub file name.
        registers: whether the model has register tokens.
    """

    name: str
    hub_id: str
    checkpoint: str
    registers: bool


def _variants() -> dict[str, DinoV2Variant]:
    sizes = {"s": "small", "b": "base", "l": "large", "g": "giant"}
    table = {}
    for letter, size in sizes.items():
        base = f"dinov2_vit{letter}14"
        table[base] = DinoV2Variant(base, f"facebook/dinov2-{size}", f"{base}_pretrain.pth", False)
        table[f"{base}_reg"] = DinoV2Variant(
            f"{base}_reg",
            f"facebook/dinov2-with-registers-{size}",
            f"{base}_reg4_pretrain.pth",
            True,
        )
    return table


DINOV2_VARIANTS: dict[str, DinoV2Variant] = _variants()


class HFViTBackbone(Backbone):
    """Patch tokens of one block of a ``transformers`` ViT as a dense map.

    The blocks after the chosen one are removed, and the final norm is replaced by the identity
    unless ``final_norm``; the model's ``last_hidden_state`` then is the chosen block's output.

    Args:
        model: a ``transformers`` ViT with ``config.patch_size`` whose sequence is
            ``[CLS, registers..., patches...]``.
        info: metadata (stride = patch size, image size = ``num_patches * patch size``).
        layers_owner, layers_attr: where the model's block list (``nn.ModuleList``) lives; it
            is truncated after the chosen block.
        norm_owner, norm_attr: where the final norm lives (replaced when ``final_norm`` is off).
        num_prefix_tokens: CLS + register tokens dropped from the sequence.
        layer: block index (negative counts from the end).
        final_norm: apply the model's final norm to the chosen block's tokens.
        precision: ``fp32``, ``bf16``, ``fp16`` autocast or ``auto`` (the faster of bf16 and
            fp32 here) for the forward; an inference forward stores the linear weights in the
            autocast dtype once.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        info: BackboneInfo,
        layers_owner: nn.Module,
        layers_attr: str,
        norm_owner: nn.Module,
        norm_attr: str,
        num_prefix_tokens: int,
        layer: int = -1,
        final_norm: bool = False,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise InputError(f"{info.name}: precision must be one of {sorted(PRECISIONS)}")
        blocks: nn.ModuleList = getattr(layers_owner, layers_attr)
        depth = len(blocks)
        if not -depth <= layer < depth:
            raise InputError(f"{info.name}: layer {layer} out of range for {depth} blocks")
        keep = layer % depth + 1
        setattr(layers_owner, layers_attr, nn.ModuleList(list(blocks)[:keep]))
        if not final_norm:
            setattr(norm_owner, norm_attr, nn.Identity())
        self.model = model.eval()
        self.info = info
        self.num_prefix_tokens = num_prefix_tokens
        self.layer = keep - 1
        self.precision = precision

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All output tokens ``(B, 1 + R + h * w, C)`` of the chosen block."""
        precision = inference_precision(self.model, images.device, self.precision)
        with autocast(images.device, precision):
            return self.model(pixel_values=images).last_hidden_state

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-token map of normalised images.

        Args:
            images: ``(B, 3, H, W)``, ``H`` and ``W`` multiples of the patch size.

        Returns:
            ``(B, C, H / p, W / p)``; cell ``(i, j)`` is the patch in row ``i``, column ``j``.
        """
        dims = check_shape(images, "B 3 H W", "images")
        p = self.info.stride
        if dims["H"] % p or dims["W"] % p:
            raise InputError(
                f"{self.info.name}: input {dims['H']}x{dims['W']} is not a multiple of {p}"
            )
        h, w = dims["H"] // p, dims["W"] // p
        patches = self.tokens(images)[:, self.num_prefix_tokens :]
        if patches.shape[1] != h * w:
            raise WeightsError(
                f"{self.info.name}: model gave {patches.shape[1]} patch tokens, expected {h * w}"
            )
        grid = patches.reshape(dims["B"], h, w, -1).permute(0, 3, 1, 2)
        return grid.to(images.dtype).contiguous()


def vit_info(
    name: str, config: Any, num_patches: int, layer: int, weights: str, license: str
) -> BackboneInfo:
    """Metadata of a transformers ViT backbone: stride = patch size, ImageNet mean/std."""
    patch = int(config.patch_size)
    return BackboneInfo(
        name=name,
        stride=patch,
        image_size=num_patches * patch,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=weights,
        license=license,
        extra={"dim": int(config.hidden_size), "layer": layer % config.num_hidden_layers},
    )


def _rename_official_key(key: str) -> list[tuple[str, int | None]]:
    """Official DINOv2 key → ``transformers`` key(s), with the chunk index of fused weights."""
    key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)  # chunked blocks (ViT-g)
    simple = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "mask_token": "embeddings.mask_token",
        "register_tokens": "embeddings.register_tokens",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    if key in simple:
        return [(simple[key], None)]
    match = re.match(r"^blocks\.(\d+)\.(.+)$", key)
    if match is None:
        return []
    block, rest = match.groups()
    out = f"encoder.layer.{block}."
    per_block = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attn.proj": "attention.o_proj",
        "ls1.gamma": "layer_scale1.lambda1",
        "ls2.gamma": "layer_scale2.lambda1",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "mlp.w3": "mlp.down_proj",
    }
    stem, _, leaf = rest.rpartition(".")
    if rest in per_block:
        return [(out + per_block[rest], None)]
    if stem in per_block:
        return [(f"{out}{per_block[stem]}.{leaf}", None)]
    if stem == "attn.qkv":
        return [(f"{out}attention.{n}_proj.{leaf}", i) for i, n in enumerate("qkv")]
    if stem == "mlp.w12":
        return [(f"{out}mlp.{n}_proj.{leaf}", i) for i, n in enumerate(("gate", "up"))]
    return []


def convert_dinov2_checkpoint(
    state: dict[str, torch.Tensor], num_heads: int | None = None, source: str = "checkpoint"
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Official torch-hub DINOv2 state dict → ``transformers`` config and state dict.

    Args:
        state: keys as in ``dinov2_vitb14_pretrain.pth``.
        num_heads: attention heads (default: ``embed_dim / 64``, true of all official models).
        source: file name for error messages.

    Returns:
        ``(Dinov2Config or Dinov2WithRegistersConfig, state dict for its model)``.

    Raises:
        WeightsError: for keys that are missing or unknown.
    """
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    required = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise WeightsError(f"{source}: not a DINOv2 checkpoint (missing {', '.join(missing)})")
    dim = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    side = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(?:\d+\.)?(\d+)\.", k))}
    swiglu = any(".mlp.w12." in k for k in state)
    fc1 = next((v for k, v in state.items() if k.endswith("mlp.fc1.weight")), None)
    options = dict(
        hidden_size=dim,
        num_hidden_layers=len(blocks),
        num_attention_heads=num_heads or max(1, dim // _HEAD_DIM),
        mlp_ratio=4 if swiglu or fc1 is None else fc1.shape[0] // dim,
        image_size=side * patch,
        patch_size=patch,
        use_swiglu_ffn=swiglu,
        layer_norm_eps=1e-6,
    )
    if "register_tokens" in state:
        config = Dinov2WithRegistersConfig(
            num_register_tokens=state["register_tokens"].shape[1], **options
        )
    else:
        config = Dinov2Config(**options)
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        targets = _rename_official_key(key)
        if not targets:
            unknown.append(key)
        for target, index in targets:
            if index is None:
                converted[target] = value
            else:
                converted[target] = value.chunk(3 if ".attention." in target else 2, dim=0)[index]
    if unknown:
        raise WeightsError(f"{source}: unknown DINOv2 keys {unknown[:5]}")
    return config, converted


def interpolate_pos_official(position: torch.Tensor, rows: int, cols: int,
                             offset: float = OFFICIAL_INTERPOLATE_OFFSET,
                             antialias: bool = False) -> torch.Tensor:
    """Position embeddings for a ``rows`` × ``cols`` patch grid by the official DINOv2 rule.

    Args:
        position: ``(1, 1 + M * M, D)``, the CLS position first.
        rows, cols: patches per column and per row of the input.
        offset: added to the grid size before the scale factor is taken.
        antialias: antialiased bicubic (the official models with registers).

    Returns:
        ``(1, 1 + rows * cols, D)`` in ``position``'s dtype (``position`` itself at the
        pretraining grid).
    """
    m = math.isqrt(position.shape[1] - 1)
    if rows == cols == m:
        return position
    grid = position[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(
        grid, scale_factor=((rows + offset) / m, (cols + offset) / m), mode="bicubic",
        antialias=antialias)
    if tuple(grid.shape[-2:]) != (rows, cols):
        raise InputError(f"position grid {tuple(grid.shape[-2:])} != {rows}x{cols} patches")
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat([position[:, :1].float(), grid], dim=1).to(position.dtype)


def _official_interpolation(self: nn.Module, embeddings: torch.Tensor, height: int,
                            width: int) -> torch.Tensor:
    """Replaces ``Dinov2Embeddings.interpolate_pos_encoding`` (bound to the instance, whose
    ``_semcorr_interpolation`` holds ``(offset, antialias)``)."""
    p = self.patch_embeddings.patch_size
    p = p if isinstance(p, int) else p[0]
    return interpolate_pos_official(self.position_embeddings, height // p, width // p,
                                    *self._semcorr_interpolation)


def _load_hf_dinov2(source: WeightsSource, registers: bool) -> nn.Module:
    from transformers import AutoConfig, Dinov2Model, Dinov2WithRegistersModel

    expected = "dinov2_with_registers" if registers else "dinov2"
    config = load_from_pretrained(AutoConfig.from_pretrained, source)
    if config.model_type != expected:
        raise WeightsError(
            f"{source.location}: holds a {config.model_type!r} model, {source.name!r} needs "
            f"{expected!r}"
        )
    cls = Dinov2WithRegistersModel if registers else Dinov2Model
    model, info = load_from_pretrained(
        cls.from_pretrained, source, config=config, output_loading_info=True
    )
    _check_loading_info(source, info)
    return model


def _check_loading_info(source: WeightsSource, info: dict[str, Any]) -> None:
    missing = [k for k in info.get("missing_keys", []) if "mask_token" not in k]
    if missing or info.get("mismatched_keys"):
        mismatched = list(info.get("mismatched_keys", []))[:5]
        raise WeightsError(
            f"{source.location}: weights do not fit {source.name!r} "
            f"(missing {sorted(missing)[:5]}, mismatched {mismatched})"
        )


def _load_official_dinov2(
    source: WeightsSource, registers: bool, num_heads: int | None
) -> nn.Module:
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    state = load_state_dict(source.location)
    config, converted = convert_dinov2_checkpoint(state, num_heads, source.location)
    if ("register_tokens" in state) != registers:
        kind = "has" if "register_tokens" in state else "has no"
        raise WeightsError(f"{source.location}: checkpoint {kind} register tokens; "
                           f"{source.name!r} {'needs' if registers else 'must not have'} them")
    cls = Dinov2WithRegistersModel if registers else Dinov2Model
    model = cls(config)
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{source.location}: weights do not fit ({str(exc)[:300]})") from None
    return model


def create_dinov2(
    name: str,
    *,
    weights: str | None = None,
    layer: int = -1,
    num_patches: int = 60,
    final_norm: bool = False,
    precision: str = "fp32",
    num_heads: int | None = None,
    pos_interpolation: str = "transformers",
) -> HFViTBackbone:
    """Build the DINOv2 backbone ``name`` (see :data:`DINOV2_VARIANTS`).

    Args:
        name: e.g. ``dinov2_vitb14`` or ``dinov2_vitb14_reg``.
        weights: hub id, ``save_pretrained`` folder, or official ``.pth``/``.safetensors`` file;
            ``None`` → ``$SEMCORR_WEIGHTS/<name>`` if present, else the official hub id.
        layer: block whose output tokens are the features (default: last).
        num_patches: patches per side of the square input (60 → 840 px).
        final_norm: apply the final LayerNorm (off: tokens before the norm).
        precision: ``fp32``, ``bf16``, ``fp16`` autocast or ``auto``.
        num_heads: attention heads of an official checkpoint (default: width / 64).
        pos_interpolation: ``"transformers"`` or ``"official"`` (the torch-hub models' rule,
            as GeoAware-SC runs it; see the module docstring).
    """
    variant = DINOV2_VARIANTS[name]
    if pos_interpolation not in POS_INTERPOLATIONS:
        raise InputError(f"{name}: pos_interpolation must be one of {POS_INTERPOLATIONS}")
    if num_patches < 1:
        raise InputError(f"{name}: num_patches must be positive, got {num_patches}")
    source = resolve_weights(weights, name=name, default=variant.hub_id)
    if source.is_file:
        model = _load_official_dinov2(source, variant.registers, num_heads)
    else:
        if num_heads is not None:
            raise InputError(f"{name}: num_heads applies to official checkpoint files only")
        model = _load_hf_dinov2(source, variant.registers)
    if pos_interpolation == "official":
        model.embeddings._semcorr_interpolation = (
            (0.0, True) if variant.registers else (OFFICIAL_INTERPOLATE_OFFSET, False))
        model.embeddings.interpolate_pos_encoding = types.MethodType(
            _official_interpolation, model.embeddings)
    config = model.config
    info = vit_info(name, config, num_patches, layer, source.location, DINOV2_LICENSE)
    info.extra["pos_interpolation"] = pos_interpolation
    return HFViTBackbone(
        model,
        info=info,
        layers_owner=model.encoder,
        layers_attr="layer",
        norm_owner=model,
        norm_attr="layernorm",
        num_prefix_tokens=1 + int(getattr(config, "num_register_tokens", 0) or 0),
        layer=layer,
        final_norm=final_norm,
        precision=precision,
    )


register_variants(DINOV2_VARIANTS, create_dinov2, "DINOv2")

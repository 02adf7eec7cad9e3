"""Tiny random-weight models in the official formats, for loader tests (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

__all__ = [
    "one_thread",
    "official_dinov2_state",
    "reference_official_dinov2",
    "save_tiny_dinov2",
    "save_tiny_dinov3",
    "save_tiny_sam",
    "save_tiny_stable_diffusion",
    "save_tiny_text_encoder",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Run a test module's tiny models on one thread (restored after): on a shared, loaded
    machine, intra-op threads spin on tiny ops and make them ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturb(model: torch.nn.Module, scale: float = 0.02) -> None:
    """Make every parameter matter (default inits zero some biases and scales)."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn_like(param))


def save_tiny_dinov3(folder: Path, seed: int = 0, registers: int = 4) -> Path:
    """A tiny DINOv3 ViT (patch 16, 2 blocks, registers) saved with ``save_pretrained``."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(seed)
    model = DINOv3ViTModel(DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        patch_size=16, image_size=64, num_register_tokens=registers,
    ))
    _perturb(model)
    model.save_pretrained(folder)
    return folder


def save_tiny_sam(folder: Path, seed: int = 0) -> Path:
    """A tiny SamModel (64 px input, 16 px patches, 16-channel neck) via ``save_pretrained``."""
    from transformers import SamConfig, SamModel, SamVisionConfig

    torch.manual_seed(seed)
    vision = SamVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64,
        patch_size=16, output_channels=16, window_size=2, global_attn_indexes=[1], mlp_dim=64,
    )
    model = SamModel(SamConfig(vision_config=vision.to_dict()))
    _perturb(model)
    model.save_pretrained(folder)
    return folder


def save_tiny_dinov2(
    folder: Path, registers: bool = False, seed: int = 0, layers: int = 2
) -> Path:
    """A tiny DINOv2 saved with ``save_pretrained`` (random, non-trivial weights)."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(seed)
    options = dict(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, mlp_ratio=2,
        image_size=56, patch_size=14, layerscale_value=0.5,
    )
    if registers:
        config = Dinov2WithRegistersConfig(num_register_tokens=4, **options)
        model = Dinov2WithRegistersModel(config)
    else:
        model = Dinov2Model(Dinov2Config(**options))
    with torch.no_grad():  # make every parameter matter (default init zeros some)
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    model.save_pretrained(folder)
    return folder


def official_dinov2_state(
    dim: int = 128,
    depth: int = 2,
    patch: int = 14,
    side: int = 4,
    registers: int = 0,
    swiglu: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random tensors under the official torch-hub DINOv2 key names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=g)

    state = {
        "cls_token": rnd(1, 1, dim, scale=1.0),
        "pos_embed": rnd(1, 1 + side * side, dim, scale=1.0),
        "mask_token": rnd(1, dim),
        "patch_embed.proj.weight": rnd(dim, 3, patch, patch),
        "patch_embed.proj.bias": rnd(dim),
        "norm.weight": 1 + rnd(dim),
        "norm.bias": rnd(dim),
    }
    if registers:
        state["register_tokens"] = rnd(1, registers, dim, scale=1.0)
    hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8 if swiglu else 4 * dim
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": 1 + rnd(dim), b + "norm1.bias": rnd(dim),
            b + "attn.qkv.weight": rnd(3 * dim, dim, scale=0.1), b + "attn.qkv.bias": rnd(3 * dim),
            b + "attn.proj.weight": rnd(dim, dim, scale=0.1), b + "attn.proj.bias": rnd(dim),
            b + "ls1.gamma": 0.5 + rnd(dim), b + "norm2.weight": 1 + rnd(dim),
            b + "norm2.bias": rnd(dim), b + "ls2.gamma": 0.5 + rnd(dim),
        })
        if swiglu:
            state[b + "mlp.w12.weight"] = rnd(2 * hidden, dim, scale=0.1)
            state[b + "mlp.w12.bias"] = rnd(2 * hidden)
            state[b + "mlp.w3.weight"] = rnd(dim, hidden, scale=0.1)
            state[b + "mlp.w3.bias"] = rnd(dim)
        else:
            state[b + "mlp.fc1.weight"] = rnd(hidden, dim, scale=0.1)
            state[b + "mlp.fc1.bias"] = rnd(hidden)
            state[b + "mlp.fc2.weight"] = rnd(dim, hidden, scale=0.1)
            state[b + "mlp.fc2.bias"] = rnd(dim)
    return state


def _layer_norm(x: torch.Tensor, state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    return torch.nn.functional.layer_norm(
        x, x.shape[-1:], state[key + ".weight"], state[key + ".bias"], eps=1e-6
    )


def reference_official_dinov2(
    state: dict[str, torch.Tensor], images: torch.Tensor, heads: int, upto: int
) -> torch.Tensor:
    """A functional forward of the official DINOv2 layout at the native resolution, written
    here from the architecture (not imported from facebookresearch/dinov2, and sharing no code
    with semcorr's conversion or with transformers).

    Returns the tokens ``(B, 1 + R + N, C)`` output by block ``upto`` (before the final norm).
    """
    F = torch.nn.functional
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"],
                 stride=state["patch_embed.proj.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)  # row-major patches
    b, _, dim = x.shape
    x = torch.cat([state["cls_token"].expand(b, -1, -1), x], dim=1) + state["pos_embed"]
    if "register_tokens" in state:
        x = torch.cat([x[:, :1], state["register_tokens"].expand(b, -1, -1), x[:, 1:]], dim=1)
    for i in range(upto + 1):
        p = f"blocks.{i}."
        y = _layer_norm(x, state, p + "norm1")
        qkv = F.linear(y, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / (dim // heads) ** 0.5, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, -1, dim)
        y = F.linear(y, state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        x = x + state[p + "ls1.gamma"] * y
        y = _layer_norm(x, state, p + "norm2")
        if p + "mlp.w12.weight" in state:
            fused = F.linear(y, state[p + "mlp.w12.weight"], state[p + "mlp.w12.bias"])
            h1, h2 = fused.chunk(2, dim=-1)
            y = F.linear(F.silu(h1) * h2, state[p + "mlp.w3.weight"], state[p + "mlp.w3.bias"])
        else:
            y = F.gelu(F.linear(y, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"]))
            y = F.linear(y, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        x = x + state[p + "ls2.gamma"] * y
    return x


def _save_tiny_clip_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer over a few characters, written as vocab.json + merges.txt."""
    import json

    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=16)
    tokenizer.save_pretrained(folder)


def save_tiny_text_encoder(folder: Path) -> None:
    """A tiny CLIP text encoder and tokenizer in ``folder/text_encoder`` and
    ``folder/tokenizer`` (16 tokens, width 32)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    text.save_pretrained(folder / "text_encoder")
    _save_tiny_clip_tokenizer(folder / "tokenizer")


def save_tiny_stable_diffusion(folder: Path, seed: int = 0) -> Path:
    """A tiny SD pipeline in the diffusers folder layout (unet/ vae/ text_encoder/ tokenizer/
    scheduler/), random weights; 3 up-blocks of 3 resnets, VAE factor 2."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64, 64), norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    with torch.no_grad():  # zero-initialised output convs would hide bugs
        for param in unet.parameters():
            param.add_(0.02 * torch.randn_like(param))
    unet.save_pretrained(folder / "unet")
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, layers_per_block=1,
    )
    vae.save_pretrained(folder / "vae")
    save_tiny_text_encoder(folder)
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, set_alpha_to_one=False).save_pretrained(folder / "scheduler")
    return folder

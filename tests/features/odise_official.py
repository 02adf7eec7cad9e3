"""Run GeoAware-SC's copy of ODISE (../shared/reference) on diffusers/transformers modules.

The official feature path is imported and run unchanged: ``LdmExtractor`` (``__init__``,
``forward``, ``unet_forward`` with FreeU, ``encode_to_latent``, ``decode_to_image``),
``LdmImplicitCaptionerExtractor``, ``ClipAdapter.embed_image``, ``FeatureExtractorBackbone``
(``__init__``, ``slide_forward``, ``single_forward``) and ODISE's Gaussian diffusion
(``q_sample``). What cannot be imported is stubbed here, each stub citing what it stands for:

* CompVis ``ldm`` (not vendored): the U-Net, VAE and text encoder are presented in LDM's layout
  (``input_blocks``/``output_blocks``/``time_embed``, ``encoder.down[i].block[j]``...) by thin
  adapters over the same diffusers modules; ``timestep_embedding`` and
  ``DiagonalGaussianDistribution.mean`` are transcribed from ldm/modules/diffusionmodules/util.py
  and ldm/modules/distributions/distributions.py.
* ``open_clip`` 2.0.2: ``create_model_and_transforms`` returns the transformers CLIP vision model
  in open_clip's attribute layout, and the OpenAI preprocessing (torchvision 0.14 tensor
  ``Resize`` = bicubic without antialiasing, ``CenterCrop``, ``Normalize``).
* CUDA: ODISE's ``Fourier_filter`` (ldm.py:37-53) builds its mask with ``.cuda()``; inside
  :func:`official_modules` on a machine without CUDA, ``Tensor.cuda`` returns the tensor
  unchanged, so the official filter runs as written, on the CPU.
* detectron2 (``Backbone`` = ``nn.Module``, ``ImageList.from_tensors`` = zero-pad to the
  divisibility and stack, ``comm``), torchvision, timm, omegaconf, einops (the two patterns
  ``ClipAdapter`` uses), iopath: import stubs.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "Junyi42+GeoAware-SC"
ODISE = REFERENCE / "third_party" / "ODISE" / "odise"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def require_reference() -> Path:
    if not ODISE.is_dir():
        pytest.skip(f"{ODISE} is absent (../shared/reference is not beside the repository)")
    return REFERENCE


# ---------------------------------------------------------------- stubs of unimportable modules
def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000,
                        repeat_only: bool = False) -> torch.Tensor:
    """CompVis ldm/modules/diffusionmodules/util.py ``timestep_embedding``: [cos, sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs[None].to(timesteps.device)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _Gaussian:
    """CompVis ldm ``DiagonalGaussianDistribution``: mean = first half of the moments."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean = moments.chunk(2, dim=1)[0]


def _rearrange(x: torch.Tensor, pattern: str, **sizes: int) -> torch.Tensor:
    """einops ``rearrange`` for the two patterns of ClipAdapter._encode_image."""
    if pattern == "b n c -> (b n) c":
        return x.reshape(-1, x.shape[-1])
    if pattern == "(b n) c -> b n c":
        return x.reshape(sizes["b"], sizes["n"], x.shape[-1])
    if pattern == "b (h w) c -> b c h w":
        return x.reshape(x.shape[0], sizes["h"], sizes["w"], x.shape[-1]).permute(0, 3, 1, 2)
    raise NotImplementedError(pattern)


class _ImageList:
    """detectron2 ``ImageList.from_tensors``: zero-pad to the divisibility, stack."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    @classmethod
    def from_tensors(cls, tensors: list[torch.Tensor], size_divisibility: int = 0
                     ) -> _ImageList:
        h = max(t.shape[-2] for t in tensors)
        w = max(t.shape[-1] for t in tensors)
        if size_divisibility > 1:
            h = -(-h // size_divisibility) * size_divisibility
            w = -(-w // size_divisibility) * size_divisibility
        return cls(torch.stack([F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]))
                                for t in tensors]))


class _Resize:
    """torchvision 0.14 ``Resize`` on tensors: bicubic, no antialiasing; an int resizes the
    shorter side."""

    def __init__(self, size: Any, interpolation: Any = None, max_size: Any = None) -> None:
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if isinstance(self.size, int):
            short = min(h, w)
            out = (self.size if h == short else int(self.size * h / short),
                   self.size if w == short else int(self.size * w / short))
        else:
            out = tuple(self.size)
        if out == (h, w):
            return x
        return F.interpolate(x, size=out, mode="bicubic", align_corners=False)


class _CenterCrop:
    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        return x[..., top: top + self.size, left: left + self.size]


class _Normalize:
    def __init__(self, mean: tuple, std: tuple) -> None:
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(-1, 1, 1)) / self.std.view(-1, 1, 1)


class _Compose:
    def __init__(self, transforms: list) -> None:
        self.transforms = transforms

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x


class OpenClipLayout(nn.Module):
    """A transformers ``CLIPVisionModelWithProjection`` in open_clip's attribute layout."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        vision = hf.vision_model
        self.hf = hf
        self.visual = nn.Module()
        self.visual.conv1 = vision.embeddings.patch_embedding
        self.visual.class_embedding = vision.embeddings.class_embedding
        self.visual.positional_embedding = vision.embeddings.position_embedding.weight
        self.visual.ln_pre = vision.pre_layrnorm
        self.visual.ln_post = vision.post_layernorm
        self.visual.proj = nn.Parameter(hf.visual_projection.weight.detach().t().clone())
        self.visual.image_size = hf.config.image_size
        encoder = vision.encoder
        self.visual.transformer = lambda x: encoder(
            inputs_embeds=x.permute(1, 0, 2)).last_hidden_state.permute(1, 0, 2)
        self.text_projection = torch.zeros(1, hf.config.projection_dim)

    def preprocess(self) -> _Compose:
        size = self.visual.image_size
        return _Compose([_Resize(size), _CenterCrop(size), None, _Normalize(CLIP_MEAN, CLIP_STD)])


def _stubs(clip: nn.Module | None) -> dict[str, types.ModuleType]:
    def create_model_and_transforms(name: str, pretrained: str = "") -> tuple:
        layout = OpenClipLayout(clip)
        return layout, None, layout.preprocess()

    class _Dummy:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

    class _ResNet:
        @staticmethod
        def make_stage(*args: Any, **kwargs: Any) -> list[nn.Module]:
            return [nn.Identity()]  # the projections are not used on the raw path

    tv_transforms = _module(
        "torchvision.transforms", Resize=_Resize, Compose=_Compose,
        InterpolationMode=types.SimpleNamespace(BICUBIC="bicubic"),
    )
    comm = _module("detectron2.utils.comm", get_local_rank=lambda: 0, synchronize=lambda: None)
    return {
        "torchvision": _module("torchvision", transforms=tv_transforms),
        "torchvision.transforms": tv_transforms,
        "ldm": _module("ldm"), "ldm.models": _module("ldm.models"),
        "ldm.models.diffusion": _module("ldm.models.diffusion"),
        "ldm.models.diffusion.ddpm": _module("ldm.models.diffusion.ddpm", LatentDiffusion=_Dummy),
        "ldm.modules": _module("ldm.modules"),
        "ldm.modules.diffusionmodules": _module("ldm.modules.diffusionmodules"),
        "ldm.modules.diffusionmodules.openaimodel": _module(
            "ldm.modules.diffusionmodules.openaimodel", timestep_embedding=_timestep_embedding),
        "ldm.modules.distributions": _module("ldm.modules.distributions"),
        "ldm.modules.distributions.distributions": _module(
            "ldm.modules.distributions.distributions", DiagonalGaussianDistribution=_Gaussian),
        "ldm.util": _module("ldm.util", instantiate_from_config=None),
        "omegaconf": _module("omegaconf", OmegaConf=None),
        "timm": _module("timm"), "timm.models": _module("timm.models"),
        "timm.models.layers": _module(
            "timm.models.layers", trunc_normal_=lambda t, std: nn.init.trunc_normal_(t, std=std)),
        "einops": _module("einops", rearrange=_rearrange, repeat=None),
        "open_clip": _module("open_clip", create_model_and_transforms=create_model_and_transforms),
        "detectron2": _module("detectron2"), "detectron2.utils": _module("detectron2.utils"),
        "detectron2.utils.comm": comm,
        "detectron2.modeling": _module("detectron2.modeling"),
        "detectron2.modeling.backbone": _module("detectron2.modeling.backbone", Backbone=nn.Module),
        "detectron2.modeling.backbone.resnet": _module(
            "detectron2.modeling.backbone.resnet", BottleneckBlock=None, ResNet=_ResNet),
        "detectron2.structures": _module("detectron2.structures", ImageList=_ImageList),
        "odise.checkpoint": _module("odise.checkpoint"),
        "odise.checkpoint.odise_checkpointer": _module("odise.checkpoint.odise_checkpointer",
                                                       LdmCheckpointer=_Dummy),
        "odise.utils": _module("odise.utils"),
        "odise.utils.file_io": _module("odise.utils.file_io", PathManager=None),
    }


@contextmanager
def official_modules(clip: nn.Module | None = None) -> Iterator[dict[str, types.ModuleType]]:
    """Import ODISE's ``ldm``, ``clip``, ``feature_extractor`` and ``diffusion`` modules with
    the stubs above; ``sys.modules`` is restored afterwards (the stubs never leak into other
    tests)."""
    require_reference()
    saved = dict(sys.modules)
    cuda = torch.Tensor.cuda
    packages = {
        "odise": ODISE, "odise.modeling": ODISE / "modeling",
        "odise.modeling.meta_arch": ODISE / "modeling" / "meta_arch",
        "odise.modeling.backbone": ODISE / "modeling" / "backbone",
    }
    try:
        if not torch.cuda.is_available():
            torch.Tensor.cuda = lambda self, *args, **kwargs: self
        sys.modules.update(_stubs(clip))
        for name, path in packages.items():  # packages without their heavy __init__
            sys.modules[name] = _module(name, __path__=[str(path)])
        import importlib

        yield {
            name: importlib.import_module(f"odise.modeling.{name}")
            for name in ("meta_arch.ldm", "meta_arch.clip", "backbone.feature_extractor",
                         "diffusion")
        }
    finally:
        torch.Tensor.cuda = cuda
        for name in set(sys.modules) - set(saved):
            del sys.modules[name]
        sys.modules.update(saved)


# ------------------------------------------------ diffusers modules in CompVis LDM's layout
class _Res(nn.Module):
    """An LDM ResBlock face on a diffusers resnet (``channels`` in, ``out_channels`` out)."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.resnet = resnet
        self.channels, self.out_channels = resnet.in_channels, resnet.out_channels

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: Any = None) -> torch.Tensor:
        return self.resnet(h, emb)


class _Attn(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, h: torch.Tensor, emb: Any, context: torch.Tensor) -> torch.Tensor:
        return self.attn(h, encoder_hidden_states=context, return_dict=False)[0]


class _Plain(nn.Module):
    """A layer that takes only ``h`` (conv_in, down/upsamplers)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor, emb: Any = None, context: Any = None) -> torch.Tensor:
        return self.layer(h)


class _Sequential(nn.Sequential):
    """LDM's ``TimestepEmbedSequential``."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            h = layer(h, emb, context)
        return h


class LdmUNet(nn.Module):
    """A diffusers ``UNet2DConditionModel`` in LDM's ``UNetModel`` layout (same modules)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.model_channels = unet.config.block_out_channels[0]
        te = unet.time_embedding
        self.time_embed = nn.Sequential(te.linear_1, te.act, te.linear_2)
        inputs = [_Sequential(_Plain(unet.conv_in))]
        for block in unet.down_blocks:
            attns = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn in zip(block.resnets, attns):
                inputs.append(_Sequential(_Res(resnet), *([_Attn(attn)] if attn else [])))
            if block.downsamplers:
                inputs.append(_Sequential(_Plain(block.downsamplers[0])))
        self.input_blocks = nn.ModuleList(inputs)
        mid = unet.mid_block
        self.middle_block = _Sequential(_Res(mid.resnets[0]), _Attn(mid.attentions[0]),
                                        _Res(mid.resnets[1]))
        outputs = []
        for block in unet.up_blocks:
            attns = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for j, (resnet, attn) in enumerate(zip(block.resnets, attns)):
                layers = [_Res(resnet), *([_Attn(attn)] if attn else [])]
                if j == len(block.resnets) - 1 and block.upsamplers:
                    layers.append(_Plain(block.upsamplers[0]))
                outputs.append(_Sequential(*layers))
        self.output_blocks = nn.ModuleList(outputs)
        self.out = nn.Sequential(unet.conv_norm_out, unet.conv_act, unet.conv_out)


def _ldm_encoder(encoder: nn.Module) -> types.SimpleNamespace:
    """A diffusers VAE ``Encoder`` in LDM's layout (attention-free levels)."""
    down = [types.SimpleNamespace(block=b.resnets, attn=[],
                                  downsample=b.downsamplers[0] if b.downsamplers else None)
            for b in encoder.down_blocks]
    mid = encoder.mid_block
    return types.SimpleNamespace(
        conv_in=encoder.conv_in, down=down, num_resolutions=len(down),
        num_res_blocks=len(encoder.down_blocks[0].resnets),
        mid=types.SimpleNamespace(block_1=mid.resnets[0], attn_1=mid.attentions[0],
                                  block_2=mid.resnets[1]),
        norm_out=encoder.conv_norm_out, conv_out=encoder.conv_out)


def _ldm_decoder(decoder: nn.Module) -> types.SimpleNamespace:
    """A diffusers VAE ``Decoder`` in LDM's layout (``up[i]``: level ``i``, 0 = full size)."""
    blocks = list(decoder.up_blocks)[::-1]
    up = [types.SimpleNamespace(block=b.resnets, attn=[],
                                upsample=b.upsamplers[0] if b.upsamplers else None)
          for b in blocks]
    mid = decoder.mid_block
    return types.SimpleNamespace(
        conv_in=decoder.conv_in, up=up, num_resolutions=len(up),
        num_res_blocks=len(blocks[0].resnets) - 1,
        mid=types.SimpleNamespace(block_1=mid.resnets[0], attn_1=mid.attentions[0],
                                  block_2=mid.resnets[1]),
        norm_out=decoder.conv_norm_out, conv_out=decoder.conv_out, give_pre_end=False,
        tanh_out=False)


class LdmAdapter(nn.Module):
    """ODISE's ``LatentDiffusion`` wrapper over diffusers modules (what LdmExtractor reads)."""

    def __init__(self, unet: nn.Module, vae: nn.Module, prompt_embedding: torch.Tensor,
                 diffusion: Any) -> None:
        super().__init__()
        self.unet = LdmUNet(unet)
        self.vae = vae
        self.encoder = _ldm_encoder(vae.encoder)
        self.decoder = _ldm_decoder(vae.decoder)
        self.ldm = types.SimpleNamespace(  # ODISE's self.ldm.ldm (CompVis LatentDiffusion)
            scale_factor=vae.config.scaling_factor, model=unet,
            first_stage_model=types.SimpleNamespace(quant_conv=vae.quant_conv,
                                                    post_quant_conv=vae.post_quant_conv))
        self.diffusion = diffusion
        self.latent_dim = 4
        self.latent_image_size = (64, 64)
        self.register_buffer("uncond_inputs", prompt_embedding)
        self.register_buffer("pixel_mean", torch.full((3, 1, 1), 0.5), False)
        self.register_buffer("pixel_std", torch.full((3, 1, 1), 0.5), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        assert all(c == "" for c in captions), "only the empty prompt is embedded here"
        return self.uncond_inputs.expand(len(captions), -1, -1)


def official_backbone(modules: dict, unet: nn.Module, vae: nn.Module,
                      prompt_embedding: torch.Tensor, timestep: int = 50) -> nn.Module:
    """ODISE's ``FeatureExtractorBackbone`` over ``LdmImplicitCaptionerExtractor`` as
    GeoAware-SC's ``load_model(diffusion_ver='v1-5', num_timesteps=50, block_indices=[2,5,8,11])``
    configures it (``odise_with_label.py``: ViT-L-14-336 captioner, slide_training=True)."""
    ldm_mod, fe_mod = modules["meta_arch.ldm"], modules["backbone.feature_extractor"]
    diffusion = modules["diffusion"].create_gaussian_diffusion(
        steps=1000, learn_sigma=False, noise_schedule="ldm_linear")
    adapter = LdmAdapter(unet, vae, prompt_embedding, diffusion)
    extractor = ldm_mod.LdmImplicitCaptionerExtractor(
        ldm=adapter, encoder_block_indices=(5, 7), unet_block_indices=(2, 5, 8, 11),
        decoder_block_indices=(2, 5), steps=(timestep,), learnable_time_embed=True,
        num_timesteps=1, clip_model_name="ViT-L-14-336", decoder_only=True,
    )
    backbone = fe_mod.FeatureExtractorBackbone(
        feature_extractor=extractor, out_features=["s2", "s3", "s4", "s5"],
        use_checkpoint=True, slide_training=True,
    )
    return backbone.eval()

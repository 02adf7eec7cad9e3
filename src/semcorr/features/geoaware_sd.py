"""GeoAware-SC's Stable Diffusion feature recipe, as its released extractor runs it.

``create_backbone("sd15", weights=..., recipe="geoaware", captioner=PATH_OR_"empty")`` builds
:class:`GeoAwareSDFeatures`. The rules, read from GeoAware-SC's copy of ODISE (see
docs/reproduce-geoaware.md for the file and line of each):

* **Slide.** The square input (960 px) is cut into 512-px crops on a grid of stride 512 whose
  last crop is pushed back to end at the border (offsets {0, 448} at 960 px); each crop runs
  alone and the parts of overlapping crops are averaged.
* **Per crop.** The latent is the VAE posterior *mean* × the VAE scaling factor; the noise is one
  draw ``(1, 4, 64, 64)`` from a CPU generator seeded 42, the same for every crop and image; it
  is added at timestep 50 with the noise schedule computed in float64 (ODISE's ``q_sample``).
* **Conditioning.** ODISE's implicit captioner (:class:`ImplicitCaptioner`): a CLIP image
  embedding of the crop, projected, scaled by ``tanh(alpha)`` and added to the empty prompt's
  embedding (77 tokens, no attention mask, last hidden state) and to the time embedding.
  ``captioner="empty"`` drops both offsets (a documented deviation).
* **FreeU** with ODISE's placement (see :mod:`semcorr.features.stable_diffusion`) and the
  parts s5/s4/s3 read before the skip concat at LDM output blocks 2, 5, 8.

Other input sizes: any multiple of 64 of at least 512 px follows the same grid rule (512 px is
one crop; 1024 px is a 2×2 grid without overlap; 1088 px a 3×3 grid). Smaller inputs are refused:
ODISE resizes every crop to 512 px, which cannot be pasted back into a smaller canvas.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.conventions import check_shape
from semcorr.errors import InputError, WeightsError
from semcorr.features.base import autocast
from semcorr.features.stable_diffusion import (
    FREEU_GEOAWARE,
    SD_RECIPES,
    SDRecipe,
    StableDiffusionFeatures,
)
from semcorr.hub import load_from_pretrained, load_state_dict, resolve_weights

__all__ = [
    "CAPTIONER_DOWNLOAD",
    "CLIP_HUB_ID",
    "GEOAWARE_SD",
    "GeoAwareSDFeatures",
    "ImplicitCaptioner",
    "float64_noising",
    "load_captioner",
    "slide_offsets",
]

#: The recipe's fixed settings.
GEOAWARE_SD: dict[str, Any] = {
    "crop": 512, "timestep": 50, "seed": 42, "noise_shape": (1, 4, 64, 64), "image_size": 960,
}
#: ODISE's CLIP (``ViT-L-14-336``, OpenAI weights) as a transformers hub id.
CLIP_HUB_ID = "openai/clip-vit-large-patch14-336"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CAPTIONER_DOWNLOAD = (
    "recipe 'geoaware' needs ODISE's implicit-captioner weights: download "
    "odise_label_coco_50e-b67d2efc.pth (NVlabs/ODISE release v1.0.0) and pass captioner=PATH "
    "(CLI: --backbone-option captioner=PATH); its CLIP is "
    f"{CLIP_HUB_ID} (captioner_clip=HUB_ID_OR_FOLDER). Or pass captioner=empty to run without "
    "the captioner (a deviation from the released features)"
)
#: ODISE key suffix → our name (prefix ``backbone.feature_extractor.`` in ODISE's checkpoint).
_CAPTIONER_KEYS = {
    "clip_project.linear.weight": "project_weight",
    "clip_project.linear.bias": "project_bias",
    "clip_project.positional_embedding": "project_position",
    "alpha_cond": "alpha",
    "time_embed_project.linear.weight": "time_weight",
    "time_embed_project.linear.bias": "time_bias",
    "time_embed_project.positional_embedding": "time_position",
    "alpha_cond_time_embed": "time_alpha",
}


def slide_offsets(size: int, crop: int) -> list[int]:
    """Crop starts along one side: stride ``crop``, the last crop ending at the border."""
    count = max(size - crop + crop - 1, 0) // crop + 1
    return [max(min(i * crop + crop, size) - crop, 0) for i in range(count)]


def float64_noising(timestep: int, config: Any) -> tuple[float, float]:
    """``(sqrt(abar_t), sqrt(1 - abar_t))`` computed in float64 from a diffusers scheduler
    config (``linear`` or ``scaled_linear`` betas), as ODISE's Gaussian diffusion does."""
    n, start, end = config.num_train_timesteps, config.beta_start, config.beta_end
    if config.beta_schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    elif config.beta_schedule == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    else:
        raise InputError(f"recipe 'geoaware': unsupported beta schedule {config.beta_schedule!r}")
    abar = torch.cumprod(1.0 - betas, dim=0)[timestep]
    return math.sqrt(abar), math.sqrt(1.0 - abar)


class ImplicitCaptioner(nn.Module):
    """ODISE's implicit captioner: image → (prompt embedding, time-embedding offset).

    Args:
        clip: a ``transformers`` ``CLIPVisionModelWithProjection`` (ODISE: ViT-L/14 at 336 px).
        prompt_embedding: ``(1, T, D)`` the empty prompt's embedding.
        tensors: the captioner's tensors under our names (see ``_CAPTIONER_KEYS``).
    """

    def __init__(self, clip: nn.Module, prompt_embedding: torch.Tensor,
                 tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.clip = clip.eval()
        self.clip_size = int(clip.config.image_size)
        self.register_buffer("prompt_embedding", prompt_embedding, persistent=False)
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor.float(), persistent=False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding ``(B, E)`` of crops ``(B, 3, c, c)`` in [0, 1]: bicubic resize
        to CLIP's size (no antialiasing, as torchvision 0.14's tensor ``Resize``), centre crop,
        CLIP normalisation."""
        size = self.clip_size
        h, w = images.shape[-2:]
        short = min(h, w)
        resized = (size if h == short else int(size * h / short),
                   size if w == short else int(size * w / short))
        if resized != (h, w):
            images = F.interpolate(images, size=resized, mode="bicubic", align_corners=False)
        top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
        images = images[..., top: top + size, left: left + size]
        return self.clip(pixel_values=(images - self.mean) / self.std).image_embeds.float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning of crops ``(B, 3, c, c)`` in [0, 1].

        Returns:
            ``(B, T, D)`` prompt embedding and ``(B, D_t)`` time-embedding offset.
        """
        embed = self.image_embedding(images)
        prefix = F.linear(embed, self.project_weight, self.project_bias)[:, None]
        context = self.prompt_embedding + torch.tanh(self.alpha) * (prefix + self.project_position)
        time = F.linear(embed, self.time_weight, self.time_bias)[:, None] + self.time_position
        return context, torch.tanh(self.time_alpha) * time[:, 0]


def _captioner_tensors(path: str) -> dict[str, torch.Tensor]:
    state = load_state_dict(path)
    tensors = {}
    for suffix, name in _CAPTIONER_KEYS.items():
        found = [k for k in state if k == suffix or k.endswith("." + suffix)]
        if len(found) != 1:
            raise WeightsError(
                f"{path}: not ODISE's implicit-captioner checkpoint (key '*{suffix}' found "
                f"{len(found)} times); {CAPTIONER_DOWNLOAD}"
            )
        tensors[name] = state[found[0]]
    return tensors


def load_captioner(path: str, clip: str, prompt_embedding: torch.Tensor,
                   time_dim: int) -> ImplicitCaptioner:
    """The captioner from ODISE's checkpoint ``path`` and CLIP ``clip`` (hub id or folder).

    Raises:
        WeightsError: when a file does not hold what it should, or the shapes do not fit the
            CLIP model, the prompt embedding ``(1, T, D)`` or the time embedding ``D_t``.
    """
    from transformers import CLIPVisionModelWithProjection

    if not Path(path).expanduser().is_file():
        raise WeightsError(f"{path}: no such captioner file; {CAPTIONER_DOWNLOAD}")
    tensors = _captioner_tensors(str(Path(path).expanduser()))
    model = load_from_pretrained(CLIPVisionModelWithProjection.from_pretrained,
                                 resolve_weights(clip, name="clip", default=CLIP_HUB_ID))
    e, (_, t, d) = model.config.projection_dim, prompt_embedding.shape
    expected = {
        "project_weight": (d, e), "project_bias": (d,), "project_position": (1, t, d),
        "alpha": (1, t, d), "time_weight": (time_dim, e), "time_bias": (time_dim,),
        "time_position": (1, 1, time_dim), "time_alpha": (time_dim,),
    }
    wrong = {k: tuple(v.shape) for k, v in tensors.items() if tuple(v.shape) != expected[k]}
    if wrong:
        raise WeightsError(f"{path}: captioner shapes {wrong} do not fit CLIP {clip!r} and the "
                           f"U-Net (expected {({k: expected[k] for k in wrong})})")
    return ImplicitCaptioner(model, prompt_embedding, tensors)


class GeoAwareSDFeatures(StableDiffusionFeatures):
    """:class:`StableDiffusionFeatures` under GeoAware-SC's recipe (see the module docstring).

    Args:
        captioner: an :class:`ImplicitCaptioner`, or ``None`` for the empty prompt alone.
        crop: side of the slide's crops in pixels.
        noise_shape: shape of the shared noise draw.
        **kwargs: passed to :class:`StableDiffusionFeatures`.
    """

    def __init__(self, *args: Any, captioner: ImplicitCaptioner | None, crop: int,
                 noise_shape: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.captioner = captioner
        self.crop = crop
        generator = torch.Generator().manual_seed(self.seed)
        self.register_buffer("shared_noise", torch.randn(noise_shape, generator=generator),
                             persistent=False)
        self.noising = float64_noising(self.timestep, self.scheduler.config)

    def crop_parts(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parts of crops ``(B, 3, c, c)`` in [-1, 1], one U-Net pass each."""
        latents = self.latents(crops)
        noise = self.shared_noise.to(latents)
        if noise.shape[-2:] != latents.shape[-2:]:
            raise InputError(f"{self.info.name}: crop latents {tuple(latents.shape[-2:])} do not "
                             f"match the shared noise {tuple(noise.shape[-2:])}")
        a, b = self.noising
        noisy = a * latents + b * noise.expand_as(latents)
        context = offset = None
        if self.captioner is not None:
            context, offset = self.captioner((crops + 1) / 2)
        return self.unet_parts(noisy, context, offset)

    def feature_parts(self, images: torch.Tensor, context: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
        """Parts s3/s4/s5 of normalised images (in [-1, 1]) by ODISE's slide.

        Args:
            images: ``(B, 3, S, S)``, ``S`` a multiple of 64, at least the crop size.
            context: not supported (the recipe's conditioning is the captioner's).

        Returns:
            ``{name: (B, C_k, S / stride_k, S / stride_k)}`` (960 px: s3 640×60², s4 1280×30²,
            s5 1280×15²).
        """
        if context is not None:
            raise InputError(f"{self.info.name}: recipe 'geoaware' conditions on the image "
                             "itself; it takes no prompt")
        dims = check_shape(images, "B 3 H W", "images")
        size, crop = dims["H"], self.crop
        if dims["W"] != size or size < crop or size % 64:
            raise InputError(f"{self.info.name}: recipe 'geoaware' needs a square input, a "
                             f"multiple of 64 of at least {crop} px, got {size}x{dims['W']}")
        strides = self.info.extra["part_strides"]
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        offsets = slide_offsets(size, crop)
        with autocast(images.device, self.precision):
            for y in offsets:
                for x in offsets:
                    parts = self.crop_parts(images[..., y: y + crop, x: x + crop])
                    for name, part in parts.items():
                        s = strides[name]
                        if name not in sums:
                            sums[name] = part.new_zeros((*part.shape[:2], size // s, size // s),
                                                        dtype=torch.float32)
                            counts[name] = part.new_zeros((size // s, size // s),
                                                          dtype=torch.float32)
                        window = (slice(y // s, (y + crop) // s), slice(x // s, (x + crop) // s))
                        sums[name][(..., *window)] += part.float()
                        counts[name][window] += 1
        return {name: (sums[name] / counts[name]).to(images.dtype) for name in self.parts}


def _check(name: str, captioner: str | None, **left_default: bool
           ) -> tuple[dict[str, float], int]:
    """The recipe fixes parts, timestep, seed, ensemble, prompt and FreeU; it needs captioner
    weights (or the explicit ``"empty"``). Returns its FreeU factors and seed.

    Raises:
        InputError: for an option the recipe fixes.
        WeightsError: without captioner weights (saying what to download).
    """
    fixed = sorted(k for k, ok in left_default.items() if not ok)
    if fixed:
        raise InputError(f"{name}: recipe 'geoaware' fixes {', '.join(fixed)}; leave them out")
    if captioner is None:
        raise WeightsError(f"{name}: {CAPTIONER_DOWNLOAD}")
    if captioner != "empty" and not Path(captioner).expanduser().is_file():
        raise WeightsError(f"{captioner}: no such captioner file; {CAPTIONER_DOWNLOAD}")
    return dict(FREEU_GEOAWARE), GEOAWARE_SD["seed"]


def _build(unet: nn.Module, vae: nn.Module, scheduler: Any, embedding: torch.Tensor,
           info: Any, options: dict[str, Any], captioner: str | None,
           captioner_clip: str | None) -> GeoAwareSDFeatures:
    """The recipe's backbone over loaded Stable Diffusion modules."""
    info.extra.update({"recipe": "geoaware",
                       "captioner": captioner if captioner == "empty" else "odise"})
    model = None if captioner == "empty" else load_captioner(
        str(captioner), captioner_clip or CLIP_HUB_ID, embedding,
        unet.time_embedding.linear_2.out_features)
    return GeoAwareSDFeatures(unet, vae, scheduler, embedding, captioner=model,
                              crop=GEOAWARE_SD["crop"], noise_shape=GEOAWARE_SD["noise_shape"],
                              **options)


SD_RECIPES["geoaware"] = SDRecipe(check=_check, build=_build)

"""Stable Diffusion U-Net decoder features through ``diffusers`` (extra ``sd``).

Names: ``sd15`` (Stable Diffusion 1.5) and ``sd21`` (Stable Diffusion 2.1). Weights are a
diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) or a
hub id. One forward:

1. the image, scaled to [-1, 1], is encoded by the VAE (mean of the latent distribution, or with
   ``latent="sample"`` a draw from it as SD4Match does, times the VAE's scaling factor);
2. noise drawn from a fixed seed is added at ``timestep`` with the scheduler's ``add_noise``
   (the same noise for every image of a batch, so an image's features never depend on its
   batch; ``noise="fresh"``: new draws for every image and call from a generator seeded once,
   as SD4Match's ``randn_like`` after ``torch.manual_seed(0)``); ``ensemble > 1`` averages the
   features of that many noise draws;
3. the U-Net runs with the embedding of ``prompt`` (empty by default) and hooks read the
   requested *parts*; the forward stops once the last part is read.

A part is named by where it is read:

* ``up_blocks.K``: the input of up-block ``K`` (the previous block's output);
* ``up_blocks.K.resnets.J`` (``J >= 1``): the decoder half of the input of that block's ``J``-th
  residual block, i.e. the previous layer's output *before* the skip connection is concatenated
  (after FreeU's scaling when FreeU is on).

FreeU is placed as in ODISE (GeoAware-SC's copy), not as in diffusers' ``enable_freeu``: before
every skip concat of the decoder, where the decoder state has the U-Net's widest channel count
(1280 in SD 1.x/2.x: LDM output blocks 0-6) its first half is scaled by ``b1`` and the skip is
Fourier-filtered with ``s1``; where it has the next width (640: blocks 7-9), ``b2`` and ``s2``.
A part read at that concat is the scaled state (ODISE stores the tensor, then scales it in place).

GeoAware-SC's three maps (LDM ``output_blocks`` 2, 5 and 8) are :data:`GEOAWARE_PARTS`: for a
960 px SD 1.5 input, ``s3`` 640 ch at 1/16 (60²), ``s4`` 1280 ch at 1/32, ``s5`` 1280 ch at 1/64.

One file on purpose (~570 lines): one backbone, its recipes, the U-Net hooks that read the
parts and apply FreeU (they exist only for it) and its ``diffusers`` loading.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.conventions import check_shape
from semcorr.errors import InputError, WeightsError
from semcorr.features.base import PRECISIONS, Backbone, BackboneInfo, autocast, register_variants
from semcorr.hub import WeightsSource, load_from_pretrained, resolve_weights

__all__ = [
    "FREEU_GEOAWARE",
    "GEOAWARE_PARTS",
    "LATENT_MODES",
    "NOISE_MODES",
    "SD_VARIANTS",
    "StableDiffusionFeatures",
    "create_stable_diffusion",
    "parse_part",
]

#: GeoAware-SC's parts (ODISE output blocks 8, 5, 2), finest first.
GEOAWARE_PARTS: dict[str, str] = {
    "s3": "up_blocks.2.resnets.2",
    "s4": "up_blocks.1.resnets.2",
    "s5": "up_blocks.0.resnets.2",
}
#: Where the latent comes from: the VAE posterior's mean, or a draw from it (SD4Match).
LATENT_MODES: tuple[str, ...] = ("mean", "sample")
#: ``fixed``: the same noise every call; ``fresh``: new draws every call (SD4Match).
NOISE_MODES: tuple[str, ...] = ("fixed", "fresh")
#: FreeU factors of GeoAware-SC's copy of ODISE.
FREEU_GEOAWARE: dict[str, float] = {"s1": 0.9, "s2": 0.2, "b1": 1.2, "b2": 1.4}


@dataclass(frozen=True)
class SDRecipe:
    """A named feature recipe of ``create_stable_diffusion(..., recipe=NAME)``, registered in
    :data:`SD_RECIPES` by the module that defines it (e.g. :mod:`semcorr.features.geoaware_sd`).

    Attributes:
        check: ``(name, captioner, **left_default) → (freeu, seed)``: refuses options the
            recipe fixes (``left_default`` says which were left at their defaults) and returns
            the recipe's FreeU factors and seed.
        build: ``(unet, vae, scheduler, embedding, info, options, captioner, captioner_clip)``
            → the backbone.
    """

    check: Callable[..., tuple[dict[str, float], int]]
    build: Callable[..., StableDiffusionFeatures]


#: Named feature recipes (``recipe=`` of the Stable Diffusion backbones).
SD_RECIPES: dict[str, SDRecipe] = {}

_PART = re.compile(r"^up_blocks\.(\d+)(?:\.resnets\.(\d+))?$")


@dataclass(frozen=True)
class SDVariant:
    """Pretrained metadata of a Stable Diffusion model.

    Attributes:
        name: registry name.
        hub_id: default Hugging Face repository (diffusers layout).
        license: licence of the weights.
    """

    name: str
    hub_id: str
    license: str


SD_VARIANTS: dict[str, SDVariant] = {
    "sd15": SDVariant(
        "sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "CreativeML OpenRAIL-M"
    ),
    "sd21": SDVariant("sd21", "stabilityai/stable-diffusion-2-1", "CreativeML OpenRAIL++-M"),
}


def parse_part(spec: str, num_up_blocks: int) -> tuple[int, int | None]:
    """``"up_blocks.K[.resnets.J]"`` → ``(K, J or None)``.

    Raises:
        InputError: for a malformed spec, a block out of range or ``J == 0``.
    """
    match = _PART.match(spec)
    if match is None:
        raise InputError(f"bad U-Net part {spec!r}: use 'up_blocks.K' or 'up_blocks.K.resnets.J'")
    block = int(match.group(1))
    resnet = None if match.group(2) is None else int(match.group(2))
    if block >= num_up_blocks:
        raise InputError(f"U-Net part {spec!r}: the U-Net has {num_up_blocks} up-blocks")
    if resnet == 0:
        raise InputError(f"U-Net part {spec!r}: resnets.0's input is up_blocks.{block}")
    return block, resnet


class _StopForward(Exception):
    """Raised by the last hook: the rest of the U-Net is not needed."""


@dataclass
class _PartRead:
    """One U-Net pass reading parts: the hooked module's id → (part name, channels kept), the
    FreeU factors of the pass (or ``None``) and an offset ``(N, D_t)`` added to the time
    embedding (or ``None``)."""

    parts: dict[int, tuple[str, int | None]]
    store: dict[str, torch.Tensor]
    freeu: Mapping[str, float] | None = None
    time_offset: torch.Tensor | None = None


#: Per thread: ``read``, the :class:`_PartRead` of the pass running in that thread (if any).
_ACTIVE = threading.local()


def _read_part(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook (stateless, so a deep copy of the U-Net keeps working): keep the input
    of ``module`` when the pass running in this thread asked for it; stop that pass once every
    part is read. Passes in other threads, and passes that asked for nothing, are left alone."""
    read = getattr(_ACTIVE, "read", None)
    entry = None if read is None else read.parts.get(id(module))
    if entry is None:
        return
    name, channels = entry
    hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("input_tensor"))
    read.store[name] = hidden if channels is None else hidden[:, :channels]
    if len(read.store) == len(read.parts):
        raise _StopForward


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """FreeU's skip filter: scale the ``2 threshold`` × ``2 threshold`` lowest frequencies.

    Args:
        x: ``(B, C, H, W)``.

    Returns:
        ``(B, C, H, W)`` in ``x``'s dtype; the FFT runs in float32 (or float64 for float64 input)
        on ``x``'s device.
    """
    work = x if x.dtype == torch.float64 else x.float()
    freq = torch.fft.fftshift(torch.fft.fftn(work, dim=(-2, -1)), dim=(-2, -1))
    h, w = x.shape[-2:]
    mask = torch.ones((h, w), device=x.device, dtype=work.dtype)
    mask[h // 2 - threshold: h // 2 + threshold, w // 2 - threshold: w // 2 + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def _freeu(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook on a decoder resnet (input = ``cat([state, skip])``): FreeU as ODISE
    places it, for the pass running in this thread if it asked for FreeU (see the module
    docstring). ``module._semcorr_freeu`` = (state channels, stage 1 or 2, or 0 for none)."""
    read = getattr(_ACTIVE, "read", None)
    channels, stage = module._semcorr_freeu
    if read is None or not read.freeu or not stage:
        return None
    x = args[0] if args else kwargs["input_tensor"]
    b, s = read.freeu[f"b{stage}"], read.freeu[f"s{stage}"]
    half = channels // 2
    x = torch.cat([x[:, :half] * b, x[:, half:channels],
                   fourier_filter(x[:, channels:], threshold=1, scale=s)], dim=1)
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "input_tensor": x}


def _add_time_offset(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook on the time embedding: add the pass's offset (ODISE's captioner)."""
    read = getattr(_ACTIVE, "read", None)
    if read is None or read.time_offset is None:
        return None
    return output + read.time_offset.to(output.dtype)


def install_freeu_hooks(unet: nn.Module) -> None:
    """Put :func:`_freeu` (first in line, so parts read after it) on every decoder resnet and
    :func:`_add_time_offset` on the time embedding, once. Inert unless a pass asks for them."""
    widths = sorted(set(unet.config.block_out_channels), reverse=True)
    stages = {widths[0]: 1, **({widths[1]: 2} if len(widths) > 1 else {})}
    state = unet.config.block_out_channels[-1]  # the mid-block's output
    for block in unet.up_blocks:
        for resnet in block.resnets:
            if not hasattr(resnet, "_semcorr_freeu"):
                resnet._semcorr_freeu = (state, stages.get(state, 0))
                resnet.register_forward_pre_hook(_freeu, with_kwargs=True, prepend=True)
            state = resnet.out_channels
    if not getattr(unet.time_embedding, "_semcorr_time_offset", False):
        unet.time_embedding.register_forward_hook(_add_time_offset)
        unet.time_embedding._semcorr_time_offset = True


class StableDiffusionFeatures(Backbone):
    """Dense features read inside a Stable Diffusion U-Net (see the module docstring).

    Args:
        unet, vae: ``diffusers`` modules.
        scheduler: a ``diffusers`` scheduler with ``add_noise``.
        prompt_embedding: ``(1, L, D)`` text-encoder output used as conditioning.
        info: metadata; ``stride`` is the finest part's.
        parts: part name → spec, finest first by convention.
        timestep: diffusion timestep at which the noise is added.
        seed: seed of the noise.
        ensemble: number of noise draws averaged.
        freeu: FreeU factors ``{"s1", "s2", "b1", "b2"}`` or ``None``.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast.
        latent: ``mean`` or ``sample`` of the VAE's latent distribution.
        noise: ``fixed`` (the same draws every call) or ``fresh`` (new draws every image and
            call, from a generator seeded with ``seed`` once).
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        scheduler: Any,
        prompt_embedding: torch.Tensor,
        *,
        info: BackboneInfo,
        parts: Mapping[str, str],
        timestep: int,
        seed: int,
        ensemble: int,
        freeu: Mapping[str, float] | None,
        precision: str,
        latent: str = "mean",
        noise: str = "fixed",
    ) -> None:
        super().__init__()
        if latent not in LATENT_MODES or noise not in NOISE_MODES:
            raise InputError(f"{info.name}: latent must be one of {LATENT_MODES} and noise one "
                             f"of {NOISE_MODES}, got {latent!r} and {noise!r}")
        self.latent, self.noise_mode = latent, noise
        self._generator = torch.Generator().manual_seed(seed)  # fresh noise and sampled latents
        self.unet = unet.eval()
        self.vae = vae.eval()
        self.scheduler = scheduler
        self.register_buffer("prompt_embedding", prompt_embedding, persistent=False)
        self.info = info
        self.parts = {name: parse_part(spec, len(unet.up_blocks)) for name, spec in parts.items()}
        self.timestep = timestep
        self.seed = seed
        self.ensemble = ensemble
        self.precision = precision
        self.freeu = None if not freeu else {k: float(freeu[k]) for k in ("s1", "s2", "b1", "b2")}
        install_freeu_hooks(unet)
        self._install_hooks()

    def noise(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """The fixed noise draws ``(ensemble, C, h, w)`` for latents of ``shape[1:]``."""
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((self.ensemble, *shape[1:]), generator=generator)
        return noise.to(device=like.device, dtype=like.dtype)

    def fresh_noise(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """New standard normal draws of ``shape`` from the backbone's seeded generator."""
        noise = torch.randn(shape, generator=self._generator)
        return noise.to(device=like.device, dtype=like.dtype)

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """VAE latents ``(B, 4, H / f, W / f)`` of images in [-1, 1]."""
        posterior = self.vae.encode(images).latent_dist
        if self.latent == "sample":  # mean + std · ε, ε from the seeded generator
            latent = posterior.mean + posterior.std * self.fresh_noise(
                tuple(posterior.mean.shape), posterior.mean)
        else:
            latent = posterior.mean
        return latent * self.vae.config.scaling_factor

    def _part_modules(self) -> dict[int, tuple[str, int | None]]:
        """The module whose input each part is, by id → (part name, channels kept)."""
        modules: dict[int, tuple[str, int | None]] = {}
        for name, (block_index, resnet_index) in self.parts.items():
            block = self.unet.up_blocks[block_index]
            if resnet_index is None:
                modules[id(block)] = (name, None)
            else:  # the decoder half only: the channels of the previous resnet's output
                channels = block.resnets[resnet_index - 1].out_channels
                modules[id(block.resnets[resnet_index])] = (name, channels)
        return modules

    def _install_hooks(self) -> None:
        """Install :func:`_read_part` once on every up-block and its resnets (idempotent).

        The hook reads only for the pass :meth:`unet_parts` runs in the same thread, so several
        threads may share one backbone, each with its own conditioning.
        """
        for block in self.unet.up_blocks:
            for module in (block, *getattr(block, "resnets", ())):
                if not getattr(module, "_semcorr_reads_parts", False):
                    module.register_forward_pre_hook(_read_part, with_kwargs=True)
                    module._semcorr_reads_parts = True

    def unet_parts(self, latents: torch.Tensor, context: torch.Tensor | None = None,
                   time_offset: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Parts read from one U-Net pass over noisy ``latents`` ``(N, 4, h, w)``.

        Args:
            latents: ``(N, 4, h, w)``.
            context: conditioning ``(N, T, D)`` or ``(1, T, D)``; ``None``: the prompt's
                embedding.
            time_offset: ``(N, D_t)`` added to the time embedding, or ``None``.
        """
        n = latents.shape[0]
        t = torch.full((n,), self.timestep, device=latents.device, dtype=torch.long)
        context = self.prompt_embedding if context is None else context
        if context.shape[0] not in (1, n):
            raise InputError(f"{self.info.name}: {context.shape[0]} conditionings for {n} latents")
        context = context.to(latents.dtype).expand(n, -1, -1)
        read = _PartRead(self._part_modules(), {}, self.freeu, time_offset)
        outer, _ACTIVE.read = getattr(_ACTIVE, "read", None), read
        try:
            self.unet(latents, t, encoder_hidden_states=context)
        except _StopForward:
            pass
        finally:
            _ACTIVE.read = outer
        store = read.store
        missing = sorted(set(self.parts) - set(store))
        if missing:
            raise InputError(f"{self.info.name}: the U-Net never reached the parts {missing}")
        return {name: store[name] for name in self.parts}

    def feature_parts(self, images: torch.Tensor, context: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
        """The raw parts of normalised images (in [-1, 1]).

        Args:
            images: ``(B, 3, S, S)``.
            context: conditioning ``(B, T, D)`` (one per image) or ``(1, T, D)`` (shared);
                ``None``: the embedding of the backbone's prompt. Passing it, rather than
                changing the backbone, keeps concurrent calls with different prompts apart.

        Returns:
            ``{name: (B, C_k, h_k, w_k)}`` in the order of ``parts``, averaged over the
            ensemble of noise draws.
        """
        dims = check_shape(images, "B 3 H W", "images")
        if context is not None:
            check_shape(context, "N T D", "conditioning")
            if context.shape[0] not in (1, dims["B"]):
                raise InputError(
                    f"{self.info.name}: {context.shape[0]} conditionings for {dims['B']} images"
                )
            # one row per image, repeated over its noise draws (the batch is image-major)
            context = context.expand(dims["B"], -1, -1).repeat_interleave(self.ensemble, dim=0)
        with autocast(images.device, self.precision):
            latents = self.latents(images)
            b, e = latents.shape[0], self.ensemble
            clean = latents[:, None].expand(-1, e, -1, -1, -1).reshape(b * e, *latents.shape[1:])
            if self.noise_mode == "fresh":
                draws = self.fresh_noise(tuple(clean.shape), latents)
            else:
                noise = self.noise(tuple(latents.shape), latents)  # (E, C, h, w)
                draws = noise[None].expand(b, -1, -1, -1, -1).reshape(b * e, *latents.shape[1:])
            t = torch.full((b * e,), self.timestep, device=latents.device, dtype=torch.long)
            noisy = self.scheduler.add_noise(clean, draws, t)
            parts = self.unet_parts(noisy, context)
        return {
            name: part.float().reshape(b, e, *part.shape[1:]).mean(dim=1).to(images.dtype)
            for name, part in parts.items()
        }

    def features(self, images: torch.Tensor, context: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Parts resampled (bilinear) to the finest grid, each L2-normalised, concatenated and
        scaled by ``1 / sqrt(#parts)`` (unit norm per cell).

        Args:
            images: ``(B, 3, S, S)`` normalised.
            context: optional conditioning, see :meth:`feature_parts`.

        Returns:
            ``(B, sum C_k, S / stride, S / stride)``.
        """
        parts = list(self.feature_parts(images, context).values())
        size = max((p.shape[-2:] for p in parts), key=lambda s: s[0] * s[1])
        resampled = [
            F.normalize(
                F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                if p.shape[-2:] != size else p,
                dim=1,
            )
            for p in parts
        ]
        return torch.cat(resampled, dim=1) / math.sqrt(len(resampled))


def _num_downsamplers(unet: nn.Module) -> int:
    return sum(1 for block in unet.down_blocks if getattr(block, "downsamplers", None))


def part_strides(unet: nn.Module, vae_factor: int, parts: Mapping[str, str]) -> dict[str, int]:
    """Input pixels per cell of every part, from the U-Net's structure."""
    down = _num_downsamplers(unet)
    strides = {}
    for name, spec in parts.items():
        index, _ = parse_part(spec, len(unet.up_blocks))
        ups = sum(1 for block in unet.up_blocks[:index] if getattr(block, "upsamplers", None))
        strides[name] = vae_factor * 2 ** (down - ups)
    return strides


def _text_embedding(source: WeightsSource, prompt: str) -> torch.Tensor:
    from transformers import AutoTokenizer, CLIPTextModel

    tokenizer = load_from_pretrained(AutoTokenizer.from_pretrained, source, subfolder="tokenizer")
    encoder = load_from_pretrained(CLIPTextModel.from_pretrained, source, subfolder="text_encoder")
    tokens = tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return encoder.eval()(tokens.input_ids)[0]


def _load_sd(source: WeightsSource) -> tuple[nn.Module, nn.Module, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    unet = load_from_pretrained(UNet2DConditionModel.from_pretrained, source, subfolder="unet")
    vae = load_from_pretrained(AutoencoderKL.from_pretrained, source, subfolder="vae")
    scheduler = load_from_pretrained(DDPMScheduler.from_pretrained, source, subfolder="scheduler")
    return unet, vae, scheduler


def create_stable_diffusion(
    name: str,
    *,
    weights: str | None = None,
    parts: Mapping[str, str] | None = None,
    image_size: int = 960,
    timestep: int = 50,
    seed: int = 0,
    ensemble: int = 1,
    prompt: str = "",
    freeu: Mapping[str, float] | None = None,
    precision: str = "fp32",
    recipe: str | None = None,
    captioner: str | None = None,
    captioner_clip: str | None = None,
    latent: str = "mean",
    noise: str = "fixed",
) -> StableDiffusionFeatures:
    """Build the Stable Diffusion backbone ``name`` (``sd15`` or ``sd21``).

    Args:
        name: registry name.
        weights: diffusers folder or hub id; ``None`` → ``$SEMCORR_WEIGHTS/<name>`` if present,
            else the official hub id.
        parts: part name → spec (default :data:`GEOAWARE_PARTS`).
        image_size: side of the square input (a multiple of the coarsest part's stride).
        timestep: diffusion timestep of the added noise.
        seed: seed of the noise.
        ensemble: noise draws averaged.
        prompt: conditioning text (empty prompt by default).
        freeu: FreeU factors (e.g. :data:`FREEU_GEOAWARE`) or ``None``.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast.
        recipe: ``"geoaware"``: GeoAware-SC's released recipe
            (:mod:`semcorr.features.geoaware_sd`), which fixes parts, timestep, seed, ensemble,
            prompt and FreeU; ``None``: one pass at ``image_size`` with the options above.
        captioner: with the recipe: ODISE's checkpoint file (``odise_label_coco_50e-*.pth``)
            holding the implicit captioner, or ``"empty"`` for the empty prompt alone.
        captioner_clip: the captioner's CLIP (hub id or folder; default ODISE's ViT-L/14-336).
        latent: ``mean`` (default) or ``sample`` (SD4Match's ``latent_dist.sample()``).
        noise: ``fixed`` (default) or ``fresh`` (SD4Match's new noise per image and call).
    """
    variant = SD_VARIANTS[name]
    if recipe is not None:
        if recipe not in SD_RECIPES:
            raise InputError(f"{name}: unknown recipe {recipe!r} (known: "
                             f"{', '.join(sorted(SD_RECIPES)) or 'none'})")
        freeu, seed = SD_RECIPES[recipe].check(name, captioner, parts=parts is None,
                                               timestep=timestep == 50, seed=seed == 0,
                                               ensemble=ensemble == 1, prompt=prompt == "",
                                               freeu=freeu is None, latent=latent == "mean",
                                               noise=noise == "fixed")
    elif captioner is not None or captioner_clip is not None:
        raise InputError(f"{name}: captioner and captioner_clip need recipe='geoaware'")
    if precision not in PRECISIONS:
        raise InputError(f"{name}: precision must be one of {sorted(PRECISIONS)}")
    if ensemble < 1:
        raise InputError(f"{name}: ensemble must be at least 1")
    if freeu is not None and set(freeu) != {"s1", "s2", "b1", "b2"}:
        raise InputError(f"{name}: freeu needs exactly the factors s1, s2, b1, b2")
    parts = dict(parts or GEOAWARE_PARTS)
    if not parts:
        raise InputError(f"{name}: at least one part is needed")
    source = resolve_weights(weights, name=name, default=variant.hub_id)
    if source.is_file:
        raise WeightsError(
            f"{source.location}: {name!r} needs a diffusers folder (unet/, vae/, text_encoder/, "
            "tokenizer/, scheduler/), not a single checkpoint file"
        )
    unet, vae, scheduler = _load_sd(source)
    if not 0 <= timestep < scheduler.config.num_train_timesteps:
        raise InputError(f"{name}: timestep must be in [0, {scheduler.config.num_train_timesteps})")
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    strides = part_strides(unet, vae_factor, parts)
    coarsest = vae_factor * 2 ** _num_downsamplers(unet)  # the U-Net's bottleneck cell
    if image_size % coarsest:
        raise InputError(f"{name}: image_size {image_size} must be a multiple of {coarsest}")
    info = BackboneInfo(
        name=name,
        stride=min(strides.values()),
        image_size=image_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        weights=source.location,
        license=variant.license,
        extra={"part_strides": strides, "timestep": timestep, "ensemble": ensemble,
               "latent": latent, "noise": noise},
    )
    options = dict(info=info, parts=parts, timestep=timestep, seed=seed, ensemble=ensemble,
                   freeu=freeu, precision=precision, latent=latent, noise=noise)
    embedding = _text_embedding(source, prompt)
    if recipe is None:
        return StableDiffusionFeatures(unet, vae, scheduler, embedding, **options)
    return SD_RECIPES[recipe].build(unet, vae, scheduler, embedding, info, options, captioner,
                                    captioner_clip)


register_variants(SD_VARIANTS, create_stable_diffusion, "Stable Diffusion")

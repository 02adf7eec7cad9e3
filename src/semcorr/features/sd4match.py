"""SD4Match: Stable Diffusion 2.1 features conditioned on a learned prompt (backbone ``sd4match``).

SD4Match (Li et al., CVPR 2024) keeps Stable Diffusion frozen and learns only the prompt. A
*prompt module* produces learned token embeddings ``(B, L, D)``; they take the place of the
tokens of an empty prompt (after the start token, before the end token) at the input of the
frozen CLIP text encoder (:class:`PromptEncoder`), whose output ``(B, T, D)`` (``T`` the
tokenizer's maximum length, ``D = 1024`` for SD 2.1) conditions the U-Net. The features are the
output of the U-Net's second up-block (part ``up_blocks.2``: 1280 channels at 1/16 of the
input, 48² for the default 768 px input), L2-normalised.

Prompt modules (only their parameters are trained and saved; in
:mod:`semcorr.features.sd4match_prompts`):

* :class:`SinglePrompt` (``single``): one learned sequence for every pair;
* :class:`ClassPrompt` (``class``): one learned sequence per category;
* :class:`ConditionalPrompt` (``cpm``): the conditional prompt module. DINOv2 patch tokens of
  the source and target ``(B, P, C)`` are concatenated along channels, projected to ``D``,
  mixed across patches by a linear layer, max-pooled to ``cond_length`` tokens, shifted by a
  learned positional embedding and weighted by ``tanh(alpha)``; a learned global sequence is
  put in front.

Files: a prompt is saved as ``.safetensors`` holding the prompt module's tensors only, with its
configuration in the file's metadata (key ``sd4match``) and in a JSON sidecar (``.json``);
see :func:`save_prompt` / :func:`read_prompt_file`. SD4Match's released ``caption.pt`` and
``ckpt.pt`` files load as they are (:mod:`semcorr.features.sd4match_official`).
``create_backbone("sd4match", weights=PROMPT_FILE, sd_weights=SD21_FOLDER)`` rebuilds the
backbone from either kind of file.

What the features depend on is the backbone's :attr:`~SD4MatchBackbone.condition`: the image
only (``single``, or ``class`` built with ``category=``), the category (``class``) or the
pair (``cpm``). :meth:`SD4MatchBackbone.conditioned` fixes it and returns a
:class:`PromptedBackbone`, an ordinary per-image backbone holding the conditioning; the
Matcher and ``semcorr eval --head sd4match --weights PROMPT_FILE`` do this per category or per
pair. The conditioning is passed to the U-Net as an argument, never stored in the shared
Stable Diffusion backbone, so concurrent calls with different prompts do not interfere.

Inference uses the shared kernel soft-argmax with SD4Match's settings (:data:`SD4MATCH_REFINE`:
σ 7 cells, temperature 0.04, the Gaussian applied to the similarities before the softmax);
the command line picks them when ``--refine`` is not given.

One file on purpose (~550 lines): one backbone, its prompted forward, prompt files and the
factory that assembles them; the prompt modules and the official layouts already live apart
(:mod:`semcorr.features.sd4match_prompts`, :mod:`semcorr.features.sd4match_official`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.conventions import check_shape
from semcorr.errors import InputError, WeightsError
from semcorr.features.base import Backbone, register_backbone
from semcorr.features.sd4match_official import (
    cpm_dino_input,
    is_official_prompt,
    read_official_prompt,
)
from semcorr.features.sd4match_prompts import (
    PROMPT_KINDS,
    ClassPrompt,
    ConditionalPrompt,
    PromptConfig,
    PromptEncoder,
    SinglePrompt,
    build_prompt,
)
from semcorr.features.stable_diffusion import SD_VARIANTS, StableDiffusionFeatures

__all__ = [
    "PROMPT_KINDS",
    "SD4MATCH_PART",
    "ClassPrompt",
    "ConditionalPrompt",
    "PromptConfig",
    "PromptEncoder",
    "PromptedBackbone",
    "SD4MATCH_REFINE",
    "SD4MatchBackbone",
    "SinglePrompt",
    "build_prompt",
    "create_sd4match",
    "read_prompt_file",
    "save_prompt",
]

#: The feature map of SD4Match: the output of the second up-block (the input of the third).
SD4MATCH_PART: dict[str, str] = {"up1": "up_blocks.2"}
#: SD4Match's inference rule: kernel soft-argmax, Gaussian (σ in cells) on the similarities.
SD4MATCH_REFINE: dict[str, Any] = {"name": "kernel", "sigma": 7.0, "temperature": 0.04,
                                   "weighting": "score"}
_METADATA_KEY = "sd4match"
_FORMAT = "semcorr-sd4match-prompt/1"



class SD4MatchBackbone(Backbone):
    """Stable Diffusion features conditioned on a learned prompt (see the module docstring).

    Only :attr:`prompt` has trainable parameters; the U-Net, VAE, text encoder and DINOv2 are
    frozen (``requires_grad=False``).

    Args:
        sd: the Stable Diffusion backbone reading :data:`SD4MATCH_PART`.
        text: the text encoder fed with learned tokens.
        prompt: a prompt module.
        config: the prompt's configuration.
        dino: DINOv2 backbone feeding a ``cpm`` prompt (``None`` otherwise).
        category: the category used by :meth:`features` with a ``class`` prompt.

    Attributes:
        prompt_file, prompt_sha256: the prompt file loaded and a digest of its bytes (``None``
            for a fresh prompt); with ``timestep``, ``ensemble`` and ``noise_seed`` (copies of
            the SD settings) they describe the features in evaluation records.
    """

    def __init__(self, sd: StableDiffusionFeatures, text: PromptEncoder, prompt: nn.Module,
                 config: PromptConfig, *, dino: Backbone | None = None,
                 category: str | None = None) -> None:
        super().__init__()
        if config.kind == "cpm" and dino is None:
            raise InputError("sd4match: a cpm prompt needs a DINOv2 backbone")
        self.sd = sd.requires_grad_(False)
        self.text = text.requires_grad_(False)
        self.dino = None if dino is None else dino.eval().requires_grad_(False)
        self.prompt = prompt
        self.config = config
        self.category = category
        self.prompt_file: str | None = None
        self.prompt_sha256: str | None = None
        self.timestep, self.ensemble, self.noise_seed = sd.timestep, sd.ensemble, sd.seed
        self.info = replace(sd.info, name="sd4match",
                            extra={**sd.info.extra, "prompt": config.kind,
                                   "refine": dict(SD4MATCH_REFINE)})

    def train(self, mode: bool = True) -> SD4MatchBackbone:
        """Only the prompt module changes mode; the frozen models stay in eval mode."""
        self.training = mode
        self.prompt.train(mode)
        return self

    def learned_tokens(self, images0: torch.Tensor | None = None,
                       images1: torch.Tensor | None = None,
                       categories: Sequence[str] | None = None,
                       batch_size: int | None = None) -> torch.Tensor:
        """Learned token embeddings ``(B, L, D)`` of B pairs.

        Args:
            images0, images1: ``(B, 3, c, c)`` DINOv2 inputs of the sources and targets in
                [0, 1] (``cpm``; see :meth:`dino_inputs`).
            categories: B category names (``class``).
            batch_size: B (``single``; else taken from the other arguments).
        """
        kind = self.config.kind
        if kind == "single":
            b = batch_size if batch_size is not None else _batch_of(images0, categories)
            return self.prompt(b)
        if kind == "class":
            if categories is None:
                raise InputError("sd4match: a class prompt needs the pairs' categories")
            return self.prompt(list(categories))
        if images0 is None or images1 is None:
            raise InputError("sd4match: a cpm prompt needs both images of the pair")
        return self.prompt(self.dino_tokens(images0), self.dino_tokens(images1))

    def dino_inputs(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """The CPM's DINOv2 inputs of original images, as the official code makes them
        (:func:`~semcorr.features.sd4match_official.cpm_dino_input`: shortest edge to
        ``8/7`` of the crop, bicubic, centre crop to the DINOv2 input side).

        Args:
            images: B images ``(3, H_i, W_i)`` in [0, 1].

        Returns:
            ``(B, 3, c, c)`` in [0, 1] on the backbone's device (``c`` 224 for 16 patches).
        """
        if self.dino is None:
            raise InputError("sd4match: only a cpm prompt has DINOv2 inputs")
        side = self.dino.info.image_size
        return torch.stack([cpm_dino_input(img, side) for img in images]).to(self.device)

    def dino_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """DINOv2 patch tokens ``(B, P, C)`` (after the final norm) of DINOv2 inputs
        ``(B, 3, c, c)`` in [0, 1] (:meth:`dino_inputs`)."""
        assert self.dino is not None
        check_shape(pixels, f"B 3 {self.dino.info.image_size} {self.dino.info.image_size}",
                    "DINOv2 inputs")
        with torch.no_grad():
            maps = self.dino(pixels)  # (B, C, p, p)
        return maps.flatten(2).transpose(1, 2)

    def _unnormalized(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised SD inputs ``(B, 3, S, S)`` back to B images in [0, 1]."""
        std = images.new_tensor(self.info.std).view(1, 3, 1, 1)
        mean = images.new_tensor(self.info.mean).view(1, 3, 1, 1)
        return list((images.detach() * std + mean).clamp(0, 1))

    def conditioning(self, learned: torch.Tensor) -> torch.Tensor:
        """U-Net conditioning ``(B, T, D)`` of learned tokens ``(B, L, D)``."""
        return self.text(learned)

    def conditioned_features(self, images: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Unit-norm features ``(B, C, h, w)`` of normalised images ``(B, 3, S, S)`` under
        conditioning ``(B, T, D)`` (or ``(1, T, D)`` shared)."""
        dims = check_shape(images, "B 3 H W", "images")
        if context.shape[0] not in (1, dims["B"]):
            raise InputError(f"sd4match: {context.shape[0]} prompts for {dims['B']} images")
        return F.normalize(self.sd.features(images, context), dim=1)

    def pair_features(self, images0: torch.Tensor, images1: torch.Tensor,
                      categories: Sequence[str] | None = None,
                      dino_inputs: tuple[torch.Tensor, torch.Tensor] | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of B pairs, both images conditioned on the pair's prompt.

        Args:
            images0, images1: ``(B, 3, S, S)`` normalised source and target images.
            categories: B category names (``class`` prompts).
            dino_inputs: the CPM's DINOv2 inputs of the original source and target images
                (:meth:`dino_inputs`), as the official code makes them. Default: made from
                ``images0``/``images1`` taken as the original images (exact for inputs that
                are the images themselves, e.g. synthetic square pairs).

        Returns:
            ``(B, C, h, w)`` unit-norm source and target features.
        """
        dino0 = dino1 = None
        if self.config.kind == "cpm":
            dino0, dino1 = dino_inputs if dino_inputs is not None else (
                self.dino_inputs(self._unnormalized(images0)),
                self.dino_inputs(self._unnormalized(images1)))
        context = self.conditioning(self.learned_tokens(dino0, dino1, categories,
                                                        batch_size=images0.shape[0]))
        return (self.conditioned_features(images0, context),
                self.conditioned_features(images1, context))

    @property
    def condition(self) -> str:
        """``pair`` (``cpm``), ``category`` (``class`` without a fixed category) or ``image``."""
        if self.config.kind == "cpm":
            return "pair"
        if self.config.kind == "class" and self.category is None:
            return "category"
        return "image"

    def conditioned(
        self,
        *,
        category: str | None = None,
        pair: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Backbone:
        """A per-image backbone under this prompt's conditioning for one category or pair.

        Args:
            category: the category (``class`` prompts; default: the backbone's ``category``).
            pair: source and target images ``(3, H_i, W_i)`` in [0, 1] (``cpm`` prompts); their
                DINOv2 tokens (:meth:`dino_inputs`, made from these original images as in the
                official code) feed the CPM.

        Returns:
            ``self`` for a ``single`` prompt, else a :class:`PromptedBackbone`.

        Raises:
            InputError: when the category or pair this prompt needs is missing or unknown.
        """
        kind = self.config.kind
        if kind == "single":
            return self
        if kind == "class":
            name = category if category is not None else self.category
            if name is None:
                raise InputError("sd4match: a class prompt needs the category of the object")
            tokens, label = self.learned_tokens(categories=[name]), f"category {name}"
        else:
            if pair is None:
                raise InputError("sd4match: a cpm prompt needs the pair's two images")
            pixels = self.dino_inputs(list(pair))
            tokens, label = self.learned_tokens(pixels[:1], pixels[1:]), "pair"
        with torch.no_grad():
            context = self.conditioning(tokens)
        return PromptedBackbone(self, context, label)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image features ``(B, C, h, w)`` (``single``, or ``class`` with ``category``)."""
        if self.condition != "image":
            raise InputError(
                f"sd4match: the features of a {self.config.kind} prompt depend on the "
                f"{self.condition}; use conditioned(...) (the Matcher does this given the "
                f"{self.condition}) or pair_features"
            )
        categories = None if self.category is None else [self.category]
        context = self.conditioning(self.learned_tokens(categories=categories, batch_size=1))
        return self.conditioned_features(images, context)


class PromptedBackbone(Backbone):
    """An :class:`SD4MatchBackbone` under a fixed conditioning: a per-image backbone.

    Args:
        parent: the SD4Match backbone (its modules are shared, not copied).
        context: ``(1, T, D)`` text-encoder output conditioning the U-Net.
        label: what the conditioning was made for (``category NAME`` or ``pair``).
    """

    def __init__(self, parent: SD4MatchBackbone, context: torch.Tensor, label: str) -> None:
        super().__init__()
        check_shape(context, "1 T D", "conditioning")
        self.parent = parent
        self.register_buffer("context", context, persistent=False)
        self.label = label
        self.info = parent.info

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm features ``(B, C, h, w)`` of normalised ``(B, 3, S, S)`` images."""
        return self.parent.conditioned_features(images, self.context)


def _batch_of(images: torch.Tensor | None, categories: Sequence[str] | None) -> int:
    if images is not None:
        return images.shape[0]
    if categories is not None:
        return len(categories)
    raise InputError("sd4match: give batch_size, images or categories")


def save_prompt(path: str | os.PathLike[str], prompt: nn.Module, config: PromptConfig) -> Path:
    """Write the prompt's tensors (safetensors, config in the metadata) and a JSON sidecar,
    atomically.

    Returns:
        The ``.safetensors`` path.
    """
    from safetensors.torch import save

    from semcorr.io import atomic_write_bytes, atomic_write_json

    file = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in prompt.state_dict().items()}
    text = json.dumps(config.to_json())
    atomic_write_bytes(file, save(state, metadata={_METADATA_KEY: text, "format": _FORMAT}))
    atomic_write_json(file.with_suffix(".json"), {"format": _FORMAT, **config.to_json()})
    return file


def read_prompt_file(path: str | os.PathLike[str]
                     ) -> tuple[PromptConfig, dict[str, torch.Tensor]]:
    """The configuration and tensors of a prompt file written by :func:`save_prompt`, or of
    SD4Match's released ``caption.pt`` / ``ckpt.pt`` (or its folder).

    The configuration comes from the file's metadata, else from the ``.json`` sidecar (for a
    released file: from its tensors and folder name).

    Raises:
        WeightsError: naming the file when it is missing, unreadable or not a prompt file.
    """
    from safetensors import SafetensorError, safe_open

    if is_official_prompt(path):
        official = read_official_prompt(path)
        return official.config, official.state
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"{file}: no such prompt file")
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{file}: not a readable safetensors prompt file ({exc})") from None
    if _METADATA_KEY in metadata:
        data = json.loads(metadata[_METADATA_KEY])
    else:
        sidecar = file.with_suffix(".json")
        if not sidecar.is_file():
            raise WeightsError(f"{file}: no sd4match config in the metadata and no {sidecar.name}")
        data = json.loads(sidecar.read_text())
        data.pop("format", None)
    return PromptConfig.from_json(data, str(file)), state


def _load_text_encoder(source: Any) -> PromptEncoder:
    from transformers import AutoTokenizer, CLIPTextModel

    from semcorr.hub import load_from_pretrained

    tokenizer = load_from_pretrained(AutoTokenizer.from_pretrained, source, subfolder="tokenizer")
    encoder = load_from_pretrained(CLIPTextModel.from_pretrained, source, subfolder="text_encoder")
    ids = tokenizer("", truncation=True).input_ids  # [start, end]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[-1]
    return PromptEncoder(encoder, ids[0], ids[-1], pad, tokenizer.model_max_length)


def create_sd4match(
    *,
    weights: str | None = None,
    sd_weights: str | None = None,
    dino_weights: str | None = None,
    prompt: str = "single",
    category: str | None = None,
    categories: Sequence[str] = (),
    length: int = 75,
    global_length: int = 25,
    cond_length: int = 50,
    dino_patches: int = 16,
    sd: str = "sd21",
    timestep: int = 261,
    image_size: int = 768,
    seed: int = 0,
    init_seed: int = 0,
    ensemble: int = 1,
    precision: str = "fp32",
    feature_timestep: int | None = None,
    latent: str = "mean",
    noise: str = "fixed",
) -> SD4MatchBackbone:
    """Build the SD4Match backbone, from a prompt file or with a fresh prompt.

    Args:
        weights: a prompt file (:func:`save_prompt`); its settings replace ``prompt``,
            ``categories``, lengths, ``sd``, ``timestep`` and ``image_size``. Or SD4Match's
            released ``caption.pt`` / ``ckpt.pt`` (or its folder, see
            :mod:`semcorr.features.sd4match_official`): the kind, categories and lengths come
            from the file, ``timestep`` and ``image_size`` from the arguments. ``None``: a new
            prompt (random vocabulary embeddings for ``single``/``class``, uniform for ``cpm``).
        sd_weights: diffusers folder or hub id of Stable Diffusion (default: SD 2.1).
        dino_weights: DINOv2 ViT-B/14 weights (``cpm`` only).
        prompt: ``single``, ``class`` or ``cpm``.
        category: category used for per-image features with a ``class`` prompt.
        categories: categories of a new ``class`` prompt.
        length: learned tokens of a new ``single``/``class`` prompt.
        global_length, cond_length: tokens of a new ``cpm`` prompt.
        dino_patches: DINOv2 patches per side for a ``cpm`` prompt (16 → 224 px).
        sd: Stable Diffusion variant.
        timestep, image_size, seed, ensemble, precision: see
            :func:`~semcorr.features.stable_diffusion.create_stable_diffusion` (``seed`` is
            the noise's).
        init_seed: seed of a new prompt's initialisation.
        feature_timestep: timestep the features are read at, instead of the prompt's
            (SD4Match trains at 261 and evaluates at 50: the ``sd4match-*`` eval presets).
        latent, noise: ``sample`` / ``fresh`` for SD4Match's evaluation draws (see
            :func:`~semcorr.features.stable_diffusion.create_stable_diffusion`).
    """
    from semcorr.features.base import create_backbone
    from semcorr.features.stable_diffusion import create_stable_diffusion
    from semcorr.hub import resolve_weights

    state, official = None, None
    if weights is not None and is_official_prompt(weights):
        official = read_official_prompt(weights)
        config = replace(official.config, timestep=timestep, image_size=image_size)
        state = official.state
    elif weights is not None:
        config, state = read_prompt_file(weights)
    else:
        if prompt not in PROMPT_KINDS:
            raise InputError(f"sd4match: prompt must be one of {PROMPT_KINDS}, got {prompt!r}")
        config = PromptConfig(kind=prompt, dim=0, length=length, categories=tuple(categories),
                              global_length=global_length, cond_length=cond_length,
                              dino_patches=dino_patches, sd=sd, timestep=timestep,
                              image_size=image_size)
    if config.sd not in SD_VARIANTS:
        raise InputError(f"sd4match: unknown Stable Diffusion variant {config.sd!r}")
    features = create_stable_diffusion(
        config.sd, weights=sd_weights, parts=SD4MATCH_PART, image_size=config.image_size,
        timestep=config.timestep if feature_timestep is None else feature_timestep, seed=seed,
        ensemble=ensemble, precision=precision, latent=latent, noise=noise,
    )
    source = resolve_weights(sd_weights, name=config.sd, default=SD_VARIANTS[config.sd].hub_id)
    text = _load_text_encoder(source)
    dino = None
    if config.kind == "cpm":
        dino = create_backbone("dinov2_vitb14", weights=dino_weights,
                               num_patches=config.dino_patches, final_norm=True)
    if state is None:
        config = replace(config, dim=text.dim,
                         dino_dim=int(dino.info.extra["dim"]) if dino is not None else 768)
    _check_fits(config, text, dino, weights)
    if official is not None and official.sequence_length not in (None, text.max_length):
        raise WeightsError(f"{official.file}: sequences of {official.sequence_length} tokens; "
                           f"this text encoder takes {text.max_length}")
    module = build_prompt(config)
    if state is None:
        _initialise(module, config, text, init_seed)
    else:
        _load_prompt_state(module, state, str(weights))
    backbone = SD4MatchBackbone(features, text, module, config, dino=dino, category=category)
    if weights is not None:
        file = official.file if official is not None else Path(weights).expanduser()
        backbone.prompt_file = str(file)
        backbone.prompt_sha256 = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return backbone


def _check_fits(config: PromptConfig, text: PromptEncoder, dino: Backbone | None,
                source: str | None) -> None:
    where = source or "sd4match"
    if config.dim != text.dim:
        raise WeightsError(f"{where}: prompt width {config.dim} != text encoder width {text.dim}")
    if config.num_tokens > text.max_learned:
        raise InputError(f"{where}: {config.num_tokens} learned tokens; the text encoder takes "
                         f"at most {text.max_learned}")
    if dino is not None and int(dino.info.extra["dim"]) != config.dino_dim:
        raise WeightsError(f"{where}: prompt expects DINOv2 width {config.dino_dim}, got "
                           f"{dino.info.extra['dim']}")


def _initialise(module: nn.Module, config: PromptConfig, text: PromptEncoder, seed: int
                ) -> None:
    """Seeded initialisation: SD4Match's random vocabulary embeddings for ``single``/``class``;
    for ``cpm``, the constructor's initialisation drawn under ``seed`` (the global RNG is
    restored afterwards)."""
    if isinstance(module, (SinglePrompt, ClassPrompt)):
        generator = torch.Generator().manual_seed(seed)
        rows, length = module.embeds.shape[:2]
        with torch.no_grad():
            module.embeds.copy_(text.random_token_embeddings(rows, length, generator))
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_prompt(config)
    module.load_state_dict(fresh.state_dict())


def _load_prompt_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly, naming ``source`` and the keys that do not fit."""
    own = module.state_dict()
    wrong = sorted(set(own) ^ set(state)) + sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state) if state[k].shape != own[k].shape
    )
    if wrong:
        raise WeightsError(f"{source}: tensors do not fit the prompt module ({', '.join(wrong)})")
    module.load_state_dict(state, strict=True)


@register_backbone("sd4match")
def _sd4match(*, weights: str | None = None, **options: Any) -> SD4MatchBackbone:
    """SD4Match: SD 2.1 features under a learned prompt; ``weights`` = prompt file."""
    try:
        return create_sd4match(weights=weights, **options)
    except TypeError as exc:
        raise InputError(f"sd4match: {exc}") from None

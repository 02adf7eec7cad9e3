"""SD4Match's prompt modules and the text encoder they feed (see :mod:`semcorr.features.sd4match`).

A prompt module produces learned token embeddings ``(B, L, D)``: :class:`SinglePrompt`,
:class:`ClassPrompt` or :class:`ConditionalPrompt` (CPM), built from a :class:`PromptConfig` by
:func:`build_prompt`. :class:`PromptEncoder` puts them between the start and end tokens of an
empty prompt and runs the frozen CLIP text encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from semcorr.conventions import check_shape
from semcorr.errors import InputError, WeightsError

__all__ = [
    "PROMPT_KINDS",
    "ClassPrompt",
    "ConditionalPrompt",
    "PromptConfig",
    "PromptEncoder",
    "SinglePrompt",
    "build_prompt",
]

#: Names of the prompt modules.
PROMPT_KINDS: tuple[str, ...] = ("single", "class", "cpm")


@dataclass(frozen=True)
class PromptConfig:
    """What is needed to rebuild a prompt module and the features it was trained for.

    Attributes:
        kind: ``single``, ``class`` or ``cpm``.
        dim: token embedding width ``D`` of the text encoder.
        length: learned tokens of a ``single``/``class`` prompt (published 75).
        categories: category names of a ``class`` prompt, in parameter order.
        global_length, cond_length: global and conditional tokens of a ``cpm`` prompt
            (published 25 and 50).
        dino_dim, dino_patches: DINOv2 width and patches per side feeding a ``cpm`` prompt.
        sd: Stable Diffusion variant (``sd21``).
        timestep, image_size: feature settings the prompt was trained with.
    """

    kind: str
    dim: int
    length: int = 75
    categories: tuple[str, ...] = ()
    global_length: int = 25
    cond_length: int = 50
    dino_dim: int = 768
    dino_patches: int = 16
    sd: str = "sd21"
    timestep: int = 261
    image_size: int = 768

    @property
    def num_tokens(self) -> int:
        """Learned tokens produced per pair."""
        return self.global_length + self.cond_length if self.kind == "cpm" else self.length

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        data = asdict(self)
        data["categories"] = list(self.categories)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "prompt config") -> PromptConfig:
        """Inverse of :meth:`to_json`; unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise WeightsError(f"{source}: unknown prompt settings {unknown}")
        try:
            config = cls(**{**data, "categories": tuple(data.get("categories", ()))})
        except TypeError as exc:
            raise WeightsError(f"{source}: bad prompt settings ({exc})") from None
        if config.kind not in PROMPT_KINDS:
            raise WeightsError(f"{source}: prompt kind {config.kind!r} not in {PROMPT_KINDS}")
        return config


class PromptEncoder(nn.Module):
    """The frozen CLIP text encoder fed with learned token embeddings.

    The sequence is ``[start, learned (L tokens), end, pad, ...]`` up to ``max_length``
    tokens; fixed tokens get their usual token + position embedding, learned ones are used as
    they are (they replace the whole embedding, as in SD4Match).

    Args:
        text_encoder: a ``transformers`` ``CLIPTextModel``.
        bos_id, eos_id, pad_id: token ids of the start, end and padding tokens.
        max_length: sequence length ``T`` (the tokenizer's ``model_max_length``).
    """

    def __init__(self, text_encoder: nn.Module, bos_id: int, eos_id: int, pad_id: int,
                 max_length: int) -> None:
        super().__init__()
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.bos_id, self.eos_id, self.pad_id = int(bos_id), int(eos_id), int(pad_id)
        self.max_length = int(max_length)

    @property
    def _model(self) -> nn.Module:
        return getattr(self.text_encoder, "text_model", self.text_encoder)

    @property
    def dim(self) -> int:
        """Token embedding width ``D``."""
        return int(self._model.embeddings.token_embedding.weight.shape[1])

    @property
    def max_learned(self) -> int:
        """Most learned tokens that fit between the start and end tokens."""
        return self.max_length - 2

    def token_ids(self, length: int, device: torch.device) -> torch.Tensor:
        """Ids ``(1, T)`` of the template ``[start, pad * length, end, pad ...]``."""
        ids = torch.full((1, self.max_length), self.pad_id, dtype=torch.long, device=device)
        ids[0, 0] = self.bos_id
        ids[0, length + 1] = self.eos_id
        return ids

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings ``(B, T, D)`` of token ids ``(B, T)``."""
        return self._model.embeddings(input_ids=ids)

    def random_token_embeddings(self, count: int, length: int,
                                generator: torch.Generator) -> torch.Tensor:
        """Embeddings ``(count, length, D)`` of random vocabulary tokens at positions 1..length
        (SD4Match's initialisation of a learned prompt)."""
        embeddings = self._model.embeddings
        vocab = embeddings.token_embedding.weight.shape[0]
        ids = torch.randint(0, vocab, (count, length), generator=generator)
        weight = embeddings.token_embedding.weight
        positions = embeddings.position_embedding.weight[1 : length + 1]
        with torch.no_grad():
            return (weight[ids.to(weight.device)] + positions).detach().clone()

    @property
    def device(self) -> torch.device:
        """Device of the text encoder."""
        return self._model.embeddings.token_embedding.weight.device

    def token_sequence(self, learned: torch.Tensor) -> torch.Tensor:
        """The encoder's input: ``[start, learned, end, pad ...]`` token embeddings.

        This is what SD4Match's released ``caption.pt`` files hold and what its CPM returns.

        Args:
            learned: ``(B, L, D)`` with ``L <= max_length - 2``.

        Returns:
            ``(B, T, D)``: fixed tokens with their token + position embeddings, learned ones as
            given.
        """
        dims = check_shape(learned, "B L D", "learned tokens")
        if dims["L"] > self.max_learned or dims["D"] != self.dim:
            raise InputError(
                f"prompt of {dims['L']} tokens x {dims['D']}: the text encoder takes at most "
                f"{self.max_learned} tokens of width {self.dim}"
            )
        b, length = dims["B"], dims["L"]
        template = self.embed_ids(self.token_ids(length, learned.device)).to(learned.dtype)
        return torch.cat([template[:, :1].expand(b, -1, -1), learned,
                          template[:, length + 1 :].expand(b, -1, -1)], dim=1)

    def forward(self, learned: torch.Tensor) -> torch.Tensor:
        """Conditioning of learned token embeddings.

        Args:
            learned: ``(B, L, D)`` with ``L <= max_length - 2``.

        Returns:
            ``(B, T, D)`` final-layer-normed encoder states.
        """
        tokens = self.token_sequence(learned)
        hidden = self._model.encoder(inputs_embeds=tokens,
                                     attention_mask=_causal_mask(tokens)).last_hidden_state
        return self._model.final_layer_norm(hidden)


def _causal_mask(tokens: torch.Tensor) -> torch.Tensor:
    """Additive causal mask ``(1, 1, T, T)`` (a token sees itself and earlier tokens)."""
    t = tokens.shape[1]
    future = torch.ones(t, t, dtype=torch.bool, device=tokens.device).triu(1)
    mask = torch.zeros(t, t, dtype=tokens.dtype, device=tokens.device)
    return mask.masked_fill(future, torch.finfo(tokens.dtype).min)[None, None]


class SinglePrompt(nn.Module):
    """One learned sequence ``(1, L, D)`` shared by every pair."""

    kind = "single"

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.embeds = nn.Parameter(torch.zeros(1, length, dim))

    def forward(self, batch_size: int) -> torch.Tensor:
        """Learned tokens ``(B, L, D)`` for ``batch_size`` pairs."""
        return self.embeds.expand(batch_size, -1, -1)


class ClassPrompt(nn.Module):
    """One learned sequence per category: ``embeds`` ``(K, L, D)``.

    Args:
        categories: the K category names, in parameter order.
        length, dim: ``L`` and ``D``.
    """

    kind = "class"

    def __init__(self, categories: Sequence[str], length: int, dim: int) -> None:
        super().__init__()
        if not categories:
            raise InputError("a class prompt needs at least one category")
        self.categories = tuple(categories)
        self._index = {name: i for i, name in enumerate(self.categories)}
        self.embeds = nn.Parameter(torch.zeros(len(self.categories), length, dim))

    def indices(self, categories: Sequence[str]) -> torch.Tensor:
        """Parameter rows ``(B,)`` of category names."""
        unknown = sorted({c for c in categories if c not in self._index})
        if unknown:
            raise InputError(f"class prompt: unknown categories {unknown} "
                             f"(known: {', '.join(self.categories)})")
        return torch.tensor([self._index[c] for c in categories], device=self.embeds.device)

    def forward(self, categories: Sequence[str]) -> torch.Tensor:
        """Learned tokens ``(B, L, D)`` of the pairs' categories (B names)."""
        return self.embeds[self.indices(categories)]


class ConditionalPrompt(nn.Module):
    """SD4Match's conditional prompt module (CPM).

    Args:
        dino_dim: channels ``C`` of the DINOv2 patch tokens.
        num_patches: patch tokens ``P`` per image.
        dim: output token width ``D``.
        global_length: learned global tokens ``G``.
        cond_length: conditional tokens ``N_c`` (pooled from the pair's features).
    """

    kind = "cpm"

    def __init__(self, dino_dim: int, num_patches: int, dim: int, global_length: int,
                 cond_length: int) -> None:
        super().__init__()
        self.global_embeds = nn.Parameter(torch.rand(1, global_length, dim))
        self.project_channels = nn.Linear(2 * dino_dim, dim)
        self.mix_patches = nn.Linear(num_patches, num_patches)
        self.pool = nn.AdaptiveMaxPool1d(cond_length)
        self.position = nn.Parameter(torch.rand(1, cond_length, dim))
        self.alpha = nn.Parameter(torch.rand(1, cond_length, dim))

    def forward(self, tokens0: torch.Tensor, tokens1: torch.Tensor) -> torch.Tensor:
        """Learned tokens of a pair.

        Args:
            tokens0, tokens1: ``(B, P, C)`` DINOv2 patch tokens of the source and target.

        Returns:
            ``(B, G + N_c, D)``: the global tokens, then the conditional tokens.
        """
        dims = check_shape(tokens0, "B P C", "source tokens")
        check_shape(tokens1, f"{dims['B']} {dims['P']} {dims['C']}", "target tokens")
        x = self.project_channels(torch.cat([tokens0, tokens1], dim=-1))  # (B, P, D)
        x = self.mix_patches(x.transpose(1, 2))  # (B, D, P)
        x = self.pool(x).transpose(1, 2)  # (B, N_c, D)
        cond = torch.tanh(self.alpha) * (x + self.position)
        return torch.cat([self.global_embeds.expand(dims["B"], -1, -1), cond], dim=1)


def build_prompt(config: PromptConfig) -> nn.Module:
    """A prompt module of ``config.kind`` (zero or uniform initialisation)."""
    if config.kind == "single":
        return SinglePrompt(config.length, config.dim)
    if config.kind == "class":
        return ClassPrompt(config.categories, config.length, config.dim)
    if config.kind == "cpm":
        return ConditionalPrompt(config.dino_dim, config.dino_patches ** 2, config.dim,
                                 config.global_length, config.cond_length)
    raise InputError(f"unknown prompt kind {config.kind!r} (known: {', '.join(PROMPT_KINDS)})")

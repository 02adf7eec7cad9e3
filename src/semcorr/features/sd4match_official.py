"""SD4Match as released: its prompt files, read and written in their own layout, and the
conditional prompt module's DINOv2 input.

The official code keeps each learned prompt in a folder named after its prompt type, holding
one torch file:

* ``Single_<dataset>_sd2-1_TokenEmbeds<L>/caption.pt`` and
  ``Class_<dataset>_sd2-1_TokenEmbeds<L>/caption.pt``: a dict of ``(1, T, D)`` token-embedding
  sequences, keyed ``"dataset"`` (single prompt) or by category name (class prompt). A
  sequence is the whole input of the CLIP text encoder: the start token's embedding, the ``L``
  learned embeddings, the end token's embedding, then padding (none when ``L = T - 2``, the
  published 75). Pairs of a batch take their sequences concatenated along dim 0.
* ``CPM_<dataset>_sd2-1_<Img|Pair>-<DINO|CLIP>-<Feat|Head>-G<g>-C<c>/ckpt.pt``: the state dict
  of the conditional prompt module (``global_embeds``, ``positional_embedding``,
  ``linear_C.*``, ``linear_N.*``, ``alpha_cond``; the text embeddings are left out).

semcorr reads these files with ``torch.load(weights_only=True)`` into its own prompt modules
(:mod:`semcorr.features.sd4match`): the learned rows of a sequence become a
``SinglePrompt``/``ClassPrompt``, the CPM tensors are renamed. Only the published kinds are
supported: token embeddings (not ``HiddenState`` prompts) and ``Pair-DINO-Feat`` CPMs. The
folder's name, when it follows the pattern, says the prompt kind, and must agree with the
file's content. :func:`write_official_prompt` writes semcorr prompts back in this layout.

The CPM's DINOv2 tokens come from the original image through the ``facebook/dinov2-base``
image processor (shortest edge to 256, bicubic, centre crop 224, ImageNet mean/std), not from
the Stable Diffusion input: :func:`cpm_dino_input` makes that crop.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semcorr.errors import WeightsError
from semcorr.features.sd4match_prompts import PromptConfig

__all__ = [
    "CPM_KEYS",
    "cpm_dino_input",
    "OFFICIAL_FILES",
    "OfficialPrompt",
    "is_official_prompt",
    "official_prompt_name",
    "read_official_prompt",
    "write_official_prompt",
]

#: Official CPM state-dict keys → semcorr ``ConditionalPrompt`` keys (official order).
CPM_KEYS: dict[str, str] = {
    "global_embeds": "global_embeds",
    "positional_embedding": "position",
    "linear_C.weight": "project_channels.weight",
    "linear_C.bias": "project_channels.bias",
    "linear_N.weight": "mix_patches.weight",
    "linear_N.bias": "mix_patches.bias",
    "alpha_cond": "alpha",
}
#: File name of each official prompt family.
OFFICIAL_FILES: dict[str, str] = {"caption": "caption.pt", "cpm": "ckpt.pt"}
_SIMPLE_NAME = re.compile(
    r"^(?P<kind>Single|Class)_(?P<dataset>.+)_sd(?P<sd>[\d-]+)_"
    r"(?:TokenEmbeds(?P<length>\d+)|(?P<hidden>HiddenState))$")
_CPM_NAME = re.compile(
    r"^CPM_(?P<dataset>.+)_sd(?P<sd>[\d-]+)_(?P<mode>Img|Pair)-(?P<extractor>CLIP|DINO)-"
    r"(?P<feature>Head|Feat)-G(?P<global_length>\d+)-C(?P<cond_length>\d+)$")
_SD_NAMES = {"2-1": "sd21"}


@dataclass(frozen=True)
class OfficialPrompt:
    """An official prompt file read into semcorr's terms.

    Attributes:
        config: the prompt's :class:`~semcorr.features.sd4match.PromptConfig` (``dim`` and
            ``dino_dim`` from the tensors).
        state: the semcorr prompt module's tensors.
        file: the ``caption.pt``/``ckpt.pt`` read.
        sequence_length: ``T`` of a caption file's sequences (``None`` for a CPM); it must
            be the text encoder's length.
        dataset: the dataset named by the folder (``None`` when the folder is renamed).
    """

    config: PromptConfig
    state: dict[str, torch.Tensor]
    file: Path
    sequence_length: int | None
    dataset: str | None


def _official_file(path: Path) -> Path | None:
    if path.is_dir():
        found = [path / n for n in OFFICIAL_FILES.values() if (path / n).is_file()]
        return found[0] if len(found) == 1 else None
    return path if path.suffix in (".pt", ".pth") else None


def is_official_prompt(path: str | os.PathLike[str]) -> bool:
    """True for a torch file (``.pt``/``.pth``) or a folder holding ``caption.pt`` or
    ``ckpt.pt``: SD4Match's own layout rather than semcorr's safetensors."""
    return _official_file(Path(path).expanduser()) is not None


def _load(file: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unpickling failure is a bad file)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{file}: not a loadable SD4Match prompt file ({first})") from None


def _sd_variant(text: str | None, file: Path) -> str:
    if text is None:
        return "sd21"
    if text not in _SD_NAMES:
        raise WeightsError(f"{file}: made for Stable Diffusion {text}; semcorr's SD4Match runs "
                           f"on {', '.join(_SD_NAMES)}")
    return _SD_NAMES[text]


def read_official_prompt(path: str | os.PathLike[str]) -> OfficialPrompt:
    """Read ``caption.pt`` / ``ckpt.pt`` (or the folder holding it) as released.

    Raises:
        WeightsError: naming the file when it is missing, unreadable, of an unsupported kind,
            or when its content contradicts its folder's name.
    """
    given = Path(path).expanduser()
    file = _official_file(given)
    if file is None or not file.is_file():
        raise WeightsError(f"{given}: no SD4Match caption.pt or ckpt.pt there")
    data = _load(file)
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{file}: not an SD4Match prompt file (expected a dict of tensors)")
    data = {str(k): v.detach().float() for k, v in data.items()}
    if "global_embeds" in data or "alpha_cond" in data:
        return _read_cpm(file, data)
    return _read_caption(file, data)


def _read_caption(file: Path, data: dict[str, torch.Tensor]) -> OfficialPrompt:
    name = _SIMPLE_NAME.match(file.parent.name)
    if name is not None and name["hidden"]:
        raise WeightsError(f"{file}: a HiddenState prompt (learned encoder states); semcorr "
                           "reads the published TokenEmbeds prompts")
    shapes = {tuple(v.shape) for v in data.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[0] != 1:
        raise WeightsError(f"{file}: caption sequences must all be (1, T, D), got "
                           f"{sorted(shapes)}")
    _, t, dim = next(iter(shapes))
    single = set(data) == {"dataset"}
    kind = "single" if single else "class"
    if name is not None and name["kind"].lower() != kind:
        raise WeightsError(f"{file}: folder {file.parent.name} says {name['kind']} but the file "
                           f"holds {'one dataset prompt' if single else 'class prompts'}")
    length = t - 2 if name is None else min(int(name["length"]), t - 2)
    if length < 1:
        raise WeightsError(f"{file}: sequences of {t} tokens hold no learned token")
    rows = torch.cat(list(data.values()), dim=0)[:, 1:1 + length]  # (K, L, D)
    config = PromptConfig(kind=kind, dim=dim, length=length,
                          categories=() if single else tuple(data),
                          sd=_sd_variant(name and name["sd"], file))
    return OfficialPrompt(config, {"embeds": rows.contiguous()}, file, t,
                          name["dataset"] if name else None)


def _read_cpm(file: Path, data: dict[str, torch.Tensor]) -> OfficialPrompt:
    name = _CPM_NAME.match(file.parent.name)
    if name is not None and (name["mode"], name["extractor"], name["feature"]) != (
            "Pair", "DINO", "Feat"):
        raise WeightsError(f"{file}: a {name['mode']}-{name['extractor']}-{name['feature']} CPM; "
                           "semcorr implements the published Pair-DINO-Feat")
    missing = sorted(set(CPM_KEYS) - set(data))
    extra = sorted(set(data) - set(CPM_KEYS) - {"text_model_embeddings.token_embedding.weight",
                                                 "text_model_embeddings.position_embedding.weight"})
    if missing or extra:
        raise WeightsError(f"{file}: not a Pair-DINO-Feat CPM checkpoint (missing {missing}, "
                           f"unexpected {extra})")
    state = {ours: data[theirs].contiguous() for theirs, ours in CPM_KEYS.items()}
    dim = int(state["global_embeds"].shape[-1])
    patches = int(state["mix_patches.weight"].shape[0])
    side = round(patches ** 0.5)
    if side * side != patches:
        raise WeightsError(f"{file}: {patches} DINOv2 patches is not a square grid")
    config = PromptConfig(
        kind="cpm", dim=dim, global_length=int(state["global_embeds"].shape[1]),
        cond_length=int(state["position"].shape[1]),
        dino_dim=int(state["project_channels.weight"].shape[1]) // 2, dino_patches=side,
        sd=_sd_variant(name and name["sd"], file))
    if name is not None and (int(name["global_length"]), int(name["cond_length"])) != (
            config.global_length, config.cond_length):
        raise WeightsError(f"{file}: folder {file.parent.name} disagrees with the tensors "
                           f"(G{config.global_length}-C{config.cond_length})")
    return OfficialPrompt(config, state, file, None, name["dataset"] if name else None)


def official_prompt_name(config: PromptConfig, dataset: str) -> str:
    """The official folder name of a prompt, e.g. ``Class_spair_sd2-1_TokenEmbeds75`` or
    ``CPM_spair_sd2-1_Pair-DINO-Feat-G25-C50``."""
    sd = {v: k for k, v in _SD_NAMES.items()}.get(config.sd, config.sd)
    if config.kind == "cpm":
        return (f"CPM_{dataset}_sd{sd}_Pair-DINO-Feat-G{config.global_length}"
                f"-C{config.cond_length}")
    return f"{config.kind.capitalize()}_{dataset}_sd{sd}_TokenEmbeds{config.length}"


def write_official_prompt(folder: str | os.PathLike[str], prompt: nn.Module, config: PromptConfig,
                          text: Any, dataset: str) -> Path:
    """Write a semcorr prompt as the official code saves it.

    Args:
        folder: where the prompt's folder (:func:`official_prompt_name`) is created.
        prompt: a ``SinglePrompt``, ``ClassPrompt`` or ``ConditionalPrompt``.
        config: its ``PromptConfig``.
        text: the ``PromptEncoder`` whose start/end/padding embeddings complete a caption
            sequence.
        dataset: dataset name for the folder (``spair``, ``pfpascal``, ...).

    Returns:
        The ``caption.pt`` or ``ckpt.pt`` written.
    """
    import io

    from semcorr.io import atomic_write_bytes

    out = Path(folder) / official_prompt_name(config, dataset)
    state = {k: v.detach().cpu() for k, v in prompt.state_dict().items()}
    if config.kind == "cpm":
        payload: dict[str, torch.Tensor] = {theirs: state[ours].contiguous()
                                            for theirs, ours in CPM_KEYS.items()}
        file = out / OFFICIAL_FILES["cpm"]
    else:
        with torch.no_grad():
            sequences = text.token_sequence(state["embeds"].to(text.device)).cpu()  # (K, T, D)
        keys = ["dataset"] if config.kind == "single" else list(config.categories)
        payload = {k: sequences[i:i + 1].clone() for i, k in enumerate(keys)}
        file = out / OFFICIAL_FILES["caption"]
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(file, buffer.getvalue())
    return file



def cpm_dino_input(image: torch.Tensor, crop: int = 224) -> torch.Tensor:
    """The DINOv2 input SD4Match's CPM sees: the image processor's resize and centre crop.

    The official code runs ``AutoImageProcessor.from_pretrained("facebook/dinov2-base")`` on
    the original PIL image: the shortest edge becomes 256 (the longer one
    ``int(256 * long / short)``), bicubic (PIL, on 8-bit pixels), then the central 224 x 224
    is cut out (offsets ``(size - 224) // 2``) and scaled to [0, 1]; the mean/std is the
    DINOv2 backbone's own normalisation. For another crop side ``c`` the short edge becomes
    ``c * 8 // 7`` (256 for 224).

    Args:
        image: ``(3, H, W)`` in [0, 1] (8-bit images are recovered exactly by rounding).
        crop: the DINOv2 input side (patches x 14).

    Returns:
        ``(3, crop, crop)`` float32 in [0, 1], on the CPU.
    """
    from PIL import Image

    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"cpm_dino_input: expected (3, H, W), got {tuple(image.shape)}")
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pil = Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())
    short_side = crop * 8 // 7
    width, height = pil.size
    if width <= height:
        size = (short_side, int(short_side * height / width))
    else:
        size = (int(short_side * width / height), short_side)
    resized = pil.resize(size, resample=Image.BICUBIC)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    out = np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float32)
    return torch.from_numpy(out / np.float32(255)).permute(2, 0, 1).contiguous()

"""Training SD4Match prompts with the Gaussian-target cross-entropy
(:mod:`semcorr.train.sd4match_loss`, re-exported here).

Training (``semcorr train sd4match``): only the prompt module learns (Adam, constant lr; a
CPM's linear layers at a tenth of it, as the official ``train_cpm.py``); the Stable Diffusion
backbone is frozen; timestep 261, fresh noise every step. Pairs come from

* a benchmark's training split (``dataset=spair|pf-pascal|keypoints-json root=DIR``),
  prepared as the official code does (:mod:`semcorr.train.sd4match_pairs`: images stretched
  to the square, keypoints scaled and read corner-aligned, PF-PASCAL's flipped rows mirrored,
  loss averaged per pair, the CPM's DINOv2 input cut from the original image), in seeded
  epochs; the official epochs are the default (SPair-71k 5, PF-PASCAL 90,
  ``script/*/sd4match_*.sh``); a ``class`` prompt has one row per category;
* or synthetic pairs (``dataset=synthetic images=DIR``): images from a folder, resized to the
  input square, warped by random similarity transforms with known ground truth
  (:mod:`semcorr.geometry.warp`); a ``class`` prompt uses each image's file stem as its
  category.

Checkpoints: ``OUT/last.pt`` (prompt, optimizer, RNG, step; resumed automatically) and
``OUT/prompt.safetensors`` + ``OUT/prompt.json`` (prompt tensors only, for
``create_backbone("sd4match", weights=...)``; with a validation split, the best prompt after
each epoch by nearest-neighbour PCK@0.1, as the official training); with
``export_official=true`` also
``OUT/official/<prompt type>/caption.pt`` or ``ckpt.pt``, the released layout. Under
``torchrun`` each rank draws its own pairs and gradients are averaged (DDP over the prompt
module).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semcorr.errors import InputError
from semcorr.train.sd4match_loss import (
    gaussian_cross_entropy,
    gaussian_kernel,
    matching_probabilities,
    pixels_to_cells,
    predict_cells,
    sd4match_loss,
)
from semcorr.train.sd4match_pairs import SyntheticPairs, list_images

__all__ = [
    "OFFICIAL_EPOCHS",
    "SD4MatchTrainConfig",
    "SyntheticPairs",
    "TRAIN_DATASETS",
    "build_backbone",
    "config_from_sources",
    "gaussian_cross_entropy",
    "gaussian_kernel",
    "list_images",
    "matching_probabilities",
    "next_batch",
    "pixels_to_cells",
    "predict_cells",
    "prompt_optimizer",
    "sd4match_loss",
    "total_steps",
    "train_sd4match",
    "training_data",
    "training_step",
    "validation_data",
    "validation_score",
]



# ----------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SD4MatchTrainConfig:
    """Settings of ``semcorr train sd4match`` (published values where they exist).

    Attributes:
        dataset: ``synthetic`` (warped images) or a benchmark: ``spair``, ``pf-pascal``,
            ``keypoints-json``.
        root: the benchmark's folder, as downloaded.
        split: its training split (default ``trn`` for SPair-71k and PF-PASCAL, ``train``).
        epochs: passes over a benchmark's pairs (default: the official 5 for SPair-71k, 90
            for PF-PASCAL; ``steps`` otherwise); ``steps`` is then derived from it.
        export_official: also write the prompt in SD4Match's released layout.
        select_best: keep the prompt with the best validation PCK (SPair-71k, PF-PASCAL), as
            the official training does.
        fresh_noise: draw new diffusion noise at every step (seeded by ``seed``, the step and
            the rank), as the official training does; off: one fixed draw throughout.
        images: folder of training images (synthetic pairs).
        out: output folder.
        prompt: ``single``, ``class`` or ``cpm``.
        sd_weights: Stable Diffusion 2.1 diffusers folder or hub id.
        dino_weights: DINOv2 ViT-B/14 weights (``cpm``).
        steps: optimisation steps.
        batch_size: pairs per step (published 3 per GPU).
        lr: Adam learning rate (published 0.01, constant).
        beta: softmax temperature (0.04).
        kernel_size: Gaussian target window (7).
        num_points: keypoints per pair.
        image_size: input side (768).
        timestep: diffusion timestep (261).
        length: learned tokens of ``single``/``class`` prompts (75).
        global_length, cond_length: ``cpm`` tokens (25, 50).
        dino_patches: DINOv2 patches per side for ``cpm`` (16).
        pairs: number of distinct synthetic pairs per image folder pass (0 = fresh every step).
        seed: seed of the prompt initialisation, the noise and the pairs.
        checkpoint_every: steps between checkpoints.
        device: torch device (default cuda if available).
    """

    dataset: str = "synthetic"
    root: str = ""
    split: str | None = None
    epochs: int | None = None
    export_official: bool = False
    select_best: bool = True
    fresh_noise: bool = True
    images: str = ""
    out: str = ""
    prompt: str = "single"
    sd_weights: str | None = None
    dino_weights: str | None = None
    steps: int = 1000
    batch_size: int = 3
    lr: float = 0.01
    beta: float = 0.04
    kernel_size: int = 7
    num_points: int = 32
    image_size: int = 768
    timestep: int = 261
    length: int = 75
    global_length: int = 25
    cond_length: int = 50
    dino_patches: int = 16
    pairs: int = 0
    seed: int = 0
    checkpoint_every: int = 100
    device: str | None = None

    def check(self) -> None:
        """Raise :class:`InputError` for missing or impossible settings."""
        if self.dataset not in TRAIN_DATASETS:
            raise InputError(f"sd4match training: dataset must be one of {TRAIN_DATASETS}, "
                             f"got {self.dataset!r}")
        if self.dataset == "synthetic" and (not self.images or not self.out):
            raise InputError("sd4match training needs images=FOLDER and out=FOLDER")
        if self.dataset != "synthetic" and (not self.root or not self.out):
            raise InputError(f"sd4match training on {self.dataset} needs --root DIR and "
                             "out=FOLDER")
        if self.epochs is not None and self.epochs < 1:
            raise InputError("sd4match training: epochs must be >= 1")
        if self.steps < 1 or self.batch_size < 1 or self.num_points < 1:
            raise InputError("sd4match training: steps, batch_size, num_points must be >= 1")
        if self.beta <= 0 or self.lr <= 0:
            raise InputError("sd4match training: beta and lr must be positive")


#: Where training pairs come from.
TRAIN_DATASETS: tuple[str, ...] = ("synthetic", "spair", "pf-pascal", "keypoints-json")
#: The official epochs (script/spair/*.sh, script/pfpascal/*.sh) and training splits.
OFFICIAL_EPOCHS: dict[str, int] = {"spair": 5, "pf-pascal": 90}
_TRAIN_SPLITS: dict[str, str] = {"spair": "trn", "pf-pascal": "trn", "keypoints-json": "train"}
#: Dataset names in the official prompt folders.
_OFFICIAL_DATASET_NAMES: dict[str, str] = {"spair": "spair", "pf-pascal": "pfpascal"}

#: Settings that may change when resuming (the rest must match the checkpoint).
_RESUMABLE = {"steps", "epochs", "checkpoint_every", "device", "out", "export_official"}


def config_from_sources(file: str | None = None, overrides: Sequence[str] = (),
                        prompt: str | None = None, **flags: Any) -> SD4MatchTrainConfig:
    """Defaults < file (YAML/JSON) < ``key=value`` overrides < ``--prompt`` and the other
    flags given (``dataset``, ``root``, ``export_official``; ``None`` = not given)."""
    from semcorr.config import build_config, parse_overrides

    layer = parse_overrides(list(overrides))
    if prompt is not None:
        layer["prompt"] = prompt
    layer.update({k: v for k, v in flags.items() if v is not None})
    config = build_config(SD4MatchTrainConfig, file, layer)
    config.check()
    return config


def total_steps(config: SD4MatchTrainConfig, pairs: int | None, world_size: int = 1) -> int:
    """Optimisation steps: ``epochs`` (default the official ones) over ``pairs`` benchmark
    pairs, else ``config.steps``."""
    from semcorr.train.sd4match_pairs import steps_per_epoch

    epochs = config.epochs if config.epochs is not None else OFFICIAL_EPOCHS.get(config.dataset)
    if pairs is None or epochs is None:
        return config.steps
    return epochs * steps_per_epoch(pairs, config.batch_size, world_size)


def training_data(config: SD4MatchTrainConfig) -> Any:
    """The pairs to train on: :class:`SyntheticPairs` or
    :class:`~semcorr.train.sd4match_pairs.AnnotatedPairs` of the benchmark's training split."""
    if config.dataset == "synthetic":
        return SyntheticPairs(list_images(config.images), config.image_size, config.num_points)
    from semcorr.data import create_dataset
    from semcorr.train.sd4match_pairs import AnnotatedPairs

    split = config.split or _TRAIN_SPLITS[config.dataset]
    dataset = create_dataset(config.dataset, config.root, split=split)
    dino_side = config.dino_patches * 14 if config.prompt == "cpm" else None
    return AnnotatedPairs(dataset, config.image_size, dino_side)


def prompt_optimizer(prompt: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over the prompt; a CPM's two linear layers learn at ``lr / 10`` (``train_cpm.py``)."""
    slow = [p for n, p in prompt.named_parameters()
            if n.startswith(("project_channels.", "mix_patches."))]
    fast = [p for n, p in prompt.named_parameters()
            if not n.startswith(("project_channels.", "mix_patches."))]
    groups = [{"params": fast}] + ([{"params": slow, "lr": 0.1 * lr}] if slow else [])
    return torch.optim.Adam(groups, lr=lr)


# ---------------------------------------------------------------------------------- trainer
def build_backbone(config: SD4MatchTrainConfig, categories: Sequence[str]) -> nn.Module:
    """The SD4Match backbone with a fresh prompt for ``config``."""
    from semcorr.features.sd4match import create_sd4match

    return create_sd4match(
        sd_weights=config.sd_weights, dino_weights=config.dino_weights, prompt=config.prompt,
        categories=sorted(set(categories)) if config.prompt == "class" else (),
        length=config.length,
        global_length=config.global_length, cond_length=config.cond_length,
        dino_patches=config.dino_patches, timestep=config.timestep,
        image_size=config.image_size, init_seed=config.seed,
    )


def next_batch(data: Any, config: SD4MatchTrainConfig, generator: torch.Generator,
               step: int = 0, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """The batch of ``step``.

    Annotated pairs: the ``step``-th slice of seeded per-epoch permutations
    (:func:`~semcorr.train.sd4match_pairs.epoch_indices`). Synthetic pairs, drawn from
    ``generator``: with ``config.pairs > 0`` from a fixed pool (pair ``p`` is image
    ``p % #images`` under a warp seeded by ``(seed, p)``); otherwise every pair is fresh.
    """
    if not isinstance(data, SyntheticPairs):
        from semcorr.train.sd4match_pairs import epoch_indices

        indices = epoch_indices(len(data), config.batch_size, world_size, rank, step,
                                config.seed)
        return data.collate([data.sample(i) for i in indices])
    count = len(data.paths)
    if config.pairs > 0:
        pool = torch.randint(0, config.pairs, (config.batch_size,), generator=generator)
        samples = [data.sample(p % count, torch.Generator().manual_seed(
            config.seed * 1_000_003 + p)) for p in pool.tolist()]
    else:
        indices = torch.randint(0, count, (config.batch_size,), generator=generator)
        samples = [data.sample(i, generator) for i in indices.tolist()]
    return SyntheticPairs.collate(samples)


def training_step(backbone: nn.Module, batch: dict[str, Any], config: SD4MatchTrainConfig
                  ) -> torch.Tensor:
    """The loss of one batch (prompt parameters carry the gradient).

    Synthetic pairs read keypoints at pixel centres and average over keypoints; annotated
    pairs follow the official code (corner-aligned grid, average per pair, DINOv2 inputs from
    the original images).
    """
    from semcorr.train.sd4match_pairs import stretched_to_cells

    device = backbone.device
    x0 = backbone.normalize(batch["image0"].to(device))
    x1 = backbone.normalize(batch["image1"].to(device))
    dino = (batch["dino0"].to(device), batch["dino1"].to(device)) if "dino0" in batch else None
    f0, f1 = backbone.pair_features(x0, x1, batch["category"], dino_inputs=dino)
    p0, p1 = batch["points0"].to(device), batch["points1"].to(device)
    if config.dataset == "synthetic":
        c0, c1 = pixels_to_cells(p0, backbone.stride), pixels_to_cells(p1, backbone.stride)
        average = "points"
    else:
        c0 = stretched_to_cells(p0, x0.shape[-1], f0.shape[-1])
        c1 = stretched_to_cells(p1, x1.shape[-1], f1.shape[-1])
        average = "pairs"
    return sd4match_loss(f0, f1, c0, c1, batch["valid"].to(device), beta=config.beta,
                         size=config.kernel_size, average=average)


def train_sd4match(config: SD4MatchTrainConfig,
                   progress: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    """Train a prompt; resumes from ``OUT/last.pt`` when present.

    With a validation split (SPair-71k, PF-PASCAL; ``select_best``), the prompt is measured
    after every epoch (:func:`validation_score`) and ``prompt.safetensors`` (and the official
    export) is the best one so far, as the official training keeps it; otherwise it is the
    last one.

    Returns:
        The path of ``prompt.safetensors``.
    """
    from semcorr import distributed
    from semcorr.io import atomic_write_json, check_output_dir
    from semcorr.train.checkpoint import load_checkpoint, save_checkpoint, unwrap
    from semcorr.train.sd4match_pairs import steps_per_epoch

    config.check()
    out = check_output_dir(config.out, "out")  # made by the first write, after the checks
    joined = torch.distributed.is_available() and torch.distributed.is_initialized()
    dist = distributed.init_from_env(use_cuda=config.device != "cpu")
    device = _device(config.device, dist)
    data = training_data(config)
    annotated = not isinstance(data, SyntheticPairs)
    steps = total_steps(config, len(data) if annotated else None, dist.world_size)
    epoch = steps_per_epoch(len(data), config.batch_size, dist.world_size) if annotated else 0
    val = validation_data(config) if dist.is_main else None
    backbone = build_backbone(config, data.categories).to(device)
    backbone.train()
    prompt = backbone.prompt
    optimizer = prompt_optimizer(prompt, config.lr)
    generator = torch.Generator().manual_seed(config.seed + 7919 * dist.rank)
    step, losses, scores = 0, [], []
    plain = _plain(config)
    if (out / "last.pt").is_file():
        state = load_checkpoint(out / "last.pt", model=prompt, optimizer=optimizer,
                                generators={"pairs": generator})
        _check_resume(out / "last.pt", state["extra"].get("config", {}), plain)
        step, losses = state["step"], list(state["extra"].get("losses", []))
        scores = list(state["extra"].get("val_pck", []))
    if dist.world_size > 1:
        backbone.prompt = nn.parallel.DistributedDataParallel(prompt)
    while step < steps:
        batch = next_batch(data, config, generator, step, dist.rank, dist.world_size)
        if config.fresh_noise:
            backbone.sd.seed = _noise_seed(config.seed, step + 1, dist.rank)
        loss = training_step(backbone, batch, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        numbers = {"loss": losses[-1]}
        step += 1
        epoch_end = val is not None and step % epoch == 0
        if epoch_end:
            backbone.sd.seed = _noise_seed(config.seed, 0, 0)  # one noise for every epoch
            scores.append(validation_score(backbone, val, config))
            numbers["val_pck"] = scores[-1]
            if scores[-1] > max(scores[:-1], default=-1.0):
                _save_prompt(out, backbone, config)
        if progress is not None and dist.is_main:
            progress(step - 1, numbers)
        if dist.is_main and (step % config.checkpoint_every == 0 or step == steps or epoch_end):
            save_checkpoint(out / "last.pt", model=unwrap(backbone.prompt), step=step,
                            optimizer=optimizer, generators={"pairs": generator},
                            extra={"config": plain, "losses": losses, "val_pck": scores})
            if val is None:
                _save_prompt(out, backbone, config)
            atomic_write_json(out / "train.json", {"config": plain, "step": step,
                                                   "steps": steps, "losses": losses,
                                                   "val_pck": scores})
    distributed.barrier()
    if not joined:
        distributed.cleanup()
    return out / "prompt.safetensors"


def _noise_seed(seed: int, step: int, rank: int) -> int:
    """The diffusion noise seed of a training step (step 0: validation)."""
    return (seed * 1_000_003 + step * 7919 + rank) % (2**63)


def _save_prompt(out: Path, backbone: nn.Module, config: SD4MatchTrainConfig) -> None:
    """``prompt.safetensors`` (+ the official layout with ``export_official``)."""
    from semcorr.features.sd4match import save_prompt
    from semcorr.train.checkpoint import unwrap

    out.mkdir(parents=True, exist_ok=True)
    save_prompt(out / "prompt.safetensors", unwrap(backbone.prompt), backbone.config)
    if config.export_official:
        from semcorr.features.sd4match_official import write_official_prompt

        name = _OFFICIAL_DATASET_NAMES.get(config.dataset, config.dataset.replace("-", ""))
        write_official_prompt(out / "official", unwrap(backbone.prompt), backbone.config,
                              backbone.text, name)


def validation_data(config: SD4MatchTrainConfig) -> Any:
    """The validation pairs the official training selects its prompt on (SPair-71k and
    PF-PASCAL ``val``, PCK reference: the target box / the image), or ``None`` (synthetic or
    ``keypoints-json`` pairs, ``select_best=false``, or an empty split)."""
    if not config.select_best or config.dataset not in OFFICIAL_EPOCHS:
        return None
    from semcorr.data import create_dataset
    from semcorr.train.sd4match_pairs import AnnotatedPairs

    try:
        dataset = create_dataset(config.dataset, config.root, split="val")
    except InputError as exc:
        raise InputError(f"{exc} (the validation split selects the prompt; "
                         "select_best=false trains without it)") from None
    if len(dataset) == 0:
        return None
    dino_side = config.dino_patches * 14 if config.prompt == "cpm" else None
    threshold = "image" if config.dataset == "pf-pascal" else "bbox"
    return AnnotatedPairs(dataset, config.image_size, dino_side, threshold)


def validation_score(backbone: nn.Module, data: Any, config: SD4MatchTrainConfig) -> float:
    """Nearest-neighbour PCK@0.1 per pair, averaged over the pairs
    (:func:`~semcorr.train.sd4match_pairs.nearest_neighbour_pck`), as the official training
    measures its prompt after each epoch."""
    from semcorr.train.sd4match_pairs import nearest_neighbour_pck

    device, per_pair = backbone.device, []
    with torch.no_grad():
        for start in range(0, len(data), config.batch_size):
            batch = data.collate([data.sample(i) for i in
                                  range(start, min(start + config.batch_size, len(data)))])
            x0 = backbone.normalize(batch["image0"].to(device))
            x1 = backbone.normalize(batch["image1"].to(device))
            dino = ((batch["dino0"].to(device), batch["dino1"].to(device))
                    if "dino0" in batch else None)
            f0, f1 = backbone.pair_features(x0, x1, batch["category"], dino_inputs=dino)
            per_pair.append(nearest_neighbour_pck(
                f0, f1, batch["points0"].to(device), batch["points1"].to(device),
                batch["valid"].to(device), batch["threshold"].to(device), x0.shape[-1]))
    return float(torch.cat(per_pair).float().mean())


def _device(name: str | None, dist: Any) -> torch.device:
    from semcorr import distributed

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return distributed.local_device(torch.device(name), dist)
    except RuntimeError as exc:
        raise InputError(f"bad device {name!r}: {exc}") from None


def _plain(config: SD4MatchTrainConfig) -> dict[str, Any]:
    from semcorr.config import config_to_dict

    return config_to_dict(config)


def _check_resume(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in _RESUMABLE and saved.get(k) != current.get(k))
    if changed:
        raise InputError(f"{path}: was trained with other settings ({', '.join(changed)}); "
                         "use another out folder or the same settings")

"""Light fine-tuning of a ViT backbone's last blocks with keypoint supervision.

Everything but the last ``layers`` blocks of the backbone (and the module after them: the final
norm of DINOv2/DINOv3 when it is used, SAM's neck when the features are read after it) is frozen.
A step takes ``batch_size`` annotated pairs (:class:`~semcorr.data.PairSample`), computes the
features of both images, samples the source keypoints' descriptors and scores them against the
whole target grid (:func:`~semcorr.match.similarity.cosine_similarity`), then applies one of:

* ``ce``: cross-entropy between ``softmax(scores / temperature)`` over the target grid and the
  bilinear weights of the true target position on its four nearest cells (the distribution whose
  mean is the target);
* ``softargmax``: the distance in cells between the soft-argmax of the scores
  (:func:`~semcorr.match.rules.window_soft_argmax2d`, the rule evaluation uses) and the target.

Padding cells are masked with ``-inf`` (:func:`~semcorr.match.rules.masked_scores`). A pair's
loss is the mean over its keypoints visible in both images; a step's loss is the sum of the
pairs' losses divided by ``batch_size``, so the gradient does not depend on how the pairs are
split into micro-batches (gradient accumulation) or over ``torchrun`` processes (gradients are
summed across ranks).

AdamW (no decay on biases, norms and layer scales), linear warm-up then cosine decay, optional
fp16/bf16 autocast with a gradient scaler for fp16. ``OUT/last.pt`` holds only the trained
parameters, the optimizer, scheduler and scaler states, the RNG states, the step and the
history, so a killed run resumes exactly; ``OUT/best.pt`` holds the trained parameters with the
best validation PCK. Both record the base backbone (name, weights, options) and a SHA-256 of
its frozen parameters: :func:`load_finetuned` rebuilds the base and applies the trained
parameters over it (what ``semcorr eval --weights OUT/best.pt`` does).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.config import build_config, config_to_dict
from semcorr.conventions import check_shape
from semcorr.data.base import PairDataset, PairSample
from semcorr.errors import ImageError, InputError, WeightsError
from semcorr.features.base import PRECISIONS, Backbone, autocast, create_backbone
from semcorr.geometry import ResizePad
from semcorr.io import atomic_write_bytes, atomic_write_json, load_image
from semcorr.io.weights import load_torch_file
from semcorr.match.rules import masked_scores, soft_argmax2d, window_soft_argmax2d
from semcorr.match.similarity import cosine_similarity, sample_descriptors

__all__ = [
    "CHECKPOINT_FORMAT",
    "CLI_OPTIONS",
    "add_finetune_parser",
    "FinetuneConfig",
    "PairBatch",
    "batch_indices",
    "bilinear_cell_targets",
    "build_config_from_sources",
    "cross_dataset_report",
    "freeze_for_finetuning",
    "frozen_fingerprint",
    "grid_cross_entropy",
    "is_finetune_checkpoint",
    "keypoint_losses",
    "load_finetuned",
    "make_batch",
    "pair_losses",
    "soft_argmax_error",
    "train_finetune",
    "trainable_modules",
    "validation_pck",
    "warmup_cosine",
]

#: The ``format`` field of fine-tuning checkpoints.
CHECKPOINT_FORMAT = "semcorr-finetune"
LOSSES = ("ce", "softargmax")
LAST = "last.pt"
BEST = "best.pt"
#: Settings that may change when a run is resumed (they do not change the computation).
_RESUMABLE = {"steps", "device", "val_every", "checkpoint_every", "log_every", "micro_batch",
              "out", "weights"}


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a fine-tuning run (defaults < ``--config`` file < command line).

    Attributes:
        backbone: registered backbone name (a ViT: DINOv2, DINOv3, SAM).
        weights: base weights (hub id, folder or file; ``None`` = the backbone's default).
        backbone_options: options of :func:`~semcorr.features.create_backbone` (e.g.
            ``{"num_patches": 60}``).
        layers: number of last blocks trained (plus the final norm / SAM neck).
        dataset, root: training dataset name and folder (see :func:`semcorr.data.create_dataset`).
        train_split, val_split: splits used for training and validation (``""`` = no validation).
        dataset_options: loader options (e.g. ``{"layout": "small"}``).
        out: output folder (``last.pt``, ``best.pt``, ``metrics.json``).
        loss: ``ce`` (grid cross-entropy) or ``softargmax`` (soft-argmax distance).
        temperature: softmax temperature of both losses.
        window: soft-argmax window radius in cells (``None`` = the whole grid).
        steps: optimisation steps.
        batch_size: pairs per optimisation step (over all processes).
        micro_batch: pairs per forward pass (gradients are accumulated).
        lr, weight_decay: AdamW settings.
        warmup: linear warm-up steps, then cosine decay to ``min_lr_ratio * lr``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        clip_grad: maximum gradient norm (``None`` = no clipping).
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast of the backbone.
        seed: seed of the data order.
        val_every: steps between validations (0 = only at the end).
        val_pairs: validation pairs (evenly spread over the split).
        val_alpha: PCK threshold of the validation.
        checkpoint_every: steps between ``last.pt`` writes.
        log_every: steps between progress reports.
        device: torch device (``None`` = cuda if available).
    """

    backbone: str = "dinov2_vitb14"
    weights: str | None = None
    backbone_options: dict[str, Any] = field(default_factory=dict)
    layers: int = 2
    dataset: str = "spair"
    root: str = ""
    train_split: str = "trn"
    val_split: str = "val"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    out: str = "runs/finetune"
    loss: str = "ce"
    temperature: float = 0.04
    window: int | None = None
    steps: int = 2000
    batch_size: int = 8
    micro_batch: int = 2
    lr: float = 2e-5
    weight_decay: float = 0.05
    warmup: int = 100
    min_lr_ratio: float = 0.01
    clip_grad: float | None = 1.0
    precision: str = "fp32"
    seed: int = 0
    val_every: int = 500
    val_pairs: int = 200
    val_alpha: float = 0.1
    checkpoint_every: int = 100
    log_every: int = 10
    device: str | None = None

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"layers must be at least 1, got {self.layers}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}")
        for name in ("steps", "batch_size", "micro_batch", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not self.root:
            raise ValueError("root (the dataset folder) is required")


def build_config_from_sources(
    file: str | None = None, overrides: dict[str, Any] | Sequence[str] = ()
) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from defaults < JSON/YAML ``file`` < ``overrides``."""
    return build_config(FinetuneConfig, file, overrides)


# ----------------------------------------------------------------------------- what is trained


def _block_list(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The backbone's transformer block list: its longest ``nn.ModuleList`` named ``layer(s)``
    or ``blocks``."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in backbone.named_modules():
        leaf = name.rpartition(".")[2]
        if isinstance(module, nn.ModuleList) and leaf in ("layer", "layers", "blocks"):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None or len(best[1]) == 0:
        raise InputError(f"{type(backbone).__name__}: no transformer blocks to fine-tune")
    return best


def _after_blocks(backbone: nn.Module) -> list[str]:
    """Names of the modules applied after the blocks that hold parameters (final norm, neck)."""
    names = []
    for name in ("model.layernorm", "model.norm", "encoder.neck"):
        try:
            module = backbone.get_submodule(name)
        except AttributeError:
            continue
        if name.endswith("neck") and getattr(backbone, "output", "neck") != "neck":
            continue
        if any(True for _ in module.parameters()):
            names.append(name)
    return names


def trainable_modules(backbone: nn.Module, layers: int) -> list[str]:
    """Names of the modules fine-tuned: the last ``layers`` blocks and what follows them.

    Args:
        backbone: a ViT backbone (DINOv2, DINOv3, SAM).
        layers: number of last blocks (at most the number of blocks the features use).

    Raises:
        InputError: when the backbone has fewer blocks or none.
    """
    name, blocks = _block_list(backbone)
    if not 1 <= layers <= len(blocks):
        raise InputError(f"--layers {layers}: the backbone's features use {len(blocks)} blocks")
    chosen = [f"{name}.{i}" for i in range(len(blocks) - layers, len(blocks))]
    return chosen + _after_blocks(backbone)


def freeze_for_finetuning(backbone: nn.Module, layers: int) -> list[str]:
    """Freeze every parameter but those of :func:`trainable_modules`.

    Returns:
        The names of the trainable parameters, in ``named_parameters`` order.
    """
    prefixes = tuple(f"{m}." for m in trainable_modules(backbone, layers))
    trained = []
    for name, param in backbone.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
        if param.requires_grad:
            trained.append(name)
    return trained


def frozen_fingerprint(backbone: nn.Module, trained: Sequence[str]) -> str:
    """SHA-256 of the bytes of every parameter not in ``trained`` (name order)."""
    digest = hashlib.sha256()
    skip = set(trained)
    for name, param in sorted(backbone.named_parameters()):
        if name in skip:
            continue
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- losses


def bilinear_cell_targets(target: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The distribution over grid cells whose mean is each target point.

    Args:
        target: ``(B, N, 2)`` grid coordinates (x, y), clamped into the grid.
        h, w: grid size.

    Returns:
        ``(B, N, h * w)`` bilinear weights on the (up to) four cells around each point.
    """
    check_shape(target, "B N 2", "target")
    limit = target.new_tensor([w - 1, h - 1])
    point = torch.minimum(target.clamp_min(0), limit)
    low = point.floor().clamp(max=limit - 1).clamp_min(0)
    frac = point - low  # in [0, 1]
    probs = target.new_zeros(*target.shape[:2], h * w)
    for dx in (0, 1):
        for dy in (0, 1):
            wx = frac[..., 0] if dx else 1 - frac[..., 0]
            wy = frac[..., 1] if dy else 1 - frac[..., 1]
            x = (low[..., 0] + dx).clamp(max=w - 1)
            y = (low[..., 1] + dy).clamp(max=h - 1)
            probs.scatter_add_(-1, (y * w + x).long()[..., None], (wx * wy)[..., None])
    return probs


def grid_cross_entropy(
    scores: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy between ``softmax(scores / temperature)`` and the bilinear target.

    Args:
        scores: ``(B, N, h, w)`` similarities.
        target: ``(B, N, 2)`` target grid coordinates.
        temperature: softmax temperature.
        mask: optional validity of target cells, ``(B, h, w)`` or ``(h, w)``; the target's
            weights on invalid cells are dropped and the rest renormalised.

    Returns:
        ``(B, N)`` losses (nats).
    """
    dims = check_shape(scores, "B N h w", "scores")
    logits = masked_scores(scores.float(), mask) / temperature
    log_probs = torch.log_softmax(logits.flatten(2), dim=-1)
    wanted = bilinear_cell_targets(target.float(), dims["h"], dims["w"])
    allowed = torch.isfinite(log_probs)
    wanted = wanted * allowed
    wanted = wanted / wanted.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(wanted * log_probs.masked_fill(~allowed, 0)).sum(-1)


def soft_argmax_error(
    scores: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    window: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distance in cells between the soft-argmax of the scores and the target.

    Args:
        scores: ``(B, N, h, w)``.
        target: ``(B, N, 2)`` grid coordinates.
        temperature: softmax temperature.
        window: window radius around the argmax (``None`` = the whole grid).
        mask: optional validity of target cells.

    Returns:
        ``(B, N)`` end-point errors in cells.
    """
    if window is None:
        predicted = soft_argmax2d(scores, temperature, mask)
    else:
        predicted = window_soft_argmax2d(scores, window, temperature, mask)
    return (predicted - target.to(predicted.dtype)).norm(dim=-1)


def keypoint_losses(
    scores: torch.Tensor,
    target: torch.Tensor,
    loss: str,
    temperature: float,
    window: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-keypoint loss ``(B, N)`` of the named kind (``ce`` or ``softargmax``)."""
    if loss == "ce":
        return grid_cross_entropy(scores, target, temperature, mask)
    if loss == "softargmax":
        return soft_argmax_error(scores, target, temperature, window, mask)
    raise InputError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")


@dataclass
class PairBatch:
    """Pairs ready for the backbone.

    Attributes:
        source, target: ``(B, 3, S, S)`` resized and padded images in [0, 1].
        source_cells, target_cells: ``(B, N, 2)`` keypoints on the feature grid (padded rows 0).
        valid: ``(B, N)`` keypoints visible in both images.
        target_masks: ``(B, h, w)`` target cells on image content.
    """

    source: torch.Tensor
    target: torch.Tensor
    source_cells: torch.Tensor
    target_cells: torch.Tensor
    valid: torch.Tensor
    target_masks: torch.Tensor


class _InputCache:
    """Resized inputs of recently used images (least recently used out)."""

    def __init__(self, backbone: Backbone, size: int = 16) -> None:
        self.backbone = backbone
        self.size = size
        self.items: OrderedDict[str, tuple[torch.Tensor, ResizePad]] = OrderedDict()

    def __call__(self, path: Path) -> tuple[torch.Tensor, ResizePad]:
        key = str(path)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        image = load_image(path)
        transform = self.backbone.transform_for(image.shape[-1], image.shape[-2])
        value = (transform.apply(image[None])[0], transform)
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


def make_batch(
    samples: Sequence[PairSample],
    inputs: Callable[[Path], tuple[torch.Tensor, ResizePad]],
    device: torch.device,
) -> PairBatch:
    """Stack pairs into a :class:`PairBatch` (keypoints padded to the largest count).

    Args:
        samples: the pairs.
        inputs: ``path -> (image (3, S, S), ResizePad)``.
        device: where the tensors go.
    """
    sources, targets, src_cells, tgt_cells, masks = [], [], [], [], []
    for sample in samples:
        src, src_t = inputs(sample.source_path)
        tgt, tgt_t = inputs(sample.target_path)
        rows = sample.visible.nonzero().flatten()
        sources.append(src)
        targets.append(tgt)
        src_cells.append(src_t.to_grid(sample.source_points[rows].float()))
        tgt_cells.append(tgt_t.to_grid(sample.target_points[rows].float()))
        masks.append(tgt_t.valid_cells())
    n = max([1] + [c.shape[0] for c in src_cells])
    valid = torch.zeros(len(samples), n, dtype=torch.bool)
    for i, cells in enumerate(src_cells):
        valid[i, : cells.shape[0]] = True

    def pad(cells: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([F.pad(c, (0, 0, 0, n - c.shape[0])) for c in cells])

    return PairBatch(
        torch.stack(sources).to(device), torch.stack(targets).to(device),
        pad(src_cells).to(device), pad(tgt_cells).to(device), valid.to(device),
        torch.stack(masks).to(device),
    )


def pair_losses(
    backbone: Backbone, batch: PairBatch, config: FinetuneConfig
) -> torch.Tensor:
    """Loss of each pair ``(B,)``: the mean over its valid keypoints (0 when none).

    The backbone runs under the configured autocast; similarities and losses in float32.
    """
    b = batch.source.shape[0]
    with autocast(batch.source.device, config.precision):
        features = backbone(torch.cat([batch.source, batch.target]))
    features = features.float()
    descriptors = sample_descriptors(features[:b], batch.source_cells)
    scores = cosine_similarity(descriptors, features[b:])
    grid = features.shape[-2:]
    target = batch.target_cells.clamp_min(0)
    target = torch.minimum(target, target.new_tensor([grid[1] - 1, grid[0] - 1]))
    losses = keypoint_losses(scores, target, config.loss, config.temperature, config.window,
                             batch.target_masks)
    valid = batch.valid.float()
    return (losses * valid).sum(1) / valid.sum(1).clamp_min(1)


# ----------------------------------------------------------------------------- schedule, data


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Learning-rate factor of step ``s``: linear warm-up to 1, then cosine to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@functools.lru_cache(maxsize=4)
def _epoch_order(num_pairs: int, seed: int, epoch: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(seed + epoch)
    return tuple(torch.randperm(num_pairs, generator=generator).tolist())


def batch_indices(step: int, batch_size: int, num_pairs: int, seed: int) -> list[int]:
    """The pairs of step ``step``: consecutive slices of per-epoch permutations.

    A function of its arguments only (no state), so resuming and multi-process runs see the
    same pairs as an uninterrupted single process.
    """
    if num_pairs < 1:
        raise InputError("the training set has no pairs")
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, num_pairs)
        out.append(_epoch_order(num_pairs, seed, epoch)[offset])
    return out


# ----------------------------------------------------------------------------- checkpoints


def _base_record(config: FinetuneConfig, backbone: Backbone, trained: Sequence[str]
                 ) -> dict[str, Any]:
    weights = config.weights
    if weights is not None and Path(weights).exists():
        weights = str(Path(weights).resolve())
    return {
        "backbone": config.backbone,
        "weights": weights,
        "options": dict(config.backbone_options),
        "layers": config.layers,
        "fingerprint": frozen_fingerprint(backbone, trained),
    }


def _trained_state(backbone: nn.Module, trained: Sequence[str]) -> dict[str, torch.Tensor]:
    params = dict(backbone.named_parameters())
    return {name: params[name].detach().cpu().clone() for name in trained}


def _save(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _read(path: Path) -> dict[str, Any]:
    payload = load_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a 'semcorr train finetune' checkpoint")
    return payload


def is_finetune_checkpoint(path: str | Path | None) -> bool:
    """Whether ``path`` is a file written by ``semcorr train finetune`` (cheap: memory-mapped)."""
    if path is None or not Path(path).is_file():
        return False
    try:
        payload = load_torch_file(path, mmap=True)
    except WeightsError:  # not a zip torch file, not weights-only, unreadable...
        return False
    return isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT


def _apply_trained(backbone: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    params = dict(backbone.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise WeightsError(f"{path}: parameters {unknown[:5]} are not in the base backbone")
    with torch.no_grad():
        for name, value in state.items():
            if params[name].shape != value.shape:
                raise WeightsError(f"{path}: {name} is {tuple(value.shape)}, the base backbone "
                                   f"has {tuple(params[name].shape)}")
            params[name].copy_(value)


def load_finetuned(
    path: str | Path,
    expected_backbone: str | None = None,
    base_weights: str | None = None,
    device: torch.device | str | None = None,
) -> Backbone:
    """Rebuild the base backbone a checkpoint was trained from and apply its trained parameters.

    Args:
        path: ``best.pt`` or ``last.pt`` of a fine-tuning run.
        expected_backbone: refuse a checkpoint of another backbone (``None``: any).
        base_weights: where the base weights are now (default: as recorded).
        device: where the backbone goes (default: CPU).

    Raises:
        WeightsError: naming the file when it is not such a checkpoint, when the base weights
            differ from those it was trained over, or when the parameters do not fit.
    """
    file = Path(path)
    payload = _read(file)
    base = payload["base"]
    if expected_backbone is not None and expected_backbone != base["backbone"]:
        raise WeightsError(f"{file}: fine-tuned from {base['backbone']!r}, not "
                           f"{expected_backbone!r}")
    backbone = create_backbone(base["backbone"], weights=base_weights or base["weights"],
                               **base["options"])
    trained = payload["trained"]
    if frozen_fingerprint(backbone, list(trained)) != base["fingerprint"]:
        raise WeightsError(
            f"{file}: the base weights {base_weights or base['weights']!r} differ from those "
            "the checkpoint was trained over (frozen parameters do not match)"
        )
    _apply_trained(backbone, trained, file)
    return backbone.to(device or "cpu").eval()


# ----------------------------------------------------------------------------- validation


def _spread(count: int, total: int) -> list[int]:
    if total == 0:
        return []
    if count >= total:
        return list(range(total))
    return sorted({round(i * (total - 1) / max(1, count - 1)) for i in range(count)})


def validation_pck(
    backbone: Backbone,
    dataset: PairDataset,
    indices: Sequence[int],
    alpha: float = 0.1,
    window: int = 3,
) -> list[float]:
    """PCK@``alpha`` of each listed pair with the shared matcher (window soft-argmax).

    Returns:
        One value in [0, 1] per pair that has visible keypoints and readable images.
    """
    from semcorr.eval.pck import pck_correct
    from semcorr.pipeline import Matcher

    matcher = Matcher(backbone, refine="window", window=window)
    values = []
    for index in indices:
        sample = dataset[index]
        rows = sample.visible.nonzero().flatten()
        if rows.numel() == 0:
            continue
        try:
            source, target = load_image(sample.source_path), load_image(sample.target_path)
        except ImageError:
            continue
        points = sample.source_points[rows].float()
        points = torch.stack([points[:, 0].clamp(0, source.shape[-1] - 1),
                              points[:, 1].clamp(0, source.shape[-2] - 1)], dim=1)
        pred = matcher.match(source, [target], points)[0].points.cpu()
        correct = pck_correct(pred, sample.target_points[rows].float(), sample.pck_reference,
                              [alpha])
        values.append(float(correct.double().mean()))
    return values


# ----------------------------------------------------------------------------- training


@dataclass
class _State:
    step: int = 0
    best_pck: float = -1.0
    best_step: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _optimizer(backbone: nn.Module, config: FinetuneConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for _, param in backbone.named_parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def _check_resume(saved: dict[str, Any], config: FinetuneConfig, path: Path) -> None:
    now = config_to_dict(config)
    changed = sorted(k for k in now if k not in _RESUMABLE and saved.get(k) != now[k])
    if changed:
        raise InputError(f"{path}: the run was started with other settings ({', '.join(changed)}"
                         "); use another --out or the same settings")


def _sync_gradients(params: Sequence[nn.Parameter]) -> None:
    """Sum the gradients over the ranks (no-op without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.SUM)


def _sum_over_ranks(value: float, device: torch.device) -> float:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return float(tensor)


@dataclass
class _Run:
    config: FinetuneConfig
    backbone: Backbone
    trained: list[str]
    params: list[nn.Parameter]
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    train_set: PairDataset
    val_set: PairDataset | None
    inputs: _InputCache
    device: torch.device
    rank: int
    world: int
    base: dict[str, Any]
    state: _State


def _payload(run: _Run, full: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "base": run.base,
        "trained": _trained_state(run.backbone, run.trained),
        "step": run.state.step,
        "config": config_to_dict(run.config),
        "best": {"pck": run.state.best_pck, "step": run.state.best_step},  # pck -1 = none
    }
    if full:
        from semcorr.train.checkpoint import capture_rng

        payload.update(
            optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
            scaler=run.scaler.state_dict(), rng=capture_rng(), history=run.state.history,
            skipped=run.state.skipped,
        )
    return payload


def _resume(run: _Run, path: Path) -> None:
    from semcorr.train.checkpoint import restore_rng

    payload = _read(path)
    _check_resume(payload["config"], run.config, path)
    if payload["base"]["fingerprint"] != run.base["fingerprint"]:
        raise WeightsError(f"{path}: trained over other base weights than {run.config.weights!r}")
    _apply_trained(run.backbone, payload["trained"], path)
    try:
        run.optimizer.load_state_dict(payload["optimizer"])
        run.scheduler.load_state_dict(payload["scheduler"])
        run.scaler.load_state_dict(payload["scaler"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: checkpoint does not fit ({exc})") from None
    restore_rng(payload["rng"])
    run.state = _State(int(payload["step"]), float(payload["best"]["pck"]),
                       int(payload["best"]["step"]), list(payload.get("history", [])),
                       list(payload.get("skipped", [])))


def _samples(run: _Run, indices: Sequence[int]) -> list[PairSample]:
    samples = []
    for index in indices:
        try:
            sample = run.train_set[index]
            run.inputs(sample.source_path)
            run.inputs(sample.target_path)
        except ImageError as exc:
            if str(exc) not in run.state.skipped:
                run.state.skipped.append(str(exc))
            continue
        samples.append(sample)
    return samples


def _train_step(run: _Run) -> dict[str, float]:
    from semcorr.distributed import shard

    config = run.config
    mine = shard(batch_indices(run.state.step, config.batch_size, len(run.train_set),
                               config.seed), run.rank, run.world)
    samples = _samples(run, mine)
    run.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for start in range(0, len(samples), config.micro_batch):
        batch = make_batch(samples[start:start + config.micro_batch], run.inputs, run.device)
        loss = pair_losses(run.backbone, batch, config).sum() / config.batch_size
        run.scaler.scale(loss).backward()
        total += float(loss.detach())
    _sync_gradients(run.params)
    for param in run.params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    run.scaler.unscale_(run.optimizer)
    if config.clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(run.params, config.clip_grad)
    lr = run.optimizer.param_groups[0]["lr"]
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.state.step += 1
    return {"loss": _sum_over_ranks(total, run.device), "lr": lr}


def _validate(run: _Run) -> float | None:
    from semcorr.distributed import all_gather_objects, shard

    if run.val_set is None:
        return None
    indices = _spread(run.config.val_pairs, len(run.val_set))
    mine = shard(indices, run.rank, run.world)
    values = [v for part in all_gather_objects(validation_pck(
        run.backbone, run.val_set, mine, run.config.val_alpha)) for v in part]
    return sum(values) / len(values) if values else None


def _setup(config: FinetuneConfig, rank: int, world: int, device: torch.device) -> _Run:
    from semcorr.data import create_dataset

    backbone = create_backbone(config.backbone, weights=config.weights,
                               **config.backbone_options).to(device).eval()
    trained = freeze_for_finetuning(backbone, config.layers)
    params = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = _optimizer(backbone, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup, config.steps, config.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    train_set = create_dataset(config.dataset, config.root, split=config.train_split,
                               **config.dataset_options)
    val_set = None
    if config.val_split:
        val_set = create_dataset(config.dataset, config.root, split=config.val_split,
                                 **config.dataset_options)
    return _Run(config, backbone, trained, params, optimizer, scheduler, scaler, train_set,
                val_set, _InputCache(backbone), device, rank, world,
                _base_record(config, backbone, trained), _State())


def _after_step(run: _Run, numbers: dict[str, float], out: Path) -> dict[str, float]:
    config, state = run.config, run.state
    done = state.step == config.steps
    if (config.val_every and state.step % config.val_every == 0) or done:
        pck = _validate(run)
        if pck is not None:
            numbers["val_pck"] = pck
        # without validation pairs, "best" is the latest
        if pck is None or pck > state.best_pck:
            state.best_pck = -1.0 if pck is None else pck
            state.best_step = state.step
            if run.rank == 0:
                _save(out / BEST, _payload(run, full=False))
    state.history.append({"step": state.step, **numbers})
    if run.rank == 0 and (state.step % config.checkpoint_every == 0 or done):
        _save(out / LAST, _payload(run, full=True))
        atomic_write_json(out / "metrics.json", {"history": state.history,
                                                 "best": {"pck": state.best_pck,
                                                          "step": state.best_step},
                                                 "skipped": state.skipped})
    return numbers


def train_finetune(
    config: FinetuneConfig,
    resume: bool = False,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Fine-tune the last blocks of a backbone; returns the path of ``best.pt``.

    Runs as one process or under ``torchrun`` (gloo on CPU): each rank takes every
    ``world``-th pair of a step and gradients are summed, so the result equals a single
    process with the same ``batch_size``.

    Args:
        config: the settings.
        resume: continue from ``OUT/last.pt`` (started afresh when there is none).
        progress: called as ``progress(step, numbers)`` after each step on rank 0.

    Raises:
        InputError: when ``OUT/last.pt`` exists and ``resume`` is off, or the settings differ
            from the saved run's.
    """
    from semcorr.devices import choose_device
    from semcorr.distributed import barrier, cleanup, init_from_env, local_device

    device = choose_device(config.device)
    info = init_from_env(use_cuda=device.type == "cuda")
    try:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        if (out / LAST).is_file() and not resume:
            raise InputError(f"{out / LAST}: a run exists; add --resume or use another --out")
        run = _setup(config, info.rank, info.world_size, local_device(device, info))
        if resume and (out / LAST).is_file():
            _resume(run, out / LAST)
        if info.is_main:
            atomic_write_json(out / "config.json", config_to_dict(config))
        while run.state.step < config.steps:
            start = time.perf_counter()
            numbers = _train_step(run)
            numbers["seconds"] = time.perf_counter() - start
            numbers = _after_step(run, numbers, out)
            if progress is not None and info.is_main:
                progress(run.state.step, numbers)
        barrier()
        return out / BEST
    finally:
        cleanup()


# ----------------------------------------------------------------------------- report


def cross_dataset_report(
    checkpoint: str | Path,
    datasets: Sequence[tuple[str, str, str]],
    out: str | Path,
    protocol: str = "foundation-finetune",
    thresholds: Sequence[float] | None = None,
    limit: int | None = None,
    include_base: bool = True,
    device: str | None = None,
    progress: bool = False,
) -> str:
    """Evaluate the base and the fine-tuned backbone on several datasets; one table.

    By default the table is the fine-tuning study's (:mod:`semcorr.eval.protocols`,
    ``foundation-finetune``): ``distance <= α · max side of the target box`` (of the image when
    there is no box), α 0.05–0.20, per keypoint (mean ± std over keypoints) and per image
    (mean ± std over images); the per-category and per-difficulty tables of every run follow.

    Args:
        checkpoint: ``best.pt`` of a run.
        datasets: ``(name, root, split)`` of each dataset (the training one first, by habit).
        out: folder of the per-run evaluation folders, ``report.md`` and ``report.json``.
        protocol: the PCK protocol; one with ``statistics`` gives mean ± std.
        thresholds: the α of the table (default: the protocol's).
        limit: first pairs of each dataset only.
        include_base: add a row for the base backbone (zero-shot).
        device: torch device.
        progress: show progress bars.

    Returns:
        The markdown report (also written to ``OUT/report.md``).
    """
    from semcorr.data import create_dataset
    from semcorr.devices import choose_device
    from semcorr.eval.benchmark import evaluate
    from semcorr.eval.pck import PCKStatistics
    from semcorr.eval.protocols import get_protocol
    from semcorr.eval.report import statistics_tables
    from semcorr.pipeline import Matcher

    out = Path(out)
    rule = get_protocol(protocol)
    alphas = list(rule.thresholds if thresholds is None else thresholds)
    keys = PCKStatistics(alphas).keys
    target = choose_device(device)
    tuned = load_finetuned(checkpoint, device=target)
    payload = _read(Path(checkpoint))
    base = payload["base"]
    models: list[tuple[str, Backbone, dict[str, Any]]] = []
    if include_base:  # the recorded identity keeps cached predictions of another model out
        models.append(("base", create_backbone(base["backbone"], weights=base["weights"],
                                               **base["options"]).to(target).eval(),
                       {"base": base}))
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:16]
    models.append(("finetuned", tuned, {"checkpoint": str(checkpoint), "sha256": digest}))
    table: dict[str, dict[str, dict[str, Any]]] = {}
    details: list[str] = []
    for label, backbone, identity in models:
        matcher = Matcher(backbone)
        for name, root, split in datasets:
            dataset = create_dataset(name, root, split=split)
            results = evaluate(matcher, dataset, out / label / f"{name}-{split}",
                               thresholds=alphas, limit=limit, progress=progress, plot=False,
                               extra_config={"model": label, **identity}, protocol=rule)
            column = f"{name} ({split})"
            table.setdefault(label, {})[column] = _report_cell(results, keys)
            if "statistics" in results:
                details += [f"## {label} on {column}", "",
                            statistics_tables(results["statistics"], keys), ""]
    reference = rule.reference_words("the dataset reference")
    lines = [
        f"PCK (%) under the {rule.name} protocol ({rule.comparison} alpha * {reference}), "
        f"trained on {payload['config']['dataset']} "
        f"with {base['backbone']} (last {base['layers']} blocks): per keypoint, then per image"
        + (" (mean ± std)" if rule.statistics else ""),
        "",
        "| model | dataset | " + " | ".join(f"PCK@{k} per keypoint" for k in keys) + " | "
        + " | ".join(f"PCK@{k} per image" for k in keys) + " |",
        "|---|---|" + "---:|" * (2 * len(keys)),
    ]
    for label, row in table.items():
        for column, cell in row.items():
            values = [_spread_text(cell, "per_keypoint", k) for k in keys]
            values += [_spread_text(cell, "per_image", k) for k in keys]
            lines.append(f"| {label} | {column} | " + " | ".join(values) + " |")
    text = "\n".join([*lines, "", *details]).rstrip() + "\n"
    atomic_write_bytes(out / "report.md", text.encode())
    atomic_write_json(out / "report.json", {"protocol": rule.name, "thresholds": keys,
                                            "table": table, "checkpoint": str(checkpoint)})
    return text


def _report_cell(results: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """One dataset's numbers: the statistics' overall leaf, or the plain PCK (no std)."""
    overall = (results.get("statistics") or {}).get("overall")
    if overall is not None:
        return overall
    return {
        "pairs": results["pairs"],
        **{kind: {k: {"mean": results["pck"][k][kind], "std": None} for k in keys}
           for kind in ("per_keypoint", "per_image")},
    }


def _spread_text(cell: dict[str, Any], kind: str, key: str) -> str:
    leaf = cell[kind][key]
    if leaf["std"] is None:
        return _percent(leaf["mean"])
    return f"{_percent(leaf['mean'])} ± {_percent(leaf['std'])}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


# ----------------------------------------------------------------------------- command line

#: Command-line options of ``semcorr train finetune``: name → (type, help).
CLI_OPTIONS: dict[str, tuple[type, str]] = {
    "backbone": (str, "registered ViT backbone (default dinov2_vitb14)"),
    "weights": (str, "base weights: hub id, folder or file"),
    "layers": (int, "last blocks trained (default 2)"),
    "dataset": (str, "training dataset (default spair)"),
    "root": (str, "its folder"),
    "train_split": (str, "training split (default trn)"),
    "val_split": (str, "validation split (default val; '' = none)"),
    "out": (str, "output folder (last.pt, best.pt, metrics.json)"),
    "loss": (str, "ce (grid cross-entropy, default) or softargmax (distance)"),
    "temperature": (float, "softmax temperature (default 0.04)"),
    "window": (int, "soft-argmax window radius in cells (default: whole grid)"),
    "steps": (int, "optimisation steps (default 2000)"),
    "batch_size": (int, "pairs per step over all processes (default 8)"),
    "micro_batch": (int, "pairs per forward; gradients accumulated (default 2)"),
    "lr": (float, "AdamW learning rate (default 2e-5)"),
    "weight_decay": (float, "AdamW weight decay (default 0.05)"),
    "warmup": (int, "warm-up steps (default 100)"),
    "precision": (str, "fp32, bf16 or fp16 (default fp32)"),
    "seed": (int, "data-order seed (default 0)"),
    "val_every": (int, "steps between validations (default 500)"),
    "val_pairs": (int, "validation pairs (default 200)"),
    "checkpoint_every": (int, "steps between checkpoints (default 100)"),
    "device": (str, "torch device"),
}


def _parse_report(items: Sequence[str] | None) -> list[tuple[str, str, str]]:
    out = []
    for item in items or []:
        name, sep, rest = item.partition("=")
        if not sep or not rest:
            raise InputError(f"malformed --report-on {item!r}: expected NAME=ROOT[:SPLIT]")
        root, _, split = rest.rpartition(":") if ":" in rest[2:] else (rest, "", "test")
        out.append((name, root or rest, split or "test"))
    return out


def _run_cli(args: Any) -> int:
    from semcorr.config import parse_overrides

    options = {k: getattr(args, k) for k in CLI_OPTIONS if getattr(args, k) is not None}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"malformed --option {item!r}: expected KEY=VALUE")
        options.update(parse_overrides([f"{key.replace('-', '_')}={value}"]))
    config = build_config_from_sources(args.config, options)
    best = Path(config.out) / BEST
    if not args.report_only:

        def report(step: int, numbers: dict[str, float]) -> None:
            if step % config.log_every == 0 or "val_pck" in numbers or step == config.steps:
                parts = "  ".join(f"{k} {v:.4g}" for k, v in numbers.items())
                print(f"step {step}/{config.steps}  {parts}", flush=True)

        best = train_finetune(config, resume=args.resume, progress=report)
        print(f"wrote {best}")
    if args.report_on:
        import os

        if os.environ.get("RANK", "0") == "0":  # the process group is gone: ask torchrun's env
            datasets = [(config.dataset, config.root, args.report_split)]
            datasets += _parse_report(args.report_on)
            print(cross_dataset_report(best, datasets, Path(config.out) / "report",
                                       limit=args.report_limit, device=config.device), end="")
    return 0


def add_finetune_parser(subparsers: Any) -> None:
    """Add ``semcorr train finetune`` to a ``train`` sub-command parser."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune the last blocks of a ViT backbone on keypoint pairs",
        description="Freeze a DINOv2/DINOv3/SAM backbone but its last N blocks (and final "
        "norm/neck), train them with a keypoint loss on annotated pairs (warm-up + cosine "
        "AdamW, optional fp16/bf16, gradient accumulation; runs under torchrun), keep the "
        "best checkpoint by validation PCK. Settings: defaults < --config file < options. "
        "Evaluate with 'semcorr eval --weights OUT/best.pt'.",
    )
    parser.add_argument("--config", default=None, help="YAML or JSON file of settings")
    for name, (kind, text) in CLI_OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                            help=text)
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="any other setting, e.g. backbone_options={\"num_patches\":40}")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--report-on", action="append", metavar="NAME=ROOT[:SPLIT]",
                        help="after training, evaluate base and fine-tuned models on the "
                        "training dataset and on these (e.g. pf-willow=data/pf-willow); "
                        "one table in OUT/report/report.md under the foundation-finetune "
                        "protocol (<= alpha * box or image side, alpha 0.05-0.20, per keypoint "
                        "and per image, mean ± std, by category and by difficulty)")
    parser.add_argument("--report-split", default="test",
                        help="split of the training dataset in the report (default test)")
    parser.add_argument("--report-limit", type=int, default=None,
                        help="first N pairs of each dataset in the report")
    parser.add_argument("--report-only", action="store_true",
                        help="skip training; report on OUT/best.pt")
    parser.set_defaults(func=_run_cli)

"""Training GeoAware-SC's post-processor on cached features.

One step takes a batch of annotated pairs (:class:`~semcorr.data.PairSample`), reads the
features of both images and of their mirrors from a :class:`~semcorr.features.cache.FeatureCache`
(extracted once, resumably), runs the head on the four maps, and averages over the
pose-variant *views* of the pair:

* the pair itself (weight 1);
* single flip: the mirrored source against the target (``single_flip``; 0 by default, as in
  the released training configurations, where it is only active with adaptive flip);
* double flip: both mirrored (``double_flip``, 1);
* self flip: the mirrored source against the source (``self_flip``, 0.25);

where a mirrored image's keypoint ``i`` sits at the mirror of its left/right partner
``flip_permutation[i]`` (only where both partners are visible). Each view's loss is the
symmetric InfoNCE on keypoint descriptors plus the dense soft-argmax flow error (the same
window soft-argmax as evaluation) towards targets with Gaussian label noise.

AdamW with a one-cycle schedule; checkpoints (``last.pt``) hold the model, optimizer, scheduler,
scaler, RNG states, step and loss history, so a killed run resumes exactly. Under ``torchrun``
the head is wrapped in ``DistributedDataParallel`` and each rank takes its share of every batch.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.config import build_config, config_hash, config_to_dict
from semcorr.data.base import PairSample
from semcorr.errors import InputError
from semcorr.features.base import Backbone, create_backbone
from semcorr.features.cache import FeatureCache, cached_extract
from semcorr.features.fusion import resample_parts
from semcorr.geometry import ResizePad, flip_points
from semcorr.io import atomic_write_bytes, atomic_write_json, load_image
from semcorr.match.rules import window_soft_argmax2d
from semcorr.match.similarity import cosine_similarity, sample_descriptors
from semcorr.postprocess.aggregation import AggregationNetwork
from semcorr.postprocess.geoaware import get_preset
from semcorr.train.checkpoint import load_checkpoint, save_checkpoint
from semcorr.train.losses import flow_loss, gaussian_label_noise, info_nce_loss

__all__ = [
    "GeoAwareTrainConfig",
    "PairViews",
    "config_for_preset",
    "config_from_sources",
    "load_pair",
    "make_synthetic_pairs",
    "HeadWithScale",
    "batch_loss",
    "pair_loss",
    "pair_views",
    "views_loss",
    "train_geoaware",
    "validation_pck",
]

ORIENTATIONS = ("src", "tgt", "src_flip", "tgt_flip")


@dataclass
class GeoAwareTrainConfig:
    """Settings of a GeoAware-SC training run (defaults: the paper's SPair-71k recipe).

    Data: ``dataset`` is a registered dataset name (``spair``, ``ap10k``, ``pfpascal``) read
    from ``root``/``split``, or ``synthetic``: pairs made from the photographs in ``root`` by
    known similarity warps (``synthetic_pairs`` pairs of ``synthetic_size`` px, written to
    ``synthetic_dir``, default ``<out>/synthetic``; ``val_pairs`` more for validation).

    Features: ``backbone`` (with ``backbone_options`` and ``weights``) fills the cache
    ``cache`` (default ``<out>/features``); ``feature_parts`` orders the cached parts
    (``None`` = sorted names) and they are concatenated on the transform's grid.
    """

    out: str = ""
    dataset: str = "spair"
    root: str = ""
    split: str = "trn"
    synthetic_pairs: int = 32
    synthetic_size: int = 160
    synthetic_mirror_rate: float = 0.0
    synthetic_dir: str = ""
    val_pairs: int = 0
    eval_dataset: str | None = None
    eval_root: str = ""
    eval_split: str = "test"
    eval_limit: int | None = None
    eval_every: int = 0
    backbone: str = "sd+dino"
    backbone_options: dict[str, Any] = field(default_factory=lambda: {"mode": "raw"})
    weights: str | None = None
    cache: str = ""
    storage: str = "float16"
    feature_parts: tuple[str, ...] | None = ("s3", "s4", "s5", "dino")
    feature_dims: tuple[int, ...] = (640, 1280, 1280, 768)
    projection_dim: int = 768
    num_groups: int = 32
    init: str | None = None
    feature_dropout: float = 0.2
    epochs: int = 2
    steps: int | None = None
    batch_size: int = 1
    lr: float = 1.25e-3
    weight_decay: float = 1e-3
    pct_start: float = 0.3
    sparse_weight: float = 1.0
    dense_weight: float = 1.0
    label_noise: float = 0.1
    pair_augment: bool = True
    single_flip: float = 0.0
    double_flip: float = 1.0
    self_flip: float = 0.25
    train_window: int | None = None
    temperature: float = 0.02
    eval_window: int = 7
    amp: bool = False
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    device: str | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 0 or self.checkpoint_every < 1:
            raise InputError("batch_size and checkpoint_every must be >= 1, epochs >= 0")
        if self.steps is not None and self.steps < 1:
            raise InputError("steps must be at least 1")

    def identity(self) -> dict[str, Any]:
        """The settings that determine the results (a resumed run must have the same)."""
        data = config_to_dict(self)
        for key in ("out", "log_every", "device", "delay", "eval_every", "eval_limit",
                    "checkpoint_every"):
            data.pop(key)
        return data


def config_for_preset(name: str) -> dict[str, Any]:
    """Config values of a :mod:`~semcorr.postprocess.geoaware` preset (``spair``, ``ap10k``,
    ``pfpascal``); the dataset root and output folder still come from the user."""
    preset = get_preset(name)
    if preset.train_dataset is None:
        raise InputError(f"preset {name!r} has no training (use it with 'semcorr eval')")
    return {
        "dataset": preset.train_dataset,
        "epochs": preset.epochs,
        "lr": preset.lr,
        "weight_decay": preset.weight_decay,
        "feature_dropout": preset.feature_dropout,
        "label_noise": preset.label_noise,
        "pair_augment": preset.pair_augment,
        "eval_window": preset.window,
        "temperature": preset.temperature,
    }


# ----------------------------------------------------------------------------- synthetic data


def _photo_paths(root: Path) -> list[Path]:
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise InputError(f"{root}: no .png/.jpg photographs for synthetic pairs")
    return paths


def make_synthetic_pairs(
    photos: str | Path,
    out: str | Path,
    count: int,
    size: int = 160,
    seed: int = 0,
    mirror_rate: float = 0.0,
    grid: int = 5,
) -> list[PairSample]:
    """Pairs of real photographs and their warps by known similarities (optionally mirrored).

    Each source is a ``size``-pixel square crop of a photograph; the target is the source
    rotated (±25°), zoomed (0.8–1.2) and shifted, then mirrored with probability
    ``mirror_rate``. Keypoints are a ``grid x grid`` lattice on the source; those landing
    outside the target are not visible. Images are written to ``out`` once (idempotent).

    Returns:
        ``count`` :class:`PairSample` s (no left/right partners: ``flip_permutation`` is -1).
    """
    from PIL import Image

    from semcorr.geometry.warp import hflip_matrix, similarity_matrix, warp_image, warp_points

    photos, out = Path(photos), Path(out)
    paths = _photo_paths(photos)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    lattice = torch.linspace(0.15 * (size - 1), 0.85 * (size - 1), grid)
    points = torch.stack(torch.meshgrid(lattice, lattice, indexing="xy"), -1).reshape(-1, 2)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    loaded: dict[Path, torch.Tensor] = {}
    for index in range(count):
        path = paths[index % len(paths)]
        photo = loaded[path] if path in loaded else loaded.setdefault(path, load_image(path))
        h, w = photo.shape[-2:]
        side = min(h, w, 2 * size)
        x0 = int(uniform(0, w - side))
        y0 = int(uniform(0, h - side))
        crop = photo[:, y0:y0 + side, x0:x0 + side]
        source = F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)[0]
        matrix = similarity_matrix(size, size, uniform(-25, 25), uniform(0.8, 1.2),
                                   (uniform(-10, 10), uniform(-10, 10)))
        mirrored = uniform(0, 1) < mirror_rate
        if mirrored:
            matrix = hflip_matrix(size) @ matrix
        target = warp_image(source, matrix, (size, size))
        target_points = warp_points(points, matrix)
        inside = ((target_points >= 0) & (target_points <= size - 1)).all(-1)
        files = [out / f"pair{index:04d}_s{seed}_{size}px_{k}.png" for k in ("a", "b")]
        for file, image in zip(files, (source, target), strict=True):
            if not file.is_file():
                array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                out.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="PNG")
                atomic_write_bytes(file, buffer.getvalue())
        n = points.shape[0]
        samples.append(PairSample(
            source_path=files[0], target_path=files[1], source_points=points.clone(),
            target_points=torch.where(inside[:, None], target_points, torch.full_like(
                target_points, -1.0)),
            visible=inside, category="synthetic", source_bbox=None, target_bbox=None,
            source_size=(size, size), target_size=(size, size), pck_reference=float(size),
            keypoint_ids=torch.arange(n), flip_permutation=torch.full((n,), -1),
            pair_id=f"synthetic-{seed}-{index}", extra={"mirrored": mirrored},
        ))
    return samples


# ----------------------------------------------------------------------------- pair features


@dataclass
class LoadedPair:
    """Features and keypoints of one pair, on the feature grid.

    Attributes:
        features: ``(4, C, h, w)`` maps of source, target, mirrored source, mirrored target.
        transforms: source and target :class:`ResizePad`.
        sample: the annotation.
    """

    features: torch.Tensor
    transforms: tuple[ResizePad, ResizePad]
    sample: PairSample


def _concat_parts(parts: dict[str, torch.Tensor], order: Sequence[str] | None, grid: int,
                  source: str) -> torch.Tensor:
    names = list(order) if order is not None else sorted(parts)
    missing = [n for n in names if n not in parts]
    if missing:
        raise InputError(f"{source}: cached parts {sorted(parts)} lack {missing}")
    maps = resample_parts([parts[n][None].float() for n in names], (grid, grid))
    return torch.cat(maps, dim=1)[0]


def load_pair(cache: FeatureCache, sample: PairSample, parts: Sequence[str] | None
              ) -> LoadedPair:
    """Read both images' features (original and mirrored) of a pair from the cache."""
    maps, transforms = [], []
    for flip in (False, True):
        for path in (sample.source_path, sample.target_path):
            image_id = str(Path(path).resolve())
            entry = cache.entry(image_id)
            if entry is None:
                raise InputError(f"{path}: not in the feature cache {cache.root}")
            transform = entry.transform
            maps.append(_concat_parts(entry.tensors(flip=flip), parts, transform.grid_size,
                                      str(path)))
            if not flip:
                transforms.append(transform)
    return LoadedPair(torch.stack(maps), (transforms[0], transforms[1]), sample)


# ----------------------------------------------------------------------------- views and losses


@dataclass
class PairViews:
    """The pose-variant views of a pair, stacked.

    Attributes:
        first, second: ``(V,)`` index into the four maps (see :data:`ORIENTATIONS`).
        cells0, cells1: ``(V, N, 2)`` grid coordinates in the first/second map.
        valid: ``(V, N)`` keypoints usable in each view.
        weights: ``(V,)`` view weights.
        noise_std: ``(V,)`` label-noise std in cells of the second map.
    """

    first: torch.Tensor
    second: torch.Tensor
    cells0: torch.Tensor
    cells1: torch.Tensor
    valid: torch.Tensor
    weights: torch.Tensor
    noise_std: torch.Tensor


def _full_permutation(perm: torch.Tensor) -> torch.Tensor:
    n = perm.shape[0]
    return torch.where(perm < 0, torch.arange(n), perm)


def pair_views(pair: LoadedPair, config: GeoAwareTrainConfig) -> PairViews:
    """The original view plus, with ``pair_augment``, the single/double/self-flip views."""
    s = pair.sample
    t0, t1 = pair.transforms
    p0, p1 = s.source_points.float(), s.target_points.float()
    visible = s.visible.bool()
    perm = _full_permutation(s.flip_permutation.long())
    p0f = flip_points(p0[perm], s.source_size[0])
    p1f = flip_points(p1[perm], s.target_size[0])
    vflip = visible & visible[perm]
    # reference length (pixels of the target) → cells of the second map
    ref1 = s.pck_reference * t1.scale / t1.stride
    ref0 = s.pck_reference * (max(s.source_size) / max(s.target_size)) * t0.scale / t0.stride
    rows = [(0, 1, t0.to_grid(p0), t1.to_grid(p1), visible, 1.0, ref1)]
    if config.pair_augment:
        rows += [
            (2, 1, t0.to_grid(p0f), t1.to_grid(p1), vflip, config.single_flip, ref1),
            (2, 3, t0.to_grid(p0f), t1.to_grid(p1f), vflip, config.double_flip, ref1),
            (2, 0, t0.to_grid(p0f), t0.to_grid(p0), vflip, config.self_flip, ref0),
        ]
    rows = [r for r in rows if r[5] > 0]
    return PairViews(
        first=torch.tensor([r[0] for r in rows]),
        second=torch.tensor([r[1] for r in rows]),
        cells0=torch.stack([r[2] for r in rows]),
        cells1=torch.stack([r[3] for r in rows]),
        valid=torch.stack([r[4] for r in rows]),
        weights=torch.tensor([float(r[5]) for r in rows]),
        noise_std=torch.tensor([config.label_noise * r[6] / 2 for r in rows]),
    )


class HeadWithScale(nn.Module):
    """Runs the head and returns its InfoNCE scale too, so that every parameter is used inside
    one ``forward`` (what ``DistributedDataParallel`` needs)."""

    def __init__(self, head: AggregationNetwork) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, h, w)`` → head output ``(B, D, h, w)`` and ``exp(logit_scale)``."""
        return self.head(features), self.head.logit_scale.exp()


def batch_loss(
    model: nn.Module,
    pairs: Sequence[LoadedPair],
    config: GeoAwareTrainConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean over pairs of :func:`views_loss`; one forward of ``model`` (a
    :class:`HeadWithScale`, possibly DDP-wrapped) on all ``4 * len(pairs)`` maps."""
    device = next(model.parameters()).device
    maps, scale = model(torch.cat([p.features for p in pairs]).to(device))
    losses = [views_loss(maps[4 * i:4 * i + 4], scale, pair, config, generator)
              for i, pair in enumerate(pairs)]
    return torch.stack(losses).mean()


def pair_loss(
    head: AggregationNetwork,
    pair: LoadedPair,
    config: GeoAwareTrainConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The loss of one pair (see :func:`views_loss`)."""
    return batch_loss(HeadWithScale(head), [pair], config, generator)


def views_loss(
    out: torch.Tensor,
    scale: torch.Tensor,
    pair: LoadedPair,
    config: GeoAwareTrainConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The weighted mean, over the pair's views, of InfoNCE + dense flow loss.

    Args:
        out: ``(4, D, h, w)`` head outputs of source, target and their mirrors.
        scale: InfoNCE inverse temperature.
        pair: the pair (keypoints, transforms).
        config: loss settings.
        generator: label-noise source.
    """
    device = out.device
    views = pair_views(pair, config)
    views_ok = views.valid.any(dim=1)
    if not views_ok.any():
        return out.sum() * 0
    first = out[views.first.to(device)]
    second = out[views.second.to(device)]
    cells0 = views.cells0.to(device)
    cells1 = views.cells1.to(device)
    valid = views.valid.to(device)
    desc0 = sample_descriptors(first, cells0)
    desc1 = sample_descriptors(second, cells1)
    per_view = []
    for v in range(desc0.shape[0]):  # a handful of views, not keypoints
        sparse = info_nce_loss(desc0[v:v + 1], desc1[v:v + 1], scale, valid[v:v + 1])
        noisy = gaussian_label_noise(cells1[v:v + 1], float(views.noise_std[v]), generator)
        dense = flow_loss(desc0[v:v + 1], second[v:v + 1], noisy, valid[v:v + 1],
                          config.train_window, config.temperature)
        per_view.append(config.sparse_weight * sparse + config.dense_weight * dense)
    weights = (views.weights * views_ok).to(device)
    return (torch.stack(per_view) * weights).sum() / weights.sum()


@torch.no_grad()
def validation_pck(head: nn.Module, pairs: Sequence[LoadedPair], window: int = 7,
                   temperature: float = 0.02, alpha: float = 0.1) -> float:
    """PCK@``alpha`` per keypoint (pooled) of the head on loaded pairs, with the window
    soft-argmax used by evaluation and no pose alignment."""
    was_training = head.training
    head.eval()
    correct = total = 0
    device = next(head.parameters()).device
    for pair in pairs:
        s = pair.sample
        t0, t1 = pair.transforms
        maps = head(pair.features[:2].to(device))
        desc = sample_descriptors(maps[:1], t0.to_grid(s.source_points.float())[None].to(device))
        scores = cosine_similarity(desc, maps[1:2])
        cells = window_soft_argmax2d(scores, window, temperature, t1.valid_cells(device))[0]
        predicted = t1.from_grid(cells.cpu())
        error = (predicted - s.target_points).norm(dim=-1)
        correct += int(((error < alpha * s.pck_reference) & s.visible).sum())
        total += int(s.visible.sum())
    head.train(was_training)
    return correct / max(total, 1)


# ----------------------------------------------------------------------------- the run


def _dataset(config: GeoAwareTrainConfig, out: Path) -> tuple[list[PairSample],
                                                             list[PairSample]]:
    if not config.root:
        raise InputError("root is required (dataset folder, or photographs for 'synthetic')")
    if config.dataset == "synthetic":
        folder = Path(config.synthetic_dir) if config.synthetic_dir else out / "synthetic"
        train = make_synthetic_pairs(config.root, folder / "train", config.synthetic_pairs,
                                     config.synthetic_size, config.seed,
                                     config.synthetic_mirror_rate)
        val = make_synthetic_pairs(config.root, folder / "val", config.val_pairs,
                                   config.synthetic_size, config.seed + 10_000,
                                   config.synthetic_mirror_rate) if config.val_pairs else []
        return train, val
    from semcorr.data import create_dataset

    dataset = create_dataset(config.dataset, config.root, config.split)
    return [dataset[i] for i in range(len(dataset))], []


def _build_backbone(config: GeoAwareTrainConfig, device: torch.device) -> Backbone:
    backbone = create_backbone(config.backbone, weights=config.weights,
                               **dict(config.backbone_options))
    return backbone.to(device).eval()


def _fill_cache(config: GeoAwareTrainConfig, out: Path, backbone: Backbone,
                samples: Sequence[PairSample], rank: int, world: int) -> FeatureCache:
    from semcorr.distributed import barrier, shard

    root = Path(config.cache) if config.cache else out / "features"
    cache = FeatureCache.for_backbone(root, backbone, config.weights, config.storage, flip=True,
                                      options=dict(config.backbone_options))
    paths = sorted({Path(p).resolve() for s in samples for p in (s.source_path, s.target_path)})
    summary = cached_extract(backbone, cache, shard(paths, rank, world))
    if summary.failed:
        raise InputError(f"could not extract features of {len(summary.failed)} image(s): "
                         f"{summary.failed[:3]}")
    barrier()
    return cache


def _total_steps(config: GeoAwareTrainConfig, num_pairs: int, world: int) -> int:
    if config.steps is not None:
        return config.steps
    per_epoch = math.ceil(num_pairs / (config.batch_size * world))
    return max(1, per_epoch * config.epochs)


def _batch_indices(step: int, num_pairs: int, batch: int, seed: int) -> list[int]:
    """Global batch of ``step``: a per-epoch permutation seeded by (seed, epoch)."""
    per_epoch = math.ceil(num_pairs / batch)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(
        seed * 1_000_003 + epoch)).tolist()
    chosen = order[position * batch:(position + 1) * batch]
    return chosen if chosen else order[:batch]


def _make_head(config: GeoAwareTrainConfig) -> AggregationNetwork:
    head = AggregationNetwork(config.feature_dims, config.projection_dim, config.num_groups,
                              config.feature_dropout)
    if config.init:
        from semcorr.postprocess.base import load_head_state, read_head_state

        load_head_state(head, read_head_state(config.init), config.init)
    return head


def _check_run(out: Path, config: GeoAwareTrainConfig) -> None:
    saved = out / "config.json"
    digest = config_hash(config.identity())
    if saved.is_file():
        previous = json.loads(saved.read_text()).get("identity_hash")
        if previous != digest and (out / "last.pt").is_file():
            raise InputError(
                f"{out}: holds a run with other settings (config {previous}, this one "
                f"{digest}); use another --out folder"
            )
    atomic_write_json(saved, {"config": config_to_dict(config), "identity_hash": digest})


def train_geoaware(
    config: GeoAwareTrainConfig,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train (or resume training) the aggregation network; returns the final weights file.

    Writes into ``config.out``: ``config.json``, ``last.pt`` (checkpoint every
    ``checkpoint_every`` steps and at the end), ``history.json`` (loss per step, validation
    PCK), ``head.safetensors`` (final weights, loadable by ``load_head("geoaware", ...)``) and,
    with ``eval_dataset``, ``eval/step_<n>/`` from :func:`semcorr.eval.benchmark.evaluate`.

    Args:
        config: the settings.
        progress: called after every step with the step index and its numbers.
    """
    from semcorr.devices import choose_device
    from semcorr.distributed import cleanup, init_from_env, local_device

    if not config.out:
        raise InputError("out is required (the run's output folder)")
    out = Path(config.out)
    device = choose_device(config.device)
    info = init_from_env(use_cuda=device.type == "cuda")
    device = local_device(device, info)
    try:
        if info.is_main:
            _check_run(out, config)
        samples, val_samples = _dataset(config, out)
        if not samples:
            raise InputError(f"{config.dataset}: no training pairs")
        backbone = _build_backbone(config, device)
        cache = _fill_cache(config, out, backbone, [*samples, *val_samples], info.rank,
                            info.world_size)
        val = [load_pair(cache, s, config.feature_parts) for s in val_samples]
        return _run(config, out, device, info, _Data(samples, val, cache, backbone), progress)
    finally:
        cleanup()


@dataclass
class _Data:
    samples: list[PairSample]
    val: list[LoadedPair]
    cache: FeatureCache
    backbone: Backbone


def _run(
    config: GeoAwareTrainConfig,
    out: Path,
    device: torch.device,
    info: Any,
    data: _Data,
    progress: Callable[[int, dict[str, float]], None] | None,
) -> Path:
    from semcorr.distributed import is_main

    samples, val, cache = data.samples, data.val, data.cache
    torch.manual_seed(config.seed + info.rank)
    head = _make_head(config).to(device)
    model: nn.Module = HeadWithScale(head)
    if info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)  # self_logit_scale is kept but never used
    total = _total_steps(config, len(samples), info.world_size)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                    total_steps=total,
                                                    pct_start=config.pct_start)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    noise = torch.Generator().manual_seed(config.seed * 7919 + info.rank)
    generators = {"noise": noise}
    history: dict[str, Any] = {"loss": [], "val_pck": []}
    start = 0
    last = out / "last.pt"
    if last.is_file():
        state = load_checkpoint(last, model=head, optimizer=optimizer, scheduler=scheduler,
                                scaler=scaler, generators=generators)
        start, history = state["step"], state["extra"]["history"]
    if not history["val_pck"] and val and is_main():
        history["val_pck"].append([start, validation_pck(head, val, config.eval_window,
                                                         config.temperature)])
    model.train()
    global_batch = config.batch_size * info.world_size
    for step in range(start, total):
        indices = _batch_indices(step, len(samples), global_batch, config.seed)
        mine = indices[info.rank::info.world_size]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=scaler.is_enabled()):
            pairs = [load_pair(cache, samples[i], config.feature_parts) for i in mine]
            loss = batch_loss(model, pairs, config, noise)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        history["loss"].append(float(loss.detach()))
        numbers = {"loss": history["loss"][-1], "lr": scheduler.get_last_lr()[0]}
        done = step + 1
        if val and is_main() and (done % config.checkpoint_every == 0 or done == total):
            pck = validation_pck(head, val, config.eval_window, config.temperature)
            history["val_pck"].append([done, pck])
            numbers["val_pck"] = pck
        if done % config.checkpoint_every == 0 or done == total:
            if is_main():
                save_checkpoint(last, model=head, step=done, optimizer=optimizer,
                                scheduler=scheduler, scaler=scaler, generators=generators,
                                extra={"history": history})
        if config.eval_every and config.eval_dataset and done % config.eval_every == 0 \
                and is_main():
            _evaluate(config, out, data.backbone, head, done)
        if progress is not None and is_main():
            progress(step, numbers)
        if config.delay:
            time.sleep(config.delay)
    weights = out / "head.safetensors"
    if is_main():
        from safetensors.torch import save

        atomic_write_bytes(weights, save({k: v.detach().cpu().contiguous()
                                          for k, v in head.state_dict().items()}))
        atomic_write_json(out / "history.json", history)
    return weights


def _evaluate(config: GeoAwareTrainConfig, out: Path, backbone: Backbone, head: nn.Module,
              step: int) -> dict[str, Any]:
    """Periodic evaluation through :func:`semcorr.eval.benchmark.evaluate` (``semcorr eval``)."""
    from semcorr.data import create_dataset
    from semcorr.eval.benchmark import evaluate
    from semcorr.pipeline import Matcher
    from semcorr.postprocess.base import HeadedBackbone

    dataset = create_dataset(config.eval_dataset, config.eval_root or config.root,
                             config.eval_split)
    was_training = head.training
    head.eval()
    try:
        matcher = Matcher(HeadedBackbone(backbone, head, "geoaware"), refine="window",
                          window=config.eval_window, temperature=config.temperature)
        return evaluate(matcher, dataset, out / "eval" / f"step_{step}", limit=config.eval_limit,
                        progress=False, plot=False)
    finally:
        head.train(was_training)


def config_from_sources(
    file: str | None = None, overrides: Sequence[str] = (), preset: str | None = None
) -> GeoAwareTrainConfig:
    """Defaults < preset < file < command-line ``key=value`` overrides."""
    base = config_for_preset(preset) if preset else None
    return build_config(GeoAwareTrainConfig, file, overrides, base)

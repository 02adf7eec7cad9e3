"""Training GeoAware-SC's post-processor on cached features, as released.

One step takes a batch of annotated pairs (:class:`~semcorr.data.PairSample`), reads the
features of both images and of their mirrors from a :class:`~semcorr.features.cache.FeatureCache`
(extracted once, resumably), runs the head on the four maps, and averages the loss over the
pose-variant views of each pair (:mod:`semcorr.train.geoaware_views`: the pair with InfoNCE and
the dense flow error, the double and self flips with the flow error only, the released
keypoint arithmetic and label noise).

The dense objective's soft-argmax grid is trained with the head (``learn_grid``, the released
``Correlation2Displacement``); ``learn_grid=False`` keeps the cell coordinates fixed. The grid is
not part of the head's weights (the released checkpoints do not hold it either), so every
weights file written here loads strictly as the official layout.

AdamW, with a one-cycle schedule (``scheduler="one_cycle"``, the SPair-71k configuration) or a
constant learning rate (``"none"``: AP-10k pre-training and PF-Pascal). Checkpoints
(``last.pt``) hold the model, grid, optimizer, scheduler, scaler, RNG states, step and loss
history, so a killed run resumes exactly; ``best.safetensors`` holds the head at the best
validation PCK, ``head.safetensors`` the last. Under ``torchrun`` the head is wrapped in
``DistributedDataParallel`` and each rank takes its share of every batch.

One file on purpose (~600 lines): one training recipe, its configuration, pair loading, loss,
loop and periodic evaluation; the augmented views already live apart
(:mod:`semcorr.train.geoaware_views`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semcorr.config import build_config, config_hash, config_to_dict
from semcorr.data.base import PairSample
from semcorr.errors import InputError
from semcorr.features.base import Backbone, create_backbone
from semcorr.features.cache import FeatureCache, cached_extract
from semcorr.features.fusion import resample_parts
from semcorr.io import atomic_write_bytes, atomic_write_json, check_output_dir
from semcorr.match.rules import window_soft_argmax2d
from semcorr.match.similarity import cosine_similarity, sample_descriptors
from semcorr.postprocess.aggregation import AggregationNetwork
from semcorr.train.checkpoint import load_checkpoint, save_checkpoint
from semcorr.train.geoaware_views import (
    NOISE_REFERENCES,
    LoadedPair,
    PairViews,
    pair_views,
    views_loss,
)
from semcorr.train.losses import SoftArgmaxGrid
from semcorr.train.synthetic import make_synthetic_pairs

__all__ = [
    "GeoAwareTrainConfig",
    "PairViews",
    "config_for_preset",
    "config_from_sources",
    "load_pair",
    "make_synthetic_pairs",
    "HeadWithScale",
    "LoadedPair",
    "SCHEDULERS",
    "TRAIN_PRESETS",
    "batch_loss",
    "pair_loss",
    "pair_views",
    "views_loss",
    "train_geoaware",
    "validation_pck",
]

ORIENTATIONS = ("src", "tgt", "src_flip", "tgt_flip")
#: Learning-rate schedules: the released one-cycle, or none (a constant rate).
SCHEDULERS: tuple[str, ...] = ("one_cycle", "none")


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
    annotation_size: int = 840
    noise_reference: str = "box"
    learn_grid: bool = True
    scheduler: str = "one_cycle"
    best_alpha: float = 0.1
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
        if self.scheduler not in SCHEDULERS:
            raise InputError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.noise_reference not in NOISE_REFERENCES:
            raise InputError(f"noise_reference must be one of {NOISE_REFERENCES}, got "
                             f"{self.noise_reference!r}")

    def identity(self) -> dict[str, Any]:
        """The settings that determine the results (a resumed run must have the same)."""
        data = config_to_dict(self)
        for key in ("out", "log_every", "device", "delay", "eval_every", "eval_limit",
                    "checkpoint_every"):
            data.pop(key)
        return data


#: The released training configurations (``configs/train_*.yaml`` over ``pck_train.py``'s
#: argument defaults), key for key in this trainer's terms. The released ``LOAD`` (the AP-10k
#: pre-training's ``last.PTH`` for SPair-71k and PF-Pascal) is a file: pass it as ``init=``.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "ap10k": {  # train_ap10k.yaml: no SCHEDULER, EPOCH 1, PAIR_AUGMENT, DENSE_OBJ 1
        "dataset": "ap10k", "epochs": 1, "scheduler": "none", "pair_augment": True,
        "eval_dataset": "ap10k", "eval_split": "val",
    },
    "spair": {  # train_spair.yaml: SCHEDULER one_cycle, EPOCH 2, PAIR_AUGMENT, DENSE_OBJ 1
        "dataset": "spair", "epochs": 2, "scheduler": "one_cycle", "pair_augment": True,
        "eval_dataset": "spair", "eval_split": "val",
    },
    "pfpascal": {  # train_pascal.yaml: no SCHEDULER, EPOCH 100, no PAIR_AUGMENT, image threshold
        "dataset": "pf-pascal", "epochs": 100, "scheduler": "none", "pair_augment": False,
        "noise_reference": "image", "best_alpha": 0.05,
        "eval_dataset": "pf-pascal", "eval_split": "val",
    },
}

#: ``pck_train.py``'s defaults that every released training configuration keeps.
_RELEASED_DEFAULTS: dict[str, Any] = {
    "lr": 1.25e-3, "weight_decay": 1e-3, "batch_size": 1, "pct_start": 0.3,  # LR, WD, BZ
    "feature_dropout": 0.2, "label_noise": 0.1, "dense_weight": 1.0,  # FEAT_MAP_DROPOUT, ...
    "sparse_weight": 1.0, "single_flip": 0.0, "double_flip": 1.0, "self_flip": 0.25,
    "train_window": None, "temperature": 0.02, "learn_grid": True, "annotation_size": 840,
    "noise_reference": "box", "best_alpha": 0.1, "eval_window": 7, "eval_every": 5000,
    "projection_dim": 768, "seed": 42,  # SOFT_EVAL_WINDOW, EVAL_EPOCH, PROJ_DIM, SEED
}


def config_for_preset(name: str) -> dict[str, Any]:
    """Config values of a released training configuration (``spair``, ``ap10k``,
    ``pfpascal``); the dataset root, output folder and ``init`` still come from the user."""
    if name not in TRAIN_PRESETS:
        raise InputError(f"preset {name!r} has no training (training presets: "
                         f"{', '.join(TRAIN_PRESETS)}; use it with 'semcorr eval')")
    return {**_RELEASED_DEFAULTS, **TRAIN_PRESETS[name]}


# ----------------------------------------------------------------------------- pair features


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


# ----------------------------------------------------------------------------- losses


class HeadWithScale(nn.Module):
    """Runs the head and returns its InfoNCE scale and the soft-argmax grid too, so that every
    trained parameter is used inside one ``forward`` (what ``DistributedDataParallel`` needs).

    Args:
        head: the aggregation network.
        grid: the trained soft-argmax grid, or ``None`` for fixed cell coordinates.
    """

    def __init__(self, head: AggregationNetwork, grid: SoftArgmaxGrid | None = None) -> None:
        super().__init__()
        self.head = head
        self.grid = grid

    def forward(self, features: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """``(B, C, h, w)`` → head output ``(B, D, h, w)``, ``exp(logit_scale)`` and the grid
        axes ``(w,)``, ``(h,)`` (``None`` without a grid)."""
        axes = self.grid() if self.grid is not None else None
        return self.head(features), self.head.logit_scale.exp(), axes


def batch_loss(
    model: nn.Module,
    pairs: Sequence[LoadedPair],
    config: GeoAwareTrainConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean over pairs of :func:`~semcorr.train.geoaware_views.views_loss`; one forward of
    ``model`` (a :class:`HeadWithScale`, possibly DDP-wrapped) on all ``4 * len(pairs)`` maps."""
    device = next(model.parameters()).device
    maps, scale, grid = model(torch.cat([p.features for p in pairs]).to(device))
    losses = [views_loss(maps[4 * i:4 * i + 4], scale, pair, config, generator, grid)
              for i, pair in enumerate(pairs)]
    return torch.stack(losses).mean()


def pair_loss(
    head: AggregationNetwork,
    pair: LoadedPair,
    config: GeoAwareTrainConfig,
    generator: torch.Generator | None = None,
    grid: SoftArgmaxGrid | None = None,
) -> torch.Tensor:
    """The loss of one pair (see :func:`~semcorr.train.geoaware_views.views_loss`)."""
    return batch_loss(HeadWithScale(head, grid), [pair], config, generator)


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
    samples, skipped = [], []
    for index in range(len(dataset)):
        try:  # validated on read (data.base.annotation_problem)
            samples.append(dataset[index])
        except InputError as exc:
            skipped.append(str(exc))
    for reason in skipped[:20]:
        print(f"skipped {reason}", flush=True)
    if len(skipped) > 20:
        print(f"skipped {len(skipped) - 20} more pair(s)", flush=True)
    return samples, []


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
    """Refuse an ``out`` that cannot be written or holds a run with other settings (nothing is
    written: the folder is made when the work starts)."""
    check_output_dir(out, "out")
    if config.cache:
        check_output_dir(config.cache, "cache")
    if config.init and not Path(config.init).is_file():
        raise InputError(f"init {config.init}: no such weights file")
    if config.eval_dataset:  # read at the first evaluation, hours in: named now
        from semcorr.data import create_dataset

        create_dataset(config.eval_dataset, config.eval_root or config.root, config.eval_split)
    saved = out / "config.json"
    digest = config_hash(config.identity())
    if saved.is_file():
        try:
            previous = json.loads(saved.read_text()).get("identity_hash")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise InputError(f"{saved}: unreadable record of a previous run") from None
        if previous != digest and (out / "last.pt").is_file():
            raise InputError(
                f"{out}: holds a run with other settings (config {previous}, this one "
                f"{digest}); use another --out folder"
            )


def _save_config(out: Path, config: GeoAwareTrainConfig) -> None:
    atomic_write_json(out / "config.json", {"config": config_to_dict(config),
                                            "identity_hash": config_hash(config.identity())})


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
        if info.is_main:  # every input read: the work starts
            _save_config(out, config)
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


def _optimisation(config: GeoAwareTrainConfig, params: list[nn.Parameter], total: int
                  ) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the head (and grid), with the configured schedule (``None`` = constant)."""
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.scheduler == "none":
        return optimizer, None
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total, pct_start=config.pct_start)


def _make_grid(config: GeoAwareTrainConfig, first: LoadedPair) -> SoftArgmaxGrid | None:
    """The trained soft-argmax grid on the features' grid, or ``None`` (fixed grid)."""
    if not config.learn_grid:
        return None
    h, w = first.features.shape[-2:]
    return SoftArgmaxGrid(w, h, learnable=True)


def _save_head(path: Path, head: nn.Module) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous()
                                   for k, v in head.state_dict().items()}))


def _keep_best(out: Path, head: nn.Module, history: dict[str, Any], step: int,
               score: float) -> None:
    """Write ``best.safetensors`` when ``score`` beats every earlier one (the released rule:
    strictly better on the validation PCK)."""
    best = history.setdefault("best", None)
    if best is None or score > best[1]:
        _save_head(out / "best.safetensors", head)
        history["best"] = [step, score]


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
    grid = _make_grid(config, load_pair(cache, samples[0], config.feature_parts))
    grid = grid.to(device) if grid is not None else None
    model: nn.Module = HeadWithScale(head, grid)
    if info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)  # self_logit_scale is kept but never used
    total = _total_steps(config, len(samples), info.world_size)
    optimizer, scheduler = _optimisation(config, list(HeadWithScale(head, grid).parameters()),
                                         total)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    noise = torch.Generator().manual_seed(config.seed * 7919 + info.rank)
    generators = {"noise": noise}
    history: dict[str, Any] = {"loss": [], "val_pck": [], "best": None}
    start = 0
    last = out / "last.pt"
    if last.is_file():
        state = load_checkpoint(last, model=head, optimizer=optimizer, scheduler=scheduler,
                                scaler=scaler, generators=generators)
        start, history = state["step"], state["extra"]["history"]
        if grid is not None:
            grid.load_state_dict(state["extra"]["grid"])
    if not history["val_pck"] and val and is_main():
        history["val_pck"].append([start, validation_pck(head, val, config.eval_window,
                                                         config.temperature, config.best_alpha)])
    model.train()
    global_batch = config.batch_size * info.world_size
    for step in range(start, total):
        indices = _batch_indices(step, len(samples), global_batch, config.seed)
        mine = indices[info.rank::info.world_size]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=scaler.is_enabled()):
            pairs = [load_pair(cache, samples[i], config.feature_parts) for i in mine]
            loss = batch_loss(model, pairs, config, noise)
        rate = optimizer.param_groups[0]["lr"]  # the rate this step uses
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        history["loss"].append(float(loss.detach()))
        numbers = {"loss": history["loss"][-1], "lr": rate}
        done = step + 1
        if val and is_main() and (done % config.checkpoint_every == 0 or done == total):
            pck = validation_pck(head, val, config.eval_window, config.temperature,
                                 config.best_alpha)
            history["val_pck"].append([done, pck])
            numbers["val_pck"] = pck
            _keep_best(out, head, history, done, pck)
        if config.eval_every and config.eval_dataset and is_main() \
                and (done % config.eval_every == 0 or done == total):  # as released
            results = _evaluate(config, out, data.backbone, head, done)
            if not val:
                _keep_best(out, head, history, done, _eval_score(results, config.best_alpha))
        if (done % config.checkpoint_every == 0 or done == total) and is_main():
            save_checkpoint(last, model=head, step=done, optimizer=optimizer,
                            scheduler=scheduler, scaler=scaler, generators=generators,
                            extra={"history": history,
                                   "grid": dict(grid.state_dict()) if grid is not None else {}})
        if progress is not None and is_main():
            progress(step, numbers)
        if config.delay:
            time.sleep(config.delay)
    weights = out / "head.safetensors"
    if is_main():
        _save_head(weights, head)
        atomic_write_json(out / "history.json", history)
    return weights


def _eval_score(results: dict[str, Any], alpha: float) -> float:
    """Per-image PCK@``alpha`` of a :func:`semcorr.eval.benchmark.evaluate` result."""
    from semcorr.eval.pck import format_threshold

    return float(results["pck"][format_threshold(alpha)]["per_image"])


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

"""The training loop: schedule, validation PCK, one step, checkpoints on the way, resuming
and ``torchrun``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semcorr.config import config_to_dict
from semcorr.data.base import PairDataset, PairSample, sample_problem
from semcorr.errors import ImageError, InputError, WeightsError
from semcorr.features.base import Backbone, create_backbone
from semcorr.io import atomic_write_json, check_output_dir, load_image
from semcorr.train.finetune.batches import _InputCache, batch_indices, make_batch
from semcorr.train.finetune.checkpoints import (
    BEST,
    CHECKPOINT_FORMAT,
    LAST,
    _apply_trained,
    _base_record,
    _read,
    _save,
    _trained_state,
)
from semcorr.train.finetune.config import _RESUMABLE, FinetuneConfig
from semcorr.train.finetune.losses import pair_losses
from semcorr.train.finetune.surgery import freeze_for_finetuning


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Learning-rate factor of step ``s``: linear warm-up to 1, then cosine to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor



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
        try:  # a bad pair (see data.base.sample_problem) is not scored
            sample = dataset[index]
            if sample_problem(sample) is not None:
                continue
            source, target = load_image(sample.source_path), load_image(sample.target_path)
        except (ImageError, InputError):
            continue
        rows = sample.visible.nonzero().flatten()
        if rows.numel() == 0:
            continue
        points = sample.source_points[rows].float()
        points = torch.stack([points[:, 0].clamp(0, source.shape[-1] - 1),
                              points[:, 1].clamp(0, source.shape[-2] - 1)], dim=1)
        pred = matcher.match(source, [target], points)[0].points.cpu()
        correct = pck_correct(pred, sample.target_points[rows].float(), sample.pck_reference,
                              [alpha])
        values.append(float(correct.double().mean()))
    return values



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
            sample = run.train_set[index]  # validated on read: a bad pair is skipped, listed
            run.inputs(sample.source_path)
            run.inputs(sample.target_path)
        except (ImageError, InputError) as exc:
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

    # the datasets first: a missing root is named before any weights are fetched
    train_set = create_dataset(config.dataset, config.root, split=config.train_split,
                               **config.dataset_options)
    val_set = None
    if config.val_split:
        val_set = create_dataset(config.dataset, config.root, split=config.val_split,
                                 **config.dataset_options)
    backbone = create_backbone(config.backbone, weights=config.weights,
                               **config.backbone_options).to(device).eval()
    trained = freeze_for_finetuning(backbone, config.layers)
    params = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = _optimizer(backbone, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup, config.steps, config.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
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
        out = check_output_dir(config.out)
        if (out / LAST).is_file() and not resume:
            raise InputError(f"{out / LAST}: a run exists; add --resume or use another --out")
        run = _setup(config, info.rank, info.world_size, local_device(device, info))
        if resume and (out / LAST).is_file():
            _resume(run, out / LAST)
        if info.is_main:  # every input read: the work starts
            out.mkdir(parents=True, exist_ok=True)
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

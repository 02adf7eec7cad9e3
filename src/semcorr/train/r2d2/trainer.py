"""The resumable R2D2 trainer: its configuration, the training loop and its checkpoints
(written atomically, in the published format).

Two presets (:data:`PRESETS`):

* ``custom``: synthetic homography pairs from any image folder
  (:class:`~semcorr.train.r2d2.synthetic.SyntheticPairs`), ``steps`` steps of ``batch_size``;
* ``wasf``: the released run: the WASF mix of a dataset root
  (:class:`~semcorr.train.r2d2.released.ReleasedPairs`), 25 epochs of batch 8 over it in a new
  random order each epoch (the last batch of an epoch may be smaller), Adam lr 1e-4, weight
  decay 5e-4, crops of 192, repeatability patch 16, AP with 20 bins and base 0.5.

Under ``torchrun`` each rank computes its share of every batch (every ``world``-th item) and the
gradients are summed with each rank's loss weighted by its share, so the update is the batch
mean. Batch-norm statistics and the sampler's distractors stay per rank (as with plain
``DistributedDataParallel``), so a run on several processes is close to, not equal to, one
process. Only rank 0 writes files.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from semcorr.errors import InputError, WeightsError
from semcorr.features.r2d2 import R2D2, R2D2Net, build_network, read_checkpoint
from semcorr.io import atomic_write_bytes, atomic_write_json, check_output_dir
from semcorr.train.r2d2.losses import R2D2Loss
from semcorr.train.r2d2.synthetic import SyntheticPairs

__all__ = ["PRESETS", "R2D2TrainConfig", "batch_items", "config_from_options", "make_dataset",
           "total_steps", "train_r2d2"]


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------

_MODEL_ARCH = {"r2d2": "Quad_L2Net_ConfCFS", "faster2d2": "Fast_Quad_L2Net_ConfCFS"}

#: Settings of each preset, applied over the class defaults (then a file, then the CLI).
PRESETS: dict[str, dict[str, Any]] = {
    "custom": {},
    "wasf": {"epochs": 25, "batch_size": 8, "lr": 1e-4, "weight_decay": 5e-4, "crop": 192,
             "patch": 16, "num_bins": 20, "base": 0.5, "sources": "WASF"},
}


@dataclass
class R2D2TrainConfig:
    """Settings of :func:`train_r2d2` (defaults: the published ones where they apply).

    Attributes:
        images: ``custom``: folder of training images (synthetic homography pairs are made
            from them); ``wasf``: the dataset root of :mod:`semcorr.data.r2d2_training`.
        out: output folder (``last.pt`` to resume, ``model.pt`` in the published format,
            ``config.json``, ``log.jsonl``).
        model: ``r2d2`` or ``faster2d2``.
        mchan, dim: network width (published: 4, 128).
        init: optional checkpoint to start from (published format).
        steps, batch_size, crop, lr, weight_decay: optimisation (Adam).
        seed: seeds data and sampling (nothing global is seeded).
        patch: patch size of the repeatability losses.
        num_bins, base: AP quantiser bins and reliability base.
        sampler: options of :func:`neighbourhood_sampler`.
        checkpoint_every: steps between checkpoints.
        workers: loader processes making the pairs (0: in the training process); the pairs do
            not depend on it.
        preset: ``custom`` or ``wasf`` (see the module docstring).
        sources: ``wasf``: letters of the sources mixed (W, A, S, F).
        epochs: when set, the run lasts this many passes over the data (``steps`` is then
            derived from the data size); ``wasf`` only.
    """

    images: str
    out: str
    model: str = "r2d2"
    mchan: int = 4
    dim: int = 128
    init: str | None = None
    steps: int = 1000
    batch_size: int = 4
    crop: int = 192
    lr: float = 1e-4
    weight_decay: float = 5e-4
    seed: int = 0
    patch: int = 16
    num_bins: int = 20
    base: float = 0.5
    sampler: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 100
    workers: int = 0
    preset: str = "custom"
    sources: str = "WASF"
    epochs: int | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r} (known: {', '.join(PRESETS)})")
        if self.epochs is not None and (self.preset != "wasf" or self.epochs < 0):
            raise InputError("epochs applies to the wasf preset only and must be >= 0")
        if self.model not in _MODEL_ARCH:
            raise InputError(f"unknown model {self.model!r} (known: {', '.join(_MODEL_ARCH)})")
        if self.steps < 0 or self.batch_size < 1 or self.crop < 2 * self.patch:
            raise InputError("need steps >= 0, batch_size >= 1 and crop >= 2 * patch")
        if self.workers < 0:
            raise InputError(f"workers must be >= 0, got {self.workers}")

    def net_string(self) -> str:
        """The constructor string saved as ``net`` (readable by the published loader)."""
        return f"{_MODEL_ARCH[self.model]}(mchan={self.mchan}, dim={self.dim})"


def _state_bytes(obj: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _steps_per_epoch(config: R2D2TrainConfig, size: int) -> int:
    return -(-size // config.batch_size)


def total_steps(config: R2D2TrainConfig, size: int) -> int:
    """Steps of the run over a dataset of ``size`` pairs."""
    if config.epochs is None:
        return config.steps
    return config.epochs * _steps_per_epoch(config, size)


def batch_items(config: R2D2TrainConfig, step: int, size: int) -> tuple[int, list[int]]:
    """``(epoch, item indices)`` of a step: ``wasf`` walks each epoch in a new random order
    (seeded by ``seed`` and the epoch); ``custom`` takes items in a fixed cyclic order."""
    if config.preset != "wasf":
        return 0, [(step * config.batch_size + k) % size for k in range(config.batch_size)]
    epoch, position = divmod(step, _steps_per_epoch(config, size))
    order = torch.randperm(size, generator=torch.Generator().manual_seed(
        config.seed * 1_000_003 + epoch))
    chunk = order[position * config.batch_size:(position + 1) * config.batch_size]
    return epoch, chunk.tolist()


class _Keyed(torch.utils.data.Dataset):
    """Items addressed by ``(epoch, index)``, so loader workers make exactly the items of the
    one-process run (each is a function of its key)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        sample = getattr(self.dataset, "sample", None)
        return sample(index, epoch) if sample is not None else self.dataset[index]


def _stack(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([it[key] for it in items]) for key in items[0]}


def _batches(config: R2D2TrainConfig, dataset: torch.utils.data.Dataset, start_step: int,
             steps: int, rank: int = 0, world: int = 1
             ) -> Iterator[tuple[int, float, dict[str, torch.Tensor]]]:
    """``(step, share, batch)`` for steps ``start_step .. steps - 1``: this rank's items of the
    step (made by ``config.workers`` loader processes, or in this one) and their share of the
    whole batch (an empty batch when the step has fewer items than ranks)."""
    from semcorr.distributed import shard

    plan = []
    for step in range(start_step, steps):
        epoch, indices = batch_items(config, step, len(dataset))
        mine = shard(indices, rank, world)
        plan.append((step, len(mine) / len(indices), [(epoch, i) for i in mine]))
    keyed = _Keyed(dataset)
    loaded = iter(torch.utils.data.DataLoader(
        keyed, batch_sampler=[keys for _, _, keys in plan if keys], collate_fn=_stack,
        num_workers=config.workers)) if config.workers else None
    for step, share, keys in plan:
        if not keys:
            yield step, share, {}
        elif loaded is not None:
            yield step, share, next(loaded)
        else:
            yield step, share, _stack([keyed[key] for key in keys])


def make_dataset(config: R2D2TrainConfig) -> torch.utils.data.Dataset:
    """The training pairs of a config's preset."""
    if config.preset == "wasf":
        from semcorr.train.r2d2.released import ReleasedPairs

        return ReleasedPairs(config.images, config.sources, crop=config.crop, seed=config.seed)
    return SyntheticPairs(config.images, crop=config.crop, seed=config.seed,
                          length=max(1, config.steps * config.batch_size))


def _build_model(config: R2D2TrainConfig) -> R2D2:
    if config.init:
        from semcorr.features.r2d2 import load_r2d2_network

        net, _ = load_r2d2_network(config.init)
    else:
        with torch.random.fork_rng():  # seeded initialisation, global RNG state untouched
            torch.manual_seed(config.seed)
            net = build_network(_MODEL_ARCH[config.model], mchan=config.mchan, dim=config.dim)
    if not isinstance(net, R2D2Net):
        raise WeightsError(f"{config.init}: not a network with confidence heads")
    return R2D2(net, name=config.model)


def train_r2d2(
    config: R2D2TrainConfig,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    dataset: torch.utils.data.Dataset | None = None,
) -> Path:
    """Train (or resume training) R2D2 on the pairs of the config's preset.

    Resumes from ``out/last.pt`` when it exists and was written with the same config (only
    ``steps``, ``epochs`` and ``checkpoint_every`` may change, e.g. to extend a run); the
    sampler's random state is saved with it, so an interrupted run continues exactly as if
    it had not stopped. All files are written atomically, by rank 0 only.

    Args:
        config: see :class:`R2D2TrainConfig`.
        progress: called with ``(step, losses)`` after each step (rank 0).
        dataset: optional dataset (default: :func:`make_dataset`); items are dicts of
            ``image1``, ``image2`` ``(3, H, W)`` in [0, 1] and ``aflow`` ``(2, H, W)``.

    Returns:
        The path of ``model.pt`` (published checkpoint format: ``net`` + ``state_dict``).
    """
    from semcorr.distributed import cleanup, init_from_env

    out = check_output_dir(config.out, "out")  # created by the first write, after the checks
    info = init_from_env()
    try:
        return _train(config, out, progress, dataset or make_dataset(config), info.rank,
                      info.world_size)
    finally:
        cleanup()


def _train(config: R2D2TrainConfig, out: Path,
           progress: Callable[[int, dict[str, float]], None] | None,
           dataset: torch.utils.data.Dataset, rank: int, world: int) -> Path:
    from semcorr.distributed import all_gather_objects, barrier

    saved_conf = {k: v for k, v in asdict(config).items() if k != "out"}
    model = _build_model(config)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    loss_fn = R2D2Loss(config.sampler, config.num_bins, config.base, config.patch)
    generator = torch.Generator().manual_seed(config.seed + 104_729 * rank)
    start = _resume(out / "last.pt", saved_conf, model, optimizer, generator, rank, world)
    steps = total_steps(config, len(dataset))
    if rank == 0:
        atomic_write_json(out / "config.json", saved_conf)
    model.net.train()
    log = []
    for step, share, batch in _batches(config, dataset, start, steps, rank, world):
        optimizer.zero_grad(set_to_none=True)
        details: dict[str, float] = {}
        if batch:
            out1, out2 = model(batch["image1"]), model(batch["image2"])
            loss, details = loss_fn(out1, out2, batch["aflow"], generator)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss is not finite at step {step}: {details}")
            (loss * share).backward()
            details["loss"] = float(loss.detach())
        _sum_gradients(model.net.parameters(), world)
        optimizer.step()
        details = _mean_details(details, share, world)
        details["step"] = step
        log.append(details)
        if progress is not None and rank == 0:
            progress(step, details)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == steps:
            states = all_gather_objects(generator.get_state())
            if rank == 0:
                _save(out, saved_conf, config, model, optimizer, step + 1, log, states)
            log = []
    if start >= steps and rank == 0 and not (out / "model.pt").is_file():
        _save(out, saved_conf, config, model, optimizer, start, log,
              all_gather_objects(generator.get_state()))
    skipped = getattr(dataset, "skipped", {})
    if skipped and rank == 0:
        atomic_write_json(out / "skipped.json", skipped)
        print(f"skipped {len(skipped)} unreadable image(s): see {out / 'skipped.json'}",
              file=sys.stderr)
    barrier()
    model.net.eval()
    return out / "model.pt"


def _sum_gradients(params: Iterator[torch.nn.Parameter], world: int) -> None:
    """Sum the (share-weighted) gradients over the ranks; no-op on one process."""
    if world == 1:
        return
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        torch.distributed.all_reduce(param.grad)


def _mean_details(details: dict[str, float], share: float, world: int) -> dict[str, float]:
    """Loss parts averaged over the ranks, each weighted by its share of the batch."""
    if world == 1:
        return details
    names = ("loss", "reliability", "cosim", "peaky", "ap")
    values = torch.tensor([details.get(n, 0.0) * share for n in names], dtype=torch.float64)
    torch.distributed.all_reduce(values)
    return dict(zip(names, values.tolist(), strict=True))


def _save(out: Path, saved_conf: dict[str, Any], config: R2D2TrainConfig, model: R2D2,
          optimizer: torch.optim.Optimizer, step: int, log: list[dict[str, float]],
          sampler_states: list[torch.Tensor]) -> None:
    state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
    atomic_write_bytes(out / "model.pt", _state_bytes({"net": config.net_string(),
                                                        "state_dict": state}))
    atomic_write_bytes(out / "last.pt", _state_bytes({
        "net": config.net_string(), "state_dict": state, "step": step,
        "optimizer": optimizer.state_dict(), "config": saved_conf,
        "sampler_states": sampler_states,
    }))
    if log:
        import json

        lines = "".join(json.dumps(entry) + "\n" for entry in log)
        previous = (out / "log.jsonl").read_text() if (out / "log.jsonl").is_file() else ""
        atomic_write_bytes(out / "log.jsonl", (previous + lines).encode())


def _resume(path: Path, saved_conf: dict[str, Any], model: R2D2,
            optimizer: torch.optim.Optimizer, generator: torch.Generator, rank: int = 0,
            world: int = 1) -> int:
    """Load ``last.pt`` if present; returns the step to start from (0 without it)."""
    if not path.is_file():
        return 0
    checkpoint = read_checkpoint(path)
    extendable = ("steps", "epochs", "checkpoint_every", "workers")  # may change on resume
    previous = {k: v for k, v in (checkpoint.get("config") or {}).items() if k not in extendable}
    defaults = {"preset": "custom", "sources": "WASF"}  # runs saved before the presets
    previous = {**defaults, **previous}
    if previous != {k: v for k, v in saved_conf.items() if k not in extendable}:
        raise InputError(f"{path}: written with another configuration; use a new --out or "
                         "delete it to start over")
    states = checkpoint.get("sampler_states") or []
    if states and len(states) != world:
        raise InputError(f"{path}: written by {len(states)} process(es), resumed by {world}; "
                         "resume with the same number of processes")
    model.net.load_state_dict(checkpoint["state_dict"], strict=True)
    optimizer.load_state_dict(checkpoint["optimizer"])
    if states:
        generator.set_state(states[rank])
    return int(checkpoint["step"])


def config_from_options(
    images: str, out: str, config_file: str | None = None, **options: Any
) -> R2D2TrainConfig:
    """Build a :class:`R2D2TrainConfig`: class defaults < the preset's settings < the optional
    ``config_file`` < ``options``. Unknown options, unknown presets and values of the wrong type
    or not finite (``steps: "abc"``, ``lr: nan``) are refused with an :class:`InputError` naming
    where they came from."""
    from semcorr.config import build_config

    preset = options.get("preset", "custom")
    if not isinstance(preset, str) or preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    return build_config(R2D2TrainConfig, config_file,
                        {**options, "images": images, "out": out}, base=PRESETS[preset])

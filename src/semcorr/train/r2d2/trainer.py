"""The resumable R2D2 trainer: its configuration, the training loop and its checkpoints
(written atomically, in the published format)."""

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

__all__ = ["R2D2TrainConfig", "config_from_options", "train_r2d2"]


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------

_MODEL_ARCH = {"r2d2": "Quad_L2Net_ConfCFS", "faster2d2": "Fast_Quad_L2Net_ConfCFS"}


@dataclass
class R2D2TrainConfig:
    """Settings of :func:`train_r2d2` (defaults: the published ones where they apply).

    Attributes:
        images: folder of training images (synthetic homography pairs are made from them).
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

    def __post_init__(self) -> None:
        if self.model not in _MODEL_ARCH:
            raise InputError(f"unknown model {self.model!r} (known: {', '.join(_MODEL_ARCH)})")
        if self.steps < 0 or self.batch_size < 1 or self.crop < 2 * self.patch:
            raise InputError("need steps >= 0, batch_size >= 1 and crop >= 2 * patch")

    def net_string(self) -> str:
        """The constructor string saved as ``net`` (readable by the published loader)."""
        return f"{_MODEL_ARCH[self.model]}(mchan={self.mchan}, dim={self.dim})"


def _state_bytes(obj: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _batches(dataset: SyntheticPairs, batch_size: int, start_step: int, steps: int
             ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``(step, batch)`` for steps ``start_step .. steps - 1``; items in a fixed order."""
    for step in range(start_step, steps):
        items = [dataset[(step * batch_size + k) % len(dataset)] for k in range(batch_size)]
        yield step, {key: torch.stack([it[key] for it in items]) for key in items[0]}


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
    dataset: SyntheticPairs | None = None,
) -> Path:
    """Train (or resume training) R2D2 on synthetic homography pairs.

    Resumes from ``out/last.pt`` when it exists and was written with the same config (only
    ``steps`` and ``checkpoint_every`` may change, e.g. to extend a run). All files are written
    atomically.

    Args:
        config: see :class:`R2D2TrainConfig`.
        progress: called with ``(step, losses)`` after each step.
        dataset: optional dataset (default: :class:`SyntheticPairs` of ``config.images``).

    Returns:
        The path of ``model.pt`` (published checkpoint format: ``net`` + ``state_dict``).
    """
    out = check_output_dir(config.out, "out")  # created by the first write, after the checks
    saved_conf = {k: v for k, v in asdict(config).items() if k != "out"}
    dataset = dataset or SyntheticPairs(config.images, crop=config.crop, seed=config.seed,
                                        length=max(1, config.steps * config.batch_size))
    model = _build_model(config)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    loss_fn = R2D2Loss(config.sampler, config.num_bins, config.base, config.patch)
    start = _resume(out / "last.pt", saved_conf, model, optimizer)
    atomic_write_json(out / "config.json", saved_conf)
    generator = torch.Generator().manual_seed(config.seed + 7919 * start)
    model.net.train()
    log = []
    for step, batch in _batches(dataset, config.batch_size, start, config.steps):
        optimizer.zero_grad(set_to_none=True)
        out1, out2 = model(batch["image1"]), model(batch["image2"])
        loss, details = loss_fn(out1, out2, batch["aflow"], generator)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is not finite at step {step}: {details}")
        loss.backward()
        optimizer.step()
        details.update(step=step, loss=float(loss.detach()))
        log.append(details)
        if progress is not None:
            progress(step, details)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            _save(out, saved_conf, config, model, optimizer, step + 1, log)
            log = []
    if start >= config.steps and not (out / "model.pt").is_file():
        _save(out, saved_conf, config, model, optimizer, start, log)
    if dataset.skipped:
        atomic_write_json(out / "skipped.json", dataset.skipped)
        print(f"skipped {len(dataset.skipped)} unreadable image(s): see {out / 'skipped.json'}",
              file=sys.stderr)
    model.net.eval()
    return out / "model.pt"


def _save(out: Path, saved_conf: dict[str, Any], config: R2D2TrainConfig, model: R2D2,
          optimizer: torch.optim.Optimizer, step: int, log: list[dict[str, float]]) -> None:
    state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
    atomic_write_bytes(out / "model.pt", _state_bytes({"net": config.net_string(),
                                                        "state_dict": state}))
    atomic_write_bytes(out / "last.pt", _state_bytes({
        "net": config.net_string(), "state_dict": state, "step": step,
        "optimizer": optimizer.state_dict(), "config": saved_conf,
    }))
    if log:
        import json

        lines = "".join(json.dumps(entry) + "\n" for entry in log)
        previous = (out / "log.jsonl").read_text() if (out / "log.jsonl").is_file() else ""
        atomic_write_bytes(out / "log.jsonl", (previous + lines).encode())


def _resume(path: Path, saved_conf: dict[str, Any], model: R2D2,
            optimizer: torch.optim.Optimizer) -> int:
    """Load ``last.pt`` if present; returns the step to start from (0 without it)."""
    if not path.is_file():
        return 0
    checkpoint = read_checkpoint(path)
    extendable = ("steps", "checkpoint_every")  # a run may be extended or checkpointed anew
    previous = {k: v for k, v in (checkpoint.get("config") or {}).items() if k not in extendable}
    if previous != {k: v for k, v in saved_conf.items() if k not in extendable}:
        raise InputError(f"{path}: written with another configuration; use a new --out or "
                         "delete it to start over")
    model.net.load_state_dict(checkpoint["state_dict"], strict=True)
    optimizer.load_state_dict(checkpoint["optimizer"])
    return int(checkpoint["step"])


def config_from_options(images: str, out: str, **options: Any) -> R2D2TrainConfig:
    """Build a :class:`R2D2TrainConfig`, refusing unknown options and values of the wrong type
    or not finite (``steps: "abc"``, ``lr: nan``) with an :class:`InputError` naming them."""
    from semcorr.config import build_config

    return build_config(R2D2TrainConfig, None, {**options, "images": images, "out": out})

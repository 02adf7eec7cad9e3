"""How many targets to run through a backbone at once: the batch-size rule.

The rule (used by :class:`~semcorr.pipeline.Matcher` and ``semcorr transfer`` when no batch
size is given)::

    per_target = FACTOR * (input + features + similarity)          (bytes, one target)
        input      = 2 * 3 * S * S * 4       the decoded image and its resized float copy
        features   = 2 * C * h * w * e       the feature map and its unit-norm copy
        similarity = 3 * Q * h * w * 4       the (Q, h, w) cosine volume and the refinement's
                                             temporaries, Q = query points matched per target
    budget     = the given budget, else HALF the memory available now (MemAvailable of the
                 host, or the free memory of the CUDA device)
    batch      = clamp(budget // per_target, 1, MAX_BATCH[device type])

``C, h, w`` and the element size ``e`` are read from features the backbone already produced
(the source's), ``S`` is the backbone's input side; ``FACTOR`` (4) covers the backbone's own
activations, which live only during its forward. ``MAX_BATCH`` is where larger batches stop
paying: 8 on a CPU (whose cores one batch of a few images already keeps busy; more only grows
the memory and the latency between results written to disk), 32 on an accelerator.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["FACTOR", "MAX_BATCH", "auto_batch_size", "available_memory", "per_target_bytes"]

#: Multiplier on the estimate of one target's tensors (the backbone's activations).
FACTOR = 4
#: Largest batch the rule picks, per device type (``cpu``; anything else: ``other``).
MAX_BATCH: dict[str, int] = {"cpu": 8, "other": 32}


def per_target_bytes(features: torch.Tensor, image_size: int, queries: int) -> int:
    """The memory one target of a batch needs, by the rule of this module.

    Args:
        features: ``(K, C, h, w)`` features the backbone produced (e.g. a source's candidates).
        image_size: the backbone's input side ``S`` in pixels.
        queries: points matched per target (``Q``).
    """
    c, h, w = features.shape[-3:]
    image = 2 * 3 * image_size * image_size * 4
    maps = 2 * c * h * w * features.element_size()
    similarity = 3 * max(queries, 1) * h * w * 4
    return FACTOR * (image + maps + similarity)


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free now: the CUDA device's free memory, else the host's ``MemAvailable``
    (``/proc/meminfo``; physical memory when that file is missing)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def auto_batch_size(per_target: int, budget: int | None = None,
                    device: torch.device | str = "cpu", max_batch: int | None = None) -> int:
    """Targets per batch that fit in ``budget`` bytes (default: half the available memory).

    Args:
        per_target: bytes one target needs (:func:`per_target_bytes`).
        budget: memory the batch may use; ``None`` = half of :func:`available_memory`.
        device: where the batch runs (whose memory is asked for when ``budget`` is ``None``).
        max_batch: the largest batch returned (default: :data:`MAX_BATCH` of the device).

    Returns:
        ``clamp(budget // per_target, 1, max_batch)``.
    """
    if per_target < 1:
        raise ValueError(f"per_target must be a positive number of bytes, got {per_target}")
    budget = available_memory(device) // 2 if budget is None else budget
    if max_batch is None:
        kind = torch.device(device).type
        max_batch = MAX_BATCH["cpu" if kind == "cpu" else "other"]
    return max(1, min(max_batch, int(budget) // per_target))

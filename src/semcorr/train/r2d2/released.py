"""R2D2's released training set: the WASF mix of :mod:`semcorr.data.r2d2_training`, each pair
made as released (:mod:`~semcorr.train.r2d2.released_pairs`, then
:func:`~semcorr.train.r2d2.pair_crop.official_pair`).

The released loader draws from the process-global random streams; here item ``index`` of epoch
``epoch`` is a function of ``(seed, epoch, index)`` only (its own :class:`PairRandom`), so a run
is reproducible and resumes exactly, whatever the number of workers or ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semcorr.data.r2d2_training import (
    WEB_LISTS,
    FlowPairFiles,
    aachen_db_images,
    optical_flow_pairs,
    read_flow,
    read_mask,
    style_transfer_pairs,
    web_images,
)
from semcorr.errors import ImageError, InputError
from semcorr.train.r2d2.pair_crop import official_pair
from semcorr.train.r2d2.released_pairs import (
    RawPair,
    flow_pair,
    synthetic_pair,
    transformed_pair,
)
from semcorr.train.r2d2.transforms import PairRandom

__all__ = ["SOURCES", "ReleasedPairs"]

#: The sources of the mix by letter, in the released order: Web images, Aachen DB images,
#: Aachen Style-transfer pairs, Aachen optical-Flow pairs.
SOURCES = "WASF"


def _open(path: os.PathLike[str] | str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as exc:
        raise ImageError(f"{path}: unreadable image ({exc})") from None


def _synthetic(path: Path, rng: PairRandom) -> RawPair:
    return synthetic_pair(_open(path), rng)


def _style(day: Path, night: Path, rng: PairRandom) -> RawPair:
    return transformed_pair(_open(day), _open(night), rng)


def _flow(files: FlowPairFiles, rng: PairRandom) -> RawPair:
    del rng  # a stored flow pair is not transformed before the final crop
    return flow_pair(_open(files.image1), _open(files.image2), read_flow(files.flow),
                     read_mask(files.mask))


def _entries(root: str | os.PathLike[str], sources: str, web_lists: range
             ) -> list[Callable[[PairRandom], RawPair]]:
    """One pair maker per pair of the mix, source after source (picklable, for workers)."""
    entries: list[Callable[[PairRandom], RawPair]] = []
    for letter in sources:
        if letter == "W":
            entries += [partial(_synthetic, p) for p in web_images(root, web_lists)]
        elif letter == "A":
            entries += [partial(_synthetic, p) for p in aachen_db_images(root).values()]
        elif letter == "S":
            entries += [partial(_style, a, b) for a, b in style_transfer_pairs(root)]
        elif letter == "F":
            entries += [partial(_flow, f) for f in optical_flow_pairs(root)]
        else:
            raise InputError(f"unknown R2D2 training source {letter!r} (known: {SOURCES})")
    return entries


class ReleasedPairs(torch.utils.data.Dataset):
    """The released training pairs of ``root`` (see :mod:`semcorr.data.r2d2_training`).

    Args:
        root: the dataset folder.
        sources: letters of :data:`SOURCES` (default all four).
        crop: side of the training crops.
        seed: base seed of the pairs.
        web_lists: web image lists used (released: 0..51).

    ``sample(index, epoch)`` (and ``dataset[index]``, epoch 0) returns ``image1``, ``image2``
    ``(3, crop, crop)`` float32 in [0, 1] and ``aflow`` ``(2, crop, crop)`` float32 (``nan`` =
    no partner). A pair whose files do not read is replaced by the next one and listed in
    :attr:`skipped`.
    """

    def __init__(self, root: str | os.PathLike[str], sources: str = SOURCES, crop: int = 192,
                 seed: int = 0, web_lists: range = WEB_LISTS) -> None:
        if not sources or len(set(sources)) != len(sources):
            raise InputError(f"sources must be distinct letters of {SOURCES}, got {sources!r}")
        self.crop, self.seed = crop, seed
        self.entries = _entries(root, sources, web_lists)
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.sample(index, 0)

    def random(self, index: int, epoch: int) -> PairRandom:
        """The random streams of item ``index`` in ``epoch``."""
        state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(2)
        return PairRandom.from_seed(int(state[0]) << 32 | int(state[1]))

    def sample(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        """Item ``index`` of ``epoch`` (see the class docstring)."""
        for k in range(len(self)):
            position = (index + k) % len(self)
            if str(position) in self.skipped:
                continue
            rng = self.random(position, epoch)
            try:
                raw = self.entries[position](rng)
            except (ImageError, InputError) as exc:
                self.skipped[str(position)] = str(exc)
                continue
            out = official_pair(raw.image1, raw.image2, raw.aflow, raw.mask, rng, self.crop)
            return {
                "image1": torch.from_numpy(np.array(out["image1"])).permute(2, 0, 1) / 255.0,
                "image2": torch.from_numpy(np.array(out["image2"])).permute(2, 0, 1) / 255.0,
                "aflow": torch.from_numpy(np.array(out["aflow"])),
            }
        raise InputError("none of the R2D2 training pairs is readable")

"""CPU cost of one R2D2 training pair from the released synthetic generator (the README's
"making a pair" figure in "Retraining r2d2_WASF_N16.pt as released").

    python benchmarks/bench_r2d2_pairs.py [--pairs 8] [--repeats 3]

Each pair is what a loader worker does for a web image: ``synthetic_pair`` (random scale,
tilt, pixel noise, colour jitter) then ``official_pair`` (second rescale and jitter, the
192-pixel window search, the crops), seeded by the pair's index. The photos are the three of
``../shared/data/r2d2`` (512 x 512, 512 x 512, 1280 x 820), in turn. One torch thread, one
process (a loader worker's situation). Measured in CPU seconds of this process
(``time.process_time``), which a shared machine's load inflates far less than wall time; best
of ``--repeats`` passes, CPU seconds per pair.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from semcorr.train.r2d2.pair_crop import official_pair
from semcorr.train.r2d2.released_pairs import synthetic_pair
from semcorr.train.r2d2.transforms import PairRandom

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "r2d2"


def make_pairs(images: list[Image.Image], count: int) -> None:
    """``count`` training samples, cycling through ``images``."""
    for index in range(count):
        rng = PairRandom.from_seed(index)
        raw = synthetic_pair(images[index % len(images)], rng)
        official_pair(raw.image1, raw.image2, raw.aflow, raw.mask, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = [Image.open(PHOTOS / name).convert("RGB")
              for name in ("boat.png", "peppers.png", "brooklyn.png")]
    best = float("inf")
    for _ in range(args.repeats):
        start = time.process_time()
        make_pairs(images, args.pairs)
        best = min(best, time.process_time() - start)
    print(f"{args.pairs} pairs, best of {args.repeats}: {best:.2f} CPU s, "
          f"{best / args.pairs:.3f} CPU s per pair (one thread)")


if __name__ == "__main__":
    main()

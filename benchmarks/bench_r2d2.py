"""R2D2 extraction time per megapixel on CPU, single scale vs multi-scale, in one run.

    python benchmarks/bench_r2d2.py [--image ../shared/data/r2d2/boat.png] [--repeats 2]

Prints, for r2d2 and faster2d2 (published weights when ../shared is present, random weights
otherwise: the timing is the same), the median seconds per megapixel of input image for the
published multi-scale extraction (2^0.25 pyramid, 256-1024) and for the original scale only,
and the ratios measured in this run (multi / single, r2d2 / faster2d2). The machine may be
shared: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from semcorr.features.local import create_local_features
from semcorr.features.r2d2 import R2D2Config, pyramid_scales
from semcorr.io import load_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "r2d2"
WEIGHTS = {"r2d2": "r2d2_WASF_N16.pt", "faster2d2": "faster2d2_WASF_N16.pt"}


def seconds(model: torch.nn.Module, image: torch.Tensor, config: R2D2Config, repeats: int
            ) -> float:
    """Median wall time of ``repeats`` extractions (after one warm-up)."""
    model.extract(image, config)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.extract(image, config)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(SHARED / "boat.png"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    image = load_image(args.image)
    h, w = image.shape[-2:]
    mpix = w * h / 1e6
    multi, single = R2D2Config(), R2D2Config.single_scale()
    levels = pyramid_scales(w, h, multi)
    pixels = sum(lw * lh for _, lw, lh in levels) / 1e6
    print(f"image {args.image}: {w}x{h} ({mpix:.2f} MP); multi-scale: {len(levels)} levels, "
          f"{pixels:.2f} MP processed; torch threads {torch.get_num_threads()}")
    results = {}
    for name, file in WEIGHTS.items():
        weights = SHARED / file
        model = create_local_features(name, weights=str(weights) if weights.is_file() else None)
        with torch.inference_mode():
            t_single = seconds(model, image, single, args.repeats)
            t_multi = seconds(model, image, multi, args.repeats)
        results[name] = (t_single, t_multi)
        print(f"{name:10s} single scale {t_single / mpix:6.2f} s/MP   multi-scale "
              f"{t_multi / mpix:6.2f} s/MP   multi/single {t_multi / t_single:4.2f}")
    ratio_single = results["r2d2"][0] / results["faster2d2"][0]
    ratio_multi = results["r2d2"][1] / results["faster2d2"][1]
    print(f"r2d2 / faster2d2: single {ratio_single:.2f}x, multi {ratio_multi:.2f}x "
          f"(multi-scale processes {pixels / mpix:.2f}x the pixels)")


if __name__ == "__main__":
    main()

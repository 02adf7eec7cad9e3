"""Achieved GFLOP/s of the DINOv2 ViT-B/14 forward against this machine's own matmul rate.

One command::

    python benchmarks/bench_dinov2_flops.py            # 840 px (60 x 60 patches), fp32 and bf16

A random-weight ViT-B/14 is written with ``save_pretrained`` to a temporary folder and loaded
through ``create_backbone("dinov2_vitb14", weights=...)`` (the real path). FLOPs of one forward
are the analytic count (``24 N D^2`` for the linear layers and ``4 N^2 D`` for attention per
block, plus the patch embedding), cross-checked against ``torch.utils.flop_counter`` (which, on
CPU, counts the linear layers and the convolution but not the fused attention kernel).
For each precision the script measures, in the same run, the best-of-``repeats`` time of a
square matmul of that dtype and of the forward, and prints the ratio achieved / matmul rate
(target: >= 0.6).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from semcorr import create_backbone
from semcorr.features.base import PRECISIONS


def analytic_flops(num_patches: int, dim: int = 768, depth: int = 12, patch: int = 14,
                   registers: int = 0) -> float:
    """Multiply-adds x 2 of a ViT forward on a square input of ``num_patches`` per side."""
    patches = num_patches * num_patches
    tokens = patches + 1 + registers
    per_block = 24 * tokens * dim * dim + 4 * tokens * tokens * dim
    return depth * per_block + 2 * patches * 3 * patch * patch * dim


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` as counted by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_rate(dtype: torch.dtype, size: int, repeats: int) -> float:
    """GFLOP/s of a ``size``-cubed matmul in ``dtype``."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / best_time(lambda: a @ b, repeats * 3) / 1e9


def build_backbone(folder: Path, num_patches: int, precision: str) -> torch.nn.Module:
    return create_backbone("dinov2_vitb14", weights=str(folder), num_patches=num_patches,
                           precision=precision).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=60, help="patches per side (60 = 840 px)")
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards per precision")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=sorted(PRECISIONS))
    args = parser.parse_args()

    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    side = args.patches * 14
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {side} px")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dinov2_vitb14"
        Dinov2Model(Dinov2Config()).save_pretrained(folder)  # ViT-B/14 defaults, random
        images = torch.rand(1, 3, side, side)
        expected = analytic_flops(args.patches)
        for precision in args.precisions:
            backbone = build_backbone(folder, args.patches, precision)

            def forward(backbone: torch.nn.Module = backbone) -> torch.Tensor:
                with torch.inference_mode():
                    return backbone.features(images)

            counted = counted_flops(forward)
            attention = 12 * 4 * (args.patches**2 + 1) ** 2 * 768
            flops = expected
            dtype = PRECISIONS[precision] or torch.float32
            rate_before = matmul_rate(dtype, args.matmul_size, args.repeats)
            seconds = best_time(forward, args.repeats)
            rate_after = matmul_rate(dtype, args.matmul_size, args.repeats)
            rate = max(rate_before, rate_after)
            achieved = flops / seconds / 1e9
            print(
                f"{precision}: {flops / 1e9:.1f} GFLOP (counter: {counted / 1e9:.1f} + attention "
                f"{attention / 1e9:.1f} = {(counted + attention) / 1e9:.1f}), "
                f"forward {seconds:.2f} s = {achieved:.1f} GFLOP/s; matmul {args.matmul_size}^3 "
                f"{rate:.1f} GFLOP/s (before {rate_before:.1f}, after {rate_after:.1f}); "
                f"ratio {achieved / rate:.2f}"
            )


if __name__ == "__main__":
    main()

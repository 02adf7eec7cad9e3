"""fp32 against bf16 for the ViT backbones (DINOv2, DINOv3, SAM), each against this machine's
own fp32 and bf16 matmul rates, measured in one run.

One command::

    python benchmarks/bench_dinov2_flops.py                  # ViT-B/14 at 840 px (60 x 60)
    python benchmarks/bench_dinov2_flops.py --backbones dinov2 dinov3 sam --patches 24

A random-weight ViT-B is written with ``save_pretrained`` to a temporary folder and loaded
through ``create_backbone(name, weights=..., precision=...)`` (the real path), once per
precision; the timed call is ``backbone.features`` (what ``extract`` runs) in inference mode.
DINOv2 is ViT-B/14 at ``14 * patches`` px, DINOv3 ViT-B/16 (4 registers) at ``16 * patches``
px, SAM ViT-B at its fixed 1024 px. FLOPs are torch's flop counter, with the CPU attention
kernel (which it does not count) added as ``4 N^2 d`` per head; for DINOv2 the analytic count
(``24 N D^2 + 4 N^2 D`` per block plus the patch embedding) is printed beside it.

Timing: forwards and ``--matmul-size``-cubed matmuls of each dtype are interleaved (fp32, bf16,
fp32, ...) and each figure is the best of ``--repeats``, so that load from other processes hits
both sides alike. Printed: each forward's seconds and GFLOP/s as a fraction of its dtype's matmul
rate, the bf16 speed-up over fp32 (target >= 2), the features' mean per-cell cosine between
the two (bound 0.999), and what ``precision="auto"`` picks here. When
the CPU has no native bf16 matmul (oneDNN needs AVX512-BF16 or AMX) the script says so: bf16 then
runs *slower* than fp32, and ``auto`` stays fp32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from semcorr import create_backbone
from semcorr.features.precision import auto_precision, native_bf16, probe_seconds

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def analytic_flops(num_patches: int, dim: int = 768, depth: int = 12, patch: int = 14,
                   registers: int = 0) -> float:
    """Multiply-adds x 2 of a ViT forward on a square input of ``num_patches`` per side."""
    patches = num_patches * num_patches
    tokens = patches + 1 + registers
    per_block = 24 * tokens * dim * dim + 4 * tokens * tokens * dim
    return depth * per_block + 2 * patches * 3 * patch * patch * dim


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` by torch's flop counter, the CPU attention kernel included."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention(query: tuple[int, ...], key: tuple[int, ...], value: tuple[int, ...],
                      *args: object, **kwargs: object) -> int:
        return sdpa_flop_count(query, key, value)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


def save_model(kind: str, folder: Path) -> int:
    """Save a random ViT-B of ``kind``; returns its patch size (0: fixed input size)."""
    if kind == "dinov2":
        from transformers import Dinov2Config, Dinov2Model

        Dinov2Model(Dinov2Config()).save_pretrained(folder)  # ViT-B/14 defaults
        return 14
    if kind == "dinov3":
        from transformers import DINOv3ViTConfig, DINOv3ViTModel

        DINOv3ViTModel(DINOv3ViTConfig(
            hidden_size=768, num_attention_heads=12, intermediate_size=3072,
            num_register_tokens=4, patch_size=16)).save_pretrained(folder)
        return 16
    from transformers import SamConfig, SamModel

    SamModel(SamConfig()).save_pretrained(folder)  # ViT-B vision encoder, 1024 px
    return 0


NAMES = {"dinov2": "dinov2_vitb14", "dinov3": "dinov3_vitb16", "sam": "sam_vit_b"}


def interleaved_best(fns: dict[str, Callable[[], object]], repeats: int,
                     outputs: dict[str, object] | None = None) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` interleaved rounds (after a warm-up
    whose results go to ``outputs``)."""
    for name, fn in fns.items():
        result = fn()
        if outputs is not None:
            outputs[name] = result
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def matmul_fns(size: int, precisions: list[str]) -> dict[str, Callable[[], object]]:
    """``size``-cubed matmuls per dtype (named ``matmul <precision>``), in ``nn.Linear``'s
    layout (``x @ W^T``), which the backbones' matmuls use (on a CPU without native bf16, a
    bf16 ``a @ b`` runs several times slower than this layout)."""
    fns = {}
    for precision in precisions:
        a = torch.randn(size, size, dtype=DTYPES[precision])
        b = torch.randn(size, size, dtype=DTYPES[precision])
        fns[f"matmul {precision}"] = lambda a=a, b=b: torch.nn.functional.linear(a, b)
    return fns


def forward_fns(kind: str, folder: Path, patches: int, precisions: list[str]
                ) -> tuple[dict[str, Callable[[], object]], int]:
    """``features`` of a backbone per precision, and the FLOPs of one forward."""
    options = {} if kind == "sam" else {"num_patches": patches}
    fns = {}
    images = None
    for precision in precisions:
        backbone = create_backbone(NAMES[kind], weights=str(folder), precision=precision,
                                   **options).eval()
        if images is None:  # the same input for every precision
            side = backbone.info.image_size
            images = torch.rand(1, 3, side, side)

        def forward(backbone: torch.nn.Module = backbone, images: torch.Tensor = images
                    ) -> torch.Tensor:
            with torch.inference_mode():
                return backbone.features(images)

        fns[f"{kind} {precision}"] = forward
    return fns, counted_flops(next(iter(fns.values())))


def machine_line() -> str:
    cpu = torch.device("cpu")
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    found = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, bf16/AMX CPU flags: "
            f"{' '.join(found) or 'none'}, native bf16 matmul (oneDNN): "
            f"{'yes' if native_bf16(cpu) else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["dinov2"], choices=sorted(NAMES))
    parser.add_argument("--patches", type=int, default=60,
                        help="patches per side for DINOv2/DINOv3 (60 = 840 px for /14)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (best of)")
    parser.add_argument("--matmul-size", type=int, default=1024)
    args = parser.parse_args()
    precisions = ["fp32", "bf16"]
    # the verdict below replaces the warning that bf16 is slow on a CPU without native bf16
    warnings.filterwarnings("ignore", message="this CPU has no native bf16")
    torch.manual_seed(0)
    print(machine_line())
    probe = probe_seconds(torch.device("cpu"))
    print(f"auto-precision probe (ViT block, 1024 tokens): fp32 {probe['fp32'] * 1e3:.0f} ms, "
          f"bf16 {probe['bf16'] * 1e3:.0f} ms -> precision='auto' picks "
          f"{auto_precision(torch.device('cpu'))} here (cached choice)")
    flops_of = {}
    fns: dict[str, Callable[[], object]] = matmul_fns(args.matmul_size, precisions)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.backbones:
            folder = Path(tmp) / kind
            save_model(kind, folder)
            forwards, flops_of[kind] = forward_fns(kind, folder, args.patches, precisions)
            fns.update(forwards)
        outputs: dict[str, object] = {}
        best = interleaved_best(fns, args.repeats, outputs)
    rate = {p: 2 * args.matmul_size**3 / best[f"matmul {p}"] / 1e9 for p in precisions}
    print(f"matmul {args.matmul_size}^3: fp32 {rate['fp32']:.1f} GFLOP/s, bf16 "
          f"{rate['bf16']:.1f} GFLOP/s (bf16 / fp32 = {rate['bf16'] / rate['fp32']:.2f})")
    for kind in args.backbones:
        flops = flops_of[kind]
        extra = ""
        if kind == "dinov2":
            extra = f", analytic {analytic_flops(args.patches) / 1e9:.1f}"
        cells = []
        for p in precisions:
            seconds = best[f"{kind} {p}"]
            achieved = flops / seconds / 1e9
            cells.append(f"{p} {seconds:.2f} s = {achieved:.1f} GFLOP/s "
                         f"({achieved / rate[p]:.2f} of {p} matmul)")
        speedup = best[f"{kind} fp32"] / best[f"{kind} bf16"]
        cosine = torch.nn.functional.cosine_similarity(
            outputs[f"{kind} fp32"], outputs[f"{kind} bf16"], dim=1).mean().item()
        print(f"{NAMES[kind]} ({flops / 1e9:.1f} GFLOP{extra}): {'; '.join(cells)}; "
              f"bf16 speed-up over fp32 {speedup:.2f}x (target >= 2); mean per-cell cosine "
              f"bf16 vs fp32 {cosine:.5f} (bound 0.999)")
    if not native_bf16(torch.device("cpu")):
        print("This CPU has no native bf16 matmul (no AVX512-BF16/AMX): bf16 matmuls run at "
              f"{rate['bf16'] / rate['fp32']:.2f}x the fp32 rate, so no bf16 arrangement can "
              "beat fp32 here; the default stays fp32 and precision='auto' picks fp32.")


if __name__ == "__main__":
    main()

"""R2D2 multi-scale extraction: semcorr vs the official naver/r2d2 extract.py, in one run.

    python benchmarks/bench_r2d2.py [--images brooklyn boat] [--size 600 400] [--repeats 2]

Both sides run in this process on the published ``r2d2_WASF_N16.pt`` and the same photos
(resized to ``--size``), after one warm-up round, interleaved (official, ours, official, ours, ...)
so that load from other processes hits both alike; each time is the best of ``--repeats``.
The official side is ``extract.extract_multiscale`` with its ``NonMaxSuppression`` plus the
top-5000 selection of ``extract_keypoints`` (image decoding and file writing excluded on both
sides). Ours is ``R2D2.extract`` with each ``--engines`` value.

Printed per photo and engine: seconds, the speed ratio official / ours (above 1: ours is
faster), the share of official keypoints with one of ours of the same scale within 1 px, and
the cosine of the descriptors of those pairs (mean and minimum).

Needs ../shared (the reference code under ../shared/reference/naver+r2d2, the weights and the
photos under ../shared/data/r2d2).
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from semcorr.features.local import create_local_features
from semcorr.features.r2d2 import ENGINES, IMAGENET_MEAN, IMAGENET_STD, R2D2Config
from semcorr.io import load_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data" / "r2d2"
REFERENCE = SHARED / "reference" / "naver+r2d2"
TOP_K = 5000


def import_official() -> types.ModuleType:
    """naver/r2d2's extract.py. Its module-level imports of PIL and torchvision (for image
    loading, unused here) are stubbed when those packages are not installed; the stubs are taken
    out of ``sys.modules`` again once extract.py holds what it needs, so a later import of the
    official ``tools.dataloader`` (the training tests) gets the real module."""
    if str(REFERENCE) not in sys.path:
        sys.path.insert(0, str(REFERENCE))
    stubs: dict[str, types.ModuleType] = {}
    try:
        import PIL.Image  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        pil = types.ModuleType("PIL")
        pil.Image = types.ModuleType("PIL.Image")
        loader = types.ModuleType("tools.dataloader")
        loader.norm_RGB = None
        for name, module in (("PIL", pil), ("PIL.Image", pil.Image),
                             ("tools.dataloader", loader)):
            if name not in sys.modules:
                stubs[name] = sys.modules[name] = module
    try:
        import extract
    finally:
        for name, module in stubs.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return extract


def official_extract(extract: types.ModuleType, net: torch.nn.Module, detector: torch.nn.Module,
                     image: torch.Tensor, top_k: int = TOP_K, **options: float
                     ) -> dict[str, torch.Tensor]:
    """The official multi-scale extraction (``options``: its keyword arguments, e.g.
    ``min_size``) and top-k of one image ``(3, H, W)`` in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    xys, desc, scores = extract.extract_multiscale(net, ((image - mean) / std)[None], detector,
                                                   **options)
    order = scores.argsort(descending=True)[:top_k]
    return {"keypoints": xys[order], "descriptors": desc[order], "scores": scores[order]}


def agreement(reference: dict[str, torch.Tensor], ours: dict[str, torch.Tensor],
              radius: float = 1.0) -> tuple[float, float, float]:
    """Share of reference keypoints with one of ours of the same scale within ``radius`` px,
    and the mean and minimum descriptor cosine of those pairs."""
    a, b = reference["keypoints"], ours["keypoints"]
    same_scale = (a[:, None, 2] - b[None, :, 2]).abs() < 1e-3
    dist = torch.cdist(a[:, :2], b[:, :2]).masked_fill(~same_scale, float("inf"))
    nearest, index = dist.min(dim=1)
    hit = nearest <= radius
    cos = (reference["descriptors"][hit] * ours["descriptors"][index[hit]]).sum(dim=1)
    return hit.float().mean().item(), cos.mean().item(), cos.min().item()


def best_of(runs: dict[str, Callable[[], dict[str, torch.Tensor]]], repeats: int
            ) -> tuple[dict[str, float], dict[str, dict[str, torch.Tensor]]]:
    """Best wall time and last output of each callable, run interleaved ``repeats`` times after
    one interleaved warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    for round_ in range(repeats + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run()
            if round_ > 0:
                times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", default=["brooklyn"],
                        help="photo names under ../shared/data/r2d2 (without .png) or paths")
    parser.add_argument("--size", nargs=2, type=int, default=[600, 400], metavar=("W", "H"),
                        help="resize each photo to W x H first (0 0: keep its size)")
    parser.add_argument("--engines", nargs="+", default=["fast"], choices=ENGINES)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not REFERENCE.is_dir():
        raise SystemExit(f"{REFERENCE} is absent: the official code is needed")
    extract = import_official()
    weights = DATA / "r2d2_WASF_N16.pt"
    official = extract.load_network(str(weights))
    detector = extract.NonMaxSuppression()
    model = create_local_features("r2d2", weights=str(weights))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.images:
        path = Path(name) if Path(name).is_file() else DATA / f"{name}.png"
        image = load_image(path)
        if args.size[0] > 0:
            image = F.interpolate(image[None], (args.size[1], args.size[0]), mode="bilinear",
                                  antialias=True, align_corners=False)[0].clamp(0, 1)
        runs: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
            "official": lambda im=image: official_extract(extract, official, detector, im)}
        for engine in args.engines:
            config = R2D2Config(top_k=TOP_K, engine=engine)
            runs[engine] = lambda im=image, c=config: model.extract(im, c)
        times, outputs = best_of(runs, args.repeats)
        reference = outputs["official"]
        h, w = image.shape[-2:]
        print(f"{path.name} {w}x{h}: official {times['official']:.2f} s, "
              f"{reference['keypoints'].shape[0]} keypoints", flush=True)
        for engine in args.engines:
            within, cos_mean, cos_min = agreement(reference, outputs[engine])
            print(f"  {engine:6s} {times[engine]:.2f} s  official/ours "
                  f"{times['official'] / times[engine]:.2f}x  keypoints within 1 px "
                  f"{100 * within:.2f}%  descriptor cosine mean {cos_mean:.6f} min {cos_min:.6f}",
                  flush=True)


if __name__ == "__main__":
    main()

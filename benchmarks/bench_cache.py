"""Disk bytes and read throughput of the feature cache against GeoAware-SC's float32 layout.

One command::

    python benchmarks/bench_cache.py                  # 6 images, both orientations

The GeoAware-SC feature set of one image and orientation is Stable Diffusion's ``s3``
(640 x 60 x 60), ``s4`` (1280 x 30 x 30), ``s5`` (1280 x 15 x 15) at their native grids and
DINOv2 ViT-B/14 tokens (768 x 60 x 60). The reference (``preprocess_map.py``) writes, per image
and orientation, ``torch.save`` of the dict ``{s3, s4, s5}`` (float32, ``*_sd.pt``) and of the
DINO map (float32, ``*_dino.pt``): about 26 MB per orientation, 52 MB per image with the
flipped image. This script writes that layout, then the same synthetic features through
:class:`~semcorr.features.cache.FeatureCache` with every storage type (with and without the
lossless zlib codec), and reports, in the same run:

* bytes per image (both orientations) and the ratio to the reference layout (target <= 0.25);
* the error each lossy storage makes on cosine similarities between feature cells;
* read throughput (entries per second, original orientation, float32 tensors out) against
  ``torch.load(weights_only=True)`` of the reference files; both from a warm page cache.

The features are synthetic: per channel a zero-mean Gaussian with a log-uniform scale. The
uncompressed sizes do not depend on the values; the compressed ones do. We expect real features,
usually heavier-tailed than a Gaussian, to deflate at least as well after per-channel absmax
quantisation (more values near zero), but this was not measured on real SD/DINO features.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from semcorr.features.cache import FeatureCache
from semcorr.geometry import ResizePad

#: name -> (channels, grid side) of GeoAware-SC's raw features.
GEOAWARE_PARTS = {"s3": (640, 60), "s4": (1280, 30), "s5": (1280, 15), "dino": (768, 60)}
SD_PARTS = ("s3", "s4", "s5")
CODECS = [
    ("float32", False),
    ("float16", False),
    ("bfloat16", False),
    ("int8", False),
    ("float16", True),
    ("int8", True),
]


def synthetic_parts(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One orientation's parts ``{name: (C, g, g)}`` float32."""
    parts = {}
    for name, (channels, side) in GEOAWARE_PARTS.items():
        scale = torch.exp(torch.empty(channels, 1, 1).uniform_(-3, 2, generator=generator))
        parts[name] = torch.randn(channels, side, side, generator=generator) * scale
    return parts


def write_reference(folder: Path, index: int, parts: dict[str, dict[str, torch.Tensor]]) -> int:
    """GeoAware-SC's files for one image (both orientations); returns their bytes."""
    total = 0
    for orientation, suffix in (("original", ""), ("flipped", "_flip")):
        sd = {k: parts[orientation][k][None].clone() for k in SD_PARTS}
        sd_path = folder / f"img{index}_sd{suffix}.pt"
        dino_path = folder / f"img{index}_dino{suffix}.pt"
        torch.save(sd, sd_path)
        torch.save(parts[orientation]["dino"][None].clone(), dino_path)
        total += sd_path.stat().st_size + dino_path.stat().st_size
    return total


def read_reference(folder: Path, index: int) -> dict[str, torch.Tensor]:
    sd = torch.load(folder / f"img{index}_sd.pt", map_location="cpu", weights_only=True)
    dino = torch.load(folder / f"img{index}_dino.pt", map_location="cpu", weights_only=True)
    return {**sd, "dino": dino}


def cosine_error(reference: torch.Tensor, decoded: torch.Tensor, pairs: int = 4096) -> float:
    """Max |cos(a, b) - cos(a', b')| over random pairs of cells of a ``(C, h, w)`` map."""
    generator = torch.Generator().manual_seed(1)
    flat_ref = F.normalize(reference.flatten(1).T, dim=1)
    flat_dec = F.normalize(decoded.flatten(1).T, dim=1)
    i = torch.randint(flat_ref.shape[0], (pairs,), generator=generator)
    j = torch.randint(flat_ref.shape[0], (pairs,), generator=generator)
    cos_ref = (flat_ref[i] * flat_ref[j]).sum(1)
    cos_dec = (flat_dec[i] * flat_dec[j]).sum(1)
    return float((cos_ref - cos_dec).abs().max())


def timed(fn, repeats: int) -> float:
    """Best-of-``repeats`` seconds of ``fn()``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6, help="synthetic images")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best kept)")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        generator = torch.Generator().manual_seed(0)
        images = [
            {"original": synthetic_parts(generator), "flipped": synthetic_parts(generator)}
            for _ in range(args.images)
        ]
        first = images[0]["original"]
        transform = ResizePad(500, 375, 840, 14)
        reference_dir = work / "reference"
        reference_dir.mkdir()
        reference_bytes = sum(write_reference(reference_dir, i, p) for i, p in enumerate(images))
        reference_per_image = reference_bytes / args.images
        caches = {}
        for storage, compress in CODECS:
            config = {"backbone": "geoaware-synthetic", "storage": storage, "flip": True}
            name = storage + ("+zlib" if compress else "")
            caches[name] = cache = FeatureCache.create(work / name, config, compress=compress)
            start = time.perf_counter()
            written = sum(cache.put(f"img{i}", p, transform) for i, p in enumerate(images))
            caches[name].write_rate = args.images / (time.perf_counter() - start)
            caches[name].per_image = written / args.images
        del images  # only the files from here on
        ids = [f"img{i}" for i in range(args.images)]

        def load_reference() -> None:
            for index in range(args.images):
                read_reference(reference_dir, index)

        print(f"GeoAware-SC layout (float32 torch.save, s3+s4+s5+dino, both orientations): "
              f"{reference_per_image / 1e6:.2f} MB/image")
        print(f"{'storage':<16}{'MB/image':>10}{'ratio':>8}{'max|dcos|':>11}{'write/s':>9}"
              f"{'load/s':>8}{'read/s':>8}{'x load':>8}{'native/s':>10}{'x load':>8}")
        for name, cache in caches.items():
            load_reference()  # warm the page cache
            for image_id in ids:
                cache.get(image_id)
            # the reference is timed again beside each codec: the machine is shared
            t_ref = timed(load_reference, args.repeats)
            t_read = timed(lambda: [cache.get(i) for i in ids], args.repeats)  # noqa: B023
            t_native = timed(lambda: [cache.get(i, dtype=None) for i in ids],  # noqa: B023
                             args.repeats)
            decoded = cache.get("img0")
            error = max(cosine_error(first[k], decoded[k]) for k in decoded)
            ref_rate = args.images / t_ref
            read_rate, native_rate = args.images / t_read, args.images / t_native
            print(f"{name:<16}{cache.per_image / 1e6:>10.2f}"
                  f"{cache.per_image / reference_per_image:>8.4f}{error:>11.2e}"
                  f"{cache.write_rate:>9.1f}{ref_rate:>8.1f}{read_rate:>8.1f}"
                  f"{read_rate / ref_rate:>8.2f}{native_rate:>10.1f}{native_rate / ref_rate:>8.2f}")
        print("ratio = bytes per image / reference bytes per image (target <= 0.25)\n"
              "max|dcos| = largest change of a cosine similarity between two cells of a part\n"
              "load/s = torch.load(weights_only=True) of the reference files, entries per second\n"
              "read/s = FeatureCache.get, original orientation, every part as float32; "
              "x load = read/s / load/s (same run, warm page cache)\n"
              "native/s = the same returning the stored type (float32 for int8)")

if __name__ == "__main__":
    main()

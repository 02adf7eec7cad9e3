"""The README's feature-cache sizes (``benchmarks/bench_cache.py``), re-measured on one image.

GeoAware-SC's raw features of one image (both orientations, the real shapes, the script's
seeded synthetic values): the reference's float32 ``torch.save`` layout against semcorr's
cache in float16, int8 and int8 + zlib. The uncompressed sizes follow from the shapes; the
compressed one depends on the values (the script's seed-0 Gaussians). Claims: 52 / 26 / 13 /
11.8 MB per image and 0.23 of the reference. Timings are not asserted (the script prints
them, measured on a shared machine).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_cache  # noqa: E402
from semcorr.features.cache import FeatureCache  # noqa: E402
from semcorr.geometry import ResizePad  # noqa: E402

#: README claims (MB per image, both orientations), "Feature cache" section.
CLAIMED_MB = {"reference": 52.0, "float16": 26.0, "int8": 13.0, "int8+zlib": 11.8}
CLAIMED_RATIO = 0.23  # int8 + zlib / reference


def test_cache_sizes_match_readme(tmp_path: Path) -> None:
    """Sizes within 0.5 MB of the README's rounded figures (the uncompressed ones are fixed by
    the shapes), the compressed one at most its claim + 0.1 MB and its ratio at most
    0.23 + 0.005. Measured (seed 0, first image; deterministic): 52.08 / 26.04 / 13.05 /
    11.79 MB, ratio 0.2265."""
    generator = torch.Generator().manual_seed(0)
    parts = {"original": bench_cache.synthetic_parts(generator),
             "flipped": bench_cache.synthetic_parts(generator)}
    (tmp_path / "reference").mkdir()
    measured = {"reference": bench_cache.write_reference(tmp_path / "reference", 0, parts) / 1e6}
    transform = ResizePad(500, 375, 840, 14)
    for name, storage, compress in (("float16", "float16", False), ("int8", "int8", False),
                                    ("int8+zlib", "int8", True)):
        config = {"backbone": "geoaware-synthetic", "storage": storage, "flip": True}
        cache = FeatureCache.create(tmp_path / name, config, compress=compress)
        measured[name] = cache.put("img0", parts, transform) / 1e6
    for name in ("reference", "float16", "int8"):
        assert abs(measured[name] - CLAIMED_MB[name]) <= 0.5, measured
    assert measured["int8+zlib"] <= CLAIMED_MB["int8+zlib"] + 0.1, measured
    assert measured["int8+zlib"] / measured["reference"] <= CLAIMED_RATIO + 0.005, measured

"""R2D2's fast inference plan (semcorr.features.r2d2_fast) against the module and the official
naver/r2d2 extraction (imported from ../shared/reference/naver+r2d2 at test time)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semcorr.errors import InputError
from semcorr.features.local import create_local_features
from semcorr.features.r2d2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    R2D2Config,
    build_network,
    extract_multiscale,
)
from semcorr.features.r2d2_fast import compile_plan
from semcorr.io import load_image
from shared_data import shared_path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_r2d2 import REFERENCE, agreement, import_official, official_extract  # noqa: E402


def _official_extract() -> types.ModuleType:
    """naver/r2d2's extract.py, imported as benchmarks/bench_r2d2.py does (same stubs)."""
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is absent (../shared is not beside the repository)")
    return import_official()


def _resized(name: str, width: int, height: int) -> torch.Tensor:
    image = load_image(shared_path("r2d2", name))
    return F.interpolate(image[None], (height, width), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def _compare_with_official(image: torch.Tensor, min_size: int, top_k: int) -> None:
    extract = _official_extract()
    weights = shared_path("r2d2", "r2d2_WASF_N16.pt")
    official = extract.load_network(str(weights))
    reference = official_extract(extract, official, extract.NonMaxSuppression(), image,
                                 top_k=top_k, min_size=min_size)
    model = create_local_features("r2d2", weights=str(weights))
    ours = model.extract(image, R2D2Config(min_size=min_size, top_k=top_k))
    assert reference["keypoints"].shape[0] > 100
    count, expected = ours["keypoints"].shape[0], reference["keypoints"].shape[0]
    assert abs(count - expected) <= 0.01 * expected
    within, _, cosine_min = agreement(reference, ours)
    assert within >= 0.99, within
    assert cosine_min >= 0.999, cosine_min


@pytest.mark.parametrize("arch", ["Quad_L2Net_ConfCFS", "Fast_Quad_L2Net_ConfCFS"])
def test_plan_equals_module(arch: str) -> None:
    """Ours against ours: the folded plan keeps the plain module's maps (proves the rewrite, not
    fidelity; the official code is compared in the last two tests)."""
    net = build_network(arch, mchan=2, dim=32).eval()
    g = torch.Generator().manual_seed(0)
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.normal_(0.0, 0.1, generator=g)
        bn.running_var.uniform_(0.5, 1.5, generator=g)
    images = torch.randn(2, 3, 45, 62)
    with torch.inference_mode():
        expected = net(images)
        got = compile_plan(net)(images)
    for key in ("reliability", "repeatability"):
        assert got[key].shape == expected[key].shape
        assert (got[key] - expected[key]).abs().max().item() < 1e-5
    descriptors = F.normalize(got["raw_descriptors"], dim=1)
    assert (descriptors - expected["descriptors"]).abs().max().item() < 1e-5


def test_plan_uses_current_weights() -> None:
    """The plan is rebuilt per extraction: changing the weights changes the keypoints."""
    torch.manual_seed(0)
    model = create_local_features("r2d2", mchan=1, dim=16, reliability_threshold=0.0,
                                  repeatability_threshold=0.0, min_size=32)
    image = torch.rand(3, 32, 40)
    before = model.extract(image)["scores"]
    with torch.no_grad():
        model.net.sal.bias.add_(1.0)
    after = model.extract(image)["scores"]
    assert not torch.allclose(before[:10], after[:10])
    plain = model.extract(image, R2D2Config(min_size=32, reliability_threshold=0.0,
                                            repeatability_threshold=0.0, engine="module"))
    assert torch.allclose(after[:50], plain["scores"][:50], atol=1e-5)


def test_engine_option_refused() -> None:
    with pytest.raises(InputError, match="engine"):
        R2D2Config(engine="gpu")


def test_fast_engine_equals_module_engine_on_a_photo() -> None:
    """Ours against ours on a real photo: both engines give the same keypoints (proves the
    rewrite only; fidelity is the official comparison below)."""
    model = create_local_features("r2d2", weights=str(shared_path("r2d2", "r2d2_WASF_N16.pt")))
    image = _resized("boat.png", 112, 84)
    fast = model.extract(image, R2D2Config(min_size=64))
    plain = model.extract(image, R2D2Config(min_size=64, engine="module"))
    assert fast["keypoints"].shape[0] > 100
    within, _, cosine_min = agreement(plain, fast)
    assert within >= 0.99
    assert cosine_min >= 0.9999
    batch = ((image - torch.tensor(IMAGENET_MEAN).view(3, 1, 1))
             / torch.tensor(IMAGENET_STD).view(3, 1, 1))[None]
    with torch.inference_mode():
        direct = extract_multiscale(compile_plan(model.net), batch, R2D2Config(min_size=64))
    assert torch.equal(direct["keypoints"], fast["keypoints"])


def test_fast_path_equals_official_extraction() -> None:
    """Published weights, a real photo at 128x96, the official extract_multiscale."""
    _compare_with_official(_resized("boat.png", 128, 96), min_size=64, top_k=5000)


@pytest.mark.slow
def test_fast_path_equals_official_extraction_600x400() -> None:
    """The benchmark's setting: 600x400, the published pyramid (256-1024), top 5000."""
    _compare_with_official(_resized("brooklyn.png", 600, 400), min_size=256, top_k=5000)

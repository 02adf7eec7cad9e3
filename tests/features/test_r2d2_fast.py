"""R2D2's fast inference plan (semcorr.features.r2d2_fast) against the module and the official
naver/r2d2 extraction (imported from ../shared/reference/naver+r2d2 at test time)."""

from __future__ import annotations

import sys
import types

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
from shared_data import SHARED, shared_path

REFERENCE = SHARED / "reference" / "naver+r2d2"


def _randomise_bn(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _official_extract() -> types.ModuleType:
    """naver/r2d2's extract.py; its PIL/torchvision imports (image loading, unused here) are
    stubbed only when those packages are not installed."""
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is absent (../shared is not beside the repository)")
    if str(REFERENCE) not in sys.path:
        sys.path.insert(0, str(REFERENCE))
    try:
        import PIL.Image  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        pil = types.ModuleType("PIL")
        pil.Image = types.ModuleType("PIL.Image")
        sys.modules.setdefault("PIL", pil)
        sys.modules.setdefault("PIL.Image", pil.Image)
        loader = types.ModuleType("tools.dataloader")
        loader.norm_RGB = None
        sys.modules.setdefault("tools.dataloader", loader)
    import extract

    return extract


def _agreement(reference: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]
               ) -> tuple[float, torch.Tensor]:
    """Share of reference keypoints with one of ours of the same scale within 1 px, and the
    descriptor cosines of those pairs."""
    a, b = reference["keypoints"], ours["keypoints"]
    same_scale = (a[:, None, 2] - b[None, :, 2]).abs() < 1e-3
    dist = torch.cdist(a[:, :2], b[:, :2]).masked_fill(~same_scale, float("inf"))
    nearest, index = dist.min(dim=1)
    hit = nearest <= 1.0
    cosine = (reference["descriptors"][hit] * ours["descriptors"][index[hit]]).sum(dim=1)
    return hit.float().mean().item(), cosine


def _resized(name: str, width: int, height: int) -> torch.Tensor:
    image = load_image(shared_path("r2d2", name))
    return F.interpolate(image[None], (height, width), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def _compare_with_official(image: torch.Tensor, min_size: int, top_k: int) -> None:
    extract = _official_extract()
    weights = shared_path("r2d2", "r2d2_WASF_N16.pt")
    official = extract.load_network(str(weights))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    xys, desc, scores = extract.extract_multiscale(
        official, ((image - mean) / std)[None], extract.NonMaxSuppression(), min_size=min_size)
    order = scores.argsort(descending=True)[:top_k]
    reference = {"keypoints": xys[order], "descriptors": desc[order]}
    model = create_local_features("r2d2", weights=str(weights))
    ours = model.extract(image, R2D2Config(min_size=min_size, top_k=top_k))
    assert reference["keypoints"].shape[0] > 100
    count, expected = ours["keypoints"].shape[0], reference["keypoints"].shape[0]
    assert abs(count - expected) <= 0.01 * expected
    within, cosine = _agreement(reference, ours)
    assert within >= 0.99, within
    assert cosine.min().item() >= 0.999, cosine.min().item()


@pytest.mark.parametrize("arch", ["Quad_L2Net_ConfCFS", "Fast_Quad_L2Net_ConfCFS"])
def test_plan_equals_module(arch: str) -> None:
    net = build_network(arch, mchan=2, dim=32).eval()
    _randomise_bn(net)
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
    model = create_local_features("r2d2", weights=str(shared_path("r2d2", "r2d2_WASF_N16.pt")))
    image = _resized("boat.png", 112, 84)
    fast = model.extract(image, R2D2Config(min_size=64))
    plain = model.extract(image, R2D2Config(min_size=64, engine="module"))
    assert fast["keypoints"].shape[0] > 100
    within, cosine = _agreement(plain, fast)
    assert within >= 0.99
    assert cosine.min().item() >= 0.9999
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

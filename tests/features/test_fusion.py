"""sd+dino fusion: grids, the zero-shot recipe, the raw concatenation order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from tiny_models import one_thread, save_tiny_dinov2, save_tiny_stable_diffusion  # noqa: E402, F401

from semcorr import create_backbone  # noqa: E402
from semcorr.errors import InputError, WeightsError  # noqa: E402
from semcorr.features.fusion import fuse_raw, fuse_zero_shot, resample_parts  # noqa: E402

SD_OPTIONS = {"image_size": 32}  # tiny SD: parts at 16², 8², 4²
DINO_OPTIONS = {"num_patches": 4}  # tiny DINOv2: 56 px, 4² tokens of 32 channels


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fusion")
    save_tiny_stable_diffusion(folder / "sd15")
    save_tiny_dinov2(folder / "dinov2_vitb14", layers=1)
    return folder


def _fusion(root: Path, mode: str):  # noqa: ANN202
    return create_backbone("sd+dino", weights=str(root), mode=mode, sd_options=SD_OPTIONS,
                           dino_options=DINO_OPTIONS)


class TestFunctions:
    def test_resample_keeps_grid_and_constant(self) -> None:
        same = torch.randn(1, 2, 4, 4)
        assert resample_parts([same], (4, 4))[0] is same
        constant = torch.full((1, 3, 2, 2), 5.0)
        up = resample_parts([constant], (6, 6))[0]
        assert up.shape == (1, 3, 6, 6)
        torch.testing.assert_close(up, torch.full((1, 3, 6, 6), 5.0))

    def test_zero_shot_by_hand(self) -> None:
        sd = [torch.tensor([3.0, 4.0]).view(1, 2, 1, 1), torch.tensor([0.0]).view(1, 1, 1, 1)]
        dino = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)
        fused = fuse_zero_shot(sd, dino, (1, 1)).flatten()
        s = 2**-0.5
        torch.testing.assert_close(fused, torch.tensor([0.6 * s, 0.8 * s, 0.0, 0.0, s]))

    def test_raw_order(self) -> None:
        a, b = torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 1, 1)
        fused = fuse_raw([a, b], (2, 2))
        assert fused.shape == (1, 3, 2, 2)
        assert fused[:, 0].abs().sum() == 0 and (fused[:, 1:] == 1).all()


class TestBackbone:
    def test_zero_shot_matches_parts(self, root: Path) -> None:
        fusion = _fusion(root, "zero_shot")
        sd = create_backbone("sd15", weights=str(root / "sd15"), **SD_OPTIONS)
        dino = create_backbone("dinov2_vitb14", weights=str(root / "dinov2_vitb14"),
                               **DINO_OPTIONS)
        images = torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
        sd_in = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
        with torch.no_grad():
            fused = fusion(images)
            parts = sd.feature_parts(sd.normalize(sd_in))
            tokens = dino(images)
        assert fusion.info.stride == 14 and fusion.info.image_size == 56
        assert fused.shape == (1, 32 + 64 + 64 + 32, 4, 4)
        sd_cat = torch.cat([F.interpolate(p, size=(4, 4), mode="bilinear") for p in
                            parts.values()], dim=1)
        expected = F.normalize(torch.cat([F.normalize(sd_cat, dim=1),
                                          F.normalize(tokens, dim=1)], dim=1), dim=1)
        torch.testing.assert_close(fused, expected, atol=1e-5, rtol=0)
        sd_norm = fused[:, :160].norm(dim=1)
        torch.testing.assert_close(sd_norm, torch.full_like(sd_norm, 2**-0.5), atol=1e-5, rtol=0)

    def test_raw_order_is_s3_s4_s5_dino(self, root: Path) -> None:
        fusion = _fusion(root, "raw")
        images = torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            parts = fusion.feature_parts(images)
            fused = fusion(images)
        assert list(parts) == ["s3", "s4", "s5", "dino"]
        torch.testing.assert_close(fused[:, -32:], parts["dino"], atol=0, rtol=0)
        torch.testing.assert_close(
            fused[:, :32], F.interpolate(parts["s3"], size=(4, 4), mode="bilinear"),
            atol=1e-6, rtol=0,
        )

    def test_extract_from_originals(self, root: Path) -> None:
        fusion = _fusion(root, "zero_shot")
        features, transforms = fusion.extract([torch.rand(3, 20, 30), torch.rand(3, 30, 30)])
        assert features.shape == (2, 192, 4, 4)
        assert transforms[0].size == 56 and transforms[0].stride == 14

    def test_missing_subfolder(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsError, match="sd15"):
            create_backbone("sd+dino", weights=str(tmp_path))

    def test_bad_mode(self, root: Path) -> None:
        with pytest.raises(InputError, match="mode"):
            create_backbone("sd+dino", weights=str(root), mode="mean")

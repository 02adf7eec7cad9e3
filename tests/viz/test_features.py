"""PCA pictures of feature maps: joint projection, known answers, flips on real photos."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semcorr.errors import InputError
from semcorr.features import create_backbone
from semcorr.io import load_image
from semcorr.viz.features import feature_pca, fit_pca, image_features, pca_pictures

sys.path.insert(0, str(Path(__file__).parent))
from mirror_backbone import MirrorBackbone  # noqa: E402


def _square_photo(path: Path, side: int = 128) -> torch.Tensor:
    image = load_image(path)
    s = min(image.shape[-2:])
    return torch.nn.functional.interpolate(
        image[None, :, :s, :s], size=(side, side), mode="bilinear", antialias=True
    )[0]


class TestFitPCA:
    def test_known_axes(self) -> None:
        # points spread along x (std 10) much more than along y (std 1)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2000, 2, generator=g) * torch.tensor([10.0, 1.0])
        x = x + torch.tensor([5.0, -3.0])
        pca = fit_pca(x, 2)
        assert pca.axes.shape == (2, 2)
        assert abs(abs(float(pca.axes[0, 0])) - 1) < 1e-3
        assert torch.allclose(pca.mean.float(), torch.tensor([5.0, -3.0]), atol=0.5)
        assert float(pca.explained[0]) > 0.97
        colours = pca.project(x)
        assert colours.min() >= 0 and colours.max() <= 1

    def test_deterministic_sign(self) -> None:
        x = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
        a, b = fit_pca(x), fit_pca(x.flip(0))
        assert torch.allclose(a.axes, b.axes, atol=1e-8)

    def test_degenerate(self) -> None:
        with pytest.raises(InputError, match="at least two"):
            fit_pca(torch.zeros(1, 4))
        pca = fit_pca(torch.ones(10, 4))  # no variance: colours stay finite
        assert torch.isfinite(pca.project(torch.ones(3, 4))).all()


class TestFeaturePCA:
    def test_shapes_and_masks(self) -> None:
        maps = [torch.randn(16, 5, 7), torch.randn(16, 9, 4)]
        masks = [torch.ones(5, 7, dtype=torch.bool), torch.rand(9, 4) > 0.3]
        colours, shown, _ = feature_pca(maps, masks)
        assert [c.shape for c in colours] == [(3, 5, 7), (3, 9, 4)]
        assert (colours[1][:, ~masks[1]] == 0).all()
        assert torch.equal(shown[1], masks[1])

    def test_foreground_threshold_finds_object(self) -> None:
        # an "object" block with distinct features on a uniform noisy background
        g = torch.Generator().manual_seed(0)
        fmap = torch.randn(8, 20, 20, generator=g) * 0.05
        fmap[0, 5:15, 5:15] += 3.0
        fmap[1:, 5:15, 5:15] += torch.randn(7, 10, 10, generator=g)
        _, shown, _ = feature_pca([fmap], foreground_threshold=0.5)
        truth = torch.zeros(20, 20, dtype=torch.bool)
        truth[5:15, 5:15] = True
        if shown[0].sum() < 50:  # arbitrary sign of the first component: invert
            _, shown, _ = feature_pca([fmap], foreground_threshold=0.5, invert_foreground=True)
        assert (shown[0] == truth).float().mean() > 0.95

    def test_threshold_leaving_nothing(self) -> None:
        with pytest.raises(InputError, match="fewer than two"):
            feature_pca([torch.randn(4, 6, 6)], foreground_threshold=1.5)

    def test_channel_mismatch(self) -> None:
        with pytest.raises(InputError, match="channel"):
            feature_pca([torch.randn(4, 3, 3), torch.randn(5, 3, 3)])


def test_flip_gives_mirrored_colours_on_real_photos(photo_paths: list[Path]) -> None:
    """Joint projection: a photo and its mirror image get mirrored colour maps (equal colours
    at mirrored parts) with a flip-equivariant backbone; without flipping back the maps differ."""
    backbone = MirrorBackbone().eval()
    for path in photo_paths[:2]:
        photo = _square_photo(path)
        maps, masks = image_features(backbone, [photo, photo.flip(-1)])
        colours, _, _ = feature_pca(maps, masks)
        mirrored_error = (colours[0] - colours[1].flip(-1)).abs().mean().item()
        unaligned_error = (colours[0] - colours[1]).abs().mean().item()
        assert mirrored_error < 1e-4, mirrored_error
        assert unaligned_error > 0.05, unaligned_error


def test_pictures_with_default_backbone(photo_paths: list[Path], tmp_path: Path) -> None:
    """dense-sift end to end: pictures at the original size, one shared colour mapping."""
    backbone = create_backbone("dense-sift", image_size=128, stride=4, bin_sizes=(4, 8, 16))
    images = [load_image(photo_paths[0]), load_image(photo_paths[0]).flip(-1)]
    pictures = pca_pictures(backbone, images)
    assert [p.size for p in pictures] == [(img.shape[-1], img.shape[-2]) for img in images]
    assert all(isinstance(p, Image.Image) for p in pictures)
    # the colour statistics of a photo and its mirror image agree under the joint projection
    means = [torch.from_numpy(np.asarray(p, dtype=np.float32)).mean((0, 1)) for p in pictures]
    assert (means[0] - means[1]).abs().max() < 20, means

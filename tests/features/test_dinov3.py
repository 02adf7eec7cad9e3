"""DINOv3 backbones: loading save_pretrained folders, layout and errors.

The equivalence test here feeds the same normalised tensor to semcorr and to the transformers
model semcorr wraps, so it proves wiring only (which hidden state, which tokens dropped, the
reshape). The independent check, from the image file through transformers' own image
processor, is in test_processor_reference.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import one_thread, save_tiny_dinov2, save_tiny_dinov3  # noqa: E402, F401

from semcorr import create_backbone, list_backbones  # noqa: E402
from semcorr.errors import WeightsError  # noqa: E402
from semcorr.features.dinov3 import DINOV3_HUB_IDS  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dinov3(tmp_path_factory.mktemp("dinov3") / "tiny")


def _reference(folder: Path, images: torch.Tensor, block: int) -> torch.Tensor:
    from transformers import DINOv3ViTModel

    model = DINOv3ViTModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(pixel_values=images, output_hidden_states=True).hidden_states[block + 1]


def test_registered() -> None:
    assert set(DINOV3_HUB_IDS) <= set(list_backbones())
    assert DINOV3_HUB_IDS["dinov3_vitb16"] == "facebook/dinov3-vitb16-pretrain-lvd1689m"


@pytest.mark.parametrize("layer", [-1, 0])
def test_equals_transformers_forward(tiny_dir: Path, layer: int) -> None:
    """Proves wiring only: semcorr's tokens of block ``layer`` equal the wrapped model's
    hidden state ``layer + 1`` on the same tensor (no resize, pad or normalisation involved)."""
    backbone = create_backbone("dinov3_vitb16", weights=str(tiny_dir), layer=layer, num_patches=3)
    assert backbone.info.stride == 16 and backbone.info.image_size == 48
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = backbone.features(images)
    tokens = _reference(tiny_dir, images, layer % 2)
    assert tokens.shape[1] == 1 + 4 + 9  # CLS, 4 registers, 3x3 patches
    expected = tokens[:, 5:].reshape(2, 3, 3, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_spatial_layout(tiny_dir: Path) -> None:
    backbone = create_backbone("dinov3_vitb16", weights=str(tiny_dir), layer=0, num_patches=4)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    edited = images.clone()
    edited[..., 32:48, 0:16] = 1.0  # patch row 2, column 0
    with torch.no_grad():
        change = (backbone.features(edited) - backbone.features(images)).norm(dim=1)[0]
    assert change.argmax().item() == 2 * 4 + 0


def test_wrong_model_type(tmp_path: Path) -> None:
    save_tiny_dinov2(tmp_path / "v2", layers=1)
    with pytest.raises(WeightsError, match="dinov3_vit"):
        create_backbone("dinov3_vitb16", weights=str(tmp_path / "v2"))


def test_offline_default_is_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("SEMCORR_WEIGHTS", raising=False)
    with pytest.raises(WeightsError, match="facebook/dinov3-vits16-pretrain-lvd1689m"):
        create_backbone("dinov3_vits16")

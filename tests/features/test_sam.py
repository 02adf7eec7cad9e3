"""SAM image encoder: loading a tiny SamModel folder, outputs, layout and errors.

The equivalence tests here feed the same normalised tensor to semcorr and to the transformers
model semcorr wraps, so they prove wiring only. The independent check, from the image file
through SAM's own image processor, is in test_processor_reference.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import one_thread, save_tiny_sam  # noqa: E402, F401

from semcorr import create_backbone, list_backbones  # noqa: E402
from semcorr.errors import InputError, WeightsError  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny")


@pytest.fixture(scope="module")
def reference(tiny_dir: Path):  # noqa: ANN201
    from transformers import SamModel

    return SamModel.from_pretrained(tiny_dir).eval()


def test_registered() -> None:
    assert {"sam_vit_b", "sam_vit_l", "sam_vit_h"} <= set(list_backbones())


def test_neck_equals_image_embeddings(tiny_dir: Path, reference) -> None:  # noqa: ANN001
    """Proves wiring only: the ``neck`` output is the wrapped model's image embeddings."""
    backbone = create_backbone("sam_vit_b", weights=str(tiny_dir))
    assert backbone.info.stride == 16 and backbone.info.image_size == 64
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = backbone.features(images)
        expected = reference.get_image_embeddings(pixel_values=images)
    assert ours.shape == (2, 16, 4, 4)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_vit_tokens(tiny_dir: Path, reference) -> None:  # noqa: ANN001
    """Proves wiring only: the ``vit`` output is the wrapped encoder's last hidden state."""
    backbone = create_backbone("sam_vit_b", weights=str(tiny_dir), output="vit")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = backbone.features(images)
        hidden = reference.vision_encoder(pixel_values=images, output_hidden_states=True)
    expected = hidden.hidden_states[-1].permute(0, 3, 1, 2)  # (B, h, w, C) → (B, C, h, w)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_spatial_layout(tiny_dir: Path) -> None:
    backbone = create_backbone("sam_vit_b", weights=str(tiny_dir), output="vit")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    edited = images.clone()
    edited[..., 0:16, 48:64] = 1.0  # patch row 0, column 3
    with torch.no_grad():
        change = (backbone.features(edited) - backbone.features(images)).norm(dim=1)[0]
    assert change.argmax().item() == 3


def test_fixed_size_and_options(tiny_dir: Path) -> None:
    backbone = create_backbone("sam_vit_b", weights=str(tiny_dir))
    with pytest.raises(InputError, match="64x64"):
        backbone.features(torch.rand(1, 3, 48, 48))
    with pytest.raises(InputError, match="output"):
        create_backbone("sam_vit_b", weights=str(tiny_dir), output="masks")


def test_offline_default_is_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("SEMCORR_WEIGHTS", raising=False)
    with pytest.raises(WeightsError, match="facebook/sam-vit-base"):
        create_backbone("sam_vit_b")

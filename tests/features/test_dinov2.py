"""DINOv2 backbones: loading from save_pretrained folders and official checkpoints, layout.

The comparisons with ``Dinov2Model`` feed the same tensor to semcorr and to the transformers
model it wraps: they prove wiring only (which hidden state, which tokens dropped, the reshape).
Independent references: ``reference_official_dinov2`` in tiny_models.py (a re-statement of the
official architecture on the raw state dict, for the key conversion) and the official
facebookresearch/dinov2 code in test_geoaware_recipe.py::test_dino_interpolation_equals_official.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import (  # noqa: E402
    official_dinov2_state,
    one_thread,  # noqa: F401  (autouse)
    reference_official_dinov2,
    save_tiny_dinov2,
)

from semcorr import create_backbone, list_backbones  # noqa: E402
from semcorr.errors import InputError, WeightsError  # noqa: E402
from semcorr.features.dinov2 import DINOV2_VARIANTS  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2") / "tiny", layers=3)


@pytest.fixture(scope="module")
def tiny_reg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dinov2(tmp_path_factory.mktemp("dinov2reg") / "tiny", registers=True)


def _images(b: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _hf_reference(folder: Path, images: torch.Tensor, block: int, registers: bool) -> torch.Tensor:
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    cls = Dinov2WithRegistersModel if registers else Dinov2Model
    model = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(pixel_values=images, output_hidden_states=True)
    return out.hidden_states[block + 1]  # hidden_states[0] = embeddings


class TestRegistry:
    def test_names_listed(self) -> None:
        names = set(list_backbones())
        for size in "sblg":
            assert f"dinov2_vit{size}14" in names
            assert f"dinov2_vit{size}14_reg" in names

    def test_import_stays_light(self) -> None:
        """Registering the foundation backbones imports neither transformers nor diffusers."""
        import subprocess
        import sys

        code = ("import sys, semcorr; heavy = [m for m in ('transformers', 'diffusers') "
                "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_hub_ids(self) -> None:
        assert DINOV2_VARIANTS["dinov2_vitb14"].hub_id == "facebook/dinov2-base"
        assert DINOV2_VARIANTS["dinov2_vitg14_reg"].hub_id == (
            "facebook/dinov2-with-registers-giant"
        )


class TestSavePretrained:
    @pytest.mark.parametrize("layer", [-1, 0, 1])
    def test_equals_transformers_forward(self, tiny_dir: Path, layer: int) -> None:
        """Proves wiring only: tokens of block ``layer`` equal the wrapped ``Dinov2Model``'s
        hidden state ``layer + 1`` on the same tensor (no resize, pad or normalisation)."""
        backbone = create_backbone("dinov2_vitb14", weights=str(tiny_dir), layer=layer,
                                   num_patches=5)
        images = _images(2, 70)
        with torch.no_grad():
            ours = backbone.features(images)
        tokens = _hf_reference(tiny_dir, images, layer % 3, registers=False)
        expected = tokens[:, 1:].reshape(2, 5, 5, 32).permute(0, 3, 1, 2)
        assert ours.shape == (2, 32, 5, 5)
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)

    def test_info(self, tiny_dir: Path) -> None:
        backbone = create_backbone("dinov2_vitb14", weights=str(tiny_dir))
        assert backbone.info.stride == 14
        assert backbone.info.image_size == 840
        assert backbone.info.mean == (0.485, 0.456, 0.406)
        assert backbone.info.extra["layer"] == 2

    def test_registers_dropped(self, tiny_reg_dir: Path) -> None:
        """Proves wiring only: the wrapped model's CLS and 4 register tokens are dropped."""
        backbone = create_backbone("dinov2_vits14_reg", weights=str(tiny_reg_dir), num_patches=4)
        images = _images(1, 56, seed=1)
        with torch.no_grad():
            ours = backbone.features(images)
        tokens = _hf_reference(tiny_reg_dir, images, 1, registers=True)
        assert tokens.shape[1] == 1 + 4 + 16
        expected = tokens[:, 5:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)

    def test_final_norm(self, tiny_dir: Path) -> None:
        from transformers import Dinov2Model

        backbone = create_backbone("dinov2_vitb14", weights=str(tiny_dir), final_norm=True,
                                   num_patches=4)
        images = _images(1, 56)
        model = Dinov2Model.from_pretrained(tiny_dir).eval()
        with torch.no_grad():
            ours = backbone.features(images)
            ref = model(pixel_values=images).last_hidden_state[:, 1:]
        torch.testing.assert_close(ours, ref.reshape(1, 4, 4, 32).permute(0, 3, 1, 2),
                                   atol=ATOL, rtol=0)

    def test_spatial_layout(self, tiny_dir: Path) -> None:
        """Changing one patch of the image changes the token at that patch's grid cell most."""
        backbone = create_backbone("dinov2_vitb14", weights=str(tiny_dir), layer=0,
                                   num_patches=5)
        images = _images(1, 70)
        edited = images.clone()
        row, col = 1, 3  # patch at y in [14, 28), x in [42, 56)
        edited[..., 14 * row : 14 * row + 14, 14 * col : 14 * col + 14] = 1.0
        with torch.no_grad():
            change = (backbone.features(edited) - backbone.features(images)).norm(dim=1)[0]
        assert change.argmax().item() == row * 5 + col

    def test_corrupt_folder(self, tiny_dir: Path, tmp_path: Path) -> None:
        import shutil

        broken = tmp_path / "broken"
        shutil.copytree(tiny_dir, broken)
        (broken / "model.safetensors").write_bytes(b"\x00" * 64)
        with pytest.raises(WeightsError, match="broken: cannot load weights"):
            create_backbone("dinov2_vitb14", weights=str(broken))

    def test_registers_mismatch(self, tiny_reg_dir: Path) -> None:
        with pytest.raises(WeightsError, match="dinov2_with_registers"):
            create_backbone("dinov2_vitb14", weights=str(tiny_reg_dir))

    def test_bad_options(self, tiny_dir: Path) -> None:
        with pytest.raises(InputError, match="layer"):
            create_backbone("dinov2_vitb14", weights=str(tiny_dir), layer=5)
        with pytest.raises(InputError, match="precision"):
            create_backbone("dinov2_vitb14", weights=str(tiny_dir), precision="fp8")
        with pytest.raises(InputError, match="unexpected keyword"):
            create_backbone("dinov2_vitb14", weights=str(tiny_dir), bogus=1)

    @pytest.mark.parametrize("precision", ["bf16", "fp16"])
    def test_autocast_close_to_fp32(self, tiny_dir: Path, precision: str) -> None:
        images = _images(1, 56)
        full = create_backbone("dinov2_vitb14", weights=str(tiny_dir), num_patches=4)
        half = create_backbone("dinov2_vitb14", weights=str(tiny_dir), num_patches=4,
                               precision=precision)
        with torch.no_grad():
            a, b = full.features(images), half.features(images)
        assert b.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        assert cos.min() > 0.99
        assert not torch.equal(a, b)

    def test_extract_end_to_end(self, tiny_dir: Path) -> None:
        backbone = create_backbone("dinov2_vitb14", weights=str(tiny_dir), num_patches=4)
        features, transforms = backbone.extract([torch.rand(3, 40, 60), torch.rand(3, 30, 30)])
        assert features.shape == (2, 32, 4, 4)
        assert transforms[0].size == 56


class TestOfficialCheckpoint:
    @pytest.mark.parametrize(
        ("registers", "swiglu", "suffix"),
        [(0, False, ".pth"), (4, False, ".pth"), (0, True, ".safetensors")],
    )
    def test_conversion_matches_official_forward(
        self, tmp_path: Path, registers: int, swiglu: bool, suffix: str
    ) -> None:
        """An official-layout checkpoint (torch-hub key names) converted by semcorr equals
        ``reference_official_dinov2``, a functional forward written in tiny_models.py from the
        official architecture on the raw state dict: independent of semcorr's key conversion
        and of transformers, but a re-statement, not the official code (which runs in
        test_geoaware_recipe.py::test_dino_interpolation_equals_official)."""
        state = official_dinov2_state(registers=registers, swiglu=swiglu)
        path = tmp_path / f"dinov2_vitb14_pretrain{suffix}"
        if suffix == ".pth":
            torch.save(state, path)
        else:
            from safetensors.torch import save_file

            save_file(state, str(path))
        name = "dinov2_vitb14_reg" if registers else "dinov2_vitb14"
        # 128 wide → 2 heads of 64, the official head width (inferred, not passed)
        backbone = create_backbone(name, weights=str(path), num_patches=4, layer=1)
        images = _images(2, 56, seed=3)
        with torch.no_grad():
            ours = backbone.features(images)
            tokens = reference_official_dinov2(state, images, heads=2, upto=1)
        expected = tokens[:, 1 + registers :].reshape(2, 4, 4, 128).permute(0, 3, 1, 2)
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)

    def test_interpolation_matches_transformers(self, tmp_path: Path) -> None:
        """Proves wiring only: at a non-native size (7 x 7 patches from a 4 x 4 pretraining
        grid) semcorr's default path equals transformers' Dinov2Model, the library it calls,
        with its own position-embedding interpolation. The independent check against the
        official facebookresearch/dinov2 ``interpolate_pos_encoding`` is
        test_geoaware_recipe.py::test_dino_interpolation_equals_official (it also shows that
        transformers' rule differs from the official one without registers)."""
        from transformers import Dinov2Model

        from semcorr.features.dinov2 import convert_dinov2_checkpoint

        state = official_dinov2_state()
        torch.save(state, tmp_path / "ckpt.pth")
        backbone = create_backbone("dinov2_vitb14", weights=str(tmp_path / "ckpt.pth"),
                                   num_patches=7)
        config, converted = convert_dinov2_checkpoint(state)
        model = Dinov2Model(config).eval()
        model.load_state_dict(converted)
        images = _images(1, 98, seed=4)
        with torch.no_grad():
            ours = backbone.features(images)
            ref = model(pixel_values=images, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(ours, ref[:, 1:].reshape(1, 7, 7, 128).permute(0, 3, 1, 2),
                                   atol=ATOL, rtol=0)

    def test_chunked_block_keys(self, tmp_path: Path) -> None:
        """ViT-g style ``blocks.<chunk>.<block>.*`` keys load like plain ``blocks.<block>.*``."""
        state = official_dinov2_state(depth=2)
        chunked = {k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else k: v
                   for k, v in state.items()}
        torch.save(state, tmp_path / "plain.pth")
        torch.save(chunked, tmp_path / "chunked.pth")
        images = _images(1, 56, seed=5)
        with torch.no_grad():
            plain = create_backbone("dinov2_vitb14", weights=str(tmp_path / "plain.pth"),
                                    num_patches=4).features(images)
            chunk = create_backbone("dinov2_vitb14", weights=str(tmp_path / "chunked.pth"),
                                    num_patches=4).features(images)
        torch.testing.assert_close(plain, chunk, atol=0, rtol=0)

    def test_unknown_keys(self, tmp_path: Path) -> None:
        state = official_dinov2_state(depth=1)
        state["dino_head.weight"] = torch.zeros(3)
        torch.save(state, tmp_path / "bad.pth")
        with pytest.raises(WeightsError, match="unknown DINOv2 keys"):
            create_backbone("dinov2_vitb14", weights=str(tmp_path / "bad.pth"))

    def test_not_a_checkpoint(self, tmp_path: Path) -> None:
        (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
        with pytest.raises(WeightsError, match="junk.pth"):
            create_backbone("dinov2_vitb14", weights=str(tmp_path / "junk.pth"))


class TestWeightsResolution:
    def test_offline_default_is_clear(self, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.delenv("SEMCORR_WEIGHTS", raising=False)
        with pytest.raises(WeightsError, match="facebook/dinov2-base") as info:
            create_backbone("dinov2_vitb14")
        assert "SEMCORR_WEIGHTS" in str(info.value)

    def test_env_folder(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        save_tiny_dinov2(tmp_path / "dinov2_vitb14", layers=1)
        monkeypatch.setenv("SEMCORR_WEIGHTS", str(tmp_path))
        backbone = create_backbone("dinov2_vitb14")
        assert backbone.info.weights == str(tmp_path / "dinov2_vitb14")

    def test_missing_local_path(self) -> None:
        with pytest.raises(WeightsError, match="no such weights"):
            create_backbone("dinov2_vitb14", weights="./nowhere/dinov2.pth")

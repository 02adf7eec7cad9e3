"""GeoAware-SC's SD feature recipe against the official ODISE code (../shared/reference).

The official path (``FeatureExtractorBackbone.slide_forward`` → ``LdmImplicitCaptionerExtractor``
→ ``LdmExtractor.forward``/``unet_forward``, raw=True as ``preprocess_map.py`` calls it) runs on the
same tiny random weights that semcorr loads from disk; see ``odise_official.py`` for the stubs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from odise_official import official_backbone, official_modules, require_reference  # noqa: E402
from tiny_models import one_thread, save_tiny_text_encoder  # noqa: E402, F401

from semcorr import create_backbone  # noqa: E402
from semcorr.errors import InputError, WeightsError  # noqa: E402
from semcorr.features.geoaware_sd import float64_noising, slide_offsets  # noqa: E402

SIZE = 960
RTOL = 1e-4
REFERENCE_DINOV2 = Path(__file__).resolve().parents[3] / "shared" / "reference" / \
    "facebookresearch+dinov2"


def save_recipe_sd(folder: Path, widths: tuple[int, ...] = (32, 32, 64, 64), groups: int = 8,
                   seed: int = 0) -> Path:
    """An SD-1.5-layout diffusers folder (4 levels, two layers per block: LDM output blocks
    0-11, VAE factor 8 with two resnets per level), random weights, thin everywhere but the
    U-Net's ``widths``. Cross-attention sits at 1/2 and 1/4 of the latent only (SD 1.5 also
    has it at full latent size, where it would cost most of the test's time)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, layers_per_block=2, block_out_channels=widths, norm_num_groups=groups,
        cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",),
    )
    with torch.no_grad():
        for param in unet.parameters():
            param.add_(0.02 * torch.randn_like(param))
    unet.save_pretrained(folder / "unet")
    del unet
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, layers_per_block=2,
        latent_channels=4,
    )
    vae.save_pretrained(folder / "vae")
    save_tiny_text_encoder(folder)
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False).save_pretrained(folder / "scheduler")
    return folder


def save_captioner(folder: Path, time_dim: int, seed: int = 1) -> tuple[Path, Path]:
    """A tiny CLIP vision model (save_pretrained) and an ODISE-style checkpoint holding the
    captioner under ODISE's keys (``{"model": {"backbone.feature_extractor.*": ...}}``)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=56, patch_size=14, projection_dim=24))
    with torch.no_grad():
        for param in clip.parameters():
            param.add_(0.02 * torch.randn_like(param))
    clip.save_pretrained(folder / "clip")
    g = torch.Generator().manual_seed(seed)
    state = {
        "clip_project.linear.weight": 0.2 * torch.randn(32, 24, generator=g),
        "clip_project.linear.bias": 0.1 * torch.randn(32, generator=g),
        "clip_project.positional_embedding": 0.1 * torch.randn(1, 16, 32, generator=g),
        "alpha_cond": 0.5 * torch.randn(1, 16, 32, generator=g),
        "time_embed_project.linear.weight": 0.2 * torch.randn(time_dim, 24, generator=g),
        "time_embed_project.linear.bias": 0.1 * torch.randn(time_dim, generator=g),
        "time_embed_project.positional_embedding": 0.1 * torch.randn(1, 1, time_dim, generator=g),
        "alpha_cond_time_embed": 0.5 * torch.randn(time_dim, generator=g),
    }
    path = folder / "odise_captioner.pth"
    torch.save({"model": {f"backbone.feature_extractor.{k}": v for k, v in state.items()},
                "iteration": 1}, path)
    return path, folder / "clip"


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def captioner_state(path: Path, zero_alphas: bool = False) -> dict[str, torch.Tensor]:
    """The captioner's tensors under ODISE's module names; ``zero_alphas``: tanh(0) = 0, so the
    official captioner adds exactly nothing (the official face of ``captioner="empty"``)."""
    state = torch.load(path, weights_only=True)["model"]
    state = {k.removeprefix("backbone.feature_extractor."): v for k, v in state.items()}
    if zero_alphas:
        state["alpha_cond"] = torch.zeros_like(state["alpha_cond"])
        state["alpha_cond_time_embed"] = torch.zeros_like(state["alpha_cond_time_embed"])
    return state


def official_parts(backbone, images01: torch.Tensor, state: dict[str, torch.Tensor],  # noqa: ANN001
                   clip_dir: Path, freeu: bool = True) -> dict[str, torch.Tensor]:
    """Run the official ODISE path on semcorr's loaded modules (the same weights)."""
    from transformers import CLIPVisionModelWithProjection

    clip = CLIPVisionModelWithProjection.from_pretrained(clip_dir)
    with official_modules(clip) as modules:
        official = official_backbone(modules, backbone.unet, backbone.vae,
                                     backbone.prompt_embedding)
        extractor = official.feature_extractor
        extractor.ldm_extractor.freeu = freeu
        result = extractor.load_state_dict(state, strict=False)
        assert not result.unexpected_keys and set(extractor.state_dict()) == set(state)
        with torch.no_grad():
            return official(images01, raw=True)


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_reference()
    return save_recipe_sd(tmp_path_factory.mktemp("recipe") / "sd")


@pytest.fixture(scope="module")
def captioner_files(recipe_dir: Path) -> tuple[Path, Path]:
    return save_captioner(recipe_dir.parent, time_dim=4 * 32)


def _image(seed: int = 0, size: int = SIZE) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_slide_offsets() -> None:
    assert slide_offsets(960, 512) == [0, 448]
    assert slide_offsets(512, 512) == [0]
    assert slide_offsets(1024, 512) == [0, 512]
    assert slide_offsets(1088, 512) == [0, 512, 576]


def test_float64_noising_is_odise_schedule() -> None:
    from types import SimpleNamespace

    with official_modules() as modules:
        diffusion = modules["diffusion"].create_gaussian_diffusion(
            steps=1000, learn_sigma=False, noise_schedule="ldm_linear")
        x, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
        expected = diffusion.q_sample(x, torch.tensor([50]), noise)
    config = SimpleNamespace(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear")
    a, b = float64_noising(50, config)
    torch.testing.assert_close(a * x + b * noise, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("size", [512, pytest.param(SIZE, marks=pytest.mark.slow)])
def test_recipe_equals_official_with_captioner(recipe_dir: Path, size: int,
                                               captioner_files: tuple[Path, Path]) -> None:
    """image → s3/s4/s5: slide (2×2 crops at 960 px, one at 512), shared noise, float64
    noising, captioner, parts."""
    captioner, clip_dir = captioner_files
    ours = create_backbone("sd15", weights=str(recipe_dir), recipe="geoaware",
                           captioner=str(captioner), captioner_clip=str(clip_dir))
    image = _image(size=size)
    # FreeU keys on the literal widths 1280/640 in ODISE: it cannot act on this thin U-Net
    # (test_freeu_equals_official covers it); semcorr keys on the U-Net's two widest widths
    ours.freeu = None
    with torch.no_grad():
        got = ours.feature_parts(ours.normalize(image))
    expected = official_parts(ours, image, captioner_state(captioner), clip_dir)
    n = size // 16  # SD 1.5: 640, 1280, 1280 channels
    assert {k: tuple(v.shape) for k, v in got.items()} == {
        "s3": (1, 32, n, n), "s4": (1, 64, n // 2, n // 2), "s5": (1, 64, n // 4, n // 4)}
    errors = {k: relative_error(got[k], expected[k]) for k in got}
    print(f"recipe vs official at {size} px, relative error:", errors)
    assert max(errors.values()) <= RTOL


def test_empty_captioner_is_a_measured_deviation(recipe_dir: Path,
                                                 captioner_files: tuple[Path, Path]) -> None:
    """captioner="empty" equals the official path without the captioner's offsets; against the
    captioned official features its error is the number quoted in docs/reproduce-geoaware.md."""
    captioner, clip_dir = captioner_files
    empty = create_backbone("sd15", weights=str(recipe_dir), recipe="geoaware",
                            captioner="empty")
    empty.freeu = None
    image = _image(1, size=512)
    with torch.no_grad():
        got = empty.feature_parts(empty.normalize(image))
    captioned = official_parts(empty, image, captioner_state(captioner), clip_dir)
    plain = official_parts(empty, image, captioner_state(captioner, zero_alphas=True), clip_dir)
    errors = {k: relative_error(got[k], captioned[k]) for k in got}
    print("captioner='empty' vs captioned official, relative error:", errors)
    for name in ("s3", "s4", "s5"):
        assert relative_error(got[name], plain[name]) <= RTOL, name
        assert errors[name] > 10 * RTOL, name


def test_recipe_needs_captioner(recipe_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="odise_label_coco_50e") as info:
        create_backbone("sd15", weights=str(recipe_dir), recipe="geoaware")
    assert "captioner=empty" in str(info.value)
    with pytest.raises(WeightsError, match="no such captioner file"):
        create_backbone("sd15", weights=str(recipe_dir), recipe="geoaware",
                        captioner=str(tmp_path / "missing.pth"))
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="not ODISE's implicit-captioner"):
        create_backbone("sd15", weights=str(recipe_dir), recipe="geoaware",
                        captioner=str(tmp_path / "other.pth"))


def test_recipe_fixed_options(recipe_dir: Path) -> None:
    with pytest.raises(InputError, match="fixes timestep"):
        create_backbone("sd15", weights=str(recipe_dir), recipe="geoaware", captioner="empty",
                        timestep=100)
    with pytest.raises(InputError, match="unknown recipe"):
        create_backbone("sd15", weights=str(recipe_dir), recipe="odise", captioner="empty")
    with pytest.raises(InputError, match="need recipe"):
        create_backbone("sd15", weights=str(recipe_dir), captioner="empty")
    empty = create_backbone("sd15", weights=str(recipe_dir), recipe="geoaware",
                            captioner="empty")
    with pytest.raises(InputError, match="multiple of 64"):
        empty.feature_parts(torch.zeros(1, 3, 480, 480))
    with pytest.raises(InputError, match="no prompt"):
        empty.feature_parts(torch.zeros(1, 3, 512, 512), context=empty.prompt_embedding)



@pytest.mark.slow
def test_freeu_equals_official(tmp_path_factory: pytest.TempPathFactory) -> None:
    """FreeU on SD 1.5's widths (320/640/1280/1280, ~0.8B parameters): ODISE's placement and
    the in-place scaling of the stored parts, one 512-px crop."""
    require_reference()
    folder = tmp_path_factory.mktemp("sd15_widths")
    sd = save_recipe_sd(folder / "sd", widths=(320, 640, 1280, 1280), groups=32)
    captioner, clip_dir = save_captioner(folder, time_dim=4 * 320)
    ours = create_backbone("sd15", weights=str(sd), recipe="geoaware", captioner="empty")
    image = _image(2, size=512)
    with torch.no_grad():
        got = ours.feature_parts(ours.normalize(image))
    state = captioner_state(captioner, zero_alphas=True)
    expected = official_parts(ours, image, state, clip_dir)
    errors = {k: relative_error(got[k], expected[k]) for k in got}
    print("FreeU recipe vs official, relative error:", errors)
    assert max(errors.values()) <= RTOL
    without = official_parts(ours, image, state, clip_dir, freeu=False)
    effect = {k: relative_error(without[k], expected[k]) for k in got}
    print("official without FreeU vs with, relative difference:", effect)
    assert min(effect.values()) > 100 * RTOL


def _official_dinov2(state: dict[str, torch.Tensor], registers: int) -> torch.nn.Module:
    """The official DinoVisionTransformer (../shared/reference/facebookresearch+dinov2) as its
    hub entry builds ViT-B/14 (offset 0.1, no antialiasing; with registers: 0 and antialiased),
    at the width of ``state``."""
    import sys
    from functools import partial

    root = REFERENCE_DINOV2
    if not root.is_dir():
        pytest.skip(f"{root} is absent (../shared/reference is not beside the repository)")
    saved = dict(sys.modules)
    sys.path.insert(0, str(root))
    try:
        from dinov2.layers import MemEffAttention, NestedTensorBlock
        from dinov2.models.vision_transformer import DinoVisionTransformer
    finally:
        sys.path.remove(str(root))
        for name in set(sys.modules) - set(saved):
            del sys.modules[name]
    side = int((state["pos_embed"].shape[1] - 1) ** 0.5)
    model = DinoVisionTransformer(
        img_size=14 * side, patch_size=14, embed_dim=128, depth=2, num_heads=2, mlp_ratio=4,
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention), init_values=1.0,
        block_chunks=0,
        num_register_tokens=registers, interpolate_antialias=bool(registers),
        interpolate_offset=0.0 if registers else 0.1,
    )
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize("registers", [0, 4])
def test_dino_interpolation_equals_official(tmp_path: Path, registers: int) -> None:
    """DINOv2 at 280 px (20² patches; GeoAware: 840 px, 60²) from a 4×4 pretraining grid:
    pos_interpolation="official" equals the official model's last-block patch tokens before the
    norm; transformers' rule does not (without registers). Reference: the official
    DinoVisionTransformer and its ``interpolate_pos_encoding``, imported from
    ../shared/reference/facebookresearch+dinov2 and loaded with the raw official-layout state
    dict (semcorr converts it for transformers): no code in common with semcorr."""
    from tiny_models import official_dinov2_state

    state = official_dinov2_state(registers=registers)
    path = tmp_path / "dinov2.pth"
    torch.save(state, path)
    name = "dinov2_vitb14_reg" if registers else "dinov2_vitb14"
    ours = create_backbone(name, weights=str(path), pos_interpolation="official", num_patches=20)
    plain = create_backbone(name, weights=str(path), num_patches=20)
    images = torch.rand(1, 3, 280, 280, generator=torch.Generator().manual_seed(5))
    official = _official_dinov2(state, registers)
    with torch.no_grad():
        expected = official.get_intermediate_layers(images, n=[1], reshape=True, norm=False)[0]
        got = ours.features(images)
        other = plain.features(images)
    assert got.shape == expected.shape == (1, 128, 20, 20)
    assert relative_error(got, expected) <= RTOL
    print(f"transformers' interpolation vs official (registers={registers}):",
          relative_error(other, expected))
    assert relative_error(other, expected) > 10 * RTOL or registers


def test_sd_dino_recipe_routes_both_sides(recipe_dir: Path, captioner_files: tuple[Path, Path],
                                          tmp_path: Path) -> None:
    """``sd+dino`` with recipe="geoaware": the SD recipe with the captioner on one side, the
    official DINOv2 interpolation on the other; its parts are those of the two backbones."""
    from tiny_models import official_dinov2_state

    from semcorr.features.geoaware_sd import GeoAwareSDFeatures

    captioner, clip_dir = captioner_files
    torch.save(official_dinov2_state(), tmp_path / "dino.pth")
    fused = create_backbone(
        "sd+dino", sd_weights=str(recipe_dir), dino_weights=str(tmp_path / "dino.pth"),
        mode="raw", recipe="geoaware", captioner=str(captioner), captioner_clip=str(clip_dir),
        sd_options={"image_size": 512}, dino_options={"num_patches": 8})
    assert isinstance(fused.sd, GeoAwareSDFeatures) and fused.sd.captioner is not None
    assert fused.sd.freeu == {"s1": 0.9, "s2": 0.2, "b1": 1.2, "b2": 1.4}
    assert fused.dino.info.extra["pos_interpolation"] == "official"
    squares = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        parts = fused.feature_parts(squares)
        sd_in = torch.nn.functional.interpolate(squares, size=(512, 512), mode="bilinear",
                                                align_corners=False, antialias=True)
        alone = fused.sd.feature_parts(fused.sd.normalize(sd_in))
        dino = fused.dino.features(fused.dino.normalize(squares))
    assert list(parts) == ["s3", "s4", "s5", "dino"]
    for name, part in alone.items():
        torch.testing.assert_close(parts[name], part, atol=0, rtol=0)
    torch.testing.assert_close(parts["dino"], dino, atol=0, rtol=0)


def test_geoaware_head_defaults_to_the_recipe(recipe_dir: Path, tmp_path: Path) -> None:
    """``--head geoaware`` builds sd+dino under the recipe: without captioner weights, one
    error saying what to download."""
    import argparse

    from semcorr.cli.common import add_backbone_options, backbone_from_args
    from semcorr.postprocess import create_head

    head = create_head("geoaware", feature_dims=(128,) * 4, projection_dim=128)
    torch.save(head.state_dict(), tmp_path / "h.PTH")
    parser = argparse.ArgumentParser()
    add_backbone_options(parser)
    args = parser.parse_args(["--backbone", "sd+dino", "--head", "geoaware", "--head-weights",
                              str(tmp_path / "h.PTH"), "--backbone-option",
                              f"sd_weights={recipe_dir}", "--device", "cpu"])
    with pytest.raises(WeightsError, match="odise_label_coco_50e-b67d2efc.pth"):
        backbone_from_args(args)

"""Stable Diffusion U-Net features: a tiny diffusers folder against diffusers' own forward.

The reference is the library semcorr wraps, with the parts read at a different place (the
outputs of the layers before them, not semcorr's hooks): this checks which layers are read,
the noising and the text conditioning, not that a recipe equals a published one (GeoAware-SC's
recipe is compared with the official ODISE code in test_geoaware_recipe.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from tiny_models import one_thread, save_tiny_stable_diffusion  # noqa: E402, F401

from semcorr import create_backbone, list_backbones  # noqa: E402
from semcorr.errors import InputError, WeightsError  # noqa: E402
from semcorr.features.stable_diffusion import FREEU_GEOAWARE, parse_part  # noqa: E402

ATOL = 1e-5
SIZE = 32


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny_sd")


@pytest.fixture(scope="module")
def backbone(sd_dir: Path):  # noqa: ANN201
    return create_backbone("sd15", weights=str(sd_dir), image_size=SIZE)


def _images(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def modules(sd_dir: Path) -> dict[str, object]:
    """diffusers' / transformers' own modules loaded from the folder."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return {
        "unet": UNet2DConditionModel.from_pretrained(sd_dir / "unet").eval(),
        "vae": AutoencoderKL.from_pretrained(sd_dir / "vae").eval(),
        "scheduler": DDIMScheduler.from_pretrained(sd_dir / "scheduler"),
        "tokenizer": CLIPTokenizer.from_pretrained(sd_dir / "tokenizer"),
        "text": CLIPTextModel.from_pretrained(sd_dir / "text_encoder").eval(),
    }


def _reference(modules: dict, images: torch.Tensor, timestep: int, draws: int = 1,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """diffusers' own forward; parts read as the *outputs* of the layers before them."""
    unet, vae, scheduler = modules["unet"], modules["vae"], modules["scheduler"]
    tokenizer, text = modules["tokenizer"], modules["text"]
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    store: dict[str, torch.Tensor] = {}
    # s3 = up_blocks.2.resnets.2 → output of up_blocks.2.attentions.1, etc.
    targets = {
        "s3": unet.up_blocks[2].attentions[1],
        "s4": unet.up_blocks[1].attentions[1],
        "s5": unet.up_blocks[0].resnets[1],  # UpBlock2D: no attentions
    }
    handles = [
        module.register_forward_hook(
            lambda m, a, out, n=name: store.__setitem__(n, out[0] if isinstance(out, tuple)
                                                        else getattr(out, "sample", out))
        )
        for name, module in targets.items()
    ]
    with torch.no_grad():
        context = text(ids)[0]
        latents = vae.encode(images * 2 - 1).latent_dist.mean * vae.config.scaling_factor
        noise = torch.randn((draws, *latents.shape[1:]),
                            generator=torch.Generator().manual_seed(seed))
        outputs: dict[str, list[torch.Tensor]] = {k: [] for k in targets}
        for d in range(draws):
            t = torch.tensor([timestep] * len(images))
            noisy = scheduler.add_noise(latents, noise[d : d + 1].expand_as(latents), t)
            unet(noisy, t, encoder_hidden_states=context.expand(len(images), -1, -1))
            for k in targets:
                outputs[k].append(store[k])
    for h in handles:
        h.remove()
    return {k: torch.stack(v).mean(0) for k, v in outputs.items()}


def test_registered() -> None:
    assert {"sd15", "sd21"} <= set(list_backbones())


def test_parts_equal_diffusers_forward(backbone, modules: dict) -> None:  # noqa: ANN001
    images = _images(2)
    with torch.no_grad():
        ours = backbone.feature_parts(backbone.normalize(images))
    expected = _reference(modules, images, timestep=50)
    assert list(ours) == ["s3", "s4", "s5"]
    assert ours["s3"].shape == (2, 32, 16, 16)  # up-blocks mirror (32, 64, 64)
    assert ours["s4"].shape == (2, 64, 8, 8)
    assert ours["s5"].shape == (2, 64, 4, 4)
    for name in expected:
        torch.testing.assert_close(ours[name], expected[name], atol=ATOL, rtol=0)


def test_ensemble_is_mean_of_draws(sd_dir: Path, modules: dict) -> None:
    images = _images(1, seed=2)
    backbone = create_backbone("sd15", weights=str(sd_dir), image_size=SIZE, ensemble=2,
                               timestep=400, seed=7)
    with torch.no_grad():
        ours = backbone.feature_parts(backbone.normalize(images))
    expected = _reference(modules, images, timestep=400, draws=2, seed=7)
    for name in expected:
        torch.testing.assert_close(ours[name], expected[name], atol=ATOL, rtol=0)


def test_info_and_features(backbone) -> None:  # noqa: ANN001
    assert backbone.info.stride == 2  # finest part: 1/2 with the tiny VAE factor 2
    assert backbone.info.extra["part_strides"] == {"s3": 2, "s4": 4, "s5": 8}
    with torch.no_grad():
        features = backbone(_images(1))
    assert features.shape == (1, 32 + 64 + 64, 16, 16)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(1, 16, 16), atol=1e-4, rtol=0)


def test_batch_independent(backbone) -> None:  # noqa: ANN001
    images = _images(2, seed=5)
    with torch.no_grad():
        both = backbone(images)
        alone = backbone(images[1:])
    torch.testing.assert_close(both[1:], alone, atol=ATOL, rtol=0)


def test_freeu_changes_features(sd_dir: Path, backbone) -> None:  # noqa: ANN001
    freeu = create_backbone("sd15", weights=str(sd_dir), image_size=SIZE, freeu=FREEU_GEOAWARE)
    images = _images(1)
    with torch.no_grad():
        plain = backbone.feature_parts(backbone.normalize(images))
        boosted = freeu.feature_parts(freeu.normalize(images))
        again = freeu.feature_parts(freeu.normalize(images))
    assert not torch.allclose(plain["s4"], boosted["s4"])
    torch.testing.assert_close(boosted["s4"], again["s4"], atol=0, rtol=0)


def test_bf16_autocast_close(sd_dir: Path, backbone) -> None:  # noqa: ANN001
    half = create_backbone("sd15", weights=str(sd_dir), image_size=SIZE, precision="bf16")
    images = _images(1, seed=3)
    with torch.no_grad():
        a, b = backbone(images), half(images)
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert torch.nn.functional.cosine_similarity(a, b, dim=1).min() > 0.98


def test_up_block_input_part(sd_dir: Path, modules: dict) -> None:
    backbone = create_backbone("sd15", weights=str(sd_dir), image_size=SIZE,
                               parts={"u1": "up_blocks.1"})
    images = _images(1)
    with torch.no_grad():
        part = backbone.feature_parts(backbone.normalize(images))["u1"]
    assert part.shape == (1, 64, 8, 8)  # output of up_blocks.0 (upsampled once)
    assert backbone.info.stride == 4
    store: dict[str, torch.Tensor] = {}
    handle = modules["unet"].up_blocks[0].register_forward_hook(
        lambda m, a, out: store.__setitem__("out", out)
    )
    try:
        _reference(modules, images, timestep=50)
    finally:
        handle.remove()
    torch.testing.assert_close(part, store["out"], atol=1e-5, rtol=0)


def test_bad_options(sd_dir: Path) -> None:
    with pytest.raises(InputError, match="bad U-Net part"):
        parse_part("down_blocks.1", 3)
    with pytest.raises(InputError, match="resnets.0"):
        parse_part("up_blocks.1.resnets.0", 3)
    with pytest.raises(InputError, match="3 up-blocks"):
        create_backbone("sd15", weights=str(sd_dir), parts={"x": "up_blocks.5"})
    with pytest.raises(InputError, match="multiple of 8"):
        create_backbone("sd15", weights=str(sd_dir), image_size=60)
    with pytest.raises(InputError, match="freeu"):
        create_backbone("sd15", weights=str(sd_dir), freeu={"b1": 1.0})


def test_offline_default_is_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("SEMCORR_WEIGHTS", raising=False)
    with pytest.raises(WeightsError, match="stable-diffusion-v1-5/stable-diffusion-v1-5"):
        create_backbone("sd15")


def test_single_file_refused(tmp_path: Path) -> None:
    (tmp_path / "v1-5.ckpt").write_bytes(b"x")
    with pytest.raises(WeightsError, match="diffusers folder"):
        create_backbone("sd15", weights=str(tmp_path / "v1-5.ckpt"))

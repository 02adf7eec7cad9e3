"""SD4Match's evaluation-time features: a sampled VAE latent and fresh noise per image and
draw, averaged over the ensemble (``latent="sample"``, ``noise="fresh"``).

The reference, a re-statement written in this test (not the official file) that shares no code
with semcorr, follows SD4Match's ``SDFeatureExtraction.forward`` step by step on diffusers' own
modules, drawing from one seeded generator in the official order: ``latent_dist.sample()`` for
the batch, ``repeat_interleave`` over the ensemble, ``randn_like`` noise, ``add_noise``, the
U-Net, then the mean over each image's draws.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from tiny_models import one_thread, save_tiny_stable_diffusion  # noqa: E402, F401

from semcorr import create_backbone  # noqa: E402
from semcorr.errors import InputError  # noqa: E402

SIZE = 32
PART = {"up1": "up_blocks.2"}  # the output of up-block 1, SD4Match's map


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny_sd")


def _official_steps(sd_dir: Path, images: torch.Tensor, timestep: int, ensemble: int,
                    generator: torch.Generator) -> torch.Tensor:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(sd_dir / "unet").eval()
    vae = AutoencoderKL.from_pretrained(sd_dir / "vae").eval()
    scheduler = DDIMScheduler.from_pretrained(sd_dir / "scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(sd_dir / "tokenizer")
    text = CLIPTextModel.from_pretrained(sd_dir / "text_encoder").eval()
    store: list[torch.Tensor] = []
    handle = unet.up_blocks[1].register_forward_hook(lambda m, a, out: store.append(out))
    with torch.no_grad():
        ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids
        prompt = text(ids)[0].expand(len(images), -1, -1)
        latent = vae.encode(images * 2 - 1).latent_dist.sample(generator=generator)
        latent = latent * vae.config.scaling_factor
        latent = latent.repeat_interleave(ensemble, dim=0)
        prompt = prompt.repeat_interleave(ensemble, dim=0)
        noise = torch.randn(latent.shape, generator=generator)
        t = torch.tensor(timestep, dtype=torch.long)
        unet(scheduler.add_noise(latent, noise, t), t, encoder_hidden_states=prompt)
    handle.remove()
    return store[0].view(-1, ensemble, *store[0].shape[1:]).mean(dim=1)


def test_sampled_latents_and_fresh_noise_follow_the_official_steps(sd_dir: Path) -> None:
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    backbone = create_backbone("sd15", weights=str(sd_dir), image_size=SIZE, parts=PART,
                               timestep=50, ensemble=3, seed=11, latent="sample", noise="fresh")
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        first = backbone.feature_parts(backbone.normalize(images))["up1"]
        second = backbone.feature_parts(backbone.normalize(images))["up1"]
    expected_first = _official_steps(sd_dir, images, 50, 3, generator)
    expected_second = _official_steps(sd_dir, images, 50, 3, generator)  # the stream goes on
    torch.testing.assert_close(first, expected_first, atol=1e-5, rtol=0)
    torch.testing.assert_close(second, expected_second, atol=1e-5, rtol=0)
    assert (first - second).abs().max() > 1e-3  # fresh draws: another call, other features
    assert backbone.info.extra["latent"] == "sample" and backbone.info.extra["noise"] == "fresh"


def test_defaults_stay_deterministic_and_bad_modes_are_refused(sd_dir: Path) -> None:
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    backbone = create_backbone("sd15", weights=str(sd_dir), image_size=SIZE, parts=PART)
    with torch.no_grad():
        a = backbone.feature_parts(backbone.normalize(images))["up1"]
        b = backbone.feature_parts(backbone.normalize(images))["up1"]
    assert torch.equal(a, b)
    with pytest.raises(InputError, match="latent must be one of"):
        create_backbone("sd15", weights=str(sd_dir), image_size=SIZE, latent="mode")

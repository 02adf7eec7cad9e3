"""A diffusion backbone through the tracking job: DIFT's preset options (timestep 51, 8 noise
draws, an empty prompt, one U-Net part) on a tiny random-weight SD in the diffusers layout,
loaded by the real loading path; the features are cached once per frame."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))

from tiny_models import save_tiny_stable_diffusion  # noqa: E402

from semcorr.features import create_backbone  # noqa: E402
from semcorr.features.cache import FeatureCache  # noqa: E402
from semcorr.track import PRESETS, PropagationConfig  # noqa: E402
from semcorr.track.run import frame_features, track_clip  # noqa: E402
from track_clips import bundled_clip, save_clip  # noqa: E402


@pytest.mark.slow  # 20-28 s measured under load (8 noise draws per frame)
def test_dift_preset_options_on_tiny_sd(tmp_path: Path) -> None:
    weights = save_tiny_stable_diffusion(tmp_path / "sd")
    options = {**PRESETS["dift-davis"].backbone_options, "image_size": 32}
    assert options["parts"] == {"dift": "up_blocks.3"}  # DIFT's up_ft_index 2 on SD 2.1
    options["parts"] = {"dift": "up_blocks.2"}  # the tiny U-Net has 3 up-blocks
    backbone = create_backbone("sd21", weights=str(weights), **options).eval()
    assert backbone.info.extra["timestep"] == 51 and backbone.info.extra["ensemble"] == 8
    clip = bundled_clip(3, (24, 32))
    frames = save_clip(clip, tmp_path / "frames")
    cache = FeatureCache.for_backbone(tmp_path / "cache", backbone)
    features, transform = frame_features(backbone, cache, frames[0])
    assert features.shape[0] == 64 and transform.size == 32
    config = PropagationConfig(context=2, topk=3, radius=4, temperature=0.2)
    result = track_clip(backbone, cache, frames, tmp_path / "out", config,
                        mask=clip.masks[0], overlay=False)
    assert result.masks is not None and len(result.masks) == 3
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 3
    again, _ = frame_features(backbone, cache, frames[0])  # read back, not recomputed
    assert torch.equal(again, features)

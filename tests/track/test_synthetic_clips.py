"""Tracking accuracy on synthetic clips with known motion (issue 22): a real photo seen by a
smoothly panning, rotating and zooming camera, with a pasted photo patch as the object.

The figures (printed with ``-s``) are the README's; ``semcorr track``'s default propagation
(context 20, top-k 10, radius 12, temperature 0.1, out-of-view decision at margin -0.0075 and
ratio 0.1 with colour weight 3) and
its dense-sift (bins 4, 8, 16 px) at the frames' own resolution (``image_size=160``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semcorr.features import create_backbone
from semcorr.features.cache import FeatureCache
from semcorr.track.presets import TRACK_DEFAULT, TRACK_PRESENCE_COLOUR
from semcorr.track.run import track_clip
from semcorr.track.synthetic import SyntheticClip, mask_iou, pck
from track_clips import bundled_clip, photo_clip, read_masks, save_clip

SIZE = (120, 160)


#: The README's table ("Tracking through video"), measured in one run; each test fails below a
#: figure minus MARGIN (the issue's own bounds, PCK@0.05 >= 0.9 and J >= 0.8, also hold).
README_FIGURES = {
    ("leaving", "photo_clip"): {"pck": 0.955, "after": 1.000, "j": 0.872},
    ("leaving", "bundled_clip"): {"pck": 0.976, "after": 1.000, "j": 0.865},
    ("in view", "photo_clip"): {"pck": 0.951, "j": 0.901},
    ("in view", "bundled_clip"): {"pck": 0.955, "j": 0.851},
}
MARGIN = 0.01


def _track(clip: SyntheticClip, tmp: Path) -> tuple[torch.Tensor, torch.Tensor]:
    frames = save_clip(clip, tmp / "frames")
    backbone = create_backbone("dense-sift", image_size=160, bin_sizes=(4, 8, 16)).eval()
    cache = FeatureCache.for_backbone(tmp / "cache", backbone)
    result = track_clip(backbone, cache, frames, tmp / "out", TRACK_DEFAULT,
                        points=clip.points[0], mask=clip.masks[0], overlay=False,
                        presence_colour=TRACK_PRESENCE_COLOUR)
    assert result.points is not None and result.masks is not None
    return result.points, read_masks(result.masks)


@pytest.mark.slow
@pytest.mark.parametrize("make", [photo_clip, bundled_clip], ids=["brooklyn", "chelsea"])
def test_points_through_an_object_leaving_and_reentering(make, tmp_path: Path) -> None:
    clip = make(40, SIZE, leaves=True)
    assert (clip.points[:, 9:] == -1).all(-1).any()  # the object really leaves the frame
    points, masks = _track(clip, tmp_path)
    overall = pck(points[1:], clip.points[1:], SIZE)
    after = pck(points[25:, 9:], clip.points[25:, 9:], SIZE)  # object points after re-entry
    iou = mask_iou(masks[1:], clip.masks[1:])
    print(f"\n{make.__name__} leaving: PCK@0.05 {overall:.3f} (background "
          f"{pck(points[1:, :9], clip.points[1:, :9], SIZE):.3f}, object after re-entry "
          f"{after:.3f}); J {iou.mean():.3f}")
    claim = README_FIGURES[("leaving", make.__name__)]
    assert overall >= max(0.9, claim["pck"] - MARGIN)
    assert after >= max(0.9, claim["after"] - MARGIN)
    assert iou.mean() >= max(0.8, claim["j"] - MARGIN)


@pytest.mark.slow
@pytest.mark.parametrize("make", [photo_clip, bundled_clip], ids=["brooklyn", "chelsea"])
def test_mask_of_an_object_moving_in_view(make, tmp_path: Path) -> None:
    clip = make(30, SIZE, leaves=False)
    points, masks = _track(clip, tmp_path)
    iou = mask_iou(masks[1:], clip.masks[1:])
    print(f"\n{make.__name__} in view: J {iou.mean():.3f} (min {iou.min():.3f}); PCK@0.05 "
          f"{pck(points[1:], clip.points[1:], SIZE):.3f}")
    claim = README_FIGURES[("in view", make.__name__)]
    assert iou.mean() >= max(0.8, claim["j"] - MARGIN)
    assert pck(points[1:], clip.points[1:], SIZE) >= max(0.9, claim["pck"] - MARGIN)

"""Choose ``semcorr track``'s dense-sift bin sizes on a development clip.

The clip shares no photograph with the clips the README reports (Brooklyn + peppers, Chelsea +
mirrored Chelsea): the boat photo as the scene and a 300 x 300 crop of Graffiti's first image as
the object, 40 frames of 160 x 120, the object leaving the frame and coming back. For each bin
setting it prints PCK@0.05 over all points (and the 9 background points, and the object's points
after re-entry) and the mask's mean IoU (J), with the default propagation settings.

    python benchmarks/sweep_track_dev.py 4-8-16 2-4-8 4-8 4-8-16-32 8-16 8-16-32-64

``--presence`` sweeps the out-of-view decision's margin instead (at ``semcorr track``'s bins,
4-8-16), ``off`` being DIFT's propagation without it:

    python benchmarks/sweep_track_dev.py \
        --presence off,-0.015,-0.0125,-0.01,-0.0075,-0.005,-0.0025,0

``--colour`` sweeps the weight of colour in that decision (``--presence-colour``, at margin
-0.0075) on the boat clip and on three more development clips made from PF-Willow's development
classes (``docs/protocol.md``; a car(G) photo as the scene and a motorbike(G) crop as the object,
motorbike(G) + winebottle(M), winebottle(M) + car(G)):

    python benchmarks/sweep_track_dev.py --colour 0,0.3,1,3,10

``--ratio`` sweeps the decision's relative threshold (``--presence-ratio``, at margin -0.0075 and
colour 3) on those four clips and six more from the same classes (``more_dev_clips``: duck(S)
too), printing the mean J over the ten:

    python benchmarks/sweep_track_dev.py --ratio off,0.1,0.2,0.3

Needs ``../shared`` (boat.png, Graffiti, PF-Willow); about 20 s per clip and setting on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the clip writer and reader the tests use

from semcorr.features import create_backbone  # noqa: E402
from semcorr.features.cache import FeatureCache  # noqa: E402
from semcorr.io import load_image  # noqa: E402
from semcorr.track import PropagationConfig  # noqa: E402
from semcorr.track.run import track_clip  # noqa: E402
from semcorr.track.synthetic import SyntheticClip, make_clip, mask_iou, pck  # noqa: E402
from track_clips import read_masks, save_clip  # noqa: E402

SIZE = (120, 160)
SHARED = ROOT.parent / "shared" / "data"


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]


def dev_clip() -> SyntheticClip:
    """Boat scene, Graffiti patch, 40 frames, the object leaves and re-enters."""
    h, w = SIZE
    scene = _resized(load_image(SHARED / "r2d2" / "boat.png"), (2 * h, int(2.4 * w)))
    graffiti = load_image(SHARED / "homography" / "graffiti" / "img1.png")
    patch = _resized(graffiti[:, 200:500, 300:600], (h // 3, h // 3))
    return make_clip(scene, patch, 40, SIZE, leaves=True)


def pf_willow_clip(scene: str, scene_index: int, patch: str, patch_index: int) -> SyntheticClip:
    """A PF-Willow development-class photo as the scene and a central square crop of another
    as the object, 40 frames, leaving and re-entering."""
    h, w = SIZE
    root = SHARED / "pf-willow"
    scene_image = load_image(sorted((root / scene).glob("*.png"))[scene_index])
    photo = load_image(sorted((root / patch).glob("*.png"))[patch_index])
    ph, pw = photo.shape[-2:]
    side = min(ph, pw)
    crop = photo[:, (ph - side) // 2:(ph + side) // 2, (pw - side) // 2:(pw + side) // 2]
    return make_clip(_resized(scene_image, (2 * h, int(2.4 * w))), _resized(crop, (h // 3, h // 3)),
                     40, SIZE, leaves=True)


def dev_clips() -> dict[str, SyntheticClip]:
    """Every development clip, by name."""
    return {"boat + Graffiti": dev_clip(),
            "car(G) + motorbike(G)": pf_willow_clip("car(G)", 0, "motorbike(G)", 0),
            "motorbike(G) + winebottle(M)": pf_willow_clip("motorbike(G)", 1, "winebottle(M)", 0),
            "winebottle(M) + car(G)": pf_willow_clip("winebottle(M)", 1, "car(G)", 1)}


def more_dev_clips() -> dict[str, SyntheticClip]:
    """Six more development clips (PF-Willow development classes only, photos not used by
    :func:`dev_clips`), added for the relative out-of-view threshold."""
    return {"duck(S) + car(G)": pf_willow_clip("duck(S)", 0, "car(G)", 2),
            "car(G) + duck(S)": pf_willow_clip("car(G)", 3, "duck(S)", 1),
            "duck(S) + motorbike(G)": pf_willow_clip("duck(S)", 2, "motorbike(G)", 3),
            "motorbike(G) + car(G)": pf_willow_clip("motorbike(G)", 4, "car(G)", 4),
            "winebottle(M) + duck(S)": pf_willow_clip("winebottle(M)", 2, "duck(S)", 3),
            "car(G) + winebottle(M)": pf_willow_clip("car(G)", 5, "winebottle(M)", 4)}


def sweep(clips: dict[str, SyntheticClip],
          settings: list[tuple[str, PropagationConfig, float]]) -> None:
    """J and PCK@0.05 per clip and setting ``(label, config, colour weight)``, features
    computed once per clip, then each setting's mean J over the clips."""
    backbone = create_backbone("dense-sift", image_size=160, bin_sizes=(4, 8, 16)).eval()
    totals = dict.fromkeys([label for label, _, _ in settings], 0.0)
    for name, clip in clips.items():
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            frames = save_clip(clip, tmp / "frames")
            cache = FeatureCache.for_backbone(tmp / "cache", backbone)
            for label, config, colour in settings:
                result = track_clip(backbone, cache, frames, tmp / "out", config,
                                    points=clip.points[0], mask=clip.masks[0], overlay=False,
                                    presence_colour=colour)
                j = float(mask_iou(read_masks(result.masks)[1:], clip.masks[1:]).mean())
                totals[label] += j / len(clips)
                print(f"{name}, {label}: J {j:.3f}, PCK@0.05 "
                      f"{pck(result.points[1:], clip.points[1:], SIZE):.3f}", flush=True)
    for label, mean in totals.items():
        print(f"{label}: mean J over {len(clips)} clips {mean:.3f}")


def score(clip: SyntheticClip, bins: tuple[int, ...]) -> str:
    """Track ``clip`` with dense-sift at ``bins`` and DIFT's propagation at CRW's settings (as
    the bins were chosen); format its figures."""
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        frames = save_clip(clip, tmp / "frames")
        backbone = create_backbone("dense-sift", image_size=160, bin_sizes=bins).eval()
        result = track_clip(backbone, FeatureCache.for_backbone(tmp / "cache", backbone), frames,
                            tmp / "out", PropagationConfig(), points=clip.points[0],
                            mask=clip.masks[0], overlay=False)
        points, masks = result.points, read_masks(result.masks)
    return (f"PCK@0.05 {pck(points[1:], clip.points[1:], SIZE):.3f} "
            f"(background {pck(points[1:, :9], clip.points[1:, :9], SIZE):.3f}, "
            f"object after re-entry {pck(points[25:, 9:], clip.points[25:, 9:], SIZE):.3f}) "
            f"J {mask_iou(masks[1:], clip.masks[1:]).mean():.3f}")


def _off_or_float(text: str) -> float | None:
    return None if text == "off" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bins", nargs="*", default=["4-8-16"],
                        help="bin sizes per setting, e.g. 4-8-16")
    parser.add_argument("--presence", default=None,
                        help="comma-separated presence margins (or off) to sweep at bins 4-8-16")
    parser.add_argument("--colour", default=None,
                        help="comma-separated colour weights of the out-of-view decision")
    parser.add_argument("--ratio", default=None,
                        help="comma-separated relative thresholds (or off) of that decision")
    args = parser.parse_args()
    from semcorr.track.presets import TRACK_DEFAULT, TRACK_PRESENCE_COLOUR
    if args.colour:
        sweep(dev_clips(), [(f"colour {w:g}", replace(TRACK_DEFAULT, presence_ratio=None),
                             float(w)) for w in args.colour.split(",")])
        return
    if args.ratio:
        sweep({**dev_clips(), **more_dev_clips()},
              [(f"ratio {r}", replace(TRACK_DEFAULT, presence_ratio=_off_or_float(r)),
                TRACK_PRESENCE_COLOUR)
               for r in args.ratio.split(",")])
        return
    if args.presence:
        sweep({"boat + Graffiti": dev_clip()},
              [(f"presence {m}", PropagationConfig(presence_margin=_off_or_float(m)), 0.0)
               for m in args.presence.split(",")])
        return
    clip = dev_clip()
    for setting in args.bins:
        bins = tuple(int(b) for b in setting.split("-"))
        start = time.perf_counter()
        print(f"bins {setting}: {score(clip, bins)} ({time.perf_counter() - start:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()

"""semcorr's :class:`~semcorr.track.LabelPropagator` against DIFT's own ``eval_davis.py``.

The reference is the official file (github.com/Tsingularity/dift ``eval_davis.py``), imported at
run time from ../shared/reference or the fetched mirror (the test skips when neither is there,
e.g. in CI), and *run*: its ``eval_video_tracking_davis`` frame loop (first frame + a
``queue.Queue`` of the last ``n_last_frames`` propagated results), its ``label_propagation``
(exponential affinities, ``restrict_neighborhood``'s window, top-k by zeroing, sum
normalisation), and its read-out (bilinear upsampling, ``norm_mask``, argmax, indexed PNG). It is
independent of semcorr: no line of it comes from our reading of DIFT, unlike the naive loop of
``test_propagate.py``. Only what cannot run here is replaced, inside the test: DIFT's diffusion
featurizers (its ``src.models`` imports, never called), the feature extractor's model (returns
the given random features), ``read_frame`` (hands out those features instead of decoding JPEGs)
and ``Tensor.cuda`` (identity on this CPU machine).

Both sides see the same random features (8 frames, C=16, a 12x14 grid) and 3 one-hot labels;
the per-frame soft labels must agree to 1e-5 and the written masks must be equal pixel for pixel
to semcorr's ``labels_to_mask(..., "minmax")`` read-out.

``context=0`` is not compared: DIFT's ``queue.Queue(0)`` is unbounded and its loop then blocks
on ``que.get()`` of the empty queue at the first frame; semcorr reads it as "the first frame
only".
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from semcorr.track import LabelPropagator, PropagationConfig, labels_to_mask
from semcorr.track.presets import PRESETS

FRAMES, CHANNELS, GRID, OBJECTS = 8, 16, (12, 14), 2  # labels: background + 2 objects = 3
SCALE = 4  # DIFT's feature stride, here: masks are read out at 4x the grid

CONFIGS = [
    PropagationConfig(context=3, topk=5, radius=2, temperature=0.1),
    PropagationConfig(context=7, topk=5, radius=12, temperature=0.1),  # eval_davis.py defaults
    PRESETS["dift-davis"].propagation,  # DIFT's published DAVIS command (n 28, k 15, r 15, T 0.2)
    PropagationConfig(context=2, topk=6, radius=1, temperature=0.05),  # k > a corner's window
    PropagationConfig(context=1, topk=10, radius=0, temperature=0.2),  # no window
    PropagationConfig(context=4, topk=1, radius=3, temperature=0.07),
]


def _dift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """DIFT's ``eval_davis.py``, its unsatisfiable imports stubbed for this test only."""
    from reference_code import official_module

    pytest.importorskip("tqdm", reason="DIFT's eval_davis.py shows its progress with tqdm")
    models = ModuleType("src.models")
    for name, cls in (("dift_sd", "SDFeaturizer"), ("dift_adm", "ADMFeaturizer")):
        stub = ModuleType(f"src.models.{name}")  # diffusion featurizers: never called here
        setattr(stub, cls, object)
        monkeypatch.setitem(sys.modules, f"src.models.{name}", stub)
        setattr(models, name, stub)
    monkeypatch.setitem(sys.modules, "src", ModuleType("src"))
    monkeypatch.setitem(sys.modules, "src.models", models)
    try:
        import cv2  # noqa: F401  (eval_davis.py imports it at the top)
    except ImportError:
        monkeypatch.setitem(sys.modules, "cv2", ModuleType("cv2"))  # only read_frame uses it
    module = official_module("Tsingularity/dift", "eval_davis.py", tmp_path)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    return module


class _FeatureModel:
    """DIFT's ``model.forward(frame, t=, up_ft_index=, ensemble_size=)``: the "frame" handed
    out by the patched ``read_frame`` already is its ``(C, h, w)`` feature map."""

    def forward(self, frame: torch.Tensor, **_: object) -> torch.Tensor:
        return frame.clone()


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features ``(T, C, h, w)`` (float32, not normalised: both sides normalise) and a
    random first-frame index mask ``(h, w)`` holding every label."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(FRAMES, CHANNELS, *GRID, generator=g)
    mask = torch.randint(0, OBJECTS + 1, GRID, generator=g)
    mask[0, :OBJECTS + 1] = torch.arange(OBJECTS + 1)
    return features, mask


def _run_dift(module: ModuleType, features: torch.Tensor, first: torch.Tensor,
              cfg: PropagationConfig, out: Path, monkeypatch: pytest.MonkeyPatch
              ) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """DIFT's ``eval_video_tracking_davis`` on ``features`` from the first-frame labels
    ``first`` ``(1, K, h, w)``: its soft labels ``(1, K, h, w)`` per frame (recorded as its
    ``label_propagation`` returns them) and its written masks."""
    h, w = GRID
    args = SimpleNamespace(output_dir=str(out), n_last_frames=cfg.context,
                           size_mask_neighborhood=int(cfg.radius), topk=cfg.topk,
                           temperature=cfg.temperature, t=0, up_ft_index=0, ensemble_size=1)
    monkeypatch.setattr(module, "args", args, raising=False)  # restrict_neighborhood's global
    names = [f"clip/{i:05d}.jpg" for i in range(FRAMES)]
    monkeypatch.setattr(module, "read_frame",
                        lambda name: (features[names.index(name)], SCALE * h, SCALE * w))
    soft: list[torch.Tensor] = []
    propagate = module.label_propagation

    def recording(*a: object, **k: object) -> tuple:
        result = propagate(*a, **k)
        soft.append(result[0].clone())
        return result

    monkeypatch.setattr(module, "label_propagation", recording)
    seg_ori = np.zeros((SCALE * h, SCALE * w), np.uint8)  # only written out as frame 0
    palette = np.arange(256 * 3, dtype=np.uint8).reshape(256, 3)
    module.eval_video_tracking_davis(args, _FeatureModel(), SCALE, names, "clip", first,
                                     seg_ori, palette)
    written = [np.asarray(Image.open(out / "clip" / f"{i:05d}.png")) for i in range(1, FRAMES)]
    return soft, written


def _run_semcorr(features: torch.Tensor, first: torch.Tensor, cfg: PropagationConfig
                 ) -> list[torch.Tensor]:
    prop = LabelPropagator(cfg)
    prop.start(features[0], first)
    return [prop.step(f) for f in features[1:]]


def _max_gap(theirs: list[torch.Tensor], ours: list[torch.Tensor]) -> float:
    assert len(theirs) == len(ours) == FRAMES - 1
    return max(float((t[0] - o).abs().max()) for t, o in zip(theirs, ours))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 about DIFT's np.array(t)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"n{c.context}-k{c.topk}-r{c.radius:g}")
def test_label_propagation_equals_dift_eval_davis(
        cfg: PropagationConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _dift(tmp_path, monkeypatch)
    features, mask = _inputs(seed=int(cfg.radius * 10 + cfg.topk))
    first = module.to_one_hot(mask[None].float())  # (1, K, h, w), DIFT's read_seg encoding
    theirs, written = _run_dift(module, features, first, cfg, tmp_path / "out", monkeypatch)
    ours = _run_semcorr(features, first[0], cfg)
    gap = _max_gap(theirs, ours)
    assert gap < 1e-5, f"soft labels differ from DIFT's by up to {gap:.3g}"
    # the labels do change along the clip (a test of a constant would prove little)
    assert float((ours[-1] - ours[0]).abs().max()) > 0.05
    for t, (labels, png) in enumerate(zip(ours, written), start=1):
        ours_mask = labels_to_mask(labels, (SCALE * GRID[0], SCALE * GRID[1]), "minmax").numpy()
        assert np.array_equal(ours_mask, png), f"frame {t}: {np.mean(ours_mask != png):.3%} differ"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_soft_label_propagation_equals_dift_eval_davis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point heatmaps (semcorr's JHMDB and ``--points`` labels) go through the same linear map:
    DIFT's loop on peaked non-negative labels, with the ``dift-jhmdb`` preset's settings."""
    module = _dift(tmp_path, monkeypatch)
    cfg = PRESETS["dift-jhmdb"].propagation
    features, _ = _inputs(seed=5)
    first = torch.rand(4, *GRID, generator=torch.Generator().manual_seed(6)) ** 8
    theirs, _ = _run_dift(module, features, first[None], cfg, tmp_path / "out", monkeypatch)
    gap = _max_gap(theirs, _run_semcorr(features, first, cfg))
    assert gap < 1e-5 * float(first.max()), f"soft labels differ by up to {gap:.3g}"

"""semcorr's point ↔ heatmap conversions against CRW's own code (ajabri/videowalk), run at test
time: ``code/data/jhmdb.py`` ``draw_labelmap_np`` (a JHMDB joint → Gaussian heatmap on the
label grid) and ``code/utils/test_utils.py`` ``process_pose`` (propagated heatmaps → points).

The official files are imported from ../shared/reference or the fetched mirror (the test skips,
saying why, where they are absent, e.g. in CI, where ``test_labels.py``'s hand-computed values
stand in); their OpenCV / matplotlib / imageio imports are only used for drawing, and the test
skips when they are missing rather than stubbing them. Independent of semcorr: the numbers are
those the official functions compute on the same random points and heatmaps.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from semcorr.track import labels_to_points, points_to_labels

CRW = "ajabri/videowalk"
GRID = (10, 13)  # (h, w) of the label grid
STRIDE = 8  # pixels per cell: pixel -> cell is an exact division on both sides


def _crw(path: str, scratch: Path) -> ModuleType:
    from reference_code import official_module

    for module in ("cv2", "matplotlib", "imageio"):
        pytest.importorskip(module, reason=f"CRW's {path} imports {module}")
    return official_module(CRW, path, scratch)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.3])
def test_points_to_labels_equals_crw_draw_labelmap_np(sigma: float, tmp_path: Path) -> None:
    jhmdb = _crw("code/data/jhmdb.py", tmp_path)
    h, w = GRID
    rng = np.random.default_rng(int(sigma * 10))
    cells = np.concatenate([
        rng.uniform([0, 0], [w, h], size=(40, 2)),  # inside
        rng.uniform([-8, -8], [w + 8, h + 8], size=(40, 2)),  # around and beyond the edges
        np.array([[0.0, 0.0], [w - 1, h - 1], [3.0, 4.0], [-0.4, 2.0], [w + 0.6, 5.0]]),
    ])
    official = np.stack([jhmdb.draw_labelmap_np(np.zeros(GRID), c, sigma) for c in cells])
    # CRW's loader: pixel x * (new width / width) / map scale; here the map scale is STRIDE
    ours = points_to_labels(torch.from_numpy(cells * STRIDE), (h * STRIDE, w * STRIDE), GRID,
                            sigma).double().numpy()
    assert np.abs(ours - official).max() <= 1e-7  # semcorr returns float32 maps
    assert (official.reshape(len(cells), -1).max(1) == 0).sum() >= 3  # some land outside
    assert (official.reshape(len(cells), -1).max(1) == 1).sum() >= 40  # peaks on the grid


def test_labels_to_points_equals_crw_process_pose(tmp_path: Path) -> None:
    test_utils = _crw("code/utils/test_utils.py", tmp_path)
    h, w = GRID
    g = torch.Generator().manual_seed(3)
    heatmaps = torch.rand(12, h, w, generator=g) ** 6  # (K, h, w), distinct values
    heatmaps[4] = 0  # a vanished point
    heatmaps[7] = 0
    heatmaps[7, 2, 5] = 0.3  # a single non-zero cell
    background = (heatmaps.sum(0) == 0).float()[None]  # CRW's channel 0 (jhmdb.py l.266)
    pred = torch.cat([background, heatmaps]).permute(1, 2, 0).clone()  # (h, w, 1 + K)
    lbl_set = np.zeros((13, 3))
    coords, _ = test_utils.process_pose(pred, lbl_set)  # (2, K) cells (x, y), -1 when vanished
    ours, _ = labels_to_points(heatmaps, (h, w))  # size = grid: cells are pixels; top 3
    assert torch.allclose(ours, coords.T.float(), atol=1e-5, rtol=0), (ours, coords.T)
    assert (coords[:, 4] == -1).all() and coords[0, 7] == 5 and coords[1, 7] == 2

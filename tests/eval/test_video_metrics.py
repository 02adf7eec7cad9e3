"""DAVIS J/F and JHMDB PCK against transcriptions of the official evaluation code.

The ``_official_*`` functions below transcribe, statement for statement, the code of
davisvideochallenge/davis2017-evaluation at commit ac7c43fca936f9722837b7fbd337d284ba37004b
and of ajabri/videowalk (CRW) at commit 047f3f40135a4b1be2f837793b89c3dbfe7a6683 (each cites
file and lines). semcorr's vectorised metrics must give the same numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from semcorr.eval.video import (
    boundary_f,
    boundary_map,
    davis_sequence_scores,
    davis_statistics,
    davis_summary,
    jhmdb_normalised_distances,
    jhmdb_pck,
    region_similarity,
)

cv2 = pytest.importorskip("cv2", reason="the official F measure dilates with OpenCV")


# --- davis2017/metrics.py ---------------------------------------------------------------------

def _official_db_eval_iou(annotation, segmentation):
    """davis2017/metrics.py lines 6-37 (db_eval_iou, without void pixels)."""
    annotation = annotation.astype(bool)
    segmentation = segmentation.astype(bool)
    void_pixels = np.zeros_like(segmentation)
    inters = np.sum((segmentation & annotation) & np.logical_not(void_pixels), axis=(-2, -1))
    union = np.sum((segmentation | annotation) & np.logical_not(void_pixels), axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inters / union
    if j.ndim == 0:
        j = 1 if np.isclose(union, 0) else j
    else:
        j[np.isclose(union, 0)] = 1
    return j


def _official_disk(radius):
    """skimage.morphology.disk(radius) as metrics.py line 84 imports it (x² + y² <= r²)."""
    axis = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(axis, axis)
    return (x ** 2 + y ** 2 <= radius ** 2).astype(np.uint8)


def _official_seg2bmap(seg):
    """davis2017/metrics.py lines 122-178 (_seg2bmap, width/height = the mask's own)."""
    seg = seg.astype(bool)
    seg[seg > 0] = 1
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _official_f_measure(foreground_mask, gt_mask, bound_th=0.008):
    """davis2017/metrics.py lines 57-119 (f_measure, without void pixels)."""
    void_pixels = np.zeros_like(foreground_mask).astype(bool)
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(
        foreground_mask.shape))
    fg_boundary = _official_seg2bmap(foreground_mask * np.logical_not(void_pixels))
    gt_boundary = _official_seg2bmap(gt_mask * np.logical_not(void_pixels))
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), _official_disk(bound_pix))
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), _official_disk(bound_pix))
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        return 0
    return 2 * precision * recall / (precision + recall)


def _official_db_eval_boundary(annotation, segmentation, bound_th=0.008):
    """davis2017/metrics.py lines 40-54 (db_eval_boundary, 3-D case): note the argument swap
    of line 49, f_measure(segmentation, annotation)."""
    return np.array([_official_f_measure(segmentation[i], annotation[i], bound_th=bound_th)
                     for i in range(annotation.shape[0])])


# --- davis2017/utils.py, evaluation.py, evaluation_method.py ------------------------------------

def _official_db_statistics(per_frame_values):
    """davis2017/utils.py lines 135-161 (db_statistics)."""
    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            m = np.nanmean(per_frame_values)
            o = np.nanmean(per_frame_values > 0.5)
        n_bins = 4
        ids = np.round(np.linspace(1, len(per_frame_values), n_bins + 1) + 1e-10) - 1
        ids = ids.astype(np.uint8)
        d_bins = [per_frame_values[ids[i]:ids[i + 1] + 1] for i in range(0, 4)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            d = np.nanmean(d_bins[0]) - np.nanmean(d_bins[3])
    return m, o, d


def _official_evaluate(sequences):
    """davis2017/evaluation.py lines 80-104 (semi-supervised) with davis.py lines 83-98
    (objects 1..max of the first frame) and evaluation_method.py lines 43-45 (the global row).

    Args:
        sequences: {name: (gt labels (T, H, W), predicted labels (T, H, W))}.
    """
    res = {"J": {"M": [], "R": [], "D": []}, "F": {"M": [], "R": [], "D": []}}
    for gt, pred in sequences.values():
        num_objects = int(np.max(gt[0, ...]))
        tmp = np.ones((num_objects, *gt.shape)) * np.arange(1, num_objects + 1)[:, None, None,
                                                                                None]
        all_gt_masks = (tmp == gt[None, ...]) > 0
        all_gt_masks = all_gt_masks[:, 1:-1, :, :]  # evaluation.py line 85
        pred = pred[1:-1]
        num_res = max(int(np.max(pred)), 1)
        tmp = np.ones((num_res, *pred.shape)) * np.arange(1, num_res + 1)[:, None, None, None]
        all_res_masks = (tmp == pred[None, ...]) > 0  # results.py lines 27-30
        if all_res_masks.shape[0] < all_gt_masks.shape[0]:  # evaluation.py lines 32-34
            pad = np.zeros((all_gt_masks.shape[0] - all_res_masks.shape[0],
                            *all_res_masks.shape[1:]))
            all_res_masks = np.concatenate([all_res_masks, pad], axis=0)
        for ii in range(all_gt_masks.shape[0]):  # evaluation.py lines 36-40, 91-104
            j = _official_db_eval_iou(all_gt_masks[ii], all_res_masks[ii])
            f = _official_db_eval_boundary(all_gt_masks[ii], all_res_masks[ii])
            for key, values in (("J", j), ("F", f)):
                m, r, d = _official_db_statistics(values)
                res[key]["M"].append(m)
                res[key]["R"].append(r)
                res[key]["D"].append(d)
    j, f = res["J"], res["F"]
    return {"J&F-Mean": (np.mean(j["M"]) + np.mean(f["M"])) / 2.0, "J-Mean": np.mean(j["M"]),
            "J-Recall": np.mean(j["R"]), "J-Decay": np.mean(j["D"]), "F-Mean": np.mean(f["M"]),
            "F-Recall": np.mean(f["R"]), "F-Decay": np.mean(f["D"])}


# --- videowalk code/eval/eval_pck.py ---------------------------------------------------------

def _official_jhmdb_pck(gts, preds, thresholds):
    """videowalk code/eval/eval_pck.py lines 51-58 (visibility from the prediction), 70-95
    (0.6 x the diagonal of the visible joints' box), 100-126 (frame 0 skipped, per-joint lists)
    and 130-144 (computePCK: per-joint PCK, then their mean). ``gts``/``preds`` are in its
    layout, (2, J, T) each, pixels."""
    joints = gts[0].shape[1]
    dist_all = {p: np.zeros([0, 0]) for p in range(joints)}
    for nowgt, predres in zip(gts, preds):
        jnt_visible = np.ones((predres.shape[1], predres.shape[2]))
        for j in range(predres.shape[1]):
            for k in range(predres.shape[2]):
                if predres[0, j, k] < 0:
                    jnt_visible[j, k] = 0
        now_boxes = np.zeros(nowgt.shape[2])
        for k in range(nowgt.shape[2]):
            minx, maxx, miny, maxy = 1e6, -1, 1e6, -1
            for j in range(nowgt.shape[1]):
                if jnt_visible[j, k] == 0:
                    continue
                minx = np.min([minx, nowgt[0, j, k]])
                miny = np.min([miny, nowgt[1, j, k]])
                maxx = np.max([maxx, nowgt[0, j, k]])
                maxy = np.max([maxy, nowgt[1, j, k]])
            now_boxes[k] = 0.6 * np.linalg.norm(np.subtract([maxx, maxy], [minx, miny]))
        for j in range(nowgt.shape[1]):
            for k in range(nowgt.shape[2]):
                if jnt_visible[j, k] == 0 or k == 0:
                    continue
                d = np.linalg.norm(np.subtract(predres[:, j, k], nowgt[:, j, k]))
                dist_all[j] = np.append(dist_all[j], [[d / now_boxes[k]]])
    out = {}
    for thresh in thresholds:
        pck = [100.0 * len(np.argwhere(dist_all[p] <= thresh)) / len(dist_all[p])
               for p in range(joints)]
        out[thresh] = np.mean(pck)
    return out


# --- fixtures ---------------------------------------------------------------------------------

def _blobs(rng: np.random.Generator, frames: int, h: int, w: int, objects: int) -> np.ndarray:
    """Label maps ``(T, H, W)`` of ``objects`` random ellipses drifting over the frames."""
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((frames, h, w), dtype=np.int64)
    for k in range(1, objects + 1):
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        ry, rx = rng.uniform(0.08, 0.25) * h, rng.uniform(0.08, 0.25) * w
        vy, vx = rng.uniform(-1.5, 1.5, size=2)
        for t in range(frames):
            inside = ((yy - cy - vy * t) / ry) ** 2 + ((xx - cx - vx * t) / rx) ** 2 <= 1
            labels[t][inside] = k
    return labels


def _noisy(rng: np.random.Generator, labels: np.ndarray, flips: float) -> np.ndarray:
    """Labels with a fraction of pixels replaced by random labels (and one object lost)."""
    noisy = labels.copy()
    mask = rng.random(labels.shape) < flips
    noisy[mask] = rng.integers(0, labels.max() + 1, size=int(mask.sum()))
    return noisy


def _square(h: int, w: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


# --- tests ------------------------------------------------------------------------------------

def test_square_and_shifted_square_hand_computed():
    """A 20x20 square and the same square 5 px to the right, in a 100x100 image.

    J = 20*15 / (20*25) = 0.6. seg2bmap draws each square's boundary as the ring of the 21x21
    square one pixel up-left of it: 80 pixels. The band radius is ceil(0.008 * 141.42) = 2.
    Pixels of one ring within 2 px of the other: 18 on the top row, 18 on the bottom row and 4
    on the near column (the 2 rows next to each corner), so precision = recall = 40/80 and
    F = 0.5."""
    gt = _square(100, 100, 20, 20, 20)[None]
    pred = _square(100, 100, 20, 25, 20)[None]
    assert boundary_map(gt[0]).sum() == 80
    assert region_similarity(gt, pred)[0] == pytest.approx(0.6, abs=1e-12)
    assert boundary_f(gt, pred)[0] == pytest.approx(0.5, abs=1e-12)
    assert _official_f_measure(pred[0], gt[0]) == pytest.approx(0.5, abs=1e-12)
    assert _official_db_eval_iou(gt, pred)[0] == pytest.approx(0.6, abs=1e-12)


def test_empty_and_one_sided_masks_follow_the_official_rules():
    empty = np.zeros((1, 30, 40), dtype=bool)
    square = _square(30, 40, 5, 5, 10)[None]
    assert region_similarity(empty, empty)[0] == 1.0
    assert region_similarity(square, empty)[0] == 0.0
    assert boundary_f(empty, empty)[0] == 1.0
    assert boundary_f(square, empty)[0] == 0.0
    assert boundary_f(empty, square)[0] == 0.0
    assert _official_f_measure(empty[0], square[0]) == 0


@pytest.mark.parametrize("bound_th", [0.008, 0.02, 3])
def test_j_and_f_equal_the_official_code_on_random_masks(bound_th):
    rng = np.random.default_rng(0)
    gt = _blobs(rng, 6, 48, 64, 3)
    pred = _noisy(rng, np.roll(gt, 2, axis=-1), 0.02)
    for k in (1, 2, 3):
        gt_k, pred_k = gt == k, pred == k
        np.testing.assert_allclose(region_similarity(gt_k, pred_k),
                                   _official_db_eval_iou(gt_k, pred_k), rtol=0, atol=1e-12)
        ours = boundary_f(gt_k, pred_k, bound_th)
        official = _official_db_eval_boundary(gt_k, pred_k, bound_th)
        np.testing.assert_allclose(ours, official, rtol=0, atol=1e-12)
        assert 0.05 < ours.mean() < 0.99  # the comparison is not between trivial values


def test_statistics_equal_the_official_db_statistics():
    rng = np.random.default_rng(1)
    for length in (1, 2, 5, 17, 80):
        values = rng.random(length)
        values[rng.random(length) < 0.1] = np.nan
        if np.isnan(values).all():
            values[0] = 0.3
        np.testing.assert_allclose(davis_statistics(values), _official_db_statistics(values),
                                   rtol=0, atol=1e-12, equal_nan=True)


def test_summary_equals_the_official_evaluation_over_sequences():
    rng = np.random.default_rng(2)
    sequences = {}
    for name, objects in (("alpha", 2), ("beta", 1), ("gamma", 3)):
        gt = _blobs(rng, 7, 40, 56, objects)
        sequences[name] = (gt, _noisy(rng, np.roll(gt, 1, axis=-2), 0.03))
    sequences["beta"][1][3:] = 0  # the object is lost half-way: F and J drop to 0
    ours = davis_summary({n: davis_sequence_scores(g, p) for n, (g, p) in sequences.items()})
    official = _official_evaluate(sequences)
    assert ours["objects"] == 6
    for key, value in official.items():
        assert ours[key] == pytest.approx(float(value), abs=1e-12), key
    assert 0.2 < ours["J&F-Mean"] < 0.95
    assert len(davis_sequence_scores(*sequences["alpha"])["1"]["J"]) == 5  # first, last out


def test_jhmdb_pck_equals_crw_eval_pck():
    rng = np.random.default_rng(3)
    gts, preds, ours = [], [], []
    for frames in (5, 9, 3):
        gt = rng.uniform(10, 200, size=(frames, 15, 2))
        pred = gt + rng.normal(0, 12, size=gt.shape)
        pred[rng.random((frames, 15)) < 0.05] = -1.0  # CRW's "invisible" predictions
        gts.append(gt.transpose(2, 1, 0))
        preds.append(pred.transpose(2, 1, 0))
        ours.append(jhmdb_normalised_distances(pred, gt))
    official = _official_jhmdb_pck(gts, preds, (0.1, 0.2))
    result = jhmdb_pck(ours, (0.1, 0.2))
    assert result["frames"] == 4 + 8 + 2
    for alpha in (0.1, 0.2):
        assert 100 * result["pck"][f"{alpha:g}"] == pytest.approx(official[alpha], abs=1e-9)
    assert 0.05 < result["pck"]["0.1"] < result["pck"]["0.2"] < 1


def test_jhmdb_hand_computed_normalisation():
    """Two joints at (0, 0) and (30, 40): box diagonal 50, reference 0.6 * 50 = 30. A
    prediction 3 px off is at 0.1 (counted at 0.1, <=), one 6.3 px off at 0.21 (missed at 0.2).
    The first frame is never scored."""
    gt = np.array([[[0.0, 0.0], [30.0, 40.0]]] * 2)
    pred = gt.copy()
    pred[1, 0] += (3.0, 0.0)
    pred[1, 1] += (0.0, 6.3)
    pred[0] += 100.0  # frame 0 is the given one: ignored
    distances = jhmdb_normalised_distances(pred, gt)
    np.testing.assert_allclose(distances, [[0.1, 0.21]], atol=1e-12)
    result = jhmdb_pck([distances], (0.1, 0.2))
    assert result["per_joint"]["0.1"] == [1.0, 0.0]
    assert result["pck"]["0.2"] == 0.5
    assert math.isclose(result["pck"]["0.1"], 0.5)

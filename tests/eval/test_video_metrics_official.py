"""DAVIS J/F and JHMDB PCK against the official evaluation code itself, run at test time.

The references are the official files, imported from ../shared/reference or the fetched git
mirrors (each test skips, saying why, where they are absent, e.g. in CI, where the
transcriptions of ``test_video_metrics.py`` stand in):

* davisvideochallenge/davis2017-evaluation ``davis2017/metrics.py`` (``db_eval_iou``,
  ``db_eval_boundary`` / ``f_measure``, which needs OpenCV and scikit-image's ``disk``) and its
  whole semi-supervised evaluation (``davis2017/evaluation.py`` ``DAVISEvaluation`` with
  ``davis.py``, ``results.py``, ``utils.py``) reading DAVIS-layout folders from disk;
* ajabri/videowalk ``code/eval/eval_pck.py`` (CRW's JHMDB PCK, followed by DIFT), a script: it
  is executed as it is, with only its two hard-coded paths (the file list and the prediction
  folder) pointed at this test's files.

They are independent of semcorr: the official code computes its numbers from the same files or
arrays, and semcorr's vectorised metrics must give them to 1e-9.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import scipy.io
from PIL import Image

from semcorr.data.video import create_video_dataset, read_index_png, write_index_png
from semcorr.eval.video import (
    boundary_f,
    davis_sequence_scores,
    davis_summary,
    jhmdb_normalised_distances,
    jhmdb_pck,
    region_similarity,
)

DAVIS_REPO = "davisvideochallenge/davis2017-evaluation"
TOL = 1e-9


def _requires(module: str, why: str) -> None:
    pytest.importorskip(module, reason=f"the official {why} imports {module}")


# --- masks ------------------------------------------------------------------------------------

def _blobs(rng: np.random.Generator, n: int, h: int, w: int, objects: int = 1) -> np.ndarray:
    """``(n, h, w)`` labels ``0..objects``: smoothed noise cut at random levels (blobs with
    holes, islands and edges on the image border)."""
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.standard_normal((n, objects, h, w)), sigma=(0, 0, 3, 3))
    level = rng.uniform(-0.05, 0.1, size=(n, objects, 1, 1))
    on = noise > level
    labels = np.zeros((n, h, w), dtype=np.int64)
    for k in range(objects):  # later objects drawn over earlier ones
        labels[on[:, k]] = k + 1
    return labels


def _hand_made(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(gt, pred)`` of binary masks ``(n, h, w)``: shifted squares, a ring, one-pixel
    lines, border-touching, full, single pixels, empty on one side or both."""
    def canvas() -> np.ndarray:
        return np.zeros((h, w), dtype=bool)

    pairs = []
    a, b = canvas(), canvas()
    a[5:25, 8:30], b[7:27, 11:33] = True, True  # square vs shifted square
    pairs.append((a, b))
    ring = canvas()
    ring[4:30, 4:30] = True
    ring[10:24, 10:24] = False
    disc = canvas()
    disc[5:29, 5:29] = True
    pairs.append((ring, disc))
    line, line2 = canvas(), canvas()
    line[h // 2, 3:w - 3], line2[h // 2 + 2, 0:w - 10] = True, True  # thin lines
    pairs.append((line, line2))
    border, inner = canvas(), canvas()
    border[:, : w // 2] = True  # touches three borders
    inner[2:h - 2, 1: w // 2 + 3] = True
    pairs.append((border, inner))
    pairs.append((np.ones((h, w), bool), border))  # full frame: no boundary inside
    dot, dot2 = canvas(), canvas()
    dot[3, 4], dot2[h - 1, w - 1] = True, True  # single pixels, one in the corner
    pairs.append((dot, dot2))
    pairs.append((a, canvas()))  # prediction empty
    pairs.append((canvas(), b))  # ground truth empty
    pairs.append((canvas(), canvas()))  # both empty
    gt, pred = (np.stack(x) for x in zip(*pairs))
    return gt, pred


@pytest.fixture
def davis_metrics(tmp_path: Path) -> ModuleType:
    from reference_code import official_module

    _requires("cv2", "davis2017/metrics.py")
    _requires("skimage", "f_measure")
    return official_module(DAVIS_REPO, "davis2017/metrics.py", tmp_path)


def _official_j_f(metrics: ModuleType, gt: np.ndarray, pred: np.ndarray, bound_th: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        j = metrics.db_eval_iou(gt, pred)
    f = metrics.db_eval_boundary(gt, pred, bound_th=bound_th)
    return np.asarray(j, np.float64), np.asarray(f, np.float64)


@pytest.mark.parametrize("bound_th", [0.008, 0.03, 2.0])
@pytest.mark.parametrize("size", [(48, 64), (37, 53)])
def test_j_and_f_equal_davis2017_metrics(davis_metrics: ModuleType, bound_th: float,
                                         size: tuple[int, int]) -> None:
    rng = np.random.default_rng(int(bound_th * 1000) + size[1])
    hand_gt, hand_pred = _hand_made(*size)
    gt = np.concatenate([hand_gt, _blobs(rng, 12, *size) > 0])
    pred = np.concatenate([hand_pred, _blobs(rng, 12, *size) > 0])
    j_official, f_official = _official_j_f(davis_metrics, gt, pred, bound_th)
    j_ours, f_ours = region_similarity(gt, pred), boundary_f(gt, pred, bound_th)
    assert np.abs(j_ours - j_official).max() <= TOL
    assert np.abs(f_ours - f_official).max() <= TOL
    # the cases are not degenerate: J and F take many values
    assert len(np.unique(j_official.round(6))) > 10 and len(np.unique(f_official.round(6))) > 10
    # a single 2-D frame goes through the official 2-D branch too
    j2, f2 = _official_j_f(davis_metrics, gt[0], pred[0], bound_th)
    assert abs(float(region_similarity(gt[0], pred[0])) - float(j2)) <= TOL
    assert abs(float(boundary_f(gt[:1], pred[:1], bound_th)[0]) - float(f2)) <= TOL


# --- the whole DAVIS semi-supervised evaluation -------------------------------------------------

def _davis_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """davis2017/evaluation.py with its package (``davis2017.davis``, ``.metrics``, ``.utils``,
    ``.results``) assembled in ``sys.modules`` from the official files, for this test only."""
    from reference_code import official_module

    _requires("cv2", "davis2017/metrics.py")
    _requires("skimage", "f_measure")
    _requires("tqdm", "davis2017/evaluation.py")
    tmp_path.mkdir(parents=True, exist_ok=True)
    package = ModuleType("davis2017")
    package.__path__ = []  # a package: `from davis2017 import utils`
    monkeypatch.setitem(sys.modules, "davis2017", package)
    for name in ("davis", "metrics", "results", "utils"):
        module = official_module(DAVIS_REPO, f"davis2017/{name}.py", tmp_path)
        monkeypatch.setitem(sys.modules, f"davis2017.{name}", module)
        setattr(package, name, module)
    return official_module(DAVIS_REPO, "davis2017/evaluation.py", tmp_path)


def _write_sequence(root: Path, pred_root: Path, name: str, gt: np.ndarray, pred: np.ndarray
                    ) -> None:
    """Frames (grey JPEGs; only their count matters), ground truth and predictions as index
    PNGs in the DAVIS layout."""
    for t in range(len(gt)):
        jpg = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
        jpg.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(gt.shape[1:], 128, np.uint8)).save(jpg)
        write_index_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", gt[t])
        write_index_png(pred_root / name / f"{t:05d}.png", pred[t])


def _sequences(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three sequences ``(gt, pred)`` with 1-3 objects; void (255) pixels in the ground truth,
    an object that leaves the view, a predicted object missing everywhere."""
    seqs = {}
    for name, (frames, h, w, objects) in {"alpha": (9, 40, 56, 2), "beta": (6, 33, 47, 3),
                                          "gamma": (13, 30, 30, 1)}.items():
        gt = _blobs(rng, frames, h, w, objects)
        gt[0, 0, :objects] = np.arange(1, objects + 1)  # every object is in the first frame
        pred = np.where(rng.random(gt.shape) < 0.1, rng.integers(0, objects + 1, gt.shape), gt)
        pred = np.roll(pred, shift=int(rng.integers(1, 4)), axis=2)
        void = np.zeros(gt.shape, bool)
        void[:, 1:-1, 1:-1] = gt[:, 1:-1, 1:-1] != gt[:, 2:, 1:-1]  # along edges, as DAVIS
        gt = np.where(void & (rng.random(gt.shape) < 0.5), 255, gt)
        seqs[name] = (gt, pred)
    seqs["beta"][0][4:9][seqs["beta"][0][4:9] == 1] = 0  # object 1 leaves after frame 3
    seqs["beta"][1][seqs["beta"][1] == 3] = 0  # object 3 never predicted
    return seqs


def _global_table(official: dict) -> dict[str, float]:
    """evaluation_method.py's global table from ``DAVISEvaluation.evaluate``'s lists: their
    means over objects."""
    j, f = official["J"], official["F"]
    return {"J&F-Mean": (np.mean(j["M"]) + np.mean(f["M"])) / 2, "J-Mean": np.mean(j["M"]),
            "J-Recall": np.mean(j["R"]), "J-Decay": np.mean(j["D"]), "F-Mean": np.mean(f["M"]),
            "F-Recall": np.mean(f["R"]), "F-Decay": np.mean(f["D"])}


def _assert_equal_tables(ours: dict, official: dict) -> None:
    """semcorr's :func:`davis_summary` equals the official global and per-object numbers."""
    j, f = official["J"], official["F"]
    assert ours["objects"] == len(j["M"])
    for key, value in _global_table(official).items():
        assert abs(ours[key] - float(value)) <= TOL, (key, ours[key], float(value))
    for key, value in j["M_per_object"].items():
        assert abs(ours["per_object"][key]["J-Mean"] - value) <= TOL, key
        assert abs(ours["per_object"][key]["F-Mean"] - f["M_per_object"][key]) <= TOL, key


def test_davis_summary_equals_the_official_davis_evaluation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluation = _davis_evaluation(tmp_path / "official", monkeypatch)
    root, pred_root = tmp_path / "DAVIS", tmp_path / "pred"
    seqs = _sequences(np.random.default_rng(22))
    for name, (gt, pred) in seqs.items():
        _write_sequence(root, pred_root, name, gt, pred)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{n}\n" for n in seqs))

    official = evaluation.DAVISEvaluation(davis_root=str(root), task="semi-supervised",
                                          gt_set="val").evaluate(str(pred_root))
    expected = _global_table(official)

    dataset = create_video_dataset("davis2017", root, "val")
    scores = {}
    for sample in dataset:  # semcorr's loader (void -> background) and its PNG reader
        pred = np.stack([read_index_png(pred_root / sample.name / p.name)
                         for p in sample.annotations]).astype(np.int64)
        scores[sample.name] = davis_sequence_scores(sample.read_masks(), pred)
    ours = davis_summary(scores)

    assert ours["objects"] == 6
    _assert_equal_tables(ours, official)
    assert 0.2 < expected["J-Mean"] < 0.95 and expected["J-Decay"] != 0  # not degenerate


# --- JHMDB PCK ----------------------------------------------------------------------------------

FEAT_RES = 40  # eval_pck.py's prediction grid (``feat_res``)


def _jhmdb_fixture(root: Path, rng: np.random.Generator
                   ) -> tuple[Path, list[np.ndarray], list[tuple[int, int]]]:
    """Videos in the JHMDB layout (frames, ``joint_positions.mat`` 1-based), a CRW file list,
    and predictions ``(2, 15, T)`` on eval_pck.py's 40-cell grid, some invisible (x < 0)."""
    lines, preds, sizes = [], [], []
    for i, (frames, h, w) in enumerate([(7, 240, 320), (5, 120, 200), (9, 180, 140)]):
        folder = root / "Rename_Images" / "act" / f"v{i}"
        folder.mkdir(parents=True)
        for t in range(frames):
            Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(folder / f"{t + 1:05d}.png")
        gt = rng.uniform([10, 10], [w - 10, h - 10], size=(frames, 15, 2))  # 0-based pixels
        mat = root / "joint_positions" / "act" / f"v{i}" / "joint_positions.mat"
        mat.parent.mkdir(parents=True)
        scipy.io.savemat(str(mat), {"pos_img": gt.transpose(2, 1, 0) + 1.0})
        cells = (gt + rng.normal(0, 12, gt.shape)) * [FEAT_RES / w, FEAT_RES / h]
        cells[rng.random((frames, 15)) < 0.1, 0] = -1.0  # lost points
        preds.append(cells.transpose(2, 1, 0).copy())  # (2, 15, T) as CRW writes them
        lines.append(f"{folder.relative_to(root)} {mat.relative_to(root)}")
        sizes.append((h, w))
    filelist = root / "test.split.txt"
    filelist.write_text("\n".join(lines) + "\n")
    return filelist, preds, sizes


def _run_eval_pck(root: Path, filelist: Path, preds: list[np.ndarray], scratch: Path,
                  monkeypatch: pytest.MonkeyPatch) -> dict:
    """Execute CRW's eval_pck.py on ``filelist`` and ``preds`` (written as its ``<i>.dat``);
    returns its globals (``distAll``, ``computePCK``)."""
    from reference_code import official_text

    _requires("cv2", "code/eval/eval_pck.py")
    source = official_text("ajabri/videowalk", "code/eval/eval_pck.py")
    for constant, value in (("'/scratch/ajabri/data/jhmdb/test.split.v2.txt'", filelist),
                            ("'/tmp/jhmdb/'", f"{scratch}/")):
        assert source.count(constant) == 1, f"eval_pck.py no longer holds {constant}"
        source = source.replace(constant, repr(str(value)))
    scratch.mkdir(parents=True, exist_ok=True)
    for i, pred in enumerate(preds):
        with open(scratch / f"{i}.dat", "wb") as handle:
            np.save(handle, pred)
    try:  # its first `import skimage.io as sio` is shadowed at once by scipy.io's
        import skimage.io  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "skimage", ModuleType("skimage"))
        monkeypatch.setitem(sys.modules, "skimage.io", ModuleType("skimage.io"))
    monkeypatch.chdir(root)  # the file list's paths are relative to the dataset root
    namespace: dict = {"__name__": "eval_pck"}
    exec(compile(source, "videowalk/code/eval/eval_pck.py", "exec"), namespace)
    return namespace


def test_jhmdb_pck_equals_crw_eval_pck(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "JHMDB"
    filelist, preds, sizes = _jhmdb_fixture(root, np.random.default_rng(7))
    official = _run_eval_pck(root, filelist, preds, tmp_path / "dat", monkeypatch)
    capsys.readouterr()  # the script prints its table

    dataset = create_video_dataset("jhmdb", root, filelist=str(filelist))
    distances = []
    for sample, pred, (h, w) in zip(dataset, preds, sizes):
        pixels = pred.copy()  # eval_pck.py's cell -> pixel rule (``/ feat_res * width``)
        pixels[0] = pixels[0] / float(FEAT_RES) * w
        pixels[1] = pixels[1] / float(FEAT_RES) * h
        distances.append(jhmdb_normalised_distances(pixels.transpose(2, 1, 0),
                                                    sample.points.numpy()))
    # per joint, in eval_pck.py's order (video, then frame), the counted distances agree
    for joint in range(15):
        ours = np.concatenate([d[:, joint][~np.isnan(d[:, joint])] for d in distances])
        np.testing.assert_allclose(ours, official["distAll"][joint], rtol=0, atol=1e-12)
    thresholds = (0.1, 0.2, 0.3, 0.4, 0.5)
    result = jhmdb_pck(distances, thresholds)
    for alpha in thresholds:
        table = official["computePCK"](official["distAll"], alpha)[:, 0]  # percent
        key = f"{alpha:g}"
        assert np.abs(100 * np.asarray(result["per_joint"][key]) - table[:-1]).max() <= 1e-9
        assert abs(100 * result["pck"][key] - table[-1]) <= 1e-9
    assert 5 < 100 * result["pck"]["0.1"] < 95  # the predictions are neither all hits nor misses


def test_official_davis_evaluation_of_semcorr_eval_predictions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``semcorr eval --dataset davis2017`` end to end: the official evaluation reads the
    prediction PNGs semcorr wrote (its layout, names and indices) and its table equals
    ``results.json``'s."""
    from semcorr.cli.main import main
    from video_fixtures import band_mask, photo, write_davis

    evaluation = _davis_evaluation(tmp_path / "official", monkeypatch)
    frame = photo()
    moving = [photo(dx=2 * t, dy=t) for t in range(4)]  # a pan: imperfect propagation
    root = write_davis(tmp_path / "DAVIS", {
        "shifted": ([frame] * 3, [band_mask()] + [band_mask(2, 8)] * 2),
        "pan": (moving, [band_mask(-4 * t, 4 - 2 * t) for t in range(4)])})
    out = tmp_path / "out"
    assert main(["eval", "--dataset", "davis2017", "--root", str(root), "--out", str(out),
                 "--backbone", "dense-sift", "--backbone-option", "image_size=128", "--topk",
                 "3", "--context", "2", "--radius", "3", "--quiet"]) == 0
    ours = json.loads((out / "results.json").read_text())["summary"]
    official = evaluation.DAVISEvaluation(davis_root=str(root), task="semi-supervised",
                                          gt_set="val").evaluate(str(out / "predictions"))
    assert ours["objects"] == 4
    _assert_equal_tables(ours, official)
    assert ours["J-Mean"] < 1.0  # the clips are not scored perfectly

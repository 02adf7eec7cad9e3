"""GeoAware-SC's evaluation (``pck_train.compute_pck``) run from the reference, against
``semcorr.eval.evaluate`` on one synthetic SPair-71k folder: predictions after adaptive pose
alignment (instance-mask and mutual-NN distances, the partner-visibility merge rule) and PCK.

Both read the same files: the official code its pre-extracted features (``features/*_sd.pt``,
``*_dino.pt``, ``*_mask.png`` and their ``_flip`` versions, written here by a tiny random
backbone), semcorr the images through that same backbone. Only imports that cannot be satisfied
here are stubbed (wandb, loguru, pandas, fvcore, and the SD/DINO extractors that need
detectron2, ODISE and timm); ``Tensor.cuda`` is made the identity because the official distances
and merge move tensors to CUDA unconditionally.

Frames: the official keypoints live in the 840-px square (``x * 840 / 960`` here), and a feature
cell's prediction is ``14 c + 7`` there; semcorr predicts cell centres in original pixels
(``16 c + 7.5``, pixel centres at integers). So ``official = 0.875 * (semcorr + 0.5)``. Source
keypoints sit on cell centres, where the official query cell (the cell containing the point)
and semcorr's bilinear sample are the same descriptor.
"""

from __future__ import annotations

import json
import sys
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from semcorr import Matcher, load_image
from semcorr.data.spair import SPair71k
from semcorr.eval.benchmark import PREDICTIONS, evaluate, read_predictions
from semcorr.features.base import Backbone, BackboneInfo
from shared_data import SHARED

REFERENCE = SHARED / "reference" / "Junyi42+GeoAware-SC"
SIDE, STRIDE, CELLS = 960, 16, 60
SCALE = 840 / SIDE
CATEGORY = "cat"  # GeoAware-SC's flip list: [0,1] [2,3] [4,5] [6,7] 8 [9,10] [11,12] 13 14
PARTNERS = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4, 6: 7, 7: 6, 9: 10, 10: 9, 11: 12, 12: 11}
USED = 15
ALPHAS = (0.1, 0.05, 0.01)  # the official order


class _Parts(Backbone):
    """SD-like parts s3 (60²), s4 (30²), s5 (15²) and a DINO-like part (60²) from
    non-overlapping patch convolutions, concatenated as GeoAware-SC does."""

    def __init__(self) -> None:
        super().__init__()
        self.info = BackboneInfo(name="parts-test", stride=STRIDE, image_size=SIDE)
        g = torch.Generator().manual_seed(0)
        self.convs = nn.ModuleDict({
            name: nn.Conv2d(3, width, size, stride=size, bias=False)
            for name, width, size in (("s3", 6, 16), ("s4", 4, 32), ("s5", 4, 64), ("dino", 6, 16))
        })
        with torch.no_grad():
            for conv in self.convs.values():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))

    def feature_parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: conv(images - 0.5) for name, conv in self.convs.items()}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        parts = self.feature_parts(images)
        return torch.cat([F.interpolate(parts[n], size=(CELLS, CELLS), mode="bilinear",
                                        align_corners=False) for n in ("s3", "s4", "s5", "dino")],
                         dim=1)


def _centre(cell: np.ndarray) -> np.ndarray:
    return cell * STRIDE + (STRIDE - 1) / 2


def _pairs(rng: np.random.Generator) -> list[dict]:
    """Two pairs: a shifted copy, and a mirrored shifted copy in which keypoint 0's partner is
    not visible in the target."""
    def source_points() -> np.ndarray:
        cells = np.stack([rng.choice(np.arange(12, 48), USED, replace=False),
                          rng.integers(12, 48, USED)], 1)
        return _centre(cells)

    shift = np.array([128.0, 64.0])
    pairs = []
    for index, mirrored in enumerate((False, True)):
        src = source_points()
        if mirrored:
            partner = np.array([PARTNERS.get(i, i) for i in range(USED)])
            trg = (SIDE - 1 - src[partner]) + shift
        else:
            trg = src + shift
        trg = trg + rng.normal(0, 14, trg.shape)  # a spread of errors across the thresholds
        src_vis = np.ones(USED, bool)
        trg_vis = np.ones(USED, bool)
        src_vis[14 - index] = False
        if mirrored:
            trg_vis[1] = False  # keypoint 0's partner is unseen: its identity prediction stays
            trg_vis[13] = False
        pairs.append({"src": src, "trg": trg, "src_vis": src_vis, "trg_vis": trg_vis,
                      "mirrored": mirrored, "shift": shift})
    return pairs


def _write_image(path: Path, image: torch.Tensor) -> None:
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path, quality=95)


def _write_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _kps(points: np.ndarray, visible: np.ndarray) -> dict[str, list[float] | None]:
    kps: dict[str, list[float] | None] = {str(i): None for i in range(30)}
    for i in range(USED):
        if visible[i]:
            kps[str(i)] = [float(points[i, 0]), float(points[i, 1])]
    return kps


def _build(root: Path, backbone: _Parts) -> None:
    """The SPair-71k layout, its Segmentation masks and the official pre-extracted features."""
    for sub in ("JPEGImages", "ImageAnnotation", "Segmentation", "features"):
        (root / sub / CATEGORY).mkdir(parents=True)
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    (root / "Layout" / "large").mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(3)
    names = []
    box = np.zeros((SIDE, SIDE), bool)
    box[352:560, 368:576] = True  # small: the official distance loops over its cells
    for k, pair in enumerate(_pairs(rng)):
        source = F.interpolate(torch.rand(1, 3, SIDE // 4, SIDE // 4, generator=g), size=SIDE,
                               mode="bilinear", align_corners=False)[0]
        dx, dy = (int(v) for v in pair["shift"])
        target = source.flip(-1) if pair["mirrored"] else source
        target = torch.roll(target, (dy, dx), dims=(-2, -1))
        tmask = np.roll(box[:, ::-1] if pair["mirrored"] else box, (dy, dx), axis=(0, 1))
        src, trg = f"s{k}", f"t{k}"
        for name, image, mask, points, vis in ((src, source, box, pair["src"], pair["src_vis"]),
                                               (trg, target, tmask, pair["trg"], pair["trg_vis"])):
            _write_image(root / "JPEGImages" / CATEGORY / f"{name}.jpg", image)
            _write_mask(root / "Segmentation" / CATEGORY / f"{name}.png", mask)
            (root / "ImageAnnotation" / CATEGORY / f"{name}.json").write_text(json.dumps(
                {"kps": _kps(points, vis)}))
            loaded = load_image(root / "JPEGImages" / CATEGORY / f"{name}.jpg")
            for suffix, view, view_mask in (("", loaded, mask), ("_flip", loaded.flip(-1),
                                                                  mask[:, ::-1])):
                batch, _ = backbone.prepare([view])
                with torch.no_grad():
                    parts = backbone.feature_parts(backbone.normalize(batch))
                base = root / "features" / CATEGORY / name
                torch.save({n: parts[n] for n in ("s3", "s4", "s5")}, f"{base}_sd{suffix}.pt")
                torch.save(parts["dino"], f"{base}_dino{suffix}.pt")
                _write_mask(Path(f"{base}_mask{suffix}.png"), view_mask)
        name = f"{k:06d}-{src}-{trg}:{CATEGORY}"
        names.append(name)
        (root / "PairAnnotation" / "test" / f"{name}.json").write_text(json.dumps({
            "category": CATEGORY, "src_imname": f"{src}.jpg", "trg_imname": f"{trg}.jpg",
            "src_imsize": [SIDE, SIDE, 3], "trg_imsize": [SIDE, SIDE, 3],
            "src_bndbox": [176, 160, 783, 799], "trg_bndbox": [200, 180, 700, 640],
        }))
    (root / "Layout" / "large" / "test.txt").write_text("\n".join(names) + "\n")


@pytest.fixture
def official(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """``pck_train`` of the reference, importable here."""
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is absent (../shared is not beside the repository)")

    def stub(name: str, **attributes: object) -> None:
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)

    log = types.SimpleNamespace(info=lambda *a, **k: None, configure=lambda *a, **k: None,
                                add=lambda *a, **k: None)
    stub("wandb")
    stub("loguru", logger=log)
    stub("pandas")
    stub("fvcore")
    stub("fvcore.nn")
    stub("fvcore.nn.weight_init")
    stub("model_utils.extractor_dino", ViTExtractor=None)
    stub("model_utils.extractor_sd", load_model=None, process_features_and_mask=None)
    for name in [m for m in sys.modules if m.split(".")[0] in ("utils", "model_utils")]:
        if name not in ("model_utils.extractor_dino", "model_utils.extractor_sd"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(REFERENCE))
    threads = torch.get_num_threads()
    import pck_train  # sets 16 threads at import

    torch.set_num_threads(threads)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    defaults = pck_train.get_patch_descriptors.__defaults__  # its device defaults to "cuda"
    monkeypatch.setattr(pck_train.get_patch_descriptors, "__defaults__",
                        (*defaults[:-1], "cpu"))
    yield pck_train
    for name in [m for m in sys.modules
                 if m.split(".")[0] in ("utils", "model_utils", "pck_train", "preprocess_map")]:
        sys.modules.pop(name, None)


def _run_official(pck_train: types.ModuleType, root: Path, mutual: bool) -> tuple:
    from utils.utils_dataset import load_spair_data

    args = Namespace(NUM_PATCHES=CELLS, ANNO_SIZE=840, SOFT_EVAL=True, SOFT_EVAL_WINDOW=5,
                     ADAPT_FLIP=True, MUTUAL_NN=mutual, DUMMY_NET=False, ENSEMBLE=1,
                     COMPUTE_GEOAWARE_METRICS=True, EVAL_DATASET="spair", KPT_RESULT=False,
                     TOTAL_SAVE_RESULT=0)
    files, kps, thresholds, used = load_spair_data(str(root), size=840, category=CATEGORY,
                                                   split="test", subsample=0)
    assert used.tolist() == list(range(USED))
    net = pck_train.DummyAggregationNetwork()
    with torch.no_grad():
        return pck_train.compute_pck(args, str(root), net, files, kps, CATEGORY, used,
                                     thresholds=thresholds), kps, thresholds


@pytest.mark.parametrize("distance", ["mask", pytest.param("mutual-nn", marks=pytest.mark.slow)])
def test_pose_aligned_predictions_and_pck_equal_the_official_evaluation(
        official, tmp_path: Path, distance: str) -> None:
    torch.set_num_threads(1)
    root = tmp_path / "SPair-71k"
    backbone = _Parts().eval()
    _build(root, backbone)
    (correct, geo, out_results, per_image), kps, thresholds = _run_official(
        official, root, mutual=distance == "mutual-nn")

    matcher = Matcher(backbone, refine="window", window=5, temperature=0.02, pose_align=True,
                      pose_distance=distance)
    results = evaluate(matcher, SPair71k(root), tmp_path / "out", thresholds=(0.01, 0.05, 0.1),
                       progress=False, plot=False)
    records = list(read_predictions(tmp_path / "out" / PREDICTIONS))
    assert results["pose_alignment"]["distance_used"] == {distance: 2}
    assert [r["pose"] for r in records] == ["identity", "hflip"]

    errors, gts, refs = [], [], []
    for k, record in enumerate(records):
        ids = torch.tensor(record["keypoint_ids"])
        ours = torch.tensor(record["pred"], dtype=torch.float64)
        theirs = torch.as_tensor(out_results[k]["src_kpts_pred"], dtype=torch.float64)[ids]
        torch.testing.assert_close(SCALE * (ours + 0.5), theirs, atol=1e-5, rtol=1e-6)
        gt = torch.tensor(record["gt"], dtype=torch.float64)
        errors.append(((ours - gt).norm(dim=-1), (ours + 0.5 - gt).norm(dim=-1)))
        refs.append(record["reference"])
        gts.append(kps[2 * k + 1][ids, :2].double())
        torch.testing.assert_close(gts[-1], SCALE * gt, atol=1e-4, rtol=0)  # same annotations
        assert record["reference"] * SCALE == pytest.approx(float(thresholds[k]))
    # the mirrored pair with an unseen partner keeps keypoint 0's identity prediction: the
    # official merge replaced only keypoints whose partner is visible in both images
    assert 0 in records[1]["keypoint_ids"] and 1 not in records[1]["keypoint_ids"]

    # the half-pixel convention moves no error across a threshold (else PCK could differ)
    for (plain, shifted), ref in zip(errors, refs, strict=True):
        for alpha in ALPHAS:
            assert torch.equal(plain < alpha * ref, shifted < alpha * ref)
    pck = results["pck"]
    for i, alpha in enumerate(ALPHAS):
        key = f"{alpha:.2f}"
        assert pck[key]["per_image"] == pytest.approx(per_image[i], abs=1e-6)
        assert pck[key]["per_keypoint"] == pytest.approx(correct[i], abs=1e-6)
        assert results["geo_aware"]["pck"][key]["per_keypoint"] == pytest.approx(geo[2 + i],
                                                                                abs=1e-6)
    assert results["geo_aware"]["keypoints"] == geo[5]
    assert 0 < pck["0.10"]["per_keypoint"] < 1 and 0 < pck["0.05"]["per_keypoint"] < 1

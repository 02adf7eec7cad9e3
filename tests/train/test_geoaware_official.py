"""GeoAware-SC training = the released code, on one SPair-71k-layout pair.

The official code runs from ``../shared/reference/Junyi42+GeoAware-SC``: ``pck_train.py``'s
data loading (``load_and_prepare_data``, the released keypoint frame and thresholds) and its
feature path (``get_patch_descriptors``: the ``.pt`` files, the concatenation, the head, the
normalisation), ``utils/utils_losses.calculate_loss`` with ``Correlation2Displacement`` and the
head of ``model_utils/projection_network.py``. Stubbed, because they are not installed here and
none of them is on the path measured: ``wandb`` and ``loguru`` (logging), ``pandas`` (PF-Pascal
CSV reading), ``fvcore.nn.weight_init`` (initialisation, overwritten by the shared random
weights) and ``preprocess_map`` (the SD/DINO extractor, replaced by feature files).

semcorr reads the same folder through its SPair-71k loader and a feature cache holding the same
tensors, and runs :func:`semcorr.train.geoaware.batch_loss` with the same weights (the head
loads the official state strictly, the soft-argmax grid loads ``Correlation2Displacement``'s).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from semcorr.data import create_dataset
from semcorr.data.ap10k import AP10K_FLIP_PAIRS
from semcorr.data.spair import SPAIR_FLIP_PAIRS
from semcorr.features.cache import FeatureCache
from semcorr.geometry import ResizePad
from semcorr.postprocess import AggregationNetwork
from semcorr.postprocess.base import load_head_state
from semcorr.train.geoaware import (
    GeoAwareTrainConfig,
    HeadWithScale,
    batch_loss,
    config_for_preset,
    load_pair,
)
from semcorr.train.losses import SoftArgmaxGrid
from shared_data import SHARED

REFERENCE = SHARED / "reference" / "Junyi42+GeoAware-SC"
DIMS = (16, 24, 24, 16)  # s3, s4, s5, DINO: small widths, the official layout
GRIDS = (60, 30, 15, 60)  # the released grids (Correlation2Displacement is fixed to 60)
PARTS = ("s3", "s4", "s5", "dino")
SIZES = {"src": (500, 375), "trg": (375, 500)}  # (width, height): both pads are exercised
NUM_KPS = 15  # SPair-71k cat
SEED = 1234


def _stub(name: str, **attrs: object) -> None:
    """Register an empty module ``name`` unless its package is installed."""
    top = name.split(".")[0]
    stubbed = top in sys.modules and getattr(sys.modules[top], "__spec__", None) is None
    if name in sys.modules or (not stubbed and importlib.util.find_spec(top) is not None):
        return
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


@pytest.fixture(scope="module")
def official() -> types.SimpleNamespace:
    """The released modules, imported from ../shared/reference (then unregistered, so that
    other references' ``utils`` packages can be imported later)."""
    if not (REFERENCE / "pck_train.py").is_file():
        pytest.skip(f"{REFERENCE} is absent (../shared is not beside the repository)")
    before, threads = set(sys.modules), torch.get_num_threads()
    _stub("wandb")
    logger = types.SimpleNamespace(info=lambda *a, **k: None)
    _stub("loguru", logger=logger)
    _stub("pandas")
    _stub("fvcore")
    _stub("fvcore.nn")
    _stub("fvcore.nn.weight_init", c2_msra_fill=lambda module: None)
    _stub("preprocess_map", set_seed=lambda seed: None)
    sys.path.insert(0, str(REFERENCE))
    try:
        import model_utils.corr_map_model as corr_map_model
        import model_utils.projection_network as projection_network
        import pck_train
        import utils.utils_dataset as utils_dataset
        import utils.utils_geoware as utils_geoware
        import utils.utils_losses as utils_losses
    finally:
        sys.path.remove(str(REFERENCE))
        torch.set_num_threads(threads)  # pck_train sets 16 threads at import
        for name in set(sys.modules) - before:
            del sys.modules[name]
    return types.SimpleNamespace(train=pck_train, losses=utils_losses, geo=utils_geoware,
                                 dataset=utils_dataset, corr=corr_map_model,
                                 net=projection_network)


def _keypoints(generator: torch.Generator, width: int, height: int, hidden: list[int]) -> dict:
    xy = torch.rand(NUM_KPS, 2, generator=generator) * torch.tensor([width - 1, height - 1])
    xy = xy.round()
    kps = {str(i): None if i in hidden else xy[i].tolist() for i in range(NUM_KPS)}
    return {**kps, **{str(i): None for i in range(NUM_KPS, 30)}}  # SPair: 30 ids per file


def _write_spair(root: Path, generator: torch.Generator) -> None:
    """A one-pair SPair-71k folder (category cat, split trn) with JPEGs of the right sizes."""
    from PIL import Image

    hidden = {"src": [3, 9, 12], "trg": [0, 5, 9]}  # 9 in neither, partners of some hidden
    hidden["src"].remove(9)  # every keypoint id is used somewhere (no renumbering)
    boxes = {"src": [100, 80, 250, 200], "trg": [20, 60, 300, 420]}  # self-flip noise: src
    for name, (w, h) in SIZES.items():
        (root / "JPEGImages" / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h)).save(root / "JPEGImages" / "cat" / f"{name}.jpg")
        (root / "ImageAnnotation" / "cat").mkdir(parents=True, exist_ok=True)
        annotation = {"filename": f"{name}.jpg", "image_width": w, "image_height": h,
                      "category": "cat", "bndbox": boxes[name],
                      "kps": _keypoints(generator, w, h, hidden[name])}
        (root / "ImageAnnotation" / "cat" / f"{name}.json").write_text(json.dumps(annotation))
    pair = {"pair_id": 1, "filename": "000001-src-trg:cat", "src_imname": "src.jpg",
            "trg_imname": "trg.jpg", "src_imsize": [*SIZES["src"], 3],
            "trg_imsize": [*SIZES["trg"], 3], "src_bndbox": boxes["src"],
            "trg_bndbox": boxes["trg"], "category": "cat"}
    (root / "PairAnnotation" / "trn").mkdir(parents=True)
    (root / "PairAnnotation" / "trn" / "000001-src-trg:cat.json").write_text(json.dumps(pair))
    (root / "Layout" / "large").mkdir(parents=True)
    (root / "Layout" / "large" / "trn.txt").write_text("000001-src-trg:cat\n")


def _write_features(root: Path, generator: torch.Generator) -> FeatureCache:
    """The same random parts as the released ``features/<cat>/<name>_{sd,dino}[_flip].pt``
    files and as a semcorr feature cache."""
    cache = FeatureCache.create(root / "cache", {"backbone": "test", "storage": "float32",
                                                 "flip": True})
    for name, (w, h) in SIZES.items():
        entry = {}
        for orientation, suffix in (("original", ""), ("flipped", "_flip")):
            parts = {p: torch.randn(1, c, g, g, generator=generator)
                     for p, c, g in zip(PARTS, DIMS, GRIDS, strict=True)}
            folder = root / "data" / "SPair-71k" / "features" / "cat"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({p: parts[p] for p in PARTS[:3]}, folder / f"{name}_sd{suffix}.pt")
            torch.save(parts["dino"], folder / f"{name}_dino{suffix}.pt")
            entry[orientation] = {p: t[0] for p, t in parts.items()}
        image = root / "data" / "SPair-71k" / "JPEGImages" / "cat" / f"{name}.jpg"
        cache.put(str(image.resolve()), entry, ResizePad(w, h, 840, 14))
    return cache


def _random_official_head(official: types.SimpleNamespace, generator: torch.Generator):
    net = official.net.AggregationNetwork(device="cpu", feature_dims=list(DIMS),
                                          projection_dim=64, num_norm_groups=8)
    with torch.no_grad():
        for name, p in net.named_parameters():
            scale = 0.3 if p.dim() == 4 else 0.5
            base = 1.0 if name.endswith("norm.weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=generator))
    return net


def _official_args(**changes: object) -> argparse.Namespace:
    """pck_train.py's arguments under configs/train_spair.yaml, as ``main`` completes them."""
    args = argparse.Namespace(
        TRAIN_DATASET="spair", ANNO_SIZE=840, SAMPLE=None, BBOX_THRE=True, ENSEMBLE=1,
        DUMMY_NET=False, DENSE_OBJ=1, GAUSSIAN_AUGMENT=0.1, ADAPT_FLIP=False,
        AUGMENT_FLIP=1.0, AUGMENT_DOUBLE_FLIP=1.0, AUGMENT_SELF_FLIP=0.25,
        SELF_CONTRAST_WEIGHT=0, PROJ_DIM=64, SOFT_TRAIN_WINDOW=0,
    )
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def _official_loss(official, args, head, corr_net) -> torch.Tensor:
    """One pair of ``pck_train.train``'s loop (pck_train.py lines 290-311), without opening the
    images (``load_img_and_kps`` returns ``kps[idx]`` as the keypoints)."""
    files, kps, _, _, thresholds = official.train.load_and_prepare_data(args)
    desc1, desc2, mask1, mask2 = official.train.get_patch_descriptors(
        args, head, 60, files, 0, device="cpu")
    desc1_flip, desc2_flip, _, _ = official.train.get_patch_descriptors(
        args, head, 60, files, 0, flip=True, flip2=True, device="cpu")
    permute = official.geo.SPAIR_FLIP_TRN[files[0].split("/")[-2]]
    scale_factor = 60 / args.ANNO_SIZE
    if args.BBOX_THRE:
        threshold1, threshold2 = thresholds[0] * scale_factor, thresholds[1] * scale_factor
    else:
        threshold1 = threshold2 = args.ANNO_SIZE
    torch.manual_seed(SEED)  # the label noise: the global generator, drawn in view order
    return official.losses.calculate_loss(
        args, head, kps[0], kps[1], desc1, desc2, threshold1, threshold2, mask1, mask2, 60,
        "cpu", permute, desc1_flip, desc2_flip, corr_net)


@pytest.fixture(scope="module")
def setup(official, tmp_path_factory) -> types.SimpleNamespace:
    root = tmp_path_factory.mktemp("geoaware_official")
    generator = torch.Generator().manual_seed(0)
    _write_spair(root / "data" / "SPair-71k", generator)
    cache = _write_features(root, generator)
    head = _random_official_head(official, generator)
    corr = official.corr.Correlation2Displacement(setting=1, window_size=0)
    with torch.no_grad():  # a trained-looking grid: not the plain cell centres
        corr.x_normal.add_(0.01 * torch.randn(60, generator=generator))
        corr.y_normal.add_(0.01 * torch.randn(60, generator=generator))
    sample = create_dataset("spair", root / "data" / "SPair-71k", "trn")[0]
    pair = load_pair(cache, sample, PARTS)
    return types.SimpleNamespace(root=root, head=head, corr=corr, pair=pair)


def _ours(setup, config: GeoAwareTrainConfig, learn_grid: bool = True):
    head = AggregationNetwork(DIMS, 64, 8, feature_dropout=0.0)
    load_head_state(head, setup.head.state_dict(), "official head")  # strict: same layout
    grid = SoftArgmaxGrid(60, 60, learnable=learn_grid)
    if learn_grid:
        grid.load_state_dict(setup.corr.state_dict())  # strict: x_normal, y_normal
    model = HeadWithScale(head, grid if learn_grid else None)
    loss = batch_loss(model, [setup.pair], config, torch.Generator().manual_seed(SEED))
    return loss, head, grid


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad for k, p in module.named_parameters() if p.grad is not None}


def _config(**changes: object) -> GeoAwareTrainConfig:
    return GeoAwareTrainConfig(**{**config_for_preset("spair"), "feature_dropout": 0.0,
                                  **changes})


def test_training_loss_equals_the_released_code(official, setup, monkeypatch):
    """The SPair-71k configuration: the pair, double-flip and self-flip views, label noise,
    the trained grid (measured: equal to the last bit, 23.5939)."""
    monkeypatch.chdir(setup.root)  # the released code reads data/SPair-71k
    with torch.no_grad():
        reference = _official_loss(official, _official_args(), setup.head, setup.corr)
        loss, _, _ = _ours(setup, _config())
    assert abs(loss.item() - reference.item()) <= 1e-5, (loss.item(), reference.item())
    assert reference.item() > 0.5  # a real loss, not a degenerate zero


@pytest.mark.slow
@pytest.mark.parametrize("case", ["spair", "no_noise", "sparse_only"])
def test_training_gradients_equal_the_released_code(official, setup, monkeypatch, case):
    """Loss and gradients (head and grid) under the released configuration and two variants:
    no label noise, and the sparse objective alone (DENSE_OBJ 0: InfoNCE on every view)."""
    monkeypatch.chdir(setup.root)
    official_changes = {"no_noise": {"GAUSSIAN_AUGMENT": 0.0},
                        "sparse_only": {"DENSE_OBJ": 0}}.get(case, {})
    ours_changes = {"no_noise": {"label_noise": 0.0},
                    "sparse_only": {"dense_weight": 0.0}}.get(case, {})
    setup.head.zero_grad()
    setup.corr.zero_grad()
    reference = _official_loss(official, _official_args(**official_changes), setup.head,
                               setup.corr)
    reference.backward()
    loss, head, grid = _ours(setup, _config(**ours_changes))
    loss.backward()
    assert abs(loss.item() - reference.item()) <= 1e-5, (loss.item(), reference.item())
    ours, theirs = _grads(head), _grads(setup.head)
    assert set(theirs) <= set(ours) | {"self_logit_scale"}
    for name, grad in theirs.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-3, atol=1e-6, msg=name)
    if case != "sparse_only":
        for name in ("x_normal", "y_normal"):
            grad = getattr(setup.corr, name).grad
            assert grad.abs().sum() > 0
            torch.testing.assert_close(getattr(grid, name).grad, grad, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_the_fixed_grid_is_the_untrained_released_grid(official, setup, monkeypatch):
    """``learn_grid=False`` = the released loss with Correlation2Displacement at its start."""
    monkeypatch.chdir(setup.root)
    fresh = official.corr.Correlation2Displacement(setting=1, window_size=0)
    with torch.no_grad():
        reference = _official_loss(official, _official_args(), setup.head, fresh)
    with torch.no_grad():
        loss, _, _ = _ours(setup, _config(learn_grid=False), learn_grid=False)
    assert abs(loss.item() - reference.item()) <= 1e-5, (loss.item(), reference.item())


def test_flip_lists_are_the_released_training_lists(official):
    """The SPair-71k partners semcorr uses equal SPAIR_FLIP_TRN (same raw keypoint ids) for
    the categories whose training list has no dummy offset; the AP-10k ones AP10K_FLIP."""
    for category, flip_list in official.geo.SPAIR_FLIP_TRN.items():
        if category in ("bicycle", "bus"):  # "+2" dummy ids: see docs/reproduce-geoaware.md
            continue
        pairs = {tuple(sorted(item)) for item in flip_list if isinstance(item, list)}
        assert pairs == {tuple(sorted(p)) for p in SPAIR_FLIP_PAIRS[category]}, category
    released = {tuple(sorted(i)) for i in official.geo.AP10K_FLIP if isinstance(i, list)}
    assert released == {tuple(sorted(p)) for p in AP10K_FLIP_PAIRS}


def test_annotation_frame_is_the_released_keypoint_frame(official):
    """annotation_frame = utils_dataset.preprocess_kps_pad, bit for bit."""
    from semcorr.train.geoaware_views import annotation_frame

    generator = torch.Generator().manual_seed(3)
    for width, height in ((500, 375), (375, 500), (333, 333), (641, 427)):
        points = torch.rand(20, 2, generator=generator) * torch.tensor([width, height])
        kps = torch.cat([points, torch.ones(20, 1)], dim=1)
        theirs, *_ = official.dataset.preprocess_kps_pad(kps, width, height, 840)
        ours = annotation_frame(points, (width, height), 840)
        assert torch.equal(ours, theirs[:, :2]), (width, height)

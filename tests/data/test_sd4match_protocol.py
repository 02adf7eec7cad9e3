"""``semcorr eval --protocol sd4match`` against SD4Match's own evaluation code.

On the SPair-format fixture, the official ``SPairDataset`` (dataset/spair.py) gives the stretched
ground truth and PCK thresholds and the official ``PCKEvaluator`` (utils/evaluator.py) scores
semcorr's predictions; both must equal what semcorr recorded and reported. The official code is
imported from ``../shared/reference`` at run time; ``torchvision`` and ``pandas`` (not installed
here) are stubbed: the stub's ``Resize`` only has to give a 768 × 768 image, whose size is all
the PCK depends on.
"""

from __future__ import annotations

import copy
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semcorr.cli.main import main
from semcorr.eval.benchmark import compute_metrics
from semcorr.eval.protocols import get_protocol

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / \
    "ActiveVisionLab+SD4Match"
ALPHAS = [0.05, 0.1, 0.15]


def _torchvision_stub() -> types.ModuleType:
    """``torchvision.transforms`` with the four transforms SD4Match's datasets use."""
    transforms = types.ModuleType("torchvision.transforms")

    class Compose:
        def __init__(self, steps: list) -> None:
            self.steps = steps

        def __call__(self, image: object) -> object:
            for step in self.steps:
                image = step(image)
            return image

    class Resize:
        def __init__(self, size: tuple[int, int]) -> None:
            self.size = size

        def __call__(self, image: Image.Image) -> Image.Image:
            return image.resize((self.size[1], self.size[0]), Image.BILINEAR)

    class ToTensor:
        def __call__(self, image: Image.Image) -> torch.Tensor:
            return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)

    class Normalize:
        def __init__(self, mean: list[float], std: list[float]) -> None:
            self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None,
                                                                                     None]

        def __call__(self, image: torch.Tensor) -> torch.Tensor:
            return (image - self.mean) / self.std

    transforms.Compose, transforms.Resize = Compose, Resize
    transforms.ToTensor, transforms.Normalize = ToTensor, Normalize
    package = types.ModuleType("torchvision")
    package.transforms = transforms
    return package


@pytest.fixture
def official(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """The official SPairDataset and PCKEvaluator classes."""
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is absent (the official SD4Match code)")
    stub = _torchvision_stub()
    monkeypatch.setitem(sys.modules, "torchvision", stub)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", stub.transforms)
    monkeypatch.setitem(sys.modules, "pandas", types.ModuleType("pandas"))
    monkeypatch.syspath_prepend(str(REFERENCE))
    names = ("dataset", "utils")
    try:
        from dataset.spair import SPairDataset
        from utils.evaluator import PCKEvaluator

        yield types.SimpleNamespace(SPairDataset=SPairDataset, PCKEvaluator=PCKEvaluator)
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] in names]:
            del sys.modules[name]


def _config(root: Path) -> types.SimpleNamespace:
    dataset = types.SimpleNamespace(NAME="spair", ROOT=str(root), IMG_SIZE=768,
                                    MEAN=[0.5] * 3, STD=[0.5] * 3)
    return types.SimpleNamespace(DATASET=dataset,
                                 EVALUATOR=types.SimpleNamespace(ALPHA=ALPHAS, BY="image"))


def _write_masks(root: Path) -> None:
    """The official loader reads a segmentation per image (empty ones do here)."""
    for image in (root / "JPEGImages" / "cat").glob("*.jpg"):
        width, height = Image.open(image).size
        Image.fromarray(np.zeros((height, width), np.uint8)).save(
            root / "Segmentation" / "cat" / f"{image.stem}.png")


def _official_batches(official: types.SimpleNamespace, root: Path) -> dict[str, dict]:
    dataset = official.SPairDataset(_config(root.parent), "test")
    return {name: dataset[i] for i, name in enumerate(dataset.train_data)}


def _official_pck(official: types.SimpleNamespace, root: Path, batches: dict[str, dict],
                  records: dict[str, dict], by: str) -> dict[float, float]:
    config = _config(root.parent)
    config.EVALUATOR.BY = by
    evaluator = official.PCKEvaluator(config)
    for name, batch in batches.items():
        n = int(batch["n_pts"])
        matches = torch.zeros_like(batch["trg_kps"])
        matches[:n] = torch.tensor(records[name]["pred"], dtype=torch.float32)
        evaluator.calculate_pck(batch["trg_kps"][None], matches[None], batch["n_pts"][None],
                                [batch["category"]], batch["pckthres"][None], "kernelsoftmax")
    summary = evaluator.summerize_result()
    return {a: float(summary[f"kernelsoftmax_pck{a}"]["all"]) for a in ALPHAS}


def _records(path: Path) -> dict[str, dict]:
    return {r["pair_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_sd4match_protocol_equals_the_official_evaluator(
        spair_root: Path, tmp_path: Path, official: types.SimpleNamespace) -> None:
    out = tmp_path / "eval"
    assert main(["eval", "--dataset", "spair", "--root", str(spair_root), "--protocol",
                 "sd4match", "--backbone", "dense-sift", "--backbone-option", "image_size=64",
                 "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["name"] == "sd4match"
    assert results["thresholds"] == ["0.05", "0.10", "0.15"]  # the protocol's (official ALPHA)
    _write_masks(spair_root)
    batches = _official_batches(official, spair_root)
    records = _records(out / "predictions.jsonl")
    assert sorted(batches) == sorted(records)
    for name, batch in batches.items():  # the same stretched, clamped ground truth and threshold
        n = int(batch["n_pts"])
        assert torch.equal(torch.tensor(records[name]["gt"], dtype=torch.float32),
                           batch["trg_kps"][:n])
        assert records[name]["reference"] == float(batch["pckthres"])
    official_image = _official_pck(official, spair_root, batches, records, "image")
    official_point = _official_pck(official, spair_root, batches, records, "point")
    for alpha in ALPHAS:
        key = f"{alpha:.2f}"
        assert results["pck"][key]["per_image"] == pytest.approx(official_image[alpha], abs=1e-6)
        assert results["pck"][key]["per_keypoint"] == pytest.approx(official_point[alpha],
                                                                    abs=1e-6)


def test_at_the_threshold_semcorr_and_the_official_evaluator_agree(
        spair_root: Path, tmp_path: Path, official: types.SimpleNamespace) -> None:
    """Predictions put exactly α · threshold (float32) from the ground truth, where ``<`` and
    ``<=`` differ: the sd4match protocol counts what the official evaluator counts."""
    _write_masks(spair_root)
    batches = _official_batches(official, spair_root)
    records, at_edge = {}, 0
    for name, batch in batches.items():
        n = int(batch["n_pts"])
        gt, threshold = batch["trg_kps"][:n], batch["pckthres"]
        step = ALPHAS[1] * threshold  # float32, as the official computes it
        pred = gt.clone()
        pred[:, 0] = torch.where(gt[:, 0] + step < 767, gt[:, 0] + step, gt[:, 0] - step)
        at_edge += int((torch.norm(gt - pred, dim=-1) == step).sum())
        records[name] = {"pair_id": name, "category": batch["category"],
                         "reference": float(threshold), "gt": gt.tolist(), "pred": pred.tolist(),
                         "geo_aware": [False] * n, "keypoint_ids": list(range(n))}
    assert at_edge >= 3  # most points land exactly on the threshold
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records.values()))
    ours = compute_metrics(path, None, ALPHAS, protocol=get_protocol("sd4match"))
    strict = compute_metrics(path, None, ALPHAS, protocol=get_protocol("geoaware"))
    official_image = _official_pck(official, spair_root, batches, records, "image")
    assert ours["pck"]["0.10"]["per_image"] == pytest.approx(official_image[0.1], abs=1e-6)
    assert official_image[0.1] > 0.5
    assert strict["pck"]["0.10"]["per_image"] < official_image[0.1]  # `<` drops the edge


def test_a_pair_condition_sees_the_raw_images(spair_root: Path, tmp_path: Path) -> None:
    """Under the stretched protocol the backbone gets stretched squares, while a pair-conditioned
    backbone (SD4Match's CPM) is conditioned on the images as read, as the official CPM is."""
    from semcorr import create_backbone
    from semcorr.data import create_dataset
    from semcorr.eval.benchmark import evaluate
    from semcorr.features.base import Backbone
    from semcorr.pipeline import Matcher

    class PairConditioned(Backbone):
        def __init__(self) -> None:
            super().__init__()
            self.inner = create_backbone("dense-sift", image_size=64)
            self.info = self.inner.info
            self.pairs: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
            self.inputs: list[tuple[int, ...]] = []
            self.fixed = False

        @property
        def condition(self) -> str:
            return "image" if self.fixed else "pair"

        def conditioned(self, *, category: str | None = None,
                        pair: tuple[torch.Tensor, torch.Tensor] | None = None) -> Backbone:
            self.pairs.append((tuple(pair[0].shape), tuple(pair[1].shape)))
            view = copy.copy(self)  # shares the records
            view.fixed = True
            return view

        def extract(self, images: list[torch.Tensor]) -> tuple:
            self.inputs += [tuple(image.shape) for image in images]
            return self.inner.extract(images)

    backbone = PairConditioned()
    evaluate(Matcher(backbone), create_dataset("spair", spair_root), tmp_path / "o",
             protocol="sd4match", progress=False, plot=False)
    assert backbone.pairs == [((3, 30, 40), (3, 32, 36)), ((3, 32, 36), (3, 30, 30))]
    assert set(backbone.inputs) == {(3, 64, 64)}

"""``--protocol soco`` against SOCO's own evaluation (GenIntel/SOCO scripts/evaluate_dinov2.py:
``_eval_points``, ``_pck``, ``_aggregate``), imported at run time from the fetched mirror: the
same predictions, SOC and CC numbers equal at every α."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from semcorr.data import create_dataset
from semcorr.eval.benchmark import _predict
from semcorr.eval.metrics import compute_metrics
from semcorr.eval.protocols import SOCO_SIZE, get_protocol

ALPHAS = (0.01, 0.05, 0.10, 0.15)
NAMES = [f"k{i}" for i in range(6)]


def random_pair(rng: np.random.Generator, group: str, index: int) -> dict[str, Any]:
    """A pair file with random sizes, box (none for one pair), positions (two decimals) and
    overlapping concept groups (none for one pair)."""
    size = [int(rng.integers(120, 400)), int(rng.integers(120, 400))]

    def points() -> list[dict[str, Any]]:
        return [{"id": i, "name": n, "pos": [round(float(rng.uniform(0, size[0] - 1)), 2),
                                             round(float(rng.uniform(0, size[1] - 1)), 2)]}
                for i, n in enumerate(NAMES)]

    box = [round(float(rng.uniform(0, 40)), 3), round(float(rng.uniform(0, 40)), 3),
           round(float(rng.uniform(80, size[0])), 3), round(float(rng.uniform(80, size[1])), 3)]
    concepts = [] if index == 2 else [
        {"concept_name": "a", "src_keypoints": ["k4", "k5"], "trg_keypoints": ["k4", "k5"]},
        {"concept_name": "b", "src_keypoints": ["k5", "k0"], "trg_keypoints": ["k1", "k3"]}]
    return {"pair_id": index, "pair_group": group, "category": group,
            "src_image": "s.JPEG", "trg_image": "t.JPEG", "src_imsize": size, "trg_imsize": size,
            "src_bndbox": box, "trg_bndbox": None if index == 1 else box,
            "src_keypoints": points(), "trg_keypoints": points(),
            "semantic_overlap": NAMES[: 3 + index % 3], "concept_matches": concepts}


class _Fixed:
    """A stand-in Matcher: each source point's prediction is fixed in advance (target pixels)."""

    backbone = SimpleNamespace(condition=None)
    pose_align = False

    def __init__(self) -> None:
        self.table: dict[tuple[float, float], torch.Tensor] = {}

    def match(self, source, targets, points, **_: Any) -> list[SimpleNamespace]:
        pred = torch.stack([self.table[tuple(p)] for p in points.tolist()])
        return [SimpleNamespace(points=pred, scores=torch.ones(len(pred)), pose="identity",
                                pose_metric=None)]


def test_soco_protocol_equals_the_official_evaluation(tmp_path: Path, monkeypatch) -> None:
    from reference_code import official_module

    data_module = official_module("GenIntel/SOCO", "soco/data.py", tmp_path)
    monkeypatch.setitem(sys.modules, "soco", data_module)  # the script's `from soco import`
    official = official_module("GenIntel/SOCO", "scripts/evaluate_dinov2.py", tmp_path)

    rng = np.random.default_rng(0)
    root = tmp_path / "SOCOv1"
    (root / "Images").mkdir(parents=True)
    for group, count in (("car", 5), ("dog", 3)):  # unequal: the mean over groups matters
        for index in range(count):
            path = root / "PairAnnotations/intra" / group / f"{index:05d}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(random_pair(rng, group, index)))
    dataset = create_dataset("soco", root, pairs="intra")
    protocol = get_protocol("soco")
    matcher = _Fixed()
    official_rows: dict[float, list[dict[str, Any]]] = {a: [] for a in ALPHAS}
    records = []
    for sample in dataset:
        data = json.loads((root / "PairAnnotations" / (sample.pair_id + ".json")).read_text())
        size = tuple(data["trg_imsize"])
        src = torch.tensor([k["pos"] for k in data["src_keypoints"]], dtype=torch.float32)
        trg = torch.tensor([k["pos"] for k in data["trg_keypoints"]], dtype=torch.float32)
        scale = 0.12 * max(size)  # near the targets: some in, some out of reach
        pixels = trg + torch.from_numpy(rng.normal(0, scale, trg.shape)).float()
        # two points a hair inside / outside 0.05 of the exact target along x: the script's
        # whole-pixel ground truth (moved left by the fraction) decides them
        box = data["trg_bndbox"]
        reach = 0.05 * (max(size) if box is None else max(box[2] - box[0], box[3] - box[1]))
        pixels[0] = trg[0] + torch.tensor([0.998 * reach, 0.0])
        pixels[2] = trg[2] - torch.tensor([1.002 * reach, 0.0])
        matcher.table = {tuple(p): q for p, q in zip(src.tolist(), pixels)}
        features = functools.partial(_image, SimpleNamespace(width=size[0], height=size[1]))
        records.append(_predict(matcher, features, features, sample, protocol))
        # the official side: its points, its radius, its per-pair PCK (in %)
        keypoints = [SimpleNamespace(position=tuple(map(float, k["pos"])))
                     for k in data["trg_keypoints"]]
        targets = official._eval_points(keypoints, size, SOCO_SIZE, "cpu")
        predictions = pixels / max(size)
        scale_box = 1.0 if box is None else max(box[2] - box[0], box[3] - box[1]) / max(size)
        semantic, concept = _official_matches(data_module, data)
        for alpha in ALPHAS:
            soc, soc_n = official._pck(predictions, targets, semantic, alpha * scale_box)
            cc, cc_n = official._pck(predictions, targets, concept, alpha * scale_box)
            official_rows[alpha].append({"category": data["pair_group"], "semantic_pck": soc,
                                         "concept_pck": cc, "semantic_keypoints": soc_n,
                                         "concept_keypoints": cc_n})
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    ours = compute_metrics(path, None, list(ALPHAS), "categories", protocol)
    types = ours["groups"]["correspondence_type"]
    # the script takes each pair's mean in float32 (``.float().mean()``): equal to 1e-6; one
    # decision of difference would move a figure by over 2 % (at most 6 points a pair, 4 pairs
    # a group, 2 groups)
    checked = []
    for alpha in ALPHAS:
        key = f"{alpha:.2f}"
        overall = official._aggregate(official_rows[alpha])["overall"]
        assert 100 * types["SOC"][key]["per_image"] == pytest.approx(overall["semantic_pck"],
                                                                    rel=1e-6)
        assert 100 * types["CC"][key]["per_image"] == pytest.approx(overall["concept_pck"],
                                                                   rel=1e-6)
        assert 100 * ours["pck"][key]["per_image"] == pytest.approx(overall["semantic_pck"],
                                                                   rel=1e-6)
        checked.append((overall["semantic_pck"], overall["concept_pck"]))
    # the case is not degenerate: neither all right nor all wrong at every α
    assert any(0 < soc < 100 for soc, _ in checked) and any(0 < cc < 100 for _, cc in checked)
    assert types["CC"]["pairs"] == 6 and types["SOC"]["pairs"] == 8


def _official_matches(data_module, data: dict[str, Any]) -> tuple[tuple, tuple]:
    """SOC and CC matches of a pair file, built by the official loader's own parser (images
    are not needed for the matches, so its view reader is bypassed)."""
    loader = data_module.SOCOPairs.__new__(data_module.SOCOPairs)
    loader.pair_type = "intra"
    loader._view = lambda *args: None
    pair = loader._parse_pair(data, Path("pair.json"))
    return pair.semantic_matches, pair.concept_matches


def _image(image: SimpleNamespace, path: Path) -> SimpleNamespace:
    """A stand-in feature cache: the image size the source clamp reads."""
    return image

"""Bad annotation files and degenerate ground truth (issue: nothing gets through): a bad pair is
skipped, counted and listed with its reason in results.json, and never scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import loadmat, savemat

from semcorr.cli.main import main
from semcorr.data.base import PairSample, sample_problem


def _sample(**change: object) -> PairSample:
    base = dict(source_path=Path("a.png"), target_path=Path("b.png"),
                source_points=torch.tensor([[10.0, 10.0], [20.0, 30.0]]),
                target_points=torch.tensor([[12.0, 11.0], [25.0, 31.0]]),
                visible=torch.tensor([True, True]), category="thing", source_bbox=None,
                target_bbox=None, source_size=(40, 40), target_size=(40, 40),
                pck_reference=20.0, keypoint_ids=torch.tensor([3, 7]),
                flip_permutation=torch.tensor([-1, -1]), pair_id="p")
    return PairSample(**{**base, **change})


@pytest.mark.parametrize(("change", "message"), [
    ({}, None),
    ({"target_points": torch.tensor([[12.0, 11.0], [float("nan"), 31.0]])},
     "target keypoint 7 is not a finite number"),
    ({"source_points": torch.tensor([[10.0, 10.0], [45.0, 30.0]])},
     "source keypoint 7 (45, 30) lies outside the 40x40 source image"),
    ({"source_points": torch.tensor([[-0.5, 10.0], [39.9, 30.0]])}, None),  # within a pixel
    ({"pck_reference": 0.0}, "PCK reference length is 0"),
    ({"pck_reference": float("nan")}, "PCK reference length is nan"),
    # an invisible keypoint may hold anything
    ({"source_points": torch.tensor([[10.0, 10.0], [float("nan"), -9.0]]),
      "visible": torch.tensor([True, False])}, None),
])
def test_sample_problem(change: dict, message: str | None) -> None:
    found = sample_problem(_sample(**change))
    assert found == message if message is None else message in found


def test_eval_skips_and_lists_bad_pairs(pf_willow_root: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "willow"
    shutil.copytree(pf_willow_root / "car(G)", root / "car(G)")
    mats = sorted((root / "car(G)").glob("*.mat"))
    mats[0].write_bytes(b"")  # zero-byte .mat
    coords = loadmat(str(mats[1]))["pts_coord"].astype(float)
    coords[0, 3] = np.nan  # a NaN keypoint
    savemat(str(mats[1]), {"pts_coord": coords})
    coords = loadmat(str(mats[2]))["pts_coord"].astype(float)
    coords[0, 2] = 5000.0  # a source keypoint far outside: refused
    savemat(str(mats[2]), {"pts_coord": coords})
    width = Image.open(mats[3].with_suffix(".png")).size[0]
    coords = loadmat(str(mats[3]))["pts_coord"].astype(float)
    coords[0, 4] = width + 0.5  # half a pixel outside (1-based): pulled in, and counted
    savemat(str(mats[3]), {"pts_coord": coords})
    out = tmp_path / "out"
    assert main(["eval", "--dataset", "pf-willow", "--root", str(root), "--out", str(out),
                 "--quiet", "--limit", "30", "--backbone-option", "image_size=64"]) == 0
    results = json.loads((out / "results.json").read_text())
    reasons = [item["reason"] for item in results["skipped_pairs"]]
    assert results["skipped"] == len(reasons) > 0
    assert any("not a readable .mat file" in r for r in reasons), reasons
    assert any("is not a finite number" in r for r in reasons), reasons
    assert any("source keypoint 2 (4999, " in r and "lies outside" in r for r in reasons)
    assert all(item["pair_id"].startswith("car(G)/") for item in results["skipped_pairs"])
    # pairs 27-29 have source 3; only (3, 2) is scored (targets 0 and 1 are bad)
    assert results["source_keypoints_clamped"] == 1
    assert results["pairs"] + results["skipped"] == 30
    for value in (results["pck"]["0.10"]["per_image"], results["pck"]["0.10"]["per_keypoint"]):
        assert 0.0 <= value <= 1.0  # the bad pairs are not scored as zeros or NaN

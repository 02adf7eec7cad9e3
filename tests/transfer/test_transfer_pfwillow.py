"""PF-WILLOW integration of the transfer stage: more sources help, the score ranks points, and
the README's table (benchmarks/bench_transfer.py) holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from semcorr.data.pfwillow import keypoint_extent, read_willow_points
from semcorr.features.dense_sift import DenseSIFT
from semcorr.transfer import TransferConfig, main

CLASSES = ("car(G)", "motorbike(S)", "winebottle(M)")

#: The README's "Keypoint transfer" table, PCK@0.1 in percent per k sources: "all points" and
#: "after dropping the lowest-scored 20%". Re-measure with
#: ``python benchmarks/bench_transfer.py --splits 3`` after a change of the dense-sift default
#: and update both this dict and the README.
TRANSFER_TABLE = {1: {"all": 42.7, "kept": 49.0},
                  3: {"all": 53.2, "kept": 60.3},
                  5: {"all": 59.5, "kept": 66.7}}
MARGIN = 1.0  # percentage points = 0.01 PCK


def _sources(path: Path, images: list[Path]) -> None:
    points = [read_willow_points(p.with_suffix(".mat")) for p in images]
    coco = {
        "images": [{"id": i, "file_name": str(p)} for i, p in enumerate(images)],
        "categories": [{"id": 1, "name": "obj", "keypoints": [str(j) for j in range(10)]}],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1,
             "keypoints": torch.cat([p, torch.full((10, 1), 2.0)], 1).flatten().tolist()}
            for i, p in enumerate(points)
        ],
    }
    path.write_text(json.dumps(coco))


@pytest.mark.slow
def test_pf_willow_more_sources_and_score_ranking(pf_willow_root: Path, tmp_path: Path) -> None:
    """Measured with 1 and with 2 torch threads, identical: PCK@0.1 0.547 from 1 source and
    0.713 from 5 (gain 0.167, bound 0.05); dropping the lowest-scored 20% raises PCK by 0.037
    (k = 1) and 0.087 (k = 5), bound > 0. With the images in another order (seed 1 permutation
    of each class): gain 0.307, rises 0.068 and 0.062. A third order was not measured.
    """
    backbone = DenseSIFT().eval()
    results: dict[int, list[torch.Tensor]] = {1: [], 5: []}
    for cls in CLASSES:
        images = sorted((pf_willow_root / cls).glob("*.png"))
        sources, targets = images[:5], images[5:]
        for k in results:
            ann = tmp_path / f"{cls}-{k}.json"
            _sources(ann, sources[:k])
            out = main(ann, targets, tmp_path / f"{cls}-{k}-out.json", backbone,
                       TransferConfig(batch_size=5))
            doc = json.loads(out.read_text())
            for image, annotation in zip(doc["images"], doc["annotations"], strict=True):
                truth = read_willow_points(Path(image["file_name"]).with_suffix(".mat"))
                pred = torch.tensor(annotation["keypoints"]).view(-1, 3)[:, :2]
                correct = (pred - truth).norm(dim=-1) < 0.1 * keypoint_extent(truth)
                scores = torch.tensor(annotation["keypoint_scores"])
                results[k].append(torch.stack([scores, correct.float()], 1))
    pck = {k: torch.cat(v)[:, 1].mean().item() for k, v in results.items()}
    assert pck[5] > pck[1] + 0.05, pck
    for k, rows in results.items():
        table = torch.cat(rows)
        kept = table[table[:, 0] > torch.quantile(table[:, 0], 0.2)]
        assert kept[:, 1].mean() > table[:, 1].mean(), (k, pck)


@pytest.mark.slow  # 1371-1732 s (6-7 CPU-minutes) at load 7-15 on the 2 shared cores
def test_pf_willow_transfer_table(pf_willow_root: Path) -> None:
    """The README's transfer table, by the benchmark's own code (default backbone, 3 splits of
    5 sources and 5 targets per class, k = 1, 3, 5), each figure >= claim - MARGIN.

    "all points" is the pooled PCK over the 1,500 points (equal to the per-image, per-class mean
    here: every class has 5 targets of 10 visible keypoints). Measured 2026-11-30 with 2 torch
    threads: 42.7 / 53.2 / 59.5 and 49.0 / 60.3 / 66.7, the README's figures to the digit;
    deterministic (fixed draws, no random weights). MARGIN is 15 of the 1,500 points.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_transfer

    table = bench_transfer.measure(splits=3, root=pf_willow_root)
    measured = {k: {"all": round(100 * row["pooled"], 2), "kept": round(100 * row["kept"], 2)}
                for k, row in table.items()}
    for k, claims in TRANSFER_TABLE.items():
        for name, claim in claims.items():
            assert measured[k][name] >= claim - MARGIN, measured

"""PF-WILLOW integration of the transfer stage: more sources help, the score ranks points.

Lower bounds measured with dense-sift (see benchmarks/bench_transfer.py for the full table).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semcorr.data.pfwillow import keypoint_extent, read_willow_points
from semcorr.features.dense_sift import DenseSIFT
from semcorr.transfer import TransferConfig, main

CLASSES = ("car(G)", "motorbike(S)", "winebottle(M)")


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

"""``benchmarks/analyse_pf_willow_gap.py``: why PF-Willow held-out stays below 0.50.

Fast tests check the oracle helpers on constructed inputs (an exact affine map, known peaks).
The slow test guards the README's oracle figures on the development class car(G) (90 pairs, a
few minutes): each within 0.01 of its claim, and the stage-by-stage rebuild of the shipped
``--prior affine-local`` pipeline equal to :class:`semcorr.Matcher`'s own result.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from analyse_pf_willow_gap import (  # noqa: E402
    analyse,
    gt_affine,
    gt_affine_loo,
    peak_cells,
)
from semcorr import Matcher, create_backbone  # noqa: E402
from semcorr.data import create_dataset  # noqa: E402
from sweep_dense_sift_dev import features_of  # noqa: E402

#: README claims on car(G) at PCK@0.10 (2026-11-30; docs/protocol.md "Why held-out stays below
#: 0.50"), from the development run of the script.
CAR_G_CLAIMS: dict[str, float] = {
    "default (no prior)": 0.384,
    "shipped: --prior affine-local": 0.451,
    "RANSAC affine alone": 0.347,
    "oracle affine alone": 0.900,
    "oracle affine alone, leave-one-out": 0.746,
    "oracle affine as prior centre": 0.754,
    "oracle affine + local as centre": 0.561,
    "recall top-1 (no prior)": 0.373,
    "recall top-3 (no prior)": 0.538,
    "recall top-5 (no prior)": 0.629,
    "mutual l0.5 + affine-local": 0.456,
}


def test_gt_affine_recovers_an_exact_map_and_leave_one_out_predicts_it() -> None:
    gen = torch.Generator().manual_seed(0)
    src = torch.rand(10, 2, generator=gen) * 60
    matrix = torch.tensor([[0.9, 0.2], [-0.3, 1.1], [5.0, -2.0]])
    trg = torch.cat([src, torch.ones(10, 1)], dim=1) @ matrix
    assert torch.allclose(gt_affine(src, trg), matrix, atol=1e-4)
    assert torch.allclose(gt_affine_loo(src, trg), trg, atol=1e-3)
    # one outlier: leave-one-out cannot fit it (it does not see it), the full fit is pulled
    moved = trg.clone()
    moved[3] += 20
    loo = gt_affine_loo(src, moved)
    assert (loo[3] - trg[3]).norm() < (loo[3] - moved[3]).norm()


def test_peak_cells_are_the_local_maxima_in_order_of_height() -> None:
    scores = torch.zeros(1, 8, 8)
    scores[0, 2, 5] = 0.9  # (x 5, y 2)
    scores[0, 2, 6] = 0.8  # beside the highest: not a local maximum
    scores[0, 6, 1] = 0.7
    scores[0, 7, 7] = 0.95  # on an invalid cell
    valid = torch.ones(8, 8, dtype=torch.bool)
    valid[7, 7] = False
    cells, exists = peak_cells(scores, valid, 3)
    assert cells[0, :2].tolist() == [[5.0, 2.0], [1.0, 6.0]]
    # the third is one of the flat zero cells (a plateau counts as a maximum)
    assert exists[0].tolist() == [True, True, True]
    assert (cells[0, 2] != torch.tensor([7.0, 7.0])).any()


@pytest.mark.slow
def test_pf_willow_gap_oracles_on_car_g(pf_willow_root: Path) -> None:
    """The README's oracle figures on car(G), each within 0.01 of its claim; no flip rows
    (they need the instance matching distance, minutes more). 198 s on the shared 2-core
    machine (load average 3-4), features computed afresh."""
    torch.set_num_threads(2)
    dataset = create_dataset("pf-willow", pf_willow_root, split="dev", category="car(G)")
    matcher = Matcher(create_backbone("dense-sift"), refine="window", prior="affine-local")
    table = analyse(dataset, features_of({}, (), matcher, None), matcher, flip=False)
    assert len(dataset) == 90
    assert table["affine-local (recomputed)"] == table["shipped: --prior affine-local"]
    measured = {name: table[name]["car(G)"][1] for name in CAR_G_CLAIMS}
    assert all(abs(measured[n] - c) <= 0.01 for n, c in CAR_G_CLAIMS.items()), measured

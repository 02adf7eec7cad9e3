"""Instance matching distances and the flip merge rule, by hand (the comparison with the
official code is tests/eval/test_geoaware_official_eval.py)."""

from __future__ import annotations

import math

import pytest
import torch

from semcorr.errors import InputError
from semcorr.features import create_backbone
from semcorr.match.pose import PARTNER_UNSEEN, mask_distance, mutual_nn_distance
from semcorr.pipeline import Matcher


def _one_hot_map(cells: list[int], channels: int = 4, side: int = 2) -> torch.Tensor:
    """``(1, channels, side, side)``: cell k (row-major) holds basis vector ``cells[k]``."""
    features = torch.zeros(1, channels, side * side)
    features[0, cells, torch.arange(side * side)] = 1.0
    return features.view(1, channels, side, side)


def test_mutual_nn_distance_by_hand():
    source = _one_hot_map([0, 1, 2, 3])
    target = _one_hot_map([0, 1, 2, 0])  # cell 3 repeats basis 0: only one of them is mutual
    # cells 0, 1, 2 match exactly (distance 0); source cell 3 (basis 3) is nobody's nearest
    assert mutual_nn_distance(source, target).item() == pytest.approx(0.0)
    far = _one_hot_map([1, 0, 3, 2])
    assert mutual_nn_distance(source, far).item() == pytest.approx(0.0)  # a permutation
    opposite = -source
    assert mutual_nn_distance(source, opposite).item() == pytest.approx(
        math.sqrt(2))  # each nearest is an orthogonal cell: sqrt(2)
    valid = torch.tensor([[[True, False], [False, False]]])
    assert mutual_nn_distance(source, target, valid, valid).item() == pytest.approx(0.0)


def test_mask_distance_by_hand():
    source = _one_hot_map([0, 1, 2, 3])
    target = _one_hot_map([1, 1, 2, 3])
    everywhere = torch.ones(1, 2, 2, dtype=torch.bool)
    # on a 2x2 grid (size=2 keeps the cells): source cell 0 (basis 0) is sqrt(2) from all
    assert mask_distance(source, target, everywhere, everywhere, size=2).item() == \
        pytest.approx(math.sqrt(2) / 4)
    only_first = torch.tensor([[[True, False], [False, False]]])
    assert mask_distance(source, target, only_first, everywhere, size=2).item() == \
        pytest.approx(math.sqrt(2))
    assert math.isinf(mask_distance(source, target, ~everywhere, everywhere, size=2).item())


def test_merge_keeps_identity_where_the_partner_is_unseen():
    descriptors = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)  # (K, N, C)
    keep = torch.tensor([True, False, True])
    chosen = torch.tensor([1, 0])  # target 0: hflip, target 1: identity
    merged = Matcher._merged_queries(("identity", "hflip"), descriptors, chosen, keep)
    assert merged[0, :, 0].tolist() == [3.0, 1.0, 5.0]  # point 1 keeps its identity query
    assert merged[1, :, 0].tolist() == [0.0, 1.0, 2.0]
    perm, flip_keep = Matcher.check_permutation([2, PARTNER_UNSEEN, 0], 3)
    assert perm.tolist() == [2, 1, 0] and flip_keep.tolist() == [True, False, True]
    with pytest.raises(InputError, match="flip_permutation"):
        Matcher.check_permutation([-3, 0, 0], 3)


def test_mask_distance_is_required_when_asked():
    matcher = Matcher(create_backbone("dense-sift", image_size=64, bin_sizes=(8,)),
                      pose_align=True, pose_distance="mask")
    image = torch.rand(3, 40, 48)
    with pytest.raises(InputError, match="needs an instance mask"):
        matcher.match(image, [image], [[10.0, 10.0]])
    mask = torch.zeros(40, 48, dtype=torch.bool)
    mask[5:30, 5:40] = True
    result = matcher.match(image, [image], [[10.0, 10.0]], source_mask=mask,
                           target_masks=[mask])[0]
    assert result.pose_metric == "mask" and result.pose == "identity"
    assert result.pose_distances["identity"] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(InputError, match="pose distance must be"):
        Matcher(matcher.backbone, pose_distance="nearest")

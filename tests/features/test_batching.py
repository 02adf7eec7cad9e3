"""Tests of the batch-size rule (:mod:`semcorr.features.batching`)."""

from __future__ import annotations

import pytest
import torch

from semcorr.features.batching import (
    MAX_BATCH,
    auto_batch_size,
    available_memory,
    per_target_bytes,
)
from semcorr.features.dense_sift import DenseSIFT
from semcorr.pipeline import Matcher


def test_per_target_bytes_by_hand() -> None:
    features = torch.zeros(2, 128, 24, 24)  # (K, C, h, w) float32
    # 4 * (image 2*3*96*96*4 + maps 2*128*24*24*4 + similarity 3*8*24*24*4)
    expected = 4 * (221_184 + 589_824 + 55_296)
    assert per_target_bytes(features, image_size=96, queries=8) == expected == 3_465_216
    half = per_target_bytes(features.to(torch.bfloat16), image_size=96, queries=8)
    assert expected - half == 4 * 589_824 // 2  # bf16 maps take half the bytes


@pytest.mark.parametrize("budget, expected", [
    (7 * 1000 + 999, 7),  # floor of the budget over one target
    (999, 1),  # never below one target
    (10**12, MAX_BATCH["cpu"]),  # never above the cap
])
def test_auto_batch_size_rule(budget: int, expected: int) -> None:
    assert auto_batch_size(1000, budget) == expected
    assert auto_batch_size(1000, 10**12, max_batch=5) == 5
    assert auto_batch_size(1000, 10**12, device="meta") == MAX_BATCH["other"] == 32


def test_auto_batch_size_defaults_to_half_the_free_memory(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import semcorr.features.batching as batching

    assert 0 < available_memory() < 2**50
    monkeypatch.setattr(batching, "available_memory", lambda device="cpu": 7_000)
    assert auto_batch_size(1000) == 3  # 7000 // 2 // 1000
    with pytest.raises(ValueError, match="per_target"):
        auto_batch_size(0)


def test_matcher_batch_size_for() -> None:
    backbone = DenseSIFT(image_size=96, stride=4, bin_sizes=(4, 8, 16)).eval()
    source = Matcher(backbone).source_features(torch.rand(3, 80, 96))
    need = per_target_bytes(source.features, 96, 5)
    assert Matcher(backbone, memory_budget=3 * need).batch_size_for(source, 5) == 3
    assert Matcher(backbone, batch_size=2, memory_budget=3 * need).batch_size_for(source, 5) == 2

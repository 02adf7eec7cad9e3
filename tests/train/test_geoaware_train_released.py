"""The released training rules at the trainer level: constant vs one-cycle rate, the trained
soft-argmax grid, best and last weights (synthetic pairs, dense-sift features, small head)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from semcorr import load_head
from semcorr.errors import InputError
from semcorr.train.geoaware import config_for_preset, config_from_sources, train_geoaware
from shared_data import shared_path

STEPS = 6


def _run(root: Path, name: str, **extra: object) -> tuple[Path, list[dict[str, float]]]:
    settings = {
        "dataset": "synthetic", "root": shared_path("r2d2"), "out": root / name,
        "synthetic_dir": root / "synthetic", "cache": root / "cache",
        "backbone": "dense-sift", "backbone_options": "{image_size: 64, stride: 4, bin_sizes: [4]}",
        "feature_parts": "null", "feature_dims": "[128]", "projection_dim": 64,
        "num_groups": 8, "synthetic_pairs": 4, "val_pairs": 2, "synthetic_size": 96,
        "steps": STEPS, "checkpoint_every": 2, "lr": 3e-3, "seed": 0,
    }
    settings.update(extra)
    numbers: list[dict[str, float]] = []
    config = config_from_sources(None, [f"{k}={v}" for k, v in settings.items()])
    train_geoaware(config, progress=lambda step, n: numbers.append(dict(n)))
    return root / name, numbers


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list]]:
    root = tmp_path_factory.mktemp("released")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: extra threads only spin
    try:
        return {
            "one_cycle": _run(root, "one_cycle"),
            "constant": _run(root, "constant", scheduler="none", learn_grid="false"),
        }
    finally:
        torch.set_num_threads(threads)


def test_constant_rate_without_scheduler_and_one_cycle_with_it(runs):
    constant = [n["lr"] for n in runs["constant"][1]]
    assert constant == [3e-3] * STEPS
    cycle = [n["lr"] for n in runs["one_cycle"][1]]
    assert cycle[0] == pytest.approx(3e-3 / 25) and cycle[-1] == pytest.approx(3e-3 / 25e4)
    assert 2.5e-3 < max(cycle) <= 3e-3
    assert config_for_preset("ap10k")["scheduler"] == "none"
    assert config_for_preset("pfpascal")["scheduler"] == "none"
    assert config_for_preset("spair")["scheduler"] == "one_cycle"


def test_the_grid_is_trained_and_kept_out_of_the_head_weights(runs):
    out = runs["one_cycle"][0]
    state = torch.load(out / "last.pt", weights_only=True)
    grid = state["extra"]["grid"]
    start = torch.linspace(-1, 1, 16, dtype=torch.float64).float()  # 64 px / stride 4
    assert set(grid) == {"x_normal", "y_normal"}
    assert (grid["x_normal"] - start).abs().max() > 1e-4  # the optimizer moved it
    assert not any("normal" in k for k in state["model"])
    fixed = torch.load(runs["constant"][0] / "last.pt", weights_only=True)
    assert fixed["extra"]["grid"] == {}
    for name in ("head.safetensors", "best.safetensors", "last.pt"):  # official layout
        head = load_head("geoaware", out / name, num_groups=8)
        assert head.feature_dims == (128,)


def test_best_is_the_best_validation_step_and_last_is_the_end(runs):
    out, numbers = runs["one_cycle"]
    import json

    history = json.loads((out / "history.json").read_text())
    trained = history["val_pck"][1:]  # step 0 is before training: never "best"
    best_step, best_pck = max(trained, key=lambda r: (r[1], -r[0]))
    assert history["best"] == [best_step, best_pck]
    last = load_file(str(out / "head.safetensors"))
    best = load_file(str(out / "best.safetensors"))
    final = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(last[k], final[k]) for k in last)
    if best_step != STEPS:
        assert any(not torch.equal(best[k], last[k]) for k in best)
    else:
        assert all(torch.equal(best[k], last[k]) for k in best)


def test_presets_refuse_unknown_settings():
    with pytest.raises(InputError, match="scheduler must be one of"):
        config_from_sources(None, ["scheduler=cosine"])
    with pytest.raises(InputError, match="noise_reference must be one of"):
        config_from_sources(None, ["noise_reference=bbox"])

"""``semcorr eval --preset sd4match-*``: SD4Match's test.py settings, and a run under them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

from semcorr.cli.main import main

SETTINGS = {"head": "sd4match", "refine": "kernel", "sigma": 7.0, "temperature": 0.04,
            "kernel_weighting": "score", "protocol": "sd4match", "thresholds": "0.05,0.10,0.15",
            "pose_align": False}
DRAWS = ["feature_timestep=50", "ensemble=8", "latent=sample", "noise=fresh", "seed=0"]


def _config(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    assert main(["eval", *argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("preset", "dataset", "published"), [
    ("sd4match-spair", "spair", 75.5),
    ("sd4match-pfpascal", "pf-pascal", 95.2),
    ("sd4match-pfwillow", "pf-willow", 81.3),
])
def test_presets_show_every_setting(preset: str, dataset: str, published: float,
                                    capsys: pytest.CaptureFixture) -> None:
    shown = _config(capsys, "--preset", preset)
    settings = shown["settings"]
    assert settings["dataset"] == dataset
    assert {k: settings[k] for k in SETTINGS} == SETTINGS
    assert settings["backbone_option"] == DRAWS
    assert "kernel soft-argmax PCK@0.10 per image" in shown["headline"]
    assert list(shown["published"].values()) == [published]


def test_given_backbone_options_are_added_after_the_preset_ones(
        capsys: pytest.CaptureFixture) -> None:
    settings = _config(capsys, "--preset", "sd4match-spair", "--backbone-option",
                       "precision=fp16", "--backbone-option", "ensemble=2")["settings"]
    assert settings["backbone_option"] == [*DRAWS, "precision=fp16", "ensemble=2"]  # last wins


def test_protocol_and_thresholds_default_by_dataset(capsys: pytest.CaptureFixture) -> None:
    for dataset, protocol, thresholds in (("spair", "geoaware", "0.01,0.05,0.10,0.15"),
                                          ("pf-willow", "pf", "0.01,0.05,0.10,0.15")):
        settings = _config(capsys, "--dataset", dataset)["settings"]
        assert (settings["protocol"], settings["thresholds"]) == (protocol, thresholds)
    settings = _config(capsys, "--dataset", "spair", "--protocol",
                       "foundation-finetune")["settings"]
    assert settings["thresholds"] == "0.05,0.10,0.15,0.20"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny SD folder and a single prompt file trained (saved) at timestep 261."""
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))
    from tiny_models import save_tiny_stable_diffusion

    from semcorr import create_backbone
    from semcorr.features.sd4match import save_prompt

    root = tmp_path_factory.mktemp("sd4match-preset")
    sd = save_tiny_stable_diffusion(root / "sd")
    backbone = create_backbone("sd4match", sd_weights=str(sd), prompt="single", length=4,
                               image_size=32, timestep=261)
    prompt = save_prompt(root / "prompt.safetensors", backbone.prompt, backbone.config)
    return {"sd": sd, "prompt": prompt}


def test_the_preset_builds_the_official_evaluation_backbone(tiny: dict[str, Path]) -> None:
    """Timestep 50 at evaluation (the prompt keeps its training 261), 8 sampled draws."""
    from semcorr.cli.common import backbone_from_args, refiner_from_args
    from semcorr.cli.eval import resolve_settings
    from semcorr.eval.presets import get_eval_preset

    preset = get_eval_preset("sd4match-pfwillow")
    args = argparse.Namespace(preset=preset.name, weights=str(tiny["sd"]),
                              head_weights=str(tiny["prompt"]), device="cpu",
                              backbone=None)  # --backbone not given
    defaults = {k: None for k in preset.settings} | {"weights": None, "head_weights": None,
                                                     "device": None, "window": None}
    resolve_settings(args, defaults)
    backbone = backbone_from_args(args)
    features = backbone.sd
    assert (features.timestep, features.ensemble, features.latent, features.noise_mode) == (
        50, 8, "sample", "fresh")
    assert backbone.config.timestep == 261  # training keeps 261
    refiner = refiner_from_args(args, backbone)
    assert (type(refiner).__name__, refiner.sigma, refiner.temperature, refiner.weighting) == (
        "KernelSoftArgmax", 7.0, 0.04, "score")


@pytest.mark.slow
def test_a_run_under_the_preset(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The stretched frame on PF-WILLOW-format data: predictions and ground truth in 768²."""
    import numpy as np
    import scipy.io
    from PIL import Image

    root = tmp_path / "willow"
    rng = np.random.default_rng(0)
    for i in range(2):  # a PF-WILLOW class of two 48 x 24 images, 10 keypoints (1-based)
        stem = root / "car(G)" / f"img_{i}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 48, 3), dtype=np.uint8)).save(
            stem.with_suffix(".png"))
        xy = np.stack([rng.uniform(1, 48, 10), rng.uniform(1, 24, 10)])
        scipy.io.savemat(str(stem.with_suffix(".mat")), {"pts_coord": xy})
    out = tmp_path / "out"
    assert main(["eval", "--preset", "sd4match-pfwillow", "--root", str(root), "--weights",
                 str(tiny["sd"]), "--head-weights", str(tiny["prompt"]), "--out", str(out),
                 "--quiet", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["name"] == "sd4match" and results["pairs"] == 2
    assert results["thresholds"] == ["0.05", "0.10", "0.15"]
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    gt, pred = torch.tensor(record["gt"]), torch.tensor(record["pred"])
    assert gt.shape == pred.shape == (10, 2)
    assert 0 < float(gt.min()) and float(gt.max()) < 767  # the 768 frame, clamped
    assert float(pred.min()) >= 0 and float(pred.max()) <= 767
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == "sd4match"

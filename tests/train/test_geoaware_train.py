"""GeoAware-SC training smoke tests on real photographs warped by known similarities.

The features come from ``dense-sift`` (small input) through the feature cache; the head is a
small aggregation network sized for them. Double-flip pair augmentation is on (mirrored images
of both sides).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from semcorr import load_head
from semcorr.features.cache import FeatureCache
from semcorr.postprocess import AggregationNetwork
from semcorr.train.geoaware import (
    config_from_sources,
    load_pair,
    make_synthetic_pairs,
    pair_loss,
    train_geoaware,
)
from shared_data import REPO, shared_path

STEPS = 20


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the machine is shared, and spinning threads slow small convs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _overrides(root: Path, out: Path, **extra: object) -> list[str]:
    settings = {
        "dataset": "synthetic", "root": shared_path("r2d2"), "out": out,
        "synthetic_dir": root / "synthetic", "cache": root / "cache",
        "backbone": "dense-sift",
        "backbone_options": "{image_size: 64, stride: 4, bin_sizes: [4, 8]}",
        "feature_parts": "null", "feature_dims": "[128,128]", "projection_dim": 64,
        "num_groups": 8, "synthetic_pairs": 6, "val_pairs": 12, "synthetic_size": 96,
        "steps": STEPS, "checkpoint_every": 5, "lr": 3e-3, "self_flip": 0, "single_flip": 0,
        "seed": 0,
    }
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run (also fills the shared feature cache)."""
    root = tmp_path_factory.mktemp("geoaware")
    train_geoaware(config_from_sources(None, _overrides(root, root / "full")))
    return root


def _history(out: Path) -> dict:
    return json.loads((out / "history.json").read_text())


def _training_loss(head: torch.nn.Module, root: Path) -> float:
    """Mean loss over the training pairs, without dropout or label noise."""
    config = config_from_sources(None, _overrides(root, root / "full", label_noise=0))
    samples = make_synthetic_pairs(shared_path("r2d2"), root / "synthetic" / "train", 6, 96, 0)
    cache = FeatureCache(root / "cache")
    with torch.no_grad():
        losses = [pair_loss(head.eval(), load_pair(cache, s, None), config) for s in samples]
    return float(torch.stack(losses).mean())


def test_loss_falls_and_pck_rises(smoke):
    """The README's figures (loss 2.66 -> 1.97, validation PCK@0.1 0.70 -> 0.76 in 20 steps),
    under the released loss rules (flipped views on the flow error only, the released keypoint
    frame, a trained soft-argmax grid).

    Re-measured after those rules landed (the figures before them, 3.42 -> 2.24 and 0.70 ->
    0.78, were of the old loss): with 1 and 2 torch threads the PCK histories are identical and
    the losses equal to 2e-7. Over seeds 0, 1, 2 the PCK gain on 12 validation pairs is +0.054,
    +0.051, +0.072 (bound +0.025: half the worst seed's gain; a loop that does not learn keeps
    the head, so its gain is exactly 0). Seed 0's loss after/before is 0.740 (bound 0.8). The
    seed-0 figures must also stay at the README's claims: final loss <= 1.972 + 0.01 and final
    PCK >= 0.756 - 0.01 (0.01 is 3 of the 279 validation keypoints; the thread spread is 0).
    """
    history = _history(smoke / "full")
    assert len(history["loss"]) == STEPS
    torch.manual_seed(0)  # the trainer's initialisation
    initial = AggregationNetwork((128, 128), 64, 8)
    final = load_head("geoaware", smoke / "full" / "head.safetensors", num_groups=8)
    before, after = _training_loss(initial, smoke), _training_loss(final, smoke)
    assert after < 0.8 * before, (before, after)
    assert after <= 1.972 + 0.01, after
    steps, pcks = zip(*history["val_pck"], strict=True)
    assert steps == (0, 5, 10, 15, 20)
    assert pcks[-1] >= pcks[0] + 0.025, pcks
    assert pcks[-1] >= 0.756 - 0.01, pcks


def _same_run(a: Path, b: Path) -> None:
    assert _history(a)["loss"] == _history(b)["loss"]
    assert _history(a)["val_pck"] == _history(b)["val_pck"]
    wa, wb = load_file(str(a / "head.safetensors")), load_file(str(b / "head.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_stop_and_resume_in_process_matches(smoke):
    out = smoke / "stopped"
    config = config_from_sources(None, _overrides(smoke, out))

    def crash(step: int, numbers: dict) -> None:
        if step == 7:  # after the checkpoint of step 5
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_geoaware(config, progress=crash)
    assert not (out / "history.json").exists()
    train_geoaware(config)
    _same_run(smoke / "full", out)


def test_resume_refuses_other_settings(smoke):
    from semcorr.errors import InputError

    with pytest.raises(InputError, match="holds a run with other settings"):
        train_geoaware(config_from_sources(None, _overrides(smoke, smoke / "full", lr=1e-3)))


@pytest.mark.slow
def test_sigkill_and_resume_matches(smoke):
    out = smoke / "killed"
    args = _overrides(smoke, out, delay=0.4)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "semcorr", "train", "geoaware", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step = torch.load(out / "last.pt", weights_only=True)["step"]
    assert 5 <= step < STEPS and not (out / "history.json").exists()
    train_geoaware(config_from_sources(None, _overrides(smoke, out)))
    _same_run(smoke / "full", out)


def test_cli_refuses_unknown_setting(tmp_path, capsys):
    from semcorr.cli.main import main

    assert main(["train", "geoaware", f"out={tmp_path}", "bogus=1"]) == 2
    assert "command line: unknown setting(s) bogus" in capsys.readouterr().err


def test_periodic_evaluation_runs_semcorr_eval(smoke):
    willow = shared_path("pf-willow")
    out = smoke / "with-eval"
    train_geoaware(config_from_sources(None, _overrides(
        smoke, out, steps=4, checkpoint_every=2, val_pairs=0, eval_dataset="pf-willow",
        eval_root=willow, eval_every=4, eval_limit=3)))
    results = json.loads((out / "eval" / "step_4" / "results.json").read_text())
    assert results["pairs"] == 3
    assert results["config"]["matcher"]["backbone"] == "dense-sift+geoaware"
    assert results["config"]["matcher"]["refine_options"]["radius"] == 7


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(smoke):
    """2 gloo ranks x batch 1 = 1 process x batch 2, up to float rounding that AdamW's
    sign-like first steps amplify (measured max |difference| 4e-3 after 6 steps)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    common = ["steps=6", "checkpoint_every=3", "val_pairs=0", "feature_dropout=0",
              "label_noise=0"]
    runs = {}
    for name, launcher, batch in (
        ("ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", "2"], 1),
        ("single", [sys.executable], 2),
    ):
        args = _overrides(smoke, smoke / name, batch_size=batch) + common
        done = subprocess.run([*launcher, "-m", "semcorr", "train", "geoaware", *args],
                              env=env, capture_output=True, timeout=600)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        runs[name] = load_file(str(smoke / name / "head.safetensors"))
    worst = max((runs["ddp"][k] - runs["single"][k]).abs().max().item() for k in runs["ddp"])
    assert worst < 2e-2


@pytest.mark.slow
def test_sd_dino_parts_through_cache_training_and_headed_matching(tmp_path):
    """The real sd+dino path with tiny random SD 1.5 and DINOv2 models: raw parts on their own
    grids (s3 16², s4 8², s5 4², dino 4²) are cached, resampled, concatenated in the
    GeoAware order, trained on, and the trained head runs behind the backbone in a Matcher."""
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(REPO / "tests" / "features"))
    from tiny_models import save_tiny_dinov2, save_tiny_stable_diffusion

    from semcorr import Matcher, create_backbone, load_image
    from semcorr.postprocess import HeadedBackbone

    save_tiny_stable_diffusion(tmp_path / "models" / "sd15")
    save_tiny_dinov2(tmp_path / "models" / "dinov2_vitb14", layers=1)
    options = "{mode: raw, sd_options: {image_size: 32}, dino_options: {num_patches: 4}}"
    overrides = _overrides(tmp_path, tmp_path / "run", backbone="sd+dino",
                           backbone_options=options, weights=tmp_path / "models",
                           feature_parts="[s3,s4,s5,dino]", feature_dims="[32,64,64,32]",
                           steps=3, checkpoint_every=3, synthetic_pairs=2, val_pairs=1)
    path = train_geoaware(config_from_sources(None, overrides))
    head = load_head("geoaware", path, num_groups=8)
    assert head.feature_dims == (32, 64, 64, 32)
    backbone = create_backbone("sd+dino", weights=str(tmp_path / "models"), mode="raw",
                               sd_options={"image_size": 32}, dino_options={"num_patches": 4})
    image = load_image(shared_path("r2d2", "boat.png"))[:, :120, :160]
    result = Matcher(HeadedBackbone(backbone, head, "geoaware")).match(
        image, [image], [[40.0, 30.0]])[0]
    assert result.points.shape == (1, 2) and torch.isfinite(result.points).all()

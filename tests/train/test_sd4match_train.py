"""SD4Match training: Gaussian target and softmax/CE by hand, frozen backbone, loss, resume."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from semcorr.match.rules import kernel_soft_argmax2d
from semcorr.train.sd4match import (
    SD4MatchTrainConfig,
    config_from_sources,
    gaussian_cross_entropy,
    gaussian_kernel,
    matching_probabilities,
    pixels_to_cells,
    predict_cells,
    sd4match_loss,
)

R2D2 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "r2d2"


class TestGaussianKernel:
    def test_hand_values_size3_sigma1(self) -> None:
        k = gaussian_kernel(3, 1.0)
        z = 1 + 4 * math.exp(-0.5) + 4 * math.exp(-1.0)
        assert k[1, 1].item() == pytest.approx(1 / z)
        assert k[0, 1].item() == pytest.approx(math.exp(-0.5) / z)
        assert k[0, 0].item() == pytest.approx(math.exp(-1.0) / z)
        assert k.sum().item() == pytest.approx(1.0)

    def test_default_sigma_is_a_quarter_window(self) -> None:
        k = gaussian_kernel(7)  # sigma 1.5
        assert (k[3, 4] / k[3, 3]).item() == pytest.approx(math.exp(-1 / (2 * 1.5**2)))
        assert torch.equal(k, k.T) and torch.equal(k, k.flip(0))

    def test_even_size_refused(self) -> None:
        with pytest.raises(Exception, match="odd"):
            gaussian_kernel(4)


class TestSoftmax:
    def test_hand_values(self) -> None:
        desc = torch.tensor([[[1.0, 0.0]]])  # (1, 1, 2)
        feats = torch.tensor([[[[1.0, 0.0, -1.0]], [[0.0, 1.0, 0.0]]]])  # cos 1, 0, -1
        p = matching_probabilities(desc, feats, beta=0.04)
        z = math.exp(25) + 1 + math.exp(-25)
        expected = torch.tensor([math.exp(25) / z, 1 / z, math.exp(-25) / z])
        torch.testing.assert_close(p.flatten(), expected.float(), rtol=1e-5, atol=0)
        assert p.shape == (1, 1, 1, 3)

    def test_beta_one(self) -> None:
        desc = torch.tensor([[[0.6, 0.8]]])
        feats = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # cos 0.6 and 0.8
        p = matching_probabilities(desc, feats, beta=1.0).flatten()
        assert p[1].item() == pytest.approx(1 / (1 + math.exp(-0.2)), rel=1e-6)


class TestGaussianCrossEntropy:
    @staticmethod
    def _probs() -> torch.Tensor:
        p = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
        return p / p.sum()

    def test_centre_target_by_hand(self) -> None:
        p = self._probs()
        loss = gaussian_cross_entropy(p, torch.tensor([[[1.0, 1.0]]]), size=3, sigma=1.0)
        k = gaussian_kernel(3, 1.0)
        expected = -(k * p[0, 0].log()).sum()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        z = 1 + 4 * math.exp(-0.5) + 4 * math.exp(-1.0)
        by_hand = -sum(
            math.exp(-((i - 1) ** 2 + (j - 1) ** 2) / 2) / z * math.log((3 * i + j + 1) / 45)
            for i in range(3) for j in range(3)
        )
        assert loss.item() == pytest.approx(by_hand, rel=1e-6)

    def test_corner_target_keeps_cells_inside(self) -> None:
        p = self._probs()
        loss = gaussian_cross_entropy(p, torch.tensor([[[0.0, 0.0]]]), size=3, sigma=1.0)
        z = 1 + 4 * math.exp(-0.5) + 4 * math.exp(-1.0)
        # offsets (0,0), (1,0), (0,1), (1,1) → cells values 1, 2, 4, 5 (of 45)
        by_hand = -(math.log(1 / 45) + math.exp(-0.5) * (math.log(2 / 45) + math.log(4 / 45))
                    + math.exp(-1.0) * math.log(5 / 45)) / z
        assert loss.item() == pytest.approx(by_hand, rel=1e-6)

    def test_subcell_target_is_bilinear(self) -> None:
        p = self._probs()
        loss = gaussian_cross_entropy(p, torch.tensor([[[0.5, 1.0]]]), size=1)
        assert loss.item() == pytest.approx(-math.log((4 / 45 + 5 / 45) / 2), rel=1e-6)

    def test_valid_mask_and_empty(self) -> None:
        p = self._probs().expand(1, 2, 3, 3)
        targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
        one = gaussian_cross_entropy(p[:, :1], targets[:, :1], size=3)
        masked = gaussian_cross_entropy(p, targets, torch.tensor([[True, False]]), size=3)
        assert masked.item() == pytest.approx(one.item())
        none = gaussian_cross_entropy(p, targets, torch.tensor([[False, False]]), size=3)
        assert none.item() == 0.0

    def test_minimum_at_the_target_distribution(self) -> None:
        # p = the Gaussian target itself → the loss is the target's entropy (Gibbs' minimum)
        k = gaussian_kernel(7)
        p = torch.zeros(1, 1, 9, 9)
        p[0, 0, 1:8, 2:9] = k  # centred on cell (x=5, y=4)
        target = torch.tensor([[[5.0, 4.0]]])
        entropy = -(k * k.log()).sum()
        at_target = gaussian_cross_entropy(p, target)
        assert at_target.item() == pytest.approx(entropy.item(), rel=1e-6)
        peaked = torch.full((1, 1, 9, 9), 1e-6)
        peaked[0, 0, 4, 5] = 1 - 80e-6
        flat = torch.full((1, 1, 9, 9), 1 / 81)
        assert at_target < gaussian_cross_entropy(flat, target)
        assert at_target < gaussian_cross_entropy(peaked, target)


class TestLossAndInference:
    def test_loss_gradcheck(self) -> None:
        g = torch.Generator().manual_seed(0)
        f0 = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=g, requires_grad=True)
        f1 = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=g)
        c0 = torch.tensor([[[1.3, 2.0], [3.0, 0.4]]], dtype=torch.float64)
        c1 = torch.tensor([[[2.0, 2.0], [1.0, 3.0]]], dtype=torch.float64)
        assert torch.autograd.gradcheck(
            lambda f: sd4match_loss(f, f1, c0, c1, beta=0.5, size=3), (f0,))

    def test_predict_uses_the_shared_kernel_rule(self) -> None:
        g = torch.Generator().manual_seed(1)
        f = torch.nn.functional.normalize(torch.randn(1, 16, 6, 6, generator=g), dim=1)
        cells = torch.tensor([[[2.0, 3.0], [5.0, 0.0]]])
        from semcorr.match.similarity import cosine_similarity, sample_descriptors

        expected = kernel_soft_argmax2d(cosine_similarity(sample_descriptors(f, cells), f),
                                        sigma=2.0, temperature=0.01, weighting="score")
        out = predict_cells(f, f, cells, sigma=2.0, temperature=0.01)
        assert torch.equal(out, expected)
        torch.testing.assert_close(out, cells, atol=0.05, rtol=0)

    def test_pixels_to_cells(self) -> None:
        cells = pixels_to_cells(torch.tensor([[[7.5, 0.0]]]), 16)
        torch.testing.assert_close(cells, torch.tensor([[[0.0, -15 / 32]]]))


class TestConfig:
    def test_precedence(self, tmp_path: Path) -> None:
        file = tmp_path / "c.json"
        file.write_text(json.dumps({"images": "a", "out": "b", "lr": 0.5, "prompt": "class"}))
        config = config_from_sources(str(file), ["lr=0.25"], prompt="cpm")
        assert (config.lr, config.prompt, config.beta, config.timestep) == (0.25, "cpm", 0.04, 261)

    def test_unknown_key(self) -> None:
        with pytest.raises(Exception, match="bogus"):
            config_from_sources(None, ["images=a", "out=b", "bogus=1"])


# ------------------------------------------------------------------ tiny diffusers training
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("diffusers")
    if not R2D2.is_dir():
        pytest.skip(f"{R2D2} is absent (../shared is not beside the repository)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))
    from tiny_models import save_tiny_stable_diffusion

    root = tmp_path_factory.mktemp("sd4m")
    images = root / "images"
    images.mkdir()
    for name in ("boat.png", "peppers.png"):
        shutil.copy(R2D2 / name, images / name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"sd": save_tiny_stable_diffusion(root / "sd"), "images": images, "root": root}
    torch.set_num_threads(threads)


def _config(tiny: dict[str, Path], out: str, **kw: object) -> SD4MatchTrainConfig:
    base = SD4MatchTrainConfig(
        images=str(tiny["images"]), out=str(tiny["root"] / out), sd_weights=str(tiny["sd"]),
        image_size=32, timestep=50, length=4, batch_size=2, num_points=16, pairs=2, lr=0.01,
        device="cpu", steps=10, checkpoint_every=5,
    )
    return replace(base, **kw)


def test_backbone_frozen_bit_for_bit(tiny: dict[str, Path]) -> None:
    from semcorr.train.sd4match import SyntheticPairs, build_backbone, list_images, next_batch

    config = _config(tiny, "frozen", prompt="class")
    data = SyntheticPairs(list_images(config.images), config.image_size, config.num_points)
    backbone = build_backbone(config, data.categories)
    backbone.train()
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()
              if not k.startswith("prompt.")}
    before = backbone.prompt.embeds.detach().clone()
    optimizer = torch.optim.Adam(backbone.prompt.parameters(), lr=config.lr)
    g = torch.Generator().manual_seed(0)
    from semcorr.train.sd4match import training_step

    for _ in range(2):
        loss = training_step(backbone, next_batch(data, config, g), config)
        optimizer.zero_grad()
        loss.backward()
        assert [n for n, p in backbone.named_parameters() if p.grad is not None] == [
            "prompt.embeds"]
        optimizer.step()
    after = backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    assert not torch.equal(before, backbone.prompt.embeds)


def test_loss_falls_resume_and_reload(tiny: dict[str, Path]) -> None:
    """The loss falls by 0.3 (mean of the last 3 of 10 steps against the first 3).

    Measured drop with 1 torch thread for seeds 0, 1, 2 (prompt init, noise, pairs): single
    1.163, 0.996, 0.610; class 1.034, 0.816, 0.580; cpm 1.110, 0.762, 0.589; with 2 threads
    (seed 0) the same to 1e-6. The worst seed clears the 0.3 bound by 0.28; the test's seed 0
    clears it by >= 0.73, more than the seed spread (<= 0.55).
    """
    from semcorr.cli.main import main
    from semcorr.features.sd4match import read_prompt_file
    from semcorr.train.sd4match import train_sd4match

    straight = train_sd4match(_config(tiny, "straight"))
    losses = json.loads((straight.parent / "train.json").read_text())["losses"]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses

    # interrupted after 5 steps, resumed through the CLI to 10: identical prompt
    train_sd4match(_config(tiny, "resumed", steps=5))
    resumed_out = tiny["root"] / "resumed"
    args = ["train", "sd4match", "--prompt", "single", f"images={tiny['images']}",
            f"out={resumed_out}", f"sd_weights={tiny['sd']}", "image_size=32", "timestep=50",
            "length=4", "batch_size=2", "num_points=16", "pairs=2", "lr=0.01", "device=cpu",
            "steps=10", "checkpoint_every=5"]
    assert main(args) == 0
    a, b = read_prompt_file(straight)[1], read_prompt_file(resumed_out / "prompt.safetensors")[1]
    assert torch.equal(a["embeds"], b["embeds"])

    # other settings in the same folder are refused; the saved prompt reloads identically
    assert main(args[:-3] + ["lr=0.02", "steps=12", "checkpoint_every=5"]) == 2
    from semcorr import create_backbone

    one = create_backbone("sd4match", weights=str(straight), sd_weights=str(tiny["sd"]))
    two = create_backbone("sd4match", weights=str(straight), sd_weights=str(tiny["sd"]))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(one(x), two(x))


@pytest.mark.parametrize("prompt", ["class", "cpm"])
def test_loss_falls_class_and_cpm(tiny: dict[str, Path], prompt: str) -> None:
    """Same bound and measurements as :func:`test_loss_falls_resume_and_reload`."""
    from tiny_models import save_tiny_dinov2

    from semcorr.train.sd4match import train_sd4match

    extra: dict[str, object] = {}
    if prompt == "cpm":
        dino = tiny["root"] / "dino"
        if not dino.is_dir():
            save_tiny_dinov2(dino)
        extra = {"dino_weights": str(dino), "global_length": 2, "cond_length": 2,
                 "dino_patches": 4}
    path = train_sd4match(_config(tiny, f"falls-{prompt}", prompt=prompt, **extra))
    losses = json.loads((path.parent / "train.json").read_text())["losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses


@pytest.mark.slow
def test_torchrun_two_processes(tiny: dict[str, Path]) -> None:
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tiny["root"] / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={port}", "-m", "semcorr", "train", "sd4match", "--prompt",
               "class", f"images={tiny['images']}", f"out={out}", f"sd_weights={tiny['sd']}",
               "image_size=32", "timestep=50", "length=4", "steps=3", "batch_size=1",
               "num_points=8", "device=cpu", "checkpoint_every=3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote") == 1
    assert json.loads((out / "train.json").read_text())["step"] == 3

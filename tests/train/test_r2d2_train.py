"""R2D2 training: AP loss, samplers, confidence losses, synthetic pairs, trainer, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semcorr.cli.main import main
from semcorr.errors import InputError
from semcorr.train.r2d2 import (
    APLoss,
    R2D2TrainConfig,
    SyntheticPairs,
    cosim_loss,
    flow_from_homography,
    full_sampler,
    grid_sampler,
    homography_from_corners,
    neighbourhood_sampler,
    peaky_loss,
    quantized_ap,
    random_homography,
    reliability_ap_loss,
    synthetic_mma,
    train_r2d2,
    warp_image,
    warp_to_first,
)
from shared_data import shared_path

# Small tensors: one thread is faster on a loaded machine, and the figures do not depend on the
# machine's thread count.
pytestmark = pytest.mark.usefixtures("one_thread")


def ranking_ap(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Plain average precision of one ranking (no ties)."""
    order = torch.argsort(scores, descending=True)
    hits = labels[order].double()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    return float((precision * hits).sum() / hits.sum())


def histogram_ap_loops(scores: torch.Tensor, labels: torch.Tensor, bins: int) -> list[float]:
    """The quantised AP written with explicit loops over queries, bins and items."""
    out = []
    centres = [1 - k / (bins - 1) for k in range(bins)]
    slope = bins - 1
    for row, lab in zip(scores.tolist(), labels.tolist(), strict=True):
        counts, hits = [0.0] * bins, [0.0] * bins
        for x, y in zip(row, lab, strict=True):
            for k, c in enumerate(centres):
                if k == 0 and x >= c:
                    w = 1.0
                elif k == bins - 1 and x <= c:
                    w = 1.0
                else:
                    w = max(0.0, 1 - slope * abs(x - c))
                counts[k] += w
                hits[k] += w * y
        total, cum_hits, cum_counts, ap = sum(hits), 0.0, 0.0, 0.0
        for k in range(bins):
            cum_hits += hits[k]
            cum_counts += counts[k]
            ap += (cum_hits / (cum_counts + 1e-16)) * hits[k] / total
        out.append(ap)
    return out


class TestAP:
    @pytest.mark.parametrize("seed", range(5))
    def test_exact_on_bin_centres(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        bins = 20
        centres = torch.linspace(1, 0, bins, dtype=torch.float64)
        rows, labels = [], []
        for _ in range(4):
            rows.append(centres[torch.randperm(bins, generator=g)[:12]])
            lab = torch.rand(12, generator=g) < 0.4
            lab[int(torch.randint(12, (1,), generator=g))] = True
            labels.append(lab)
        scores, labels = torch.stack(rows), torch.stack(labels)
        ap = quantized_ap(scores, labels, bins)
        expected = [ranking_ap(s, lab) for s, lab in zip(scores, labels, strict=True)]
        torch.testing.assert_close(ap, torch.tensor(expected, dtype=torch.float64))

    def test_equals_loop_definition_on_random_inputs(self) -> None:
        g = torch.Generator().manual_seed(0)
        scores = torch.rand(6, 15, generator=g, dtype=torch.float64) * 1.2 - 0.1
        labels = torch.rand(6, 15, generator=g) < 0.3
        labels[:, 0] = True
        got = quantized_ap(scores, labels, 10)
        torch.testing.assert_close(got, torch.tensor(histogram_ap_loops(scores, labels, 10),
                                                     dtype=torch.float64))

    def test_perfect_and_worst(self) -> None:
        scores = torch.tensor([[0.9, 0.1, 0.2, 0.0]])
        assert float(quantized_ap(scores, torch.tensor([[1, 0, 0, 0]]))) == pytest.approx(1.0)
        worst = float(quantized_ap(scores, torch.tensor([[0, 0, 0, 1]])))
        assert worst == pytest.approx(0.25, abs=0.02)
        assert float(quantized_ap(scores, torch.zeros(1, 4, dtype=torch.bool))) == 0.0

    def test_gradcheck(self) -> None:
        g = torch.Generator().manual_seed(1)
        # keep scores away from the kinks of the triangular kernels
        bins = 8
        base = torch.randint(0, bins - 1, (3, 6), generator=g).double() / (bins - 1)
        offset = 0.2 + 0.6 * torch.rand(3, 6, generator=g, dtype=torch.float64)
        scores = (base + offset / (bins - 1)).requires_grad_()
        labels = torch.rand(3, 6, generator=g) < 0.5
        labels[:, 0] = True
        assert torch.autograd.gradcheck(lambda s: quantized_ap(s, labels, bins), (scores,))

    def test_module_equals_function(self) -> None:
        scores, labels = torch.rand(4, 9), torch.rand(4, 9) < 0.5
        torch.testing.assert_close(APLoss(12)(scores, labels), quantized_ap(scores, labels, 12))

    def test_bad_input(self) -> None:
        with pytest.raises(InputError):
            quantized_ap(torch.rand(3, 4), torch.rand(3, 5) < 0.5)
        with pytest.raises(InputError):
            quantized_ap(torch.rand(3, 4), torch.rand(3, 4) < 0.5, num_bins=1)

    def test_reliability_weighting(self) -> None:
        ap = torch.tensor([1.0, 0.2, 0.5])
        rel = torch.tensor([1.0, 0.0, 0.5])
        valid = torch.tensor([True, True, False])
        # 1 - 1*1 - 0 = 0 ; 1 - 0 - 1*0.5 = 0.5 ; mean over valid = 0.25
        assert float(reliability_ap_loss(ap, rel, valid, 0.5)) == pytest.approx(0.25)
        assert float(reliability_ap_loss(ap, None, valid)) == pytest.approx(0.4)
        assert float(reliability_ap_loss(ap, rel, torch.zeros(3, dtype=torch.bool))) == 0.0


def _identity_flow(b: int, h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xs, ys]).float()[None].expand(b, 2, h, w).clone()


class TestSamplers:
    def test_grid_sampler_identity(self) -> None:
        torch.manual_seed(0)
        desc = F.normalize(torch.randn(2, 32, 24, 24), dim=1)
        out = grid_sampler((desc, desc), _identity_flow(2, 24, 24), query_step=4,
                           database_step=4, border=4)
        n = 2 * 4 * 4
        assert out.scores.shape == out.labels.shape == (n, n)
        assert torch.equal(out.labels, torch.eye(n, dtype=torch.bool))
        assert bool(out.valid.all())
        assert float(quantized_ap(out.scores.clamp(0, 1), out.labels).min()) > 0.99

    def test_full_sampler_shift_and_invalid(self) -> None:
        torch.manual_seed(0)
        d2 = F.normalize(torch.randn(1, 8, 6, 6), dim=1)
        flow = _identity_flow(1, 6, 6)
        flow[:, 0] += 1  # pixel x of image 1 is pixel x + 1 of image 2
        d1 = torch.roll(d2, -1, dims=-1)
        rel = (torch.rand(1, 1, 6, 6), torch.rand(1, 1, 6, 6))
        out = full_sampler((d1, d2), flow, rel)
        assert out.scores.shape == (36, 36) and out.reliability.shape == (36,)
        diag = out.scores.diagonal().view(6, 6)
        assert torch.allclose(diag[:, :5], torch.ones(6, 5), atol=1e-5)
        assert out.valid.view(6, 6)[:, 5].tolist() == [False] * 6  # lands outside image 2

    def test_neighbourhood_positives_and_ring(self) -> None:
        torch.manual_seed(0)
        desc = F.normalize(torch.randn(1, 16, 40, 40), dim=1)
        flow = _identity_flow(1, 40, 40)
        flow[0, :, :20] = float("nan")  # top half has no partner
        out = neighbourhood_sampler((desc, desc), flow, radius=4, query_step=4,
                                    positive_radius=1, negative_radius=2, border=4,
                                    distractor_step=8, generator=torch.Generator().manual_seed(0))
        n_ring = sum(1 for dx in range(-4, 5) for dy in range(-4, 5) if 4 <= dx * dx + dy * dy
                     <= 16)
        assert out.labels[:, 0].all() and not out.labels[:, 1:].any()
        assert out.scores.shape[1] == 1 + n_ring + 16
        ys = torch.arange(4, 36, 4).repeat_interleave(8)
        assert torch.equal(out.valid, ys >= 20)
        torch.testing.assert_close(out.scores[out.valid, 0], torch.ones(32))
        # distractors near the partner are pushed below the quantiser's range
        assert float(out.scores[out.valid, 1 + n_ring:].max()) < 0.999

    def test_random_queries_are_seeded(self) -> None:
        desc = F.normalize(torch.randn(1, 8, 32, 32), dim=1)
        flow = _identity_flow(1, 32, 32)
        a = neighbourhood_sampler((desc, desc), flow, generator=torch.Generator().manual_seed(3),
                                  border=8)
        b = neighbourhood_sampler((desc, desc), flow, generator=torch.Generator().manual_seed(3),
                                  border=8)
        assert torch.equal(a.scores, b.scores)


class TestRepeatabilityLosses:
    def test_cosim_identity_is_zero(self) -> None:
        rep = torch.rand(2, 1, 32, 32)
        loss = cosim_loss(rep, rep, _identity_flow(2, 32, 32), patch=8)
        assert float(loss) == pytest.approx(0.0, abs=1e-5)
        assert float(cosim_loss(rep, torch.rand(2, 1, 32, 32), _identity_flow(2, 32, 32), 8)) > 0

    def test_peaky_known_answers(self) -> None:
        flat = torch.full((1, 1, 32, 32), 0.5)
        assert float(peaky_loss(flat, flat, patch=4)) == pytest.approx(1.0, abs=0.1)
        peaks = torch.zeros(1, 1, 32, 32)
        peaks[..., 2::6, 2::6] = 1.0
        assert float(peaky_loss(peaks, peaks, patch=4)) < float(peaky_loss(flat, flat, patch=4))
        with pytest.raises(InputError):
            peaky_loss(flat, flat, patch=5)

    def test_gradients_flow(self) -> None:
        rep1 = torch.rand(1, 1, 24, 24, dtype=torch.float64, requires_grad=True)
        rep2 = torch.rand(1, 1, 24, 24, dtype=torch.float64, requires_grad=True)
        flow = _identity_flow(1, 24, 24).double() + 0.3
        (cosim_loss(rep1, rep2, flow, 8) + peaky_loss(rep1, rep2, 8)).backward()
        assert rep1.grad.abs().sum() > 0 and rep2.grad.abs().sum() > 0


class TestSyntheticPairs:
    def test_homography_from_corners(self) -> None:
        src = torch.tensor([[0.0, 0], [10, 0], [10, 10], [0, 10]])
        h = homography_from_corners(src, src * 2 + 3)
        expected = torch.tensor([[2.0, 0, 3], [0, 2, 3], [0, 0, 1]], dtype=torch.float64)
        torch.testing.assert_close(h, expected)

    def test_flow_and_warp_agree(self) -> None:
        g = torch.Generator().manual_seed(0)
        yy, xx = torch.meshgrid(torch.linspace(0, 6, 64), torch.linspace(0, 6, 64),
                                indexing="ij")
        image = torch.stack([torch.sin(xx), torch.cos(yy), torch.sin(xx + yy)]) * 0.5 + 0.5
        h = random_homography(64, 64, g, max_rotation=0.2, max_tilt=0.05)
        warped = warp_image(image, h, 64, 64)
        flow = flow_from_homography(h, 64, 64)
        back = warp_to_first(warped[None], flow[None])[0]
        inside = torch.isfinite(flow).all(0)
        inside[:3], inside[-3:], inside[:, :3], inside[:, -3:] = False, False, False, False
        assert float((back - image).abs()[:, inside].mean()) < 0.01
        assert bool(torch.isnan(flow).any()) or bool(inside.all())

    def test_dataset_items(self, tmp_path: Path) -> None:
        from PIL import Image

        arr = (torch.rand(80, 100, 3) * 255).byte().numpy()
        Image.fromarray(arr).save(tmp_path / "a.png")
        (tmp_path / "broken.jpg").write_bytes(b"not an image")
        ds = SyntheticPairs(tmp_path, crop=48, length=5, seed=1)
        a, b = ds[3], ds[3]
        assert a["image1"].shape == a["image2"].shape == (3, 48, 48)
        assert a["aflow"].shape == (2, 48, 48)
        for key in a:  # nan (no partner) compared as a number
            assert torch.equal(a[key].nan_to_num(-7.0), b[key].nan_to_num(-7.0))
        assert not torch.equal(ds[2]["image1"], a["image1"])
        _ = [ds[i] for i in range(5)]
        assert list(ds.skipped) == [str(tmp_path / "broken.jpg")]
        with pytest.raises(InputError, match="missing: no such image folder"):
            SyntheticPairs(tmp_path / "missing")
        (tmp_path / "empty").mkdir()
        with pytest.raises(InputError, match="empty: no images"):
            SyntheticPairs(tmp_path / "empty")


def _tiny_config(tmp_path: Path, images: Path, steps: int, **kw: object) -> R2D2TrainConfig:
    options = dict(mchan=1, dim=16, steps=steps, batch_size=1, crop=48, lr=1e-3, patch=8,
                   checkpoint_every=2,
                   sampler=dict(border=8, radius=4, positive_radius=1, negative_radius=2,
                                distractor_step=-8))
    options.update(kw)
    return R2D2TrainConfig(images=str(images), out=str(tmp_path / "run"), **options)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    noise = F.interpolate(torch.rand(1, 3, 16, 16, generator=g), (96, 96), mode="bicubic")
    arr = (noise[0].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(folder / "texture.png")
    return folder


class TestTrainer:
    def test_runs_saves_and_resumes(self, tmp_path: Path, image_folder: Path) -> None:
        from semcorr.features.local import create_local_features

        steps = []
        path = train_r2d2(_tiny_config(tmp_path, image_folder, 2),
                          progress=lambda s, d: steps.append(s))
        assert steps == [0, 1] and path.name == "model.pt"
        model = create_local_features("r2d2", weights=str(path))  # published format loads
        assert model.net.out_dim == 16
        steps.clear()
        train_r2d2(_tiny_config(tmp_path, image_folder, 3), progress=lambda s, d: steps.append(s))
        assert steps == [2]  # resumed after the checkpoint of step 2
        log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in log] == [0, 1, 2]
        with pytest.raises(InputError, match="another configuration"):
            train_r2d2(_tiny_config(tmp_path, image_folder, 3, lr=5e-4))

    def test_cli(self, tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture) -> None:
        config = tmp_path / "conf.json"
        config.write_text(json.dumps({"mchan": 1, "dim": 16, "crop": 48, "batch_size": 1,
                                      "patch": 8, "steps": 5,
                                      "sampler": {"border": 8, "radius": 4,
                                                  "positive_radius": 1, "negative_radius": 2}}))
        out = tmp_path / "cli_run"
        code = main(["train", "r2d2", str(image_folder), "--out", str(out), "--config",
                     str(config), "--steps", "1"])
        assert code == 0 and (out / "model.pt").is_file()
        assert json.loads((out / "config.json").read_text())["steps"] == 1  # CLI beats file
        assert main(["train", "r2d2", str(tmp_path / "nothing"), "--out", str(out)]) == 2
        assert "nothing: no such image folder" in capsys.readouterr().err


#: Mild warps (rotation up to 0.15 rad, scale 0.85..1.15, corners moved up to 5 %) for the
#: learning test: the 31 k-parameter network learns them in a few dozen steps. Under the default
#: warps it learns slowly (MMA@3 on the same 16 held-out pairs about 0.03 -> 0.16 after 60
#: steps, 0.21 after 180), too slowly for a short test.
MILD_WARPS = dict(max_rotation=0.15, scale_range=(0.85, 1.15), max_tilt=0.05)
#: The gain asked of training in the test (see its docstring for the measurements).
THRESHOLD = 0.12


@pytest.mark.slow
def test_training_raises_mma(tmp_path: Path) -> None:
    """From random weights, 40 steps on synthetic pairs raise MMA@3 on 16 held-out pairs.

    MMA@3 (top 200 keypoints, mean over the 16 pairs) of the random initialisation and of the
    trained network, each seed's own initialisation, data and sampling, measured here (2-core
    AMD EPYC, AVX2, torch 2.13 CPU) with torch.set_num_threads(1) and (2):

        seed  threads  before  after   gain
        0     1        0.131   0.497   0.365
        0     2        0.131   0.494   0.362
        1     1        0.126   0.399   0.272
        1     2        0.127   0.457   0.330
        2     1        0.130   0.432   0.302
        2     2        0.129   0.466   0.337

    Gain: mean 0.328, standard deviation 0.036, min 0.272, max 0.365; the thread count alone
    moves it by 0.003, 0.058 and 0.035 (seeds 0, 1, 2): a different summation order sends
    training down another path, as another CPU would. The threshold, 0.12, is below half the
    smallest gain, and the smallest gain clears it by 0.15 = 4 standard deviations = 2.6 times
    the largest thread effect.
    Training that does not learn fails: with lr=0 (batch-norm statistics still move) the gain
    is -0.073 (seed 0, one thread); with the loss's gradient zeroed in the trainer
    (``(loss * 0).backward()``, weight decay alone moving the weights) this test failed with
    before 0.131, after 0.096 (gain -0.036).
    The test runs on one thread (``pytestmark``), so the machine's thread count does not change
    its figures; the margin above covers other CPUs' summation orders.
    (The previous version, 60 steps under the default warps on 4 pairs, gained 0.056 with one
    thread and 0.048 with two, against a threshold of 0.05: red on another machine.)
    Runtime: about 25 s on an idle core (the old 60 steps took 33 s), 50 to 70 s on this machine
    shared six ways (two threads there: 8 to 11 minutes).
    """
    from semcorr.features.local import create_local_features
    from semcorr.train.r2d2 import _build_model

    images = shared_path("r2d2")
    config = R2D2TrainConfig(images=str(images), out=str(tmp_path / "run"), mchan=1, dim=32,
                             steps=40, batch_size=2, crop=96, lr=3e-3, patch=8, base=0.0,
                             checkpoint_every=1000,
                             sampler=dict(border=8, radius=5, positive_radius=2,
                                          negative_radius=3))
    training = SyntheticPairs(images, crop=96, seed=config.seed, length=80, homography=MILD_WARPS)
    held_out = SyntheticPairs(images, crop=96, seed=123, length=16, homography=MILD_WARPS)
    pairs = [held_out[i] for i in range(len(held_out))]
    before = synthetic_mma(_build_model(config), pairs, top_k=200)
    path = train_r2d2(config, dataset=training)
    after = synthetic_mma(create_local_features("r2d2", weights=str(path)), pairs, top_k=200)
    assert after - before > THRESHOLD, (before, after)

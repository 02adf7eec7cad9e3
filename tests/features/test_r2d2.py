"""R2D2 networks, checkpoint loading and multi-scale extraction."""

from __future__ import annotations

import collections
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semcorr.errors import InputError, WeightsError
from semcorr.eval.homography import repeatability
from semcorr.features.local import create_local_features, list_local_features
from semcorr.features.r2d2 import (
    ARCHITECTURES,
    R2D2,
    R2D2Config,
    R2D2Net,
    _level_keypoints,
    build_network,
    extract_multiscale,
    load_r2d2_network,
    nms_mask,
    parse_net_string,
    pyramid_scales,
    read_checkpoint,
)
from semcorr.io import load_image
from semcorr.train.r2d2 import random_homography, warp_image
from shared_data import shared_path

# Published key layout of r2d2_WASF_N16.pt (module prefix removed): conv indices of ops.
QUAD_CONVS = [0, 3, 6, 9, 12, 15, 18, 20, 22]
FAST_CONVS = [0, 3, 6, 10, 13, 16, 19, 21, 23]


def _save_official(net: torch.nn.Module, net_string: str, path: Path, prefix: str = "module."
                   ) -> Path:
    state = {prefix + k: v for k, v in net.state_dict().items()}
    torch.save({"net": net_string, "state_dict": state}, path)
    return path


def _randomise_bn(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


class TestNetworks:
    @pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
    def test_full_resolution_and_unit_descriptors(self, arch: str) -> None:
        net = build_network(arch, mchan=1, dim=16) if "Quad" in arch else build_network(
            arch, dim=16)
        out = net.eval()(torch.randn(2, 3, 24, 40))
        assert out["descriptors"].shape == (2, 16, 24, 40)
        norms = out["descriptors"].norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
        if ARCHITECTURES[arch].confidence:
            assert out["reliability"].shape == out["repeatability"].shape == (2, 1, 24, 40)

    def test_quad_layout_matches_published_keys(self) -> None:
        net = build_network("Quad_L2Net_ConfCFS")
        convs = [i for i, op in enumerate(net.ops) if isinstance(op, torch.nn.Conv2d)]
        assert convs == QUAD_CONVS
        assert [net.ops[i].kernel_size for i in convs] == [(3, 3)] * 6 + [(2, 2)] * 3
        assert [net.ops[i].dilation[0] for i in convs] == [1, 1, 1, 2, 2, 4, 4, 8, 16]
        assert sum(p.numel() for p in net.parameters()) == 484387
        bns = [op for op in net.ops if isinstance(op, torch.nn.BatchNorm2d)]
        assert len(bns) == 8 and not any(bn.affine for bn in bns)
        relus = [i for i, op in enumerate(net.ops) if isinstance(op, torch.nn.ReLU)]
        assert relus == [2, 5, 8, 11, 14, 17]  # none after the 2x2 convs
        assert set(net.state_dict()) >= {"clf.weight", "clf.bias", "sal.weight", "sal.bias"}

    def test_fast_layout(self) -> None:
        net = build_network("Fast_Quad_L2Net_ConfCFS")
        convs = [i for i, op in enumerate(net.ops) if isinstance(op, torch.nn.Conv2d)]
        assert convs == FAST_CONVS
        assert isinstance(net.ops[9], torch.nn.MaxPool2d)
        assert isinstance(net.ops[-1], torch.nn.Upsample)

    def test_heads_known_answer(self) -> None:
        torch.manual_seed(0)
        net = build_network("Quad_L2Net_ConfCFS", mchan=1, dim=8).eval()
        x = torch.randn(1, 3, 16, 16)
        with torch.no_grad():
            raw = net.raw_descriptors(x)
            out = net(x)
            rel = torch.softmax(net.clf(raw**2), dim=1)[:, 1:]
            sp = F.softplus(net.sal(raw**2))
        torch.testing.assert_close(out["reliability"], rel)
        torch.testing.assert_close(out["repeatability"], sp / (1 + sp))
        assert float(out["repeatability"].max()) < 1 and float(out["reliability"].min()) >= 0

    def test_backward(self) -> None:
        net = build_network("Quad_L2Net_ConfCFS", mchan=1, dim=8)
        out = net(torch.randn(2, 3, 20, 20))
        (out["reliability"].mean() + out["repeatability"].mean()).backward()
        assert all(p.grad is not None for p in net.parameters())

    def test_unknown(self) -> None:
        with pytest.raises(InputError, match="unknown R2D2 architecture"):
            build_network("ResNet")
        with pytest.raises(InputError, match="unknown option"):
            build_network("Quad_L2Net_ConfCFS", depth=3)


class TestNetString:
    def test_parses(self) -> None:
        assert parse_net_string("Quad_L2Net_ConfCFS()") == ("Quad_L2Net_ConfCFS", {})
        assert parse_net_string(" Fast_Quad_L2Net_ConfCFS(mchan=2, dim=64, relu22=True) ") == (
            "Fast_Quad_L2Net_ConfCFS", {"mchan": 2, "dim": 64, "relu22": True})

    @pytest.mark.parametrize("text", [
        "__import__('os').system('true')", "Quad_L2Net_ConfCFS(**kw)", "a.b()",
        "Quad_L2Net_ConfCFS(dim=f())", "Quad_L2Net_ConfCFS(1)", "not python (",
    ])
    def test_refuses_anything_else(self, text: str) -> None:
        with pytest.raises(ValueError):
            parse_net_string(text)


class TestCheckpoints:
    @pytest.mark.parametrize("name,arch", [("r2d2_WASF_N16.pt", "Quad_L2Net_ConfCFS"),
                                           ("faster2d2_WASF_N16.pt", "Fast_Quad_L2Net_ConfCFS")])
    def test_published_weights_load_strictly(self, name: str, arch: str) -> None:
        net, found = load_r2d2_network(shared_path("r2d2", name))
        assert found == arch and not net.training
        raw = read_checkpoint(shared_path("r2d2", name))["state_dict"]
        keys = {k.removeprefix("module.") for k in raw}
        assert keys == set(net.state_dict())
        torch.testing.assert_close(net.state_dict()["clf.weight"],
                                   next(v for k, v in raw.items() if k.endswith("clf.weight")))

    def test_random_model_round_trip(self, tmp_path: Path) -> None:
        """semcorr's own net saved in the official checkpoint layout and reloaded through
        ``create_local_features`` gives the same outputs as before saving, with the ImageNet
        normalisation applied. Proves wiring only (save/load/normalise): both sides are
        semcorr's code. Equivalence with the official naver/r2d2 network is checked in
        test_r2d2_official.py."""
        torch.manual_seed(1)
        net = build_network("Quad_L2Net_ConfCFS", mchan=1, dim=16)
        _randomise_bn(net)
        path = _save_official(net, "Quad_L2Net_ConfCFS(mchan=1, dim=16)", tmp_path / "m.pt")
        model = create_local_features("r2d2", weights=str(path))
        x = torch.rand(1, 3, 32, 32)
        expected = net.eval()(model.normalize(x))
        got = model(x)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key])

    def test_defaultdict_logs_load(self, tmp_path: Path) -> None:
        net = build_network("Fast_Quad_L2Net_ConfCFS", mchan=1, dim=16)
        logs = collections.defaultdict(list)
        logs["loss"].append(0.5)
        path = tmp_path / "f.pt"
        torch.save({"net": "Fast_Quad_L2Net_ConfCFS(mchan=1, dim=16)",
                    "state_dict": net.state_dict(), "training_losses": [logs]}, path)
        loaded, arch = load_r2d2_network(path)
        assert arch == "Fast_Quad_L2Net_ConfCFS"

    def test_errors_name_the_file(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsError, match="missing.pt: no such weights file"):
            load_r2d2_network(tmp_path / "missing.pt")
        garbage = tmp_path / "garbage.pt"
        garbage.write_bytes(b"not a checkpoint")
        with pytest.raises(WeightsError, match="garbage.pt: not a readable torch weights file"):
            load_r2d2_network(garbage)
        net = build_network("Quad_L2Net_ConfCFS", mchan=1, dim=16)
        wrong = _save_official(net, "Quad_L2Net_ConfCFS(mchan=2, dim=16)", tmp_path / "w.pt")
        with pytest.raises(WeightsError, match=r"w.pt: .*has shape"):
            load_r2d2_network(wrong)
        state = {k: v for k, v in net.state_dict().items() if k != "sal.bias"}
        torch.save({"net": "Quad_L2Net_ConfCFS(mchan=1, dim=16)", "state_dict": state},
                   tmp_path / "k.pt")
        with pytest.raises(WeightsError, match=r"k.pt: .*missing: \['sal.bias'\]"):
            load_r2d2_network(tmp_path / "k.pt")
        evil = tmp_path / "e.pt"
        torch.save({"net": "__import__('os').getcwd()", "state_dict": {}}, evil)
        with pytest.raises(WeightsError, match="e.pt: cannot build"):
            load_r2d2_network(evil)

    def test_family_mismatch(self, tmp_path: Path) -> None:
        net = build_network("Fast_Quad_L2Net_ConfCFS", mchan=1, dim=16)
        path = _save_official(net, "Fast_Quad_L2Net_ConfCFS(mchan=1, dim=16)", tmp_path / "f.pt")
        with pytest.raises(WeightsError, match="faster2d2"):
            create_local_features("r2d2", weights=str(path))
        assert isinstance(create_local_features("faster2d2", weights=str(path)), R2D2)

    def test_registry(self) -> None:
        assert {"r2d2", "faster2d2"} <= set(list_local_features())
        with pytest.raises(InputError):
            create_local_features("r2d2", top_kk=3)


class TestExtractionPieces:
    def test_pyramid_defaults(self) -> None:
        levels = pyramid_scales(512, 512, R2D2Config())
        assert [w for _, w, _ in levels] == [512, 431, 362, 304, 256]
        assert levels[-1][0] == pytest.approx(0.5)
        # no upscaling of small images (used at their own size), no level above max_size
        assert pyramid_scales(200, 100, R2D2Config()) == [(1.0, 200, 100)]
        big = pyramid_scales(2048, 1000, R2D2Config())
        assert big[0][1] == 1024 and big[-1][1] == 256 and len(big) == 9
        assert pyramid_scales(300, 200, R2D2Config.single_scale()) == [(1.0, 300, 200)]

    def test_nms_known_answer(self) -> None:
        rep = torch.zeros(1, 1, 6, 6)
        rep[0, 0, 1, 1] = 0.9
        rep[0, 0, 1, 2] = 0.8  # suppressed by its neighbour
        rep[0, 0, 4, 4] = 0.75
        rep[0, 0, 4, 1] = 0.6  # below the threshold
        rel = torch.ones_like(rep)
        rel[0, 0, 4, 4] = 0.5  # unreliable
        mask = nms_mask(rel, rep)
        assert mask.nonzero().tolist() == [[0, 0, 1, 1]]
        assert nms_mask(torch.ones_like(rep), rep).sum() == 2

    def test_level_coordinates(self) -> None:
        rep = torch.zeros(1, 1, 4, 4)
        rep[0, 0, 2, 1] = 0.9
        outputs = {"reliability": torch.full_like(rep, 0.8), "repeatability": rep,
                   "descriptors": F.normalize(torch.randn(1, 8, 4, 4), dim=1)}
        kps, desc, scores = _level_keypoints(outputs, R2D2Config(), 8, 8, 0.5)
        # pixel (x=1, y=2) of a half-size level: centre (1.5, 2.5) * 2 - 0.5
        assert kps.tolist() == [[2.5, 4.5, 64.0]]
        assert scores.tolist() == [pytest.approx(0.72)]
        torch.testing.assert_close(desc[0], outputs["descriptors"][0, :, 2, 1])

    def test_top_k_and_order(self) -> None:
        torch.manual_seed(0)
        net = build_network("Quad_L2Net_ConfCFS", mchan=1, dim=16).eval()
        config = R2D2Config(min_size=16, reliability_threshold=0, repeatability_threshold=0,
                            top_k=20)
        with torch.inference_mode():
            out = extract_multiscale(net, torch.randn(1, 3, 40, 48), config)
        assert out["keypoints"].shape == (20, 3) and out["descriptors"].shape == (20, 16)
        assert bool((out["scores"][:-1] >= out["scores"][1:]).all())
        assert float(out["keypoints"][:, 0].max()) <= 47.5
        assert float(out["keypoints"][:, 1].min()) >= -0.5

    def test_no_keypoints(self) -> None:
        net = build_network("Quad_L2Net_ConfCFS", mchan=1, dim=16)
        model = R2D2(net, R2D2Config(reliability_threshold=1.1))
        out = model.extract(torch.rand(3, 300, 280))
        assert out["keypoints"].shape == (0, 3) and out["descriptors"].shape == (0, 16)

    def test_bad_image_shape(self) -> None:
        model = create_local_features("r2d2", mchan=1, dim=16)
        with pytest.raises(ValueError, match="image must have shape"):
            model.extract(torch.rand(4, 32, 32))


@pytest.fixture(scope="module")
def r2d2_model() -> R2D2:
    return create_local_features("r2d2", weights=str(shared_path("r2d2", "r2d2_WASF_N16.pt")))


def _small(path: Path, size: int) -> torch.Tensor:
    image = load_image(path)
    return F.interpolate(image[None], (size, size), mode="bilinear", antialias=True)[0]


class TestPublishedWeights:
    @pytest.mark.parametrize("name", ["boat.png", "peppers.png", "brooklyn.png"])
    def test_deterministic(self, r2d2_model: R2D2, name: str) -> None:
        image = _small(shared_path("r2d2", name), 128)
        config = R2D2Config(min_size=96)
        a = r2d2_model.extract(image, config)
        b = r2d2_model.extract(image, config)
        assert a["keypoints"].shape[0] > 100
        for key in a:
            assert torch.equal(a[key], b[key])

    def test_repeatable_under_homography_small(self, r2d2_model: R2D2) -> None:
        image = _small(shared_path("r2d2", "boat.png"), 256)
        homography = random_homography(256, 256, torch.Generator().manual_seed(3),
                                       max_rotation=0.2, scale_range=(0.9, 1.1), max_tilt=0.08)
        warped = warp_image(image, homography, 256, 256)
        config = R2D2Config.single_scale(top_k=300)
        kp0 = r2d2_model.extract(image, config)["keypoints"]
        kp1 = r2d2_model.extract(warped, config)["keypoints"]
        assert kp0.shape[0] == 300
        assert repeatability(kp0, kp1, homography, (256, 256), 3.0) >= 0.5

    @pytest.mark.slow
    @pytest.mark.parametrize("name", ["boat.png", "peppers.png"])
    def test_repeatable_under_homography_top1000(self, r2d2_model: R2D2, name: str) -> None:
        image = load_image(shared_path("r2d2", name))
        h, w = image.shape[-2:]
        homography = random_homography(w, h, torch.Generator().manual_seed(5),
                                       max_rotation=0.3, scale_range=(0.8, 1.2), max_tilt=0.1)
        warped = warp_image(image, homography, w, h)
        config = R2D2Config(top_k=1000)
        kp0 = r2d2_model.extract(image, config)["keypoints"]
        kp1 = r2d2_model.extract(warped, config)["keypoints"]
        assert kp0.shape[0] == 1000
        rep = repeatability(kp0, kp1, homography, (w, h), 3.0)
        assert rep >= 0.5, rep
        assert not math.isnan(rep)


def test_module_is_r2d2net() -> None:
    assert isinstance(build_network("Quad_L2Net_ConfCFS"), R2D2Net)


class TestCommandLine:
    @pytest.fixture
    def small_images(self, tmp_path: Path) -> list[Path]:
        from PIL import Image

        paths = []
        for name in ("boat.png", "peppers.png"):
            image = Image.open(shared_path("r2d2", name)).convert("RGB").resize((128, 128))
            paths.append(tmp_path / name)
            image.save(paths[-1])
        return paths

    def test_keypoints_job(self, tmp_path: Path, small_images: list[Path],
                           capsys: pytest.CaptureFixture) -> None:
        import numpy as np

        from semcorr.cli.main import main

        weights = str(shared_path("r2d2", "r2d2_WASF_N16.pt"))
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"nope")
        out = tmp_path / "kp"
        args = ["keypoints", *map(str, small_images), str(bad), "--model", "r2d2", "--weights",
                weights, "--top-k", "200", "--min-size", "96", "--out", str(out)]
        assert main(args) == 0  # one image failed (skipped and reported), the others written
        captured = capsys.readouterr()
        assert "failed: " in captured.out and "bad.png: not a readable image" in captured.out
        assert "bad.png" not in captured.err
        # every image failing is a failed job: exit 1, one error line, the listing on stdout,
        # nothing left behind
        assert main(["keypoints", str(bad), "--model", "r2d2", "--weights", weights, "--out",
                     str(tmp_path / "none")]) == 1
        captured = capsys.readouterr()
        assert captured.err.strip().splitlines() == [
            "semcorr: error: keypoints: all 1 image(s) failed (listed above)"]
        assert "bad.png: not a readable image" in captured.out
        assert not (tmp_path / "none").exists()
        with np.load(out / "boat.npz") as data:
            assert data["keypoints"].shape == (200, 3)
            assert data["descriptors"].shape == (200, 128)
            assert data["scores"].shape == (200,)
            assert list(data["image_size"]) == [128, 128]
            assert np.all(np.diff(data["scores"]) <= 0)
            first = data["keypoints"].copy()
        mtime = (out / "boat.npz").stat().st_mtime_ns
        good = [a for a in args if a != str(bad)]
        assert main(good) == 0  # no bad image: all skipped as done
        assert (out / "boat.npz").stat().st_mtime_ns == mtime
        assert "skipped 2 done" in capsys.readouterr().out
        assert main(args[:2] + ["--weights", weights, "--top-k", "100", "--min-size", "96",
                                "--out", str(out)]) == 0  # other settings: redone
        with np.load(out / "boat.npz") as data:
            assert data["keypoints"].shape == (100, 3)
            np.testing.assert_array_equal(data["keypoints"], first[:100])

    def test_keypoints_bad_weights(self, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
        from semcorr.cli.main import main

        image = str(shared_path("r2d2", "boat.png"))
        code = main(["keypoints", image, "--weights", str(tmp_path / "none.pt"), "--out",
                     str(tmp_path / "o")])
        assert code == 2
        assert "none.pt: no such weights file" in capsys.readouterr().err
        code = main(["keypoints", "x.png", "--weights", str(tmp_path / "none.pt"), "--out",
                     str(tmp_path / "o")])
        assert code == 2 and not (tmp_path / "o").exists()
        assert capsys.readouterr().err.strip().splitlines() == [
            "semcorr: error: none of the 1 image file(s) exists (first: x.png)"]

    def test_sparse_match(self, tmp_path: Path, small_images: list[Path],
                          capsys: pytest.CaptureFixture) -> None:
        import json

        from semcorr.cli.main import main

        weights = str(shared_path("r2d2", "r2d2_WASF_N16.pt"))
        source = small_images[0]
        out = tmp_path / "m"
        base = ["match", str(source), str(source), "--backbone", "r2d2", "--weights", weights,
                "--out", str(out)]
        # the dense backbones' contract: a point outside the source is bad input, nothing written
        assert main([*base, "--points", "64,64;-50,-50"]) == 2
        assert "source point 1 (-50, -50) is outside" in capsys.readouterr().err
        assert not out.exists()
        # options sparse matching cannot honour are refused, not silently ignored
        assert main([*base, "--points", "64,64", "--refine", "kernel", "--pose-align"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--refine, --pose-align: not applicable to --backbone r2d2" in \
            err[0]
        code = main([*base, "--points", "64,64"])
        assert code == 0
        payload = json.loads((out / "matches.json").read_text())
        assert payload["backbone"] == "r2d2" and len(payload["targets"]) == 1
        target = payload["targets"][0]
        pairs = torch.tensor(target["keypoint_matches"])
        assert pairs.shape[0] > 50 and pairs.shape[1] == 5
        torch.testing.assert_close(pairs[:, :2], pairs[:, 2:4])  # an image matches itself
        # (a point with no keypoint within reach is unmatched: see the known-answer test below)
        found = torch.tensor(target["points"][0])
        assert found.tolist() == [-1.0, -1.0] or float((found - 64).abs().max()) <= 4.0
        assert (out / f"match_000_{source.stem}.png").is_file()


def test_sparse_point_matches_known_answer() -> None:
    from semcorr.cli.keypoints import sparse_point_matches

    desc = torch.eye(3)
    f0 = {"keypoints": torch.tensor([[10.0, 10, 32], [20, 20, 32], [30, 30, 32]]),
          "descriptors": desc}
    f1 = {"keypoints": torch.tensor([[11.0, 12, 32], [50, 50, 32]]),
          "descriptors": desc[[0, 2]]}
    points = torch.tensor([[9.0, 10.0], [20.0, 21.0], [100.0, 100.0], [31.0, 30.0]])
    found, scores, pairs = sparse_point_matches(points, f0, f1, radius=3.0)
    assert found.tolist() == [[11, 12], [-1, -1], [-1, -1], [50, 50]]
    assert scores.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert pairs.tolist() == [[10, 10, 11, 12, 1], [30, 30, 50, 50, 1]]


@pytest.mark.parametrize(("net", "message"), [
    ("Quad_L2Net_ConfCFS(mchan=2000)", r"mchan=2000 is out of range \(expected an integer in "
                                       r"\[1, 16\]\)"),
    ("Quad_L2Net_ConfCFS(dim=-3)", "dim=-3 is out of range"),
    ("Quad_L2Net_ConfCFS(dim=128.5)", "dim=128.5 is out of range"),
    ("Quad_L2Net_ConfCFS(relu22='yes')", "relu22='yes' is out of range"),
    ("Fast_Quad_L2Net_ConfCFS(downsample_factor=1000000)", "downsample_factor=1000000 is out"),
])
def test_checkpoint_net_string_checked_before_allocation(tmp_path: Path, net: str,
                                                         message: str) -> None:
    """A hostile ``net`` string is refused from its arguments alone, by the range check that
    runs before the network is built (``mchan=2000`` would allocate ~9 GB); the error names the
    file."""
    from semcorr.errors import WeightsError
    from semcorr.features.r2d2 import load_r2d2_network

    path = tmp_path / "hostile.pt"
    torch.save({"net": net, "state_dict": {}}, path)
    with pytest.raises(WeightsError, match=message) as info:
        load_r2d2_network(path)
    assert str(info.value).startswith(str(path))

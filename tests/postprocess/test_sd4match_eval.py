"""SD4Match at inference: conditioning passed explicitly (thread-safe), per-category and per-pair
views, the Matcher, and ``semcorr eval --head sd4match``.

Two kinds of checks, not to be confused:

* ``_expected_points`` recomputes predictions with semcorr's own training path
  (``pair_features``) and semcorr's ``kernel_soft_argmax2d``: it proves wiring only (the CLI,
  Matcher and server route each pair through the right prompt and rule), not that the rule is
  SD4Match's.
* ``test_eval_protocol_sd4match_equals_official_matching`` is the independent check: on the same
  feature maps, the official ``utils/matching.py: kernel_softargmax_get_matches`` (Gaussian
  suppression around the argmax, softmax with temperature, soft-argmax over the grid), the
  official coordinate scaling (``utils/geometry.py``), ground truth and threshold
  (``dataset/pfwillow.py``) and PCK (``utils/evaluator.py: PCKEvaluator``), imported from
  ../shared/reference/ActiveVisionLab+SD4Match, against what ``semcorr eval --protocol
  sd4match`` recorded and reported.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_models import (  # noqa: E402
    one_thread,  # noqa: F401  (fixture)
    save_tiny_dinov2,
    save_tiny_stable_diffusion,
)

from semcorr import create_backbone  # noqa: E402
from semcorr.cli.main import main  # noqa: E402
from semcorr.data import create_dataset  # noqa: E402
from semcorr.errors import InputError  # noqa: E402
from semcorr.features.sd4match import SD4MATCH_REFINE, PromptedBackbone, save_prompt  # noqa: E402
from semcorr.io import load_image  # noqa: E402
from semcorr.match.refine import refiner_with_options  # noqa: E402
from semcorr.match.rules import kernel_soft_argmax2d  # noqa: E402
from semcorr.match.similarity import cosine_similarity, sample_descriptors  # noqa: E402
from semcorr.pipeline import Matcher  # noqa: E402
from shared_data import shared_path  # noqa: E402

SIZE = 32
TINY = {"image_size": SIZE, "timestep": 50}
CATEGORIES = ["car(G)", "duck(S)"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sd4match-eval")
    return {"sd_weights": str(save_tiny_stable_diffusion(root / "sd")),
            "dino_weights": str(save_tiny_dinov2(root / "dino"))}


def _options(kind: str, models: dict[str, str]) -> dict[str, object]:
    return {"single": {"length": 4},
            "class": {"categories": CATEGORIES, "length": 4},
            "cpm": {"dino_weights": models["dino_weights"], "global_length": 2,
                    "cond_length": 3, "dino_patches": 4}}[kind]


def _build(models: dict[str, str], kind: str, seed: int = 0):
    backbone = create_backbone("sd4match", sd_weights=models["sd_weights"], prompt=kind,
                               init_seed=seed, **TINY, **_options(kind, models)).eval()
    with torch.no_grad():  # make the class rows clearly different ("trained")
        for index, parameter in enumerate(backbone.prompt.parameters()):
            parameter.add_(0.3 * torch.randn(parameter.shape,
                                             generator=torch.Generator().manual_seed(index)))
    return backbone


def _image(seed: int, height: int = 40, width: int = 48) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def backbones(models: dict[str, str]) -> dict[str, object]:
    return {kind: _build(models, kind) for kind in ("single", "class", "cpm")}


class TestExplicitConditioning:
    def test_context_argument_equals_the_stored_prompt(self, backbones) -> None:
        sd = backbones["single"].sd
        x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
        with torch.no_grad():
            assert torch.equal(sd.features(x), sd.features(x, sd.prompt_embedding))
            other = torch.randn(sd.prompt_embedding.shape, generator=torch.Generator())
            assert (sd.features(x) - sd.features(x, other)).abs().max() > 1e-3
            # one conditioning per image = each image alone under its own
            both = sd.features(x, torch.cat([sd.prompt_embedding, other]))
            torch.testing.assert_close(both[1:], sd.features(x[1:], other), atol=1e-5, rtol=0)
            torch.testing.assert_close(both[:1], sd.features(x[:1]), atol=1e-5, rtol=0)
        with pytest.raises(InputError, match="3 conditionings for 2 images"):
            sd.features(x, other.expand(3, -1, -1))

    def test_a_deep_copy_reads_its_own_parts(self, backbones) -> None:
        import copy

        sd = backbones["single"].sd
        x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4)) * 2 - 1
        twin = copy.deepcopy(sd)
        with torch.no_grad():
            torch.testing.assert_close(twin.features(x), sd.features(x), atol=1e-6, rtol=0)

    def test_concurrent_threads_with_different_prompts(self, backbones) -> None:
        """Two threads share one backbone, each under its own conditioning: each gets what it
        gets alone (the hooks reading the U-Net belong to the calling thread)."""
        backbone = backbones["class"]
        views = [backbone.conditioned(category=c) for c in CATEGORIES]
        x = backbone.normalize(torch.rand(1, 3, SIZE, SIZE,
                                          generator=torch.Generator().manual_seed(2)))
        with torch.no_grad():
            alone = [view.features(x) for view in views]
        assert (alone[0] - alone[1]).abs().max() > 1e-3
        barrier = threading.Barrier(2)
        outputs: dict[int, list[torch.Tensor]] = {0: [], 1: []}
        errors: list[BaseException] = []

        def work(index: int) -> None:
            try:
                with torch.no_grad():
                    for _ in range(6):
                        barrier.wait()
                        outputs[index].append(views[index].features(x))
            except BaseException as exc:  # reported in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for index in range(2):
            assert len(outputs[index]) == 6
            for out in outputs[index]:
                torch.testing.assert_close(out, alone[index], atol=1e-6, rtol=0)


class TestConditionedViews:
    def test_conditions(self, backbones) -> None:
        assert backbones["single"].condition == "image"
        assert backbones["class"].condition == "category"
        assert backbones["cpm"].condition == "pair"
        assert backbones["single"].conditioned(category="x") is backbones["single"]
        view = backbones["cpm"].conditioned(pair=(_image(0), _image(1)))
        assert isinstance(view, PromptedBackbone) and view.condition == "image"

    def test_class_view_is_the_category_row(self, backbones) -> None:
        backbone = backbones["class"]
        x = backbone.normalize(torch.rand(1, 3, SIZE, SIZE,
                                          generator=torch.Generator().manual_seed(3)))
        with torch.no_grad():
            for category in CATEGORIES:
                expected, _ = backbone.pair_features(x, x, [category])
                assert torch.equal(backbone.conditioned(category=category).features(x),
                                   expected)
        with pytest.raises(InputError, match="unknown categories \\['cow'\\]"):
            backbone.conditioned(category="cow")
        with pytest.raises(InputError, match="needs the category"):
            backbone.conditioned()
        with pytest.raises(InputError, match="depend on the category"):
            backbone(x)

    def test_cpm_view_is_the_pair_prompt(self, backbones) -> None:
        backbone = backbones["cpm"]
        a, b, c = _image(0), _image(1), _image(2)
        batch, _ = backbone.prepare([a, b])
        x = backbone.normalize(batch)
        with torch.no_grad():
            f0, f1 = backbone.pair_features(
                x[:1], x[1:], dino_inputs=(backbone.dino_inputs([a]), backbone.dino_inputs([b])))
            view = backbone.conditioned(pair=(a, b))
            torch.testing.assert_close(view.features(x[:1]), f0, atol=1e-6, rtol=0)
            torch.testing.assert_close(view.features(x[1:]), f1, atol=1e-6, rtol=0)
            other = backbone.conditioned(pair=(a, c)).features(x[:1])
        assert (other - f0).abs().max() > 1e-4  # the source's features depend on its partner
        with pytest.raises(InputError, match="needs the pair's two images"):
            backbone.conditioned()


def _expected_points(backbone, source: torch.Tensor, target: torch.Tensor,
                     points: torch.Tensor, category: str | None) -> torch.Tensor:
    """Proves wiring only: semcorr's training path (``pair_features``) and semcorr's kernel
    soft-argmax over the target's content cells, without the Matcher. The official rule is
    compared in test_eval_protocol_sd4match_equals_official_matching."""
    batch, transforms = backbone.prepare([source, target])
    x = backbone.normalize(batch)
    categories = None if category is None else [category]
    dino = None  # a CPM sees DINOv2 crops of the original images, as in the official code
    if backbone.config.kind == "cpm":
        dino = (backbone.dino_inputs([source]), backbone.dino_inputs([target]))
    with torch.no_grad():
        f0, f1 = backbone.pair_features(x[:1], x[1:], categories, dino_inputs=dino)
    cells = transforms[0].to_grid(points)[None]
    scores = cosine_similarity(sample_descriptors(f0, cells), f1)
    grid = kernel_soft_argmax2d(scores, SD4MATCH_REFINE["sigma"],
                                SD4MATCH_REFINE["temperature"],
                                transforms[1].valid_cells(), weighting="score")
    return transforms[1].from_grid(grid[0])


class TestMatcher:
    def test_pairwise_match_equals_the_training_path(self, backbones) -> None:
        backbone = backbones["cpm"]
        options = {k: v for k, v in SD4MATCH_REFINE.items() if k != "name"}
        matcher = Matcher(backbone, refine=refiner_with_options("kernel", **options))
        source, targets = _image(0), [_image(1), _image(2, 36, 52)]
        points = torch.tensor([[4.0, 6.0], [30.0, 20.0], [44.0, 35.0]])
        results = matcher.match(source, targets, points)
        for target, result in zip(targets, results, strict=True):
            expected = _expected_points(backbone, source, target, points, None)
            torch.testing.assert_close(result.points, expected, atol=1e-4, rtol=0)
        assert (results[0].points - results[1].points).abs().max() > 0
        with pytest.raises(InputError, match="not precomputed features"):
            matcher.match(source, [matcher.conditioned(pair=(source, targets[0]))
                                   .target_features(targets[0])], points)

    def test_class_prompt_needs_the_category(self, backbones) -> None:
        matcher = Matcher(backbones["class"])
        points = torch.tensor([[4.0, 6.0]])
        with pytest.raises(InputError, match="pass category="):
            matcher.match(_image(0), [_image(1)], points)
        result = matcher.match(_image(0), [_image(1)], points, category="duck(S)")[0]
        assert result.points.shape == (1, 2)


@pytest.fixture(scope="module")
def willow_two_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real PF-WILLOW images and keypoints: two classes of two images (four pairs)."""
    real = shared_path("pf-willow")
    root = tmp_path_factory.mktemp("willow") / "PF-WILLOW"
    for category in CATEGORIES:
        (root / category).mkdir(parents=True)
        for png in sorted((real / category).glob("*.png"))[:2]:
            for suffix in (".png", ".mat"):
                (root / category / (png.stem + suffix)).symlink_to(png.with_suffix(suffix))
    return root


@pytest.mark.parametrize("kind", ["single", "class", "cpm"])
def test_eval_cli_head_sd4match(kind: str, models: dict[str, str], backbones,
                                willow_two_classes: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``semcorr eval --head sd4match --weights PROMPT`` predicts what semcorr's training path
    and kernel rule give for every pair, with each pair's category or pair prompt (wiring
    only; see the module docstring)."""
    backbone = backbones[kind]
    prompt = save_prompt(tmp_path / f"{kind}.safetensors", backbone.prompt, backbone.config)
    out = tmp_path / "out"
    if kind == "single":  # the form: SD 2.1 found through $SEMCORR_WEIGHTS/sd21
        (tmp_path / "weights").mkdir()
        (tmp_path / "weights" / "sd21").symlink_to(models["sd_weights"])
        monkeypatch.setenv("SEMCORR_WEIGHTS", str(tmp_path / "weights"))
        weights = ["--weights", str(prompt)]
    else:  # SD weights and prompt given apart
        weights = ["--weights", models["sd_weights"], "--head-weights", str(prompt),
                   "--backbone-option", f"dino_weights={models['dino_weights']}"]
    argv = ["eval", "--dataset", "pf-willow", "--root", str(willow_two_classes), "--out",
            str(out), "--quiet", "--head", "sd4match", *weights]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["category"] for r in records} == set(CATEGORIES)
    dataset = create_dataset("pf-willow", willow_two_classes)
    by_id = {r["pair_id"]: r for r in records}
    for index in range(len(dataset)):
        sample = dataset[index]
        record = by_id[sample.pair_id]
        rows = sample.visible.nonzero().flatten()
        source, target = load_image(sample.source_path), load_image(sample.target_path)
        points = sample.source_points[rows].float()
        points[:, 0].clamp_(0, source.shape[-1] - 1)
        points[:, 1].clamp_(0, source.shape[-2] - 1)
        expected = _expected_points(backbone, source, target, points,
                                    sample.category if kind == "class" else None)
        torch.testing.assert_close(torch.tensor(record["pred"]), expected, atol=1e-3, rtol=0)
    config = json.loads((out / "config.json").read_text())["matcher"]
    assert config["backbone"] == "sd4match" and config["refine"] == "KernelSoftArgmax"
    assert config["refine_options"] == {"sigma": 7.0, "temperature": 0.04, "weighting": "score"}
    digest = hashlib.sha256(prompt.read_bytes()).hexdigest()[:16]
    assert config["backbone_options"]["prompt_sha256"] == digest


@pytest.mark.parametrize(("extra", "message"), [
    ([], "--head sd4match needs its prompt file"),
    (["--backbone", "dinov2_vitb14", "--weights", "p.safetensors"],
     "runs on Stable Diffusion 2.1"),
    # an explicit --backbone dense-sift is what the user said, not "left out" (issue 20)
    (["--backbone", "dense-sift", "--weights", "p.safetensors"],
     "runs on Stable Diffusion 2.1"),
    (["--weights", "missing.safetensors"], "missing.safetensors: no such prompt file"),
])
def test_eval_cli_head_sd4match_errors(extra: list[str], message: str, willow_two_classes: Path,
                                       tmp_path: Path, capsys) -> None:
    argv = ["eval", "--dataset", "pf-willow", "--root", str(willow_two_classes), "--out",
            str(tmp_path / "o"), "--quiet", "--head", "sd4match", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_match_cli_conditions_each_target_on_its_pair(models: dict[str, str], backbones,
                                                      tmp_path: Path) -> None:
    """``semcorr match --head sd4match`` with a CPM prompt: one prompt per (source, target)."""
    from semcorr.samples import load_samples

    backbone = backbones["cpm"]
    prompt = save_prompt(tmp_path / "cpm.safetensors", backbone.prompt, backbone.config)
    pair = load_samples()
    points = torch.tensor([[120.0, 90.0], [200.0, 160.0]])
    argv = ["match", str(pair.source), *map(str, pair.targets), "--points",
            ";".join(f"{x:g},{y:g}" for x, y in points.tolist()), "--head", "sd4match",
            "--weights", models["sd_weights"], "--head-weights", str(prompt),
            "--backbone-option", f"dino_weights={models['dino_weights']}",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    written = json.loads((tmp_path / "out" / "matches.json").read_text())["targets"]
    source = load_image(pair.source)
    for target, record in zip(pair.targets, written, strict=True):
        expected = _expected_points(backbone, source, load_image(target), points, None)
        torch.testing.assert_close(torch.tensor(record["points"]), expected, atol=1e-3, rtol=0)


def test_server_sets_each_pair_under_its_prompt(backbones) -> None:
    """The web page's service: a CPM pair's features come from that pair's prompt, and its
    kernel rule is SD4Match's."""
    from semcorr.samples import load_samples
    from semcorr.server.service import CorrespondenceService

    backbone = backbones["cpm"]
    service = CorrespondenceService(backbone, "sd4match")
    assert service.refiners["kernel"].weighting == "score"
    assert service.refiners["kernel"].sigma == SD4MATCH_REFINE["sigma"]
    pair = load_samples()
    points = torch.tensor([[120.0, 90.0], [200.0, 160.0]])
    source = load_image(pair.source)
    for index, target in enumerate(pair.targets, start=1):
        found = service.match("sample-0", f"sample-{index}", points, pose_align=False,
                              refine="kernel")
        expected = _expected_points(backbone, source, load_image(target), points, None)
        torch.testing.assert_close(found.points, expected, atol=1e-3, rtol=0)


def test_a_head_on_a_conditioned_backbone_is_conditioned_too(backbones) -> None:
    from semcorr.postprocess import HeadedBackbone

    backbone = backbones["cpm"]
    headed = HeadedBackbone(backbone, torch.nn.Conv2d(64, 8, 1), "probe").eval()
    assert headed.condition == "pair"
    a, b = _image(0), _image(1)
    view = headed.conditioned(pair=(a, b))
    assert view.condition == "image" and view.info.name == headed.info.name
    x = backbone.normalize(backbone.prepare([a])[0])
    with torch.no_grad():
        expected = headed.apply_head(backbone.conditioned(pair=(a, b)).features(x))
        torch.testing.assert_close(view.features(x), expected, atol=1e-6, rtol=0)


SD4MATCH_REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / \
    "ActiveVisionLab+SD4Match"
ALPHAS = [0.05, 0.1, 0.15]


@pytest.fixture
def sd4match_official(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """The official ``utils`` (matching, geometry, evaluator) and ``PFWillowDataset``, imported
    from ../shared/reference. Stubbed: ``pandas`` and ``torchvision`` (not installed; imported
    by the dataset modules at load time, unused by the functions called here)."""
    if not SD4MATCH_REFERENCE.is_dir():
        pytest.skip(f"{SD4MATCH_REFERENCE} is absent (../shared/reference not beside the repo)")
    for name in ("pandas", "torchvision"):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.transforms = types.ModuleType(f"{name}.transforms")
            monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.syspath_prepend(str(SD4MATCH_REFERENCE))
    names = ("dataset", "utils")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in names}
    for key in saved:
        del sys.modules[key]
    try:
        from dataset.pfwillow import PFWillowDataset
        from utils import evaluator, geometry, matching

        yield types.SimpleNamespace(matching=matching, geometry=geometry,
                                    evaluator=evaluator, PFWillowDataset=PFWillowDataset)
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[key]
        sys.modules.update(saved)


def _stretched_views(backbone, kind: str, sample) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Feature maps ``(1, C, g, g)`` of the pair's two images stretched to the backbone's square
    (antialiased bilinear, as the protocol states), each under the pair's conditioning: the
    shared input of both sides."""
    source, target = load_image(sample.source_path), load_image(sample.target_path)
    view = {"single": backbone,
            "class": backbone.conditioned(category=sample.category) if kind == "class" else None,
            "cpm": backbone.conditioned(pair=(source, target)) if kind == "cpm" else None}[kind]
    size = backbone.info.image_size
    maps = []
    for image in (source, target):
        square = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear",
                                                 align_corners=False, antialias=True).clamp(0, 1)
        with torch.no_grad():
            maps.append(view(square))
    return maps[0], maps[1]


def _official_batch(official: types.SimpleNamespace, sample, frame: int) -> dict:  # noqa: ANN001
    """Ground truth in the official way: ``get_points`` stretches the 0-based points to the
    768 frame, ``get_pckthres`` ('bbox') takes the target keypoints' larger extent before
    ``regularise_coordinates`` pulls them 1e-4 inside the frame."""
    dataset = types.SimpleNamespace(max_pts=10, thres="bbox")
    rows = sample.visible.nonzero().flatten()
    assert rows.numel() == 10  # PF-WILLOW: all ten visible (get_points reshapes to 2 x 10)
    kps = {}
    for side, points, size in (("src", sample.source_points, sample.source_size),
                               ("trg", sample.target_points, sample.target_size)):
        flat = points[rows].T.reshape(1, -1).numpy()
        kps[side], n = official.PFWillowDataset.get_points(dataset, flat, 0, size, (frame, frame))
    thres = official.PFWillowDataset.get_pckthres(
        dataset, {"trg_img": None, "trg_kps": kps["trg"], "n_pts": n})
    regular = {k: official.geometry.regularise_coordinates(v.T[:n], frame, frame, eps=1e-4)
               for k, v in kps.items()}
    return {"src_kps": regular["src"][None], "trg_kps": regular["trg"][None],
            "n_pts": torch.tensor([n]), "pckthres": thres[None], "category": [sample.category],
            "src_img": torch.zeros(1, 3, frame, frame), "trg_img": torch.zeros(1, 3, frame, frame)}


@pytest.mark.parametrize("kind", ["single", "cpm"])
def test_eval_protocol_sd4match_equals_official_matching(
    kind: str, models: dict[str, str], backbones, willow_two_classes: Path, tmp_path: Path,
    sd4match_official: types.SimpleNamespace,
) -> None:
    """``semcorr eval --protocol sd4match --head sd4match`` on 4 real PF-WILLOW pairs against
    SD4Match's official evaluation code on the same feature maps.

    Reference (independent: official files, no semcorr code): ``kernel_softargmax_get_matches``
    with its defaults sigma 7 and temperature 0.04 as ``PCKEvaluator.evaluate_feature_map``
    calls it, ``scaling_coordinates`` (768 frame <-> feature grid, corner to corner),
    ``PFWillowDataset.get_points``/``get_pckthres``, ``regularise_coordinates``, and the PCK of
    ``PCKEvaluator`` (by image). Shared input: the feature maps (16 x 16) of the stretched
    images. Checks: predictions within 1e-3 px of the 768 frame (measured max 1.8e-4 single,
    2.1e-4 cpm), ground truth and threshold equal, the reported PCK at 0.05/0.10/0.15 equal to
    the official evaluator's to 1e-6 (measured: 0.025/0.075/0.225 single, 0.025/0.075/0.25
    cpm, differences < 1e-8). Control: the official soft-argmax without the Gaussian kernel
    lands 6-20 px away, so the tolerance tells the rules apart.
    """
    backbone = backbones[kind]
    prompt = save_prompt(tmp_path / f"{kind}.safetensors", backbone.prompt, backbone.config)
    out = tmp_path / "out"
    argv = ["eval", "--dataset", "pf-willow", "--root", str(willow_two_classes), "--out",
            str(out), "--quiet", "--protocol", "sd4match", "--head", "sd4match",
            "--weights", models["sd_weights"], "--head-weights", str(prompt)]
    if kind == "cpm":
        argv += ["--backbone-option", f"dino_weights={models['dino_weights']}"]
    assert main(argv) == 0
    records = {r["pair_id"]: r for r in
               map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    official = sd4match_official
    config = types.SimpleNamespace(EVALUATOR=types.SimpleNamespace(ALPHA=ALPHAS, BY="image"))
    evaluator = official.evaluator.PCKEvaluator(config)
    dataset = create_dataset("pf-willow", willow_two_classes)
    frame = 768
    for index in range(len(dataset)):
        sample = dataset[index]
        batch = _official_batch(official, sample, frame)
        batch["src_featmaps"], batch["trg_featmaps"] = _stretched_views(backbone, kind, sample)
        grid = batch["trg_featmaps"].shape[-2:]
        query = official.geometry.scaling_coordinates(batch["src_kps"], (frame, frame), grid)
        matches = official.matching.kernel_softargmax_get_matches(
            batch["src_featmaps"], batch["trg_featmaps"], query, 0.04, 7)
        matches = official.geometry.scaling_coordinates(matches, grid, (frame, frame))
        plain = official.matching.softargmax_get_matches(  # control: no Gaussian kernel
            batch["src_featmaps"], batch["trg_featmaps"], query, 0.04)
        plain = official.geometry.scaling_coordinates(plain, grid, (frame, frame))
        assert float((plain - matches).abs().max()) > 1.0  # measured 6-20 px
        record = records[sample.pair_id]
        pred = torch.tensor(record["pred"])
        torch.testing.assert_close(pred, matches[0], atol=1e-3, rtol=0)
        torch.testing.assert_close(torch.tensor(record["gt"]), batch["trg_kps"][0],
                                   atol=1e-4, rtol=0)
        assert record["reference"] == pytest.approx(float(batch["pckthres"][0]), abs=1e-4)
        evaluator.evaluate_feature_map(batch)
    summary = evaluator.summerize_result()
    results = json.loads((out / "results.json").read_text())
    for alpha in ALPHAS:
        theirs = summary[f"kernelsoftmax_pck{alpha}"]["all"]
        assert results["pck"][f"{alpha:.2f}"]["per_image"] == pytest.approx(theirs, abs=1e-6)

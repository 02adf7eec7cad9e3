"""SD4Match backbone: prompt modules, the text-encoder path, prompt files, tiny diffusers models."""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))

from tiny_models import (  # noqa: E402
    one_thread,  # noqa: F401  (fixture)
    save_tiny_dinov2,
    save_tiny_stable_diffusion,
)

from semcorr import create_backbone  # noqa: E402
from semcorr.errors import InputError, WeightsError  # noqa: E402
from semcorr.features.sd4match import (  # noqa: E402
    ClassPrompt,
    ConditionalPrompt,
    PromptConfig,
    SD4MatchBackbone,
    SinglePrompt,
    read_prompt_file,
    save_prompt,
)

SIZE = 32
TINY = {"image_size": SIZE, "timestep": 50}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sd4match")
    return {"sd_weights": str(save_tiny_stable_diffusion(root / "sd")),
            "dino_weights": str(save_tiny_dinov2(root / "dino"))}


def _build(models: dict[str, str], **options: object) -> SD4MatchBackbone:
    return create_backbone("sd4match", sd_weights=models["sd_weights"], **TINY, **options)


def _images(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def single(models: dict[str, str]) -> SD4MatchBackbone:
    return _build(models, length=4).eval()


@pytest.fixture(scope="module")
def cpm(models: dict[str, str]) -> SD4MatchBackbone:
    return _build(models, prompt="cpm", dino_weights=models["dino_weights"], global_length=2,
                  cond_length=3, dino_patches=4).eval()


class TestPromptModules:
    def test_single_shapes(self) -> None:
        prompt = SinglePrompt(length=5, dim=8)
        out = prompt(3)
        assert out.shape == (3, 5, 8)
        assert torch.equal(out[0], out[2])

    def test_class_rows_and_unknown(self) -> None:
        prompt = ClassPrompt(["cat", "dog"], length=2, dim=4)
        with torch.no_grad():
            prompt.embeds.copy_(torch.arange(16.0).view(2, 2, 4))
        out = prompt(["dog", "cat", "dog"])
        assert torch.equal(out[0], prompt.embeds[1]) and torch.equal(out[1], prompt.embeds[0])
        with pytest.raises(InputError, match="unknown categories \\['cow'\\]"):
            prompt(["cow"])

    def test_cpm_known_answer(self) -> None:
        # 1 channel, 2 patches, width 1: project = t0 + t1, mixing = identity, max-pool to 1
        cpm = ConditionalPrompt(dino_dim=1, num_patches=2, dim=1, global_length=1,
                                cond_length=1)
        with torch.no_grad():
            cpm.project_channels.weight.copy_(torch.tensor([[1.0, 1.0]]))
            cpm.project_channels.bias.zero_()
            cpm.mix_patches.weight.copy_(torch.eye(2))
            cpm.mix_patches.bias.zero_()
            cpm.global_embeds.fill_(-3.0)
            cpm.position.fill_(0.5)
            cpm.alpha.fill_(math.atanh(0.5))
        t0 = torch.tensor([[[1.0], [4.0]]])
        t1 = torch.tensor([[[2.0], [-1.0]]])  # sums 3 and 3 → max 3
        out = cpm(t0, t1)
        assert out.shape == (1, 2, 1)
        assert out[0, 0, 0].item() == -3.0
        assert out[0, 1, 0].item() == pytest.approx(0.5 * (3.0 + 0.5))

    def test_cpm_shapes_and_checks(self) -> None:
        cpm = ConditionalPrompt(dino_dim=6, num_patches=9, dim=8, global_length=2,
                                cond_length=3)
        out = cpm(torch.randn(4, 9, 6), torch.randn(4, 9, 6))
        assert out.shape == (4, 5, 8)
        with pytest.raises(ValueError, match="target tokens must have shape"):
            cpm(torch.randn(4, 9, 6), torch.randn(3, 9, 6))


class TestPromptEncoder:
    def test_matches_text_encoder_on_real_tokens(self, single: SD4MatchBackbone) -> None:
        """Proves wiring only: prompt embeddings fed past the token lookup give the wrapped
        CLIP text encoder's own output for those tokens (the reference is the library semcorr
        calls). The released prompt files against the official PromptManager and
        HybridCaptioner: test_sd4match_official.py."""
        enc = single.text
        ids = enc.token_ids(4, torch.device("cpu"))
        ids[0, 1:5] = torch.tensor([5, 9, 13, 17])
        with torch.no_grad():
            reference = enc.text_encoder(ids).last_hidden_state
            ours = enc(enc.embed_ids(ids)[:, 1:5])
        assert ours.shape == (1, enc.max_length, enc.dim)
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)

    def test_too_long(self, single: SD4MatchBackbone) -> None:
        enc = single.text
        with pytest.raises(InputError, match="at most"):
            enc(torch.zeros(1, enc.max_length - 1, enc.dim))


class TestBackbone:
    def test_features_unit_norm_and_shape(self, single: SD4MatchBackbone) -> None:
        with torch.no_grad():
            f = single(_images(2))
        assert f.shape == (2, 64, SIZE // single.stride, SIZE // single.stride)
        torch.testing.assert_close(f.norm(dim=1), torch.ones(2, 16, 16))

    def test_prompt_conditions_the_features(self, models: dict[str, str]) -> None:
        a, b = _build(models, length=4, init_seed=0), _build(models, length=4, init_seed=1)
        with torch.no_grad():
            assert (a(_images(1)) - b(_images(1))).abs().max() > 1e-4

    def test_gradients_reach_only_the_prompt(self, single: SD4MatchBackbone) -> None:
        x = single.normalize(_images(2))
        f0, f1 = single.pair_features(x, x.flip(-1))
        (f0 * f1).sum().backward()
        with_grad = [n for n, p in single.named_parameters() if p.grad is not None]
        assert with_grad == ["prompt.embeds"]
        assert single.prompt.embeds.grad.abs().sum() > 0
        assert all(not p.requires_grad for n, p in single.named_parameters()
                   if not n.startswith("prompt."))
        single.prompt.embeds.grad = None

    def test_cpm_pair_features(self, cpm: SD4MatchBackbone) -> None:
        x0, x1 = cpm.normalize(_images(2, 0)), cpm.normalize(_images(2, 1))
        with torch.no_grad():
            f0, f1 = cpm.pair_features(x0, x1)
            g0, _ = cpm.pair_features(x0, cpm.normalize(_images(2, 2)))
        assert f0.shape == f1.shape == (2, 64, 16, 16)
        assert (f0 - g0).abs().max() > 0  # the prompt depends on the pair
        with pytest.raises(InputError, match="pair_features"):
            cpm(_images(1))

    def test_class_needs_category(self, models: dict[str, str]) -> None:
        bb = _build(models, prompt="class", categories=["a", "b"], length=3)
        with pytest.raises(InputError, match="category"):
            bb(_images(1))
        bb.category = "b"
        with torch.no_grad():
            assert bb(_images(1)).shape == (1, 64, 16, 16)


class TestPromptFiles:
    @pytest.mark.parametrize("kind", ["single", "class", "cpm"])
    def test_round_trip_identical(self, models: dict[str, str], tmp_path: Path,
                                  kind: str) -> None:
        options = {"single": {"length": 3}, "class": {"categories": ["x", "y"], "length": 3},
                   "cpm": {"dino_weights": models["dino_weights"], "global_length": 2,
                           "cond_length": 2, "dino_patches": 2}}[kind]
        bb = _build(models, prompt=kind, init_seed=3, **options).eval()
        with torch.no_grad():
            for p in bb.prompt.parameters():
                p.add_(0.01)  # "trained"
        path = save_prompt(tmp_path / "p.safetensors", bb.prompt, bb.config)
        assert (tmp_path / "p.json").is_file()
        again = create_backbone("sd4match", weights=str(path), sd_weights=models["sd_weights"],
                                dino_weights=models["dino_weights"]).eval()
        assert again.config == bb.config
        x0, x1 = again.normalize(_images(1, 0)), again.normalize(_images(1, 1))
        cats = ["y"] if kind == "class" else None
        with torch.no_grad():
            for a, b in zip(bb.pair_features(x0, x1, cats), again.pair_features(x0, x1, cats),
                            strict=True):
                assert torch.equal(a, b)
        state = read_prompt_file(path)[1]
        assert set(state) == set(bb.prompt.state_dict())  # the prompt only

    def test_sidecar_used_without_metadata(self, tmp_path: Path) -> None:
        from safetensors.torch import save_file

        config = PromptConfig(kind="single", dim=4, length=2)
        prompt = SinglePrompt(2, 4)
        save_prompt(tmp_path / "p.safetensors", prompt, config)
        save_file(prompt.state_dict(), str(tmp_path / "p.safetensors"))  # no metadata
        assert read_prompt_file(tmp_path / "p.safetensors")[0] == config

    def test_bad_files(self, models: dict[str, str], tmp_path: Path) -> None:
        junk = tmp_path / "junk.safetensors"
        junk.write_bytes(b"not a safetensors file")
        with pytest.raises(WeightsError, match="junk.safetensors"):
            create_backbone("sd4match", weights=str(junk), sd_weights=models["sd_weights"])
        with pytest.raises(WeightsError, match="no such prompt file"):
            read_prompt_file(tmp_path / "missing.safetensors")
        wrong = tmp_path / "wrong.safetensors"
        save_prompt(wrong, SinglePrompt(2, 7), PromptConfig(kind="single", dim=7, length=2,
                                                            image_size=SIZE, timestep=50))
        with pytest.raises(WeightsError, match="wrong.safetensors.*width 7"):
            create_backbone("sd4match", weights=str(wrong), sd_weights=models["sd_weights"])


def test_matcher_with_prompt_file(models: dict[str, str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``--backbone sd4match --weights PROMPT_FILE``: SD 2.1 found via $SEMCORR_WEIGHTS/sd21."""
    from semcorr.pipeline import Matcher

    bb = _build(models, length=4, init_seed=5)
    path = save_prompt(tmp_path / "prompt.safetensors", bb.prompt, bb.config)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "sd21").symlink_to(models["sd_weights"])
    monkeypatch.setenv("SEMCORR_WEIGHTS", str(tmp_path / "weights"))
    matcher = Matcher(create_backbone("sd4match", weights=str(path)), refine="kernel",
                      temperature=0.01)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert matcher.backbone.prompt_sha256 == digest  # evaluation records tell prompts apart
    image = _images(1, 7)[0]
    points = torch.tensor([[3.0, 5.0], [20.0, 11.0], [28.0, 28.0]])
    result = matcher.match(image, [image], points)[0]
    assert result.points.shape == (3, 2)
    # identical images: every query's own cell is its best match
    assert (result.points - points).abs().max() < 2.0 * bb.stride

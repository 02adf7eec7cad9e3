"""SD4Match's released prompt files and CPM input, against the official code.

The official modules (``src/stable_diffusion/{hidden_state,prompt,hybrid_captioner}.py`` of
ActiveVisionLab/SD4Match under ``../shared/reference``) are imported from their files and run
on tiny random text encoders; nothing of them is re-implemented here. What this machine cannot
satisfy is bent, nothing else: ``HiddenStateHandler`` hard-codes ``.to("cuda")`` (redirected to
the CPU for its calls); the official code reaches ``CLIPTextModel.text_model``, which
transformers 5 no longer has (the model is its own text model: :func:`_with_text_model`);
``HybridCaptioner`` loads SD 2.1's text encoder from the hub (redirected to a tiny local one of
SD 2.1's width 1024 and length 77, which its hard-coded sizes need) and its DINOv2 cache from
disk (set after construction).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "features"))

from tiny_models import (  # noqa: E402
    _save_tiny_clip_tokenizer,
    one_thread,  # noqa: F401  (fixture)
    save_tiny_stable_diffusion,
)

from semcorr import create_backbone  # noqa: E402
from semcorr.errors import WeightsError  # noqa: E402
from semcorr.features.sd4match import (  # noqa: E402
    _load_text_encoder,
    build_prompt,
    read_prompt_file,
)
from semcorr.features.sd4match_official import (  # noqa: E402
    cpm_dino_input,
    official_prompt_name,
    read_official_prompt,
    write_official_prompt,
)

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / \
    "ActiveVisionLab+SD4Match"
IMAGES = ["cat-2008_000001", "cat-2008_000002", "dog-2008_000003", "dog-2008_000004",
          "bird-2008_000005"]


def _official(module: str) -> types.ModuleType:
    """An official module loaded from its file (skips when ../shared is absent)."""
    path = REFERENCE / "src" / "stable_diffusion" / f"{module}.py"
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/reference is not beside the repository)")
    name = f"_sd4match_official_{module}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        sys.modules[name] = loaded
    return sys.modules[name]


@contextlib.contextmanager
def _cuda_on_cpu() -> Iterator[None]:
    """``tensor.to("cuda")`` lands on the CPU (the official handler hard-codes CUDA)."""
    original = torch.Tensor.to

    def to(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        args = tuple("cpu" if a == "cuda" else a for a in args)
        if kwargs.get("device") == "cuda":
            kwargs["device"] = "cpu"
        return original(self, *args, **kwargs)

    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.to = original


def _with_text_model(model: torch.nn.Module) -> torch.nn.Module:
    """transformers 4's ``CLIPTextModel.text_model`` (transformers 5 flattened it), without
    registering a submodule."""
    if not hasattr(model, "text_model"):
        object.__setattr__(model, "text_model", model)
    return model


def _cfg(root: Path, prompt_type: str) -> types.SimpleNamespace:
    extractor = types.SimpleNamespace(PROMPT_TYPE=prompt_type, PROMPT_CACHE_ROOT=str(root))
    return types.SimpleNamespace(FEATURE_EXTRACTOR=extractor)


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd4m-official") / "sd")


def _official_caption(sd: Path, root: Path, option: str, learnable: int) -> Path:
    """caption.pt written by the official HiddenStateHandler after a fake training step."""
    from transformers import CLIPTextModel, CLIPTokenizer

    hidden_state = _official("hidden_state")
    tokenizer = CLIPTokenizer.from_pretrained(sd / "tokenizer")
    text = _with_text_model(CLIPTextModel.from_pretrained(sd / "text_encoder"))
    torch.manual_seed(0)
    with _cuda_on_cpu():
        ref = hidden_state.ReferenceDictGenerator("2-1", option, "cpu")(IMAGES)
        handler = hidden_state.HiddenStateHandler(ref, learnable, False, tokenizer, text, "cpu")
        with torch.no_grad():
            for param in handler.learnable_parameters.values():
                param.add_(0.1 * torch.randn_like(param))  # "trained"
        folder = root / f"{option.capitalize()}_spair_sd2-1_TokenEmbeds{learnable}"
        handler.save_learnable_params(str(folder))
    return folder


@pytest.mark.parametrize("option", ["single", "class"])
def test_caption_file_equals_prompt_manager(sd: Path, tmp_path: Path, option: str) -> None:
    """Released caption.pt (folder or file): semcorr's encoder input = PromptManager's."""
    folder = _official_caption(sd, tmp_path, option, learnable=14)  # T = 16: all learned
    manager = _official("prompt").PromptManager(_cfg(tmp_path, folder.name))
    names = [n.split("-") for n in IMAGES[::-1]]
    expected = manager(imnames=[n[1] for n in names], class_names=[n[0] for n in names])
    for weights in (folder, folder / "caption.pt"):
        backbone = create_backbone("sd4match", weights=str(weights), sd_weights=str(sd),
                                   image_size=32, timestep=50)
        assert backbone.config.kind == option and backbone.config.length == 14
        assert backbone.prompt_file == str(folder / "caption.pt")
        with torch.no_grad():
            ours = backbone.text.token_sequence(backbone.learned_tokens(
                categories=[n[0] for n in names], batch_size=len(names)))
        assert ours.shape == expected.shape == (5, 16, 32)
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    if option == "class":
        assert sorted(backbone.config.categories) == ["bird", "cat", "dog"]


def test_caption_exported_loads_in_prompt_manager(sd: Path, tmp_path: Path) -> None:
    """semcorr → caption.pt → PromptManager gives semcorr's sequences back."""
    backbone = create_backbone("sd4match", sd_weights=str(sd), prompt="class",
                               categories=["cat", "dog"], length=14, init_seed=4,
                               image_size=32, timestep=50)
    file = write_official_prompt(tmp_path, backbone.prompt, backbone.config, backbone.text,
                                 "spair")
    assert file == tmp_path / "Class_spair_sd2-1_TokenEmbeds14" / "caption.pt"
    manager = _official("prompt").PromptManager(_cfg(tmp_path, file.parent.name))
    expected = manager(imnames=["x", "y", "z"], class_names=["dog", "cat", "dog"])
    with torch.no_grad():
        ours = backbone.text.token_sequence(backbone.learned_tokens(
            categories=["dog", "cat", "dog"]))
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    again = read_official_prompt(file.parent)
    assert torch.equal(again.state["embeds"], backbone.prompt.embeds.detach())


# ----------------------------------------------------------------------------------------- CPM
CPM_NAME = "CPM_spair_sd2-1_Pair-DINO-Feat-G25-C50"


@pytest.fixture(scope="module")
def wide_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text encoder with SD 2.1's width (1024) and length (77), diffusers layout."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("wide-text")
    torch.manual_seed(1)
    CLIPTextModel(CLIPTextConfig(
        hidden_size=1024, intermediate_size=16, num_attention_heads=4, num_hidden_layers=1,
        vocab_size=64, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
        pad_token_id=1)).save_pretrained(root / "text_encoder")
    _save_tiny_clip_tokenizer(root / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(root / "tokenizer")
    return root


def _hybrid_captioner(wide_text: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch,
                      features: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The official HybridCaptioner on the local text encoder and the given DINOv2 tokens."""
    module = _official("hybrid_captioner")

    class Local:
        def __init__(self, kind: type) -> None:
            self.kind = kind

        def from_pretrained(self, _hub_id: str, subfolder: str) -> object:
            loaded = self.kind.from_pretrained(wide_text / subfolder)
            return _with_text_model(loaded) if subfolder == "text_encoder" else loaded

    monkeypatch.setattr(module, "CLIPTextModel", Local(module.CLIPTextModel))
    monkeypatch.setattr(module, "CLIPTokenizer", Local(module.CLIPTokenizer))
    (cache_root / "DINOv2" / "spair").mkdir(parents=True, exist_ok=True)
    torch.save({}, cache_root / "DINOv2" / "spair" / "cached_output.pt")
    captioner = module.HybridCaptioner(CPM_NAME, str(cache_root), "cpu")
    captioner.feat_cache_dict = {k: types.SimpleNamespace(last_hidden_state=v)
                                 for k, v in features.items()}
    return captioner


def _dino_features() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {name: torch.randn(1, 257, 768, generator=g) for name in IMAGES}  # CLS + 16 x 16


def _text_encoder(wide_text: Path):
    from semcorr.hub import resolve_weights

    return _load_text_encoder(resolve_weights(str(wide_text), name="sd21", default="unused"))


def _semcorr_cpm(file: Path, wide_text: Path):
    official = read_official_prompt(file)
    module = build_prompt(official.config)
    module.load_state_dict(official.state, strict=True)
    return official, module, _text_encoder(wide_text)


def test_ckpt_equals_hybrid_captioner(wide_text: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Released ckpt.pt: semcorr's CPM encoder input = HybridCaptioner's output."""
    features = _dino_features()
    captioner = _hybrid_captioner(wide_text, tmp_path, monkeypatch, features)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in captioner.named_parameters():
            if "text_model_embeddings" not in name:
                param.add_(0.1 * torch.randn_like(param))  # "trained"
    folder = tmp_path / "prompt" / CPM_NAME
    folder.mkdir(parents=True)
    captioner.save_state_dict(str(folder / "ckpt.pt"))
    src, trg = IMAGES[:3], IMAGES[2:]
    with torch.no_grad():
        expected = captioner(src_identifiers=src, trg_identifiers=trg)
    official, module, text = _semcorr_cpm(folder, wide_text)
    config = official.config
    assert (config.kind, config.global_length, config.cond_length, config.dino_dim,
            config.dino_patches, config.dim, official.dataset) == ("cpm", 25, 50, 768, 16,
                                                                   1024, "spair")
    tokens0 = torch.cat([features[n][:, 1:] for n in src])
    tokens1 = torch.cat([features[n][:, 1:] for n in trg])
    with torch.no_grad():
        ours = text.token_sequence(module(tokens0, tokens1))
    assert ours.shape == expected.shape == (3, 77, 1024)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_ckpt_exported_loads_in_hybrid_captioner(wide_text: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """semcorr CPM → ckpt.pt → HybridCaptioner.load_state_dict (as test.py) → same output."""
    from semcorr.features.sd4match import PromptConfig

    config = PromptConfig(kind="cpm", dim=1024, global_length=25, cond_length=50)
    torch.manual_seed(5)
    module = build_prompt(config)
    text = _text_encoder(wide_text)
    file = write_official_prompt(tmp_path, module, config, text, "spair")
    assert file.parent.name == CPM_NAME == official_prompt_name(config, "spair")
    features = _dino_features()
    captioner = _hybrid_captioner(wide_text, tmp_path, monkeypatch, features)
    result = captioner.load_state_dict(torch.load(file, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["text_model_embeddings.position_embedding.weight",
                                           "text_model_embeddings.token_embedding.weight"]
    assert not result.unexpected_keys
    with torch.no_grad():
        expected = captioner(src_identifiers=IMAGES[:2], trg_identifiers=IMAGES[3:])
        ours = text.token_sequence(module(
            torch.cat([features[n][:, 1:] for n in IMAGES[:2]]),
            torch.cat([features[n][:, 1:] for n in IMAGES[3:]])))
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ bad files
def test_folder_name_must_agree_and_kinds_refused(sd: Path, tmp_path: Path) -> None:
    folder = _official_caption(sd, tmp_path, "single", learnable=14)
    lying = folder.rename(tmp_path / "Class_spair_sd2-1_TokenEmbeds14")
    with pytest.raises(WeightsError, match="says Class but the file holds one dataset"):
        read_official_prompt(lying)
    hidden = lying.rename(tmp_path / "Single_spair_sd2-1_HiddenState")
    with pytest.raises(WeightsError, match="HiddenState"):
        read_official_prompt(hidden)
    renamed = hidden.rename(tmp_path / "my-prompt")  # no name: the content decides
    assert read_official_prompt(renamed / "caption.pt").config.kind == "single"
    assert read_prompt_file(renamed)[0].length == 14
    img = tmp_path / "CPM_spair_sd2-1_Img-DINO-Feat-G25-C50"
    img.mkdir()
    torch.save({"global_embeds": torch.zeros(1, 25, 8)}, img / "ckpt.pt")
    with pytest.raises(WeightsError, match="Img-DINO-Feat CPM"):
        read_official_prompt(img)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="junk.pt: not a loadable"):
        read_official_prompt(junk)
    with pytest.raises(WeightsError, match="no SD4Match caption.pt"):
        read_official_prompt(tmp_path / "missing")


def test_cli_head_weights_caption(sd: Path, tmp_path: Path) -> None:
    """``--head sd4match --head-weights FOLDER --weights SD`` builds the released prompt."""
    import argparse

    from semcorr.cli.common import add_backbone_options, backbone_from_args

    folder = _official_caption(sd, tmp_path, "class", learnable=14)
    parser = argparse.ArgumentParser()
    add_backbone_options(parser)
    args = parser.parse_args(["--head", "sd4match", "--head-weights", str(folder),
                              "--weights", str(sd), "--device", "cpu",
                              "--backbone-option", "image_size=32"])
    backbone = backbone_from_args(args)
    assert backbone.config.kind == "class" and backbone.config.timestep == 261
    assert backbone.prompt_file == str(folder / "caption.pt")
    with torch.no_grad():
        assert backbone.conditioned(category="dog")(torch.rand(1, 3, 32, 32)).shape[1] == 64


# ----------------------------------------------------------------------------- CPM input
def _processor():
    """``facebook/dinov2-base``'s image processor, built from its preprocessor_config.json
    values (the hub is unreachable): PIL backend, as transformers 4 ran it for the official
    pre_compute_dino_feature.py."""
    from transformers import BitImageProcessorPil

    return BitImageProcessorPil(
        do_resize=True, size={"shortest_edge": 256}, resample=3, do_center_crop=True,
        crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True)


@pytest.mark.parametrize("size", [(500, 375), (333, 500), (256, 256), (180, 97), (640, 427)])
def test_cpm_dino_input_equals_the_hf_processor(size: tuple[int, int]) -> None:
    """Reference: transformers' ``BitImageProcessorPil`` with facebook/dinov2-base's settings,
    the processor the official pre_compute_dino_feature.py loads (``AutoImageProcessor``).
    Independent of semcorr's code: it computes the size, resizes, crops and scales itself; we
    compare the normalised pixels it hands DINOv2."""
    import numpy as np
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(width * height)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = _processor()(Image.fromarray(array), return_tensors="pt")["pixel_values"][0]
    image = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    ours = cpm_dino_input(image)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert ours.shape == expected.shape == (3, 224, 224)
    torch.testing.assert_close((ours - mean) / std, expected, atol=2e-6, rtol=0)


def test_cpm_conditioning_uses_the_processor_crops_of_the_originals(
        sd: Path, tmp_path: Path) -> None:
    """The Matcher's pair view: DINOv2 tokens = the HF Dinov2Model run on the processor's
    pixels of the original images (pre_compute_dino_feature.py), then the CPM."""
    import numpy as np
    from PIL import Image
    from tiny_models import save_tiny_dinov2
    from transformers import Dinov2Model

    dino = save_tiny_dinov2(tmp_path / "dino")
    backbone = create_backbone("sd4match", sd_weights=str(sd), prompt="cpm",
                               dino_weights=str(dino), global_length=2, cond_length=3,
                               dino_patches=16, image_size=32, timestep=50).eval()
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (90, 140, 3), dtype=np.uint8),
              rng.integers(0, 256, (120, 70, 3), dtype=np.uint8)]
    images = [torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in arrays]
    model = Dinov2Model.from_pretrained(dino).eval()
    processor = _processor()
    with torch.no_grad():
        official = [model(pixel_values=processor(Image.fromarray(a), return_tensors="pt")
                          ["pixel_values"]).last_hidden_state[:, 1:] for a in arrays]
        ours = [backbone.dino_tokens(backbone.dino_inputs([img])) for img in images]
        for a, b in zip(ours, official, strict=True):
            assert a.shape == b.shape == (1, 256, 32)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        view = backbone.conditioned(pair=(images[0], images[1]))
        expected = backbone.conditioning(backbone.prompt(official[0], official[1]))
    torch.testing.assert_close(view.context, expected, atol=1e-5, rtol=0)

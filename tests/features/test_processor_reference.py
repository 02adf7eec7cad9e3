"""DINOv3 and SAM: semcorr's whole path from an image file against transformers' own image
processor and model.

Reference: transformers' model run on the ``pixel_values`` of transformers' image processor,
which was saved with ``save_pretrained`` beside tiny random weights and loaded back with
``AutoImageProcessor``; the processor reads the raw pixels of a real photo on disk
(``semcorr/assets/chelsea.jpg``, 451 x 300, so the resize is not square and the pad is not
empty). semcorr is driven only through its public path: ``create_backbone(name, weights=DIR)``,
``load_image(file)``, ``extract``. This is independent of semcorr's code: the processor's PIL
resize on 8-bit pixels, its rescale and normalisation, and the model's own forward and hidden
states, not semcorr's ``ResizePad``, ``normalize`` or layer hook. It checks the resize target,
the interpolation, the normalisation constants and which layer semcorr reads.

Deliberate differences, stated and bridged here (not hidden):

* semcorr keeps the aspect ratio and pads DINOv3's input to a square, centred, with black
  pixels (zero before normalisation); DINOv3's processor stretches to a fixed size instead. So
  that processor is configured to semcorr's content size, and its output is placed on
  semcorr's canvas (normalised black, centred) before the model runs. SAM needs no bridge:
  semcorr prepares SAM's input as SAM's processor does (top-left content, bottom/right padding
  that is zero after normalisation), so the processor runs with its own padding.
* transformers 5 implements DINOv3's processor (``DINOv3ViTImageProcessor``) with torchvision
  only, which is not installable beside this CPU torch build; where it is absent the DINOv2
  family's PIL processor (``BitImageProcessorPil``, transformers' ``AutoImageProcessor`` for
  ``dinov2``) stands in, configured with DINOv3's processor settings (bilinear, rescale 1/255,
  ImageNet mean/std, no crop). With torchvision present, DINOv3's own processor runs as well.
* The processors resize 8-bit images with PIL and round to 8 bits; semcorr resizes floats with
  antialiased bilinear. Inputs differ by at most ~1 grey level (measured 0.013 in normalised
  units), hence a tolerance on features rather than 1e-5; wrong normalisation or a wrong layer
  is checked to land far outside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tiny_models import one_thread, save_tiny_dinov3, save_tiny_sam  # noqa: E402, F401

from semcorr import create_backbone  # noqa: E402
from semcorr.geometry import ResizePad  # noqa: E402
from semcorr.io import load_image  # noqa: E402

PHOTO = Path(__file__).resolve().parents[2] / "src" / "semcorr" / "assets" / "chelsea.jpg"
PHOTO_SIZE = (451, 300)
#: Relative error (Frobenius) allowed between the two paths' features; measured in each test.
FEATURE_RTOL = 0.01
#: The same for SAM, whose tiny model spreads the 8-bit rounding further (measured 0.0085).
SAM_RTOL = 0.015
#: Max |difference| of normalised input pixels (8-bit rounding, PIL vs torch resampling).
PIXEL_ATOL = 0.05


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _on_canvas(pixels: torch.Tensor, transform: ResizePad, mean: tuple, std: tuple
               ) -> torch.Tensor:
    """The processor's ``(1, 3, h, w)`` output placed where ``transform`` puts the content, on a
    square canvas of normalised black (semcorr's default padding, the documented difference)."""
    black = (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1)
    canvas = black.expand(1, 3, transform.size, transform.size).clone()
    left, top = transform.pad
    w, h = transform.resized
    assert pixels.shape[-2:] == (h, w), (pixels.shape, transform.resized)
    canvas[..., top : top + h, left : left + w] = pixels
    return canvas


def _ours(backbone: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, ResizePad]:
    """semcorr from the file: features, the normalised input it built, and its transform."""
    image = load_image(PHOTO)
    features, transforms = backbone.extract([image])
    batch, _ = backbone.prepare([image])
    return features, backbone.normalize(batch), transforms[0]


# ------------------------------------------------------------------------------ DINOv3


@pytest.fixture(scope="module")
def dinov3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dinov3(tmp_path_factory.mktemp("dinov3") / "tiny")


def _dinov3_processor(folder: Path, kind: str, height: int, width: int):  # noqa: ANN202
    """Save the processor beside the weights and load it back through AutoImageProcessor."""
    import transformers
    from transformers import AutoImageProcessor

    if kind == "DINOv3ViTImageProcessor":
        pytest.importorskip("torchvision", reason="transformers' DINOv3 processor needs it")
        processor = transformers.DINOv3ViTImageProcessor(size={"height": height, "width": width})
    else:
        processor = transformers.BitImageProcessorPil(
            size={"height": height, "width": width}, do_center_crop=False, resample=2,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
            do_convert_rgb=True)
    processor.save_pretrained(folder)
    return AutoImageProcessor.from_pretrained(folder)


@pytest.mark.parametrize("kind", ["BitImageProcessorPil", "DINOv3ViTImageProcessor"])
@pytest.mark.parametrize("layer", [-1, 0])
def test_dinov3_file_path_matches_processor_and_model(
    dinov3_dir: Path, tmp_path: Path, kind: str, layer: int
) -> None:
    """DINOv3 (patch 16, 4 registers, 4 x 4 patches = 64 px): semcorr from the file equals
    ``DINOv3ViTModel`` on the processor's pixels, patch tokens of block ``layer`` (hidden state
    ``layer + 1``, CLS and registers dropped, before the final norm), within FEATURE_RTOL
    (measured: 0.0037). The other block (measured 0.037) or a missing normalisation is > 3x
    off, so the tolerance tells the layer read and the normalisation apart."""
    from PIL import Image
    from transformers import DINOv3ViTModel

    backbone = create_backbone("dinov3_vitb16", weights=str(dinov3_dir), layer=layer,
                               num_patches=4)
    ours, our_pixels, transform = _ours(backbone)
    w, h = transform.resized
    processor = _dinov3_processor(tmp_path / "processor", kind, h, w)
    pixels = processor(images=Image.open(PHOTO), return_tensors="pt")["pixel_values"]
    canvas = _on_canvas(pixels, transform, processor.image_mean, processor.image_std)
    assert float((canvas - our_pixels).abs().max()) <= PIXEL_ATOL

    model = DINOv3ViTModel.from_pretrained(dinov3_dir).eval()
    prefix = 1 + model.config.num_register_tokens

    def tokens(x: torch.Tensor, block: int) -> torch.Tensor:
        with torch.no_grad():
            hidden = model(pixel_values=x, output_hidden_states=True).hidden_states[block + 1]
        return hidden[:, prefix:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)

    block = layer % model.config.num_hidden_layers
    expected = tokens(canvas, block)
    error = relative_error(ours, expected)
    assert error <= FEATURE_RTOL, error
    assert relative_error(tokens(canvas, 1 - block), expected) > 3 * FEATURE_RTOL
    unnormalised = _on_canvas(pixels * torch.tensor(processor.image_std).view(1, 3, 1, 1)
                              + torch.tensor(processor.image_mean).view(1, 3, 1, 1),
                              transform, (0, 0, 0), (1, 1, 1))
    assert relative_error(tokens(unnormalised, block), expected) > 3 * FEATURE_RTOL


# ------------------------------------------------------------------------------ SAM


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny")


def _sam_processor(folder: Path):  # noqa: ANN202
    """SAM's own processor (PIL backend), its longest edge and pad size set to the tiny
    model's 64 px (SAM's is 1024), saved beside the weights and loaded back through
    AutoImageProcessor."""
    from transformers import AutoImageProcessor, SamImageProcessorPil

    SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                         do_pad=True).save_pretrained(folder)
    return AutoImageProcessor.from_pretrained(folder)


def _sam_reference(folder: Path, pixels: torch.Tensor, output: str) -> torch.Tensor:
    from transformers import SamModel

    model = SamModel.from_pretrained(folder).eval()
    with torch.no_grad():
        if output == "neck":
            return model.get_image_embeddings(pixel_values=pixels)
        hidden = model.vision_encoder(pixel_values=pixels, output_hidden_states=True)
        return hidden.hidden_states[-1].permute(0, 3, 1, 2)


@pytest.mark.parametrize("output", ["neck", "vit"])
def test_sam_file_path_matches_processor_and_model(sam_dir: Path, tmp_path: Path,
                                                   output: str) -> None:
    """SAM (64 px, patch 16): semcorr from the file equals ``SamModel`` (image embeddings, or
    the last ViT block's tokens) on SamImageProcessor's own output (resize of the long side,
    rescale, normalisation, bottom/right padding with zeros after normalisation), within
    SAM_RTOL (measured: 0.0068 neck, 0.0085 vit). Controls, each > 3x off: the processor's
    content without normalisation, and the same content padded the way semcorr pads other
    backbones (centred, black), which is what semcorr did for SAM before (measured 1.25 neck,
    1.97 vit; without normalisation 0.86, 0.95)."""
    from PIL import Image

    backbone = create_backbone("sam_vit_b", weights=str(sam_dir), output=output)
    ours, our_pixels, transform = _ours(backbone)
    processor = _sam_processor(tmp_path / "processor")
    out = processor(images=Image.open(PHOTO), return_tensors="pt")
    pixels = out["pixel_values"]
    w, h = transform.resized
    assert out["reshaped_input_sizes"].tolist() == [[h, w]] and transform.pad == (0, 0)
    assert float((pixels - our_pixels).abs().max()) <= PIXEL_ATOL
    expected = _sam_reference(sam_dir, pixels, output)
    error = relative_error(ours, expected)
    assert error <= SAM_RTOL, error
    content = pixels[..., :h, :w]
    mean, std = processor.image_mean, processor.image_std
    centred = _on_canvas(content, ResizePad(PHOTO_SIZE[0], PHOTO_SIZE[1], 64, 16), mean, std)
    raw = content * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    raw = _on_canvas(raw, transform, (0, 0, 0), (1, 1, 1))
    for control in (centred, raw):
        assert relative_error(_sam_reference(sam_dir, control, output), expected) > \
            3 * SAM_RTOL

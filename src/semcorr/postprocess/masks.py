"""Instance masks for adaptive pose alignment: from a file, from a bounding box, or from SAM.

Masks are boolean ``(H, W)`` tensors in the original image's pixels (see
:mod:`semcorr.conventions`), passed to :meth:`semcorr.pipeline.Matcher.match`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from semcorr.errors import ImageError, InputError, WeightsError

__all__ = ["bbox_mask", "load_mask", "load_sam", "sam_box_mask"]


def bbox_mask(width: int, height: int, bbox: Sequence[float]) -> torch.Tensor:
    """A ``(height, width)`` boolean mask, True on pixels whose centre is in ``bbox``.

    Args:
        width, height: image size.
        bbox: ``[x1, y1, x2, y2]`` in pixels (SPair's ``bndbox``), inclusive.

    Raises:
        InputError: for a malformed or empty box.
    """
    if len(bbox) != 4:
        raise InputError(f"a bounding box is [x1, y1, x2, y2], got {list(bbox)}")
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not (x2 >= x1 and y2 >= y1):
        raise InputError(f"empty bounding box {list(bbox)}")
    xs = torch.arange(width, dtype=torch.float32)
    ys = torch.arange(height, dtype=torch.float32)
    cols = (xs >= x1) & (xs <= x2)
    rows = (ys >= y1) & (ys <= y2)
    return rows[:, None] & cols[None, :]


def load_mask(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read a mask image (any non-zero pixel is on the object) as ``(H, W)`` booleans.

    Args:
        path: a PNG (or any PIL-readable) mask, e.g. SPair's ``Segmentation`` files.
        size: the expected ``(width, height)`` (the image's), checked when given.

    Raises:
        ImageError: naming the file when it is missing, unreadable or of the wrong size.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    file = Path(path).expanduser()
    if not file.is_file():
        raise ImageError(f"{file}: no such mask file")
    try:
        with Image.open(file) as image:
            image.load()
            array = torch.from_numpy(np.asarray(image.convert("L")).copy())
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{file}: not a readable mask image ({exc})") from None
    if size is not None and (array.shape[1], array.shape[0]) != tuple(size):
        raise ImageError(
            f"{file}: mask is {array.shape[1]}x{array.shape[0]}, its image is {size[0]}x{size[1]}"
        )
    return array > 0


def sam_box_mask(model: object, processor: object, image: torch.Tensor, bbox: Sequence[float]
                 ) -> torch.Tensor:
    """SAM's mask of the object in ``bbox`` (``transformers`` ``SamModel`` + ``SamProcessor``).

    Args:
        model: a ``transformers.SamModel`` (on the device to use).
        processor: its ``SamProcessor``.
        image: ``(3, H, W)`` in [0, 1].
        bbox: ``[x1, y1, x2, y2]`` prompt in pixels.

    Returns:
        ``(H, W)`` boolean mask (the highest-scoring of SAM's masks).
    """
    h, w = image.shape[-2:]
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    inputs = processor(images=array, input_boxes=[[list(map(float, bbox))]], return_tensors="pt")
    device = next(model.parameters()).device
    with torch.inference_mode():
        outputs = model(pixel_values=inputs["pixel_values"].to(device),
                        input_boxes=inputs["input_boxes"].to(device), multimask_output=True)
    masks = processor.image_processor.post_process_masks(
        outputs.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0][0]  # (M, H, W)
    best = int(outputs.iou_scores[0, 0].argmax())
    mask = masks[best].to(torch.bool)
    if tuple(mask.shape) != (h, w):
        raise InputError(f"SAM returned a {tuple(mask.shape)} mask for a {(h, w)} image")
    return mask


def load_sam(path: str | os.PathLike[str]) -> tuple[object, object]:
    """A SAM model and its processor from a ``save_pretrained`` folder (``transformers``).

    Returns:
        ``(SamModel in eval mode on the CPU, SamProcessor)``; move the model to a device at
        the boundary.

    Raises:
        WeightsError: naming the folder when it is missing or not a SAM checkpoint.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such SAM folder (a save_pretrained directory)")
    try:
        from transformers import SamModel, SamProcessor

        model = SamModel.from_pretrained(str(folder)).eval()
        processor = SamProcessor.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{folder}: not a SAM checkpoint ({first})") from None
    return model, processor

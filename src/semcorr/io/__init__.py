"""Stage 0: reading images and writing results."""

from semcorr.io.files import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_dir,
    check_output_file,
    quick_stamp,
)
from semcorr.io.image import (
    MAX_PIXELS,
    load_image,
    load_pil,
    open_image,
    pil_to_tensor,
    pixel_cap,
    to_rgb8,
)
from semcorr.io.points import parse_points

__all__ = [
    "MAX_PIXELS",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_output_dir",
    "check_output_file",
    "load_image",
    "load_pil",
    "open_image",
    "parse_points",
    "pil_to_tensor",
    "pixel_cap",
    "quick_stamp",
    "to_rgb8",
]

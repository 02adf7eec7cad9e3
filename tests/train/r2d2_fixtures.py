"""Tiny copies of R2D2's training data (WASF) and of HPatches, in their released layouts.

Images are crops of the shared photographs, so the content is real. The optical-flow pair is
two crops of one photograph offset by a known shift, so its flow is known exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

#: The shift between the two crops of the flow pair (image 2 = image 1 moved by it).
FLOW_SHIFT = (23, -11)


def _photos(shared: Path) -> list[Image.Image]:
    return [Image.open(shared / name).convert("RGB")
            for name in ("boat.png", "peppers.png", "brooklyn.png")]


def _crops(photo: Image.Image, size: tuple[int, int], count: int) -> list[Image.Image]:
    w, h = photo.size
    xs = np.linspace(0, w - size[0], count).astype(int)
    ys = np.linspace(0, h - size[1], count).astype(int)[::-1]
    return [photo.crop((x, y, x + size[0], y + size[1])) for x, y in zip(xs, ys, strict=True)]


def write_flow_png(flow: np.ndarray, path: Path) -> None:
    """A flow ``(H, W, 2)`` as the released PNG: int16 in 1/16 pixel, 4 bytes per pixel."""
    values = np.clip(np.around(16 * flow), -2**15, 2**15 - 1).astype("<i2")
    Image.fromarray(values.view(np.uint8).reshape(flow.shape[0], flow.shape[1], 4)).save(path)


def write_flow_raw(flow: np.ndarray, path: Path) -> None:
    """A flow in the raw (Middlebury ``.flo``) layout."""
    h, w = flow.shape[:2]
    with open(path, "wb") as handle:
        np.float32(202021.25).tofile(handle)
        np.array([w, h], "<i4").tofile(handle)
        flow.astype("<f4").tofile(handle)


def write_wasf(root: Path, shared: Path, size: tuple[int, int] = (240, 200)) -> Path:
    """``root`` with 4 web images (list 0 as a file, list 1 found by listing), 3 Aachen DB
    images, 2 style-transfer renderings and 1 optical-flow pair (PNG) + 1 (raw file)."""
    photos = _photos(shared)
    web = root / "revisitop1m"
    names = []
    for k, image in enumerate(_crops(photos[2], size, 3) + _crops(photos[1], size, 1)):
        folder = "000" if k < 3 else "004"
        name = f"{folder}{k:05d}.jpg"
        (web / folder).mkdir(parents=True, exist_ok=True)
        image.save(web / folder / name, quality=95)
        names.append(name)
    (web / "image_list_0.txt").write_text("\n".join(names[:3]))
    db = root / "aachen" / "images_upright" / "db"
    db.mkdir(parents=True)
    big = photos[2].resize((1280 * 3 // 4, 820 * 3 // 4))
    for tag, image in zip(("1001", "1002"), _crops(photos[0], size, 2), strict=True):
        image.save(db / f"{tag}.jpg", quality=95)
    dx, dy = FLOW_SHIFT
    first = big.crop((100, 100, 100 + size[0], 100 + size[1]))
    second = big.crop((100 + dx, 100 + dy, 100 + dx + size[0], 100 + dy + size[1]))
    first.save(db / "2001.jpg", quality=95)
    second.save(db / "2002.jpg", quality=95)
    style = root / "aachen" / "style_transfer"
    style.mkdir()
    for tag in ("1001", "2001"):
        day = Image.open(db / f"{tag}.jpg")
        night = ImageEnhance.Brightness(ImageEnhance.Color(day).enhance(0.3)).enhance(0.45)
        night.resize((size[0] * 3 // 2, size[1] * 3 // 2)).save(style / f"{tag}.jpg.st_night.jpg")
    flow_dir = root / "aachen" / "optical_flow"
    (flow_dir / "flow").mkdir(parents=True)
    (flow_dir / "mask").mkdir()
    flow = np.zeros((size[1], size[0], 2), np.float32)
    flow[..., 0], flow[..., 1] = -dx, -dy  # pixel p of image 1 is at p - shift in image 2
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    for name, sign in (("2001_2002", -1), ("2002_2001", 1)):
        x2, y2 = xs + sign * dx, ys + sign * dy
        mask = (x2 >= 0) & (x2 < size[0]) & (y2 >= 0) & (y2 < size[1])
        Image.fromarray(mask.astype(np.uint8)).save(flow_dir / "mask" / f"{name}.png")
    write_flow_png(flow, flow_dir / "flow" / "2001_2002.png")
    (flow_dir / "flow" / "2002_2001.png").write_bytes(b"not a png")  # raw file beside it
    write_flow_raw(-flow, flow_dir / "flow" / "2002_2001")
    return root


def hpatches_homographies(width: int, height: int) -> dict[int, np.ndarray]:
    """Mild known homographies H_1_k (k = 2..6) about the image centre: rotation, scale and a
    little perspective, growing with k."""
    cx, cy = width / 2, height / 2
    out = {}
    for k in range(2, 7):
        angle, scale, tilt = 0.03 * (k - 1), 1 + 0.04 * (k - 1), 1e-4 * (k - 1)
        centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
        rotate = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 0],
                           [scale * np.sin(angle), scale * np.cos(angle), 0], [tilt, 0, 1]])
        back = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
        h = back @ rotate @ centre
        out[k] = h / h[2, 2]
    return out


def write_hpatches(root: Path, shared: Path, size: tuple[int, int] = (320, 256)) -> Path:
    """``root`` with one viewpoint sequence (image k = image 1 warped by a known H_1_k), one
    illumination sequence (image k = image 1 darker or brighter, H_1_k = identity) and an
    incomplete ``v_talent`` (one of the sequences the protocol leaves out)."""
    photo = _photos(shared)[2]
    first = photo.crop((400, 250, 400 + size[0], 250 + size[1]))
    view, light = root / "v_fixture", root / "i_fixture"
    for folder in (view, light, root / "v_talent"):
        folder.mkdir(parents=True)
    first.save(view / "1.ppm")
    first.save(light / "1.ppm")
    # PIL samples the source at M (p + 0.5) with pixel centres at +0.5: M = T H^-1 T^-1
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    for k, h in hpatches_homographies(*size).items():
        warped = _warp_in_context(photo, (400, 250), shift @ np.linalg.inv(h) @
                                  np.linalg.inv(shift), size)
        warped.save(view / f"{k}.ppm")
        np.savetxt(view / f"H_1_{k}", h)
        ImageEnhance.Brightness(first).enhance(0.5 + 0.2 * k).save(light / f"{k}.ppm")
        np.savetxt(light / f"H_1_{k}", np.eye(3))
    (root / "v_talent" / "1.ppm").write_bytes(b"")
    return root


def _warp_in_context(photo: Image.Image, origin: tuple[int, int], inverse: np.ndarray,
                     size: tuple[int, int]) -> Image.Image:
    """Image k: the output pixel p shows the photo at origin + H^-1 p, so real content fills
    the borders (PIL's convention, pixel centres at +0.5, is folded into ``inverse``)."""
    ox, oy = origin
    to_photo = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]]) @ inverse
    coeffs = tuple((to_photo / to_photo[2, 2]).ravel()[:8])
    return photo.transform(size, Image.PERSPECTIVE, coeffs, resample=Image.BICUBIC)


def write_held_out(root: Path, shared: Path, size: tuple[int, int] = (240, 200)) -> Path:
    """A root whose Aachen DB holds 4 crops that no fixture of :func:`write_wasf` uses (other
    regions of the photographs), for held-out synthetic pairs."""
    photos = _photos(shared)
    db = root / "aachen" / "images_upright" / "db"
    db.mkdir(parents=True)
    crops = [photos[1].crop((250, 280, 250 + size[0], 280 + size[1])),
             photos[0].crop((260, 300, 260 + size[0], 300 + size[1])),
             photos[2].crop((900, 500, 900 + size[0], 500 + size[1])),
             photos[2].crop((20, 600, 20 + size[0], 600 + size[1]))]
    for k, image in enumerate(crops):
        image.save(db / f"{9000 + k}.jpg", quality=95)
    return root

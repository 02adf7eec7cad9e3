"""The on-disk encoding of cached features: format constants, storage types, int8
quantisation, zlib packing and the checksum of every stored tensor (the layout of a cache
folder is described in :mod:`semcorr.features.cache`)."""

from __future__ import annotations

import zlib
from typing import Any

import torch

from semcorr.errors import SemcorrError

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "CHECKSUM_ALGORITHM",
    "FLIPPED",
    "ORIGINAL",
    "STORAGE_DTYPES",
    "CacheError",
    "checksum",
    "dequantize_int8",
    "quantize_int8",
]

CACHE_FORMAT = "semcorr-feature-cache"
CACHE_VERSION = 1
ORIGINAL, FLIPPED = "original", "flipped"

#: Names accepted for ``storage`` and the dtype written to disk.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
}

_ZLIB_LEVEL = 1


class CacheError(SemcorrError):
    """A cache folder or entry that cannot be used (corrupt, truncated, other config)."""


# --- encoding of one tensor ----------------------------------------------------------------------


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel int8 quantisation of a feature map.

    Args:
        x: ``(C, h, w)`` float.

    Returns:
        ``q`` ``(C, h, w)`` int8 in [-127, 127] and ``scale`` ``(C,)`` float32, with
        ``x ≈ q * scale[:, None, None]`` (error at most ``scale / 2`` per value).
    """
    x = x.float()
    scale = x.abs().amax(dim=(1, 2)) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x / scale[:, None, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize_int8`: ``(C, h, w)`` int8 and ``(C,)`` scales → ``dtype``
    (computed in ``dtype``: the integers are exact in float16 and wider)."""
    if q.device.type == "cpu" and dtype == torch.float32:
        import numpy as np

        # numpy's fused cast-and-multiply is an order of magnitude faster than torch's on CPU
        scale = scale.to(torch.float32).numpy()[:, None, None]
        return torch.from_numpy(np.multiply(q.numpy(), scale, dtype=np.float32))
    return q.to(dtype).mul_(scale.to(dtype)[:, None, None])


_CHECKSUM_BLOCK = 4096  # 64-bit words per block of the position-weighted sum
CHECKSUM_ALGORITHM = "blocksum64-v1"


def checksum(data: memoryview | bytes) -> str:
    """A fast Fletcher-style checksum of a byte buffer (not cryptographic).

    The buffer is read as little-endian 64-bit words (the last ``len % 8`` bytes apart). With
    ``S_k`` the wrapping sum of block ``k`` of 4096 words, the checksum is the length, the sum of
    all words and ``sum_k (k + 1) S_k`` (both mod 2**64) and the tail bytes: any single flipped
    bit, a truncation or two swapped blocks change it. It runs at memory speed (vectorised by
    numpy), unlike CRC-32, which would dominate the time to read an entry.
    """
    import numpy as np

    raw = np.frombuffer(data, dtype=np.uint8)
    whole = raw.size // 8 * 8
    words = raw[:whole].view("<u8")
    full = words.size // _CHECKSUM_BLOCK * _CHECKSUM_BLOCK
    blocks = np.add.reduce(words[:full].reshape(-1, _CHECKSUM_BLOCK), axis=1, dtype=np.uint64)
    rest = int(np.add.reduce(words[full:], dtype=np.uint64))
    weights = np.arange(1, blocks.size + 1, dtype=np.uint64)
    mask = (1 << 64) - 1  # array sums wrap mod 2**64; the scalar steps are Python ints
    total = (int(np.add.reduce(blocks, dtype=np.uint64)) + rest) & mask
    weighted = (int(np.add.reduce(blocks * weights, dtype=np.uint64))
                + rest * (blocks.size + 1)) & mask
    return f"{raw.size:x}:{total:016x}:{weighted:016x}:{raw[whole:].tobytes().hex()}"


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def _deflate(t: torch.Tensor) -> torch.Tensor:
    packer = zlib.compressobj(_ZLIB_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    data = packer.compress(_tensor_bytes(t)) + packer.flush()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _encode_part(
    x: torch.Tensor, storage: str, compress: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors to store for one ``(C, h, w)`` part (keys relative to its name) and its record."""
    x = x.detach().to("cpu")
    if storage == "int8":
        q, scale = quantize_int8(x)
        tensors = {"": q, ":scale": scale.contiguous()}
    else:
        tensors = {"": x.to(STORAGE_DTYPES[storage]).contiguous()}
    if compress:
        tensors[""] = _deflate(tensors[""])
    record = {"shape": list(x.shape), "storage": storage, "codec": "zlib" if compress else "raw"}
    return tensors, record

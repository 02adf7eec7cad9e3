"""Reading one cache entry: a safetensors file whose header is parsed on open and whose
tensors are read, verified against their checksums and decoded on demand."""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semcorr.features.cache.encoding import (
    CACHE_FORMAT,
    FLIPPED,
    ORIGINAL,
    STORAGE_DTYPES,
    CacheError,
    _tensor_bytes,
    checksum,
    dequantize_int8,
)
from semcorr.geometry import ResizePad

__all__ = ["CacheEntry"]

_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I8": torch.int8,
    "U8": torch.uint8,
}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse a safetensors header; returns it and the offset of the data section.

    Raises:
        CacheError: naming the file when it is truncated or not a safetensors file.
    """
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CacheError(f"{path}: truncated cache entry (no header)")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER:
                raise CacheError(f"{path}: not a safetensors cache entry ({length}-byte header)")
            raw = handle.read(length)
        size = path.stat().st_size
    except OSError as exc:
        raise CacheError(f"{path}: cannot read cache entry ({exc.strerror or exc})") from None
    if len(raw) < length:
        raise CacheError(f"{path}: truncated cache entry (header)")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CacheError(f"{path}: corrupt cache entry (header is not JSON)") from None
    try:
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):
        raise CacheError(f"{path}: corrupt cache entry (bad tensor table)") from None
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        raise CacheError(f"{path}: truncated cache entry ({size} bytes, header says {expected})")
    return header, 8 + length


@dataclass
class CacheEntry:
    """One image's cached features; the header is parsed, tensors are read on demand.

    Attributes:
        path: the entry file.
        meta: the entry's metadata (see the module docstring).
        header: the safetensors header (tensor dtypes, shapes, offsets).
        data_offset: where the data section starts in the file.
    """

    path: Path
    meta: dict[str, Any]
    header: dict[str, Any]
    data_offset: int

    @classmethod
    def open(cls, path: Path) -> CacheEntry:
        """Parse the header of an entry file.

        Raises:
            CacheError: when the file is truncated or its metadata is missing.
        """
        header, offset = _read_header(path)
        try:
            meta = json.loads(header["__metadata__"]["semcorr"])
            if meta["format"] != CACHE_FORMAT:
                raise KeyError("format")
        except (KeyError, TypeError, json.JSONDecodeError):
            raise CacheError(f"{path}: not a semcorr cache entry (metadata missing)") from None
        return cls(path, meta, header, offset)

    @property
    def image_id(self) -> str:
        return self.meta["image_id"]

    @property
    def parts(self) -> list[str]:
        """Names of the stored feature parts."""
        return sorted(self.meta["parts"])

    @property
    def orientations(self) -> list[str]:
        return list(self.meta["orientations"])

    @property
    def original_size(self) -> tuple[int, int]:
        """``(width, height)`` of the original image."""
        width, height = self.meta["original_size"]
        return int(width), int(height)

    @property
    def transform(self) -> ResizePad:
        """The resize/pad transform between the original image and the feature grid."""
        t = self.meta["transform"]
        fill = t.get("fill")  # entries written before anchor/fill existed: centred, zeros
        return ResizePad(t["width"], t["height"], t["size"], t["stride"],
                         t.get("anchor", "center"), None if fill is None else tuple(fill))

    def _read(self, key: str) -> torch.Tensor:
        """Read one stored tensor and check its checksum."""
        try:
            spec = self.header[key]
            begin, end = spec["data_offsets"]
            dtype = _SAFETENSORS_DTYPES[spec["dtype"]]
            expected = self.meta["checksum"][key]
        except KeyError:
            raise CacheError(f"{self.path}: entry has no valid tensor {key!r}") from None
        out = torch.empty(end - begin, dtype=torch.uint8)
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.data_offset + begin)
                got = handle.readinto(memoryview(out.numpy()))
        except OSError as exc:
            raise CacheError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        if got != end - begin or checksum(memoryview(out.numpy())) != expected:
            raise CacheError(f"{self.path}: corrupt cache entry (checksum of {key!r} differs)")
        try:
            return out.view(dtype).reshape(spec["shape"])
        except RuntimeError:
            raise CacheError(f"{self.path}: tensor {key!r} does not fit its shape") from None

    def _decode(
        self, key: str, record: Mapping[str, Any], dtype: torch.dtype | None
    ) -> torch.Tensor:
        stored = self._read(key)
        storage_dtype = STORAGE_DTYPES[record["storage"]]
        if record["codec"] == "zlib":
            try:
                raw = zlib.decompress(_tensor_bytes(stored))
            except zlib.error:
                raise CacheError(f"{self.path}: corrupt compressed tensor {key!r}") from None
            stored = torch.frombuffer(bytearray(raw), dtype=storage_dtype)
        stored = stored.reshape(record["shape"])
        if record["storage"] == "int8":
            return dequantize_int8(stored, self._read(key + ":scale"), dtype or torch.float32)
        return stored if dtype is None else stored.to(dtype)

    def tensors(
        self,
        flip: bool = False,
        parts: Sequence[str] | None = None,
        dtype: torch.dtype | None = torch.float32,
    ) -> dict[str, torch.Tensor]:
        """Read and verify feature parts.

        Args:
            flip: the features of the horizontally flipped image instead of the original's.
            parts: names to read (default: all).
            dtype: dtype of the returned tensors; ``None`` keeps the stored float type (the
                fastest read; float32 for int8 storage).

        Returns:
            ``{part: (C, h, w)}`` on the CPU.

        Raises:
            CacheError: when a part is missing or its bytes fail the checksum.
        """
        orientation = FLIPPED if flip else ORIGINAL
        if orientation not in self.orientations:
            raise CacheError(
                f"{self.path}: entry has no {orientation} features (extract with --flip)"
            )
        names = self.parts if parts is None else list(parts)
        records = self.meta["parts"]
        missing = [n for n in names if n not in records]
        if missing:
            raise CacheError(f"{self.path}: no part(s) {missing} (stored: {self.parts})")
        keys = [f"{orientation}/{n}" for n in names]
        if len(names) > 1 and any(records[n]["codec"] != "raw" for n in names):
            # zlib releases the GIL: inflate the parts concurrently
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(len(names), os.cpu_count() or 1)) as pool:
                decoded = pool.map(lambda kn: self._decode(kn[0], records[kn[1]], dtype),
                                   zip(keys, names, strict=True))
                return dict(zip(names, decoded, strict=True))
        return {n: self._decode(k, records[n], dtype) for k, n in zip(keys, names, strict=True)}

    def verify(self) -> None:
        """Read every tensor of the entry and check its checksum (raises :class:`CacheError`)."""
        for key in self.header:
            if key != "__metadata__":
                self._read(key)

"""A compact, resumable feature cache: one safetensors file per image, keyed by image identity
and a hash of the extraction configuration.

Layout of a cache folder::

    DIR/cache.json                      format, version, the extraction config and its hash
    DIR/entries/<k[:2]>/<k>.safetensors one entry per image, k = sha256(image id)[:32]
    DIR/last_run.json                   summary of the last extraction job

An entry is a standard safetensors file. Its tensors are the feature parts of the image in the
grid layout ``(C, h, w)``, named ``<orientation>/<part>`` with orientation ``original`` or
``flipped`` (the horizontally mirrored image, when the config asks for it). Its metadata
(``__metadata__["semcorr"]``, JSON) holds the image id, the config hash, a stamp of the source
file (byte size and SHA-256, so a changed image is recomputed), the original size and the
resize/pad transform, how each part is stored, and a checksum of every tensor's bytes
(:func:`checksum`), checked on read.

Storage types (``storage`` in the config): ``float32``, ``float16``, ``bfloat16``, or ``int8``
(symmetric per-channel quantisation: ``q = round(x / s)``, ``s = max|x| / 127`` per channel,
stored as ``<name>:scale`` ``(C,)`` float32). With ``compress=True`` every payload is
additionally deflated with zlib (Huffman-only, lossless); entries describe their own codec.

Entries are written atomically (temporary file + rename), so a killed job never leaves a
half-written entry; readers only ever see complete files. Reading is lazy: opening an entry
parses its header only, and each part is read (and verified) when asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from semcorr.config import canonical_json, config_hash
from semcorr.errors import ImageError, InputError, SemcorrError
from semcorr.features.base import Backbone
from semcorr.geometry import ResizePad
from semcorr.io import atomic_write_bytes, atomic_write_json, load_image

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "STORAGE_DTYPES",
    "CacheEntry",
    "CacheError",
    "ExtractSummary",
    "FeatureCache",
    "cached_extract",
    "cached_features",
    "checksum",
    "dequantize_int8",
    "extract_parts",
    "extraction_config",
    "file_stamp",
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

_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I8": torch.int8,
    "U8": torch.uint8,
}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_ZLIB_LEVEL = 1


class CacheError(SemcorrError):
    """A cache folder or entry that cannot be used (corrupt, truncated, other config)."""


# --- configuration and identity ----------------------------------------------------------------


def extraction_config(
    backbone: Backbone,
    weights: str | None = None,
    storage: str = "float16",
    flip: bool = False,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration that determines a cache's features (hashed by :func:`config_hash`).

    Args:
        backbone: the backbone; its :class:`~semcorr.features.BackboneInfo` (name, input size,
            stride, normalisation, default weights id, ``extra`` such as layers, timestep,
            seed) is recorded, except the licence text.
        weights: the weights argument the backbone was built with (hub id or file), if any.
        storage: one of :data:`STORAGE_DTYPES`.
        flip: whether the horizontally flipped image is cached too.
        options: the keyword options the backbone was built with.
    """
    if storage not in STORAGE_DTYPES:
        raise InputError(f"unknown storage type {storage!r} (known: {', '.join(STORAGE_DTYPES)})")
    info = backbone.info
    return {
        "format_version": CACHE_VERSION,
        "backbone": info.name,
        "weights": weights,
        "default_weights": info.weights,
        "image_size": info.image_size,
        "stride": info.stride,
        "mean": list(info.mean),
        "std": list(info.std),
        "backbone_extra": dict(info.extra),
        "options": dict(options or {}),
        "storage": storage,
        "flip": bool(flip),
    }


def file_stamp(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Identity of a source file's content: ``{"bytes": size, "sha256": hex digest}``.

    Raises:
        ImageError: naming the file when it is missing or unreadable.
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return {"bytes": size, "sha256": digest.hexdigest()}


def _entry_key(image_id: str) -> str:
    return hashlib.sha256(image_id.encode("utf-8")).hexdigest()[:32]


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


# --- entries -------------------------------------------------------------------------------------


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
        return ResizePad(t["width"], t["height"], t["size"], t["stride"])

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


# --- the cache -----------------------------------------------------------------------------------


class FeatureCache:
    """A folder of cached features for one extraction configuration.

    Open an existing cache with ``FeatureCache(dir)``; create one (or reopen it for writing,
    checking that the configuration is the same) with :meth:`create`.

    Args:
        root: the cache folder.
        compress: deflate the entries this object writes (readers need no option).

    Raises:
        CacheError: when ``root`` holds no cache or a cache of another format version.
    """

    def __init__(self, root: str | os.PathLike[str], compress: bool = False) -> None:
        self.root = Path(root)
        self.compress = compress
        info_path = self.root / "cache.json"
        if not info_path.is_file():
            raise CacheError(f"{self.root}: not a feature cache (no cache.json)")
        try:
            info = json.loads(info_path.read_text())
            self.config: dict[str, Any] = info["config"]
            self.config_hash: str = info["config_hash"]
            version = info["version"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise CacheError(f"{info_path}: corrupt cache description") from None
        if info.get("format") != CACHE_FORMAT or version != CACHE_VERSION:
            raise CacheError(
                f"{info_path}: cache format {info.get('format')} v{version} is not "
                f"{CACHE_FORMAT} v{CACHE_VERSION}"
            )

    @classmethod
    def create(
        cls, root: str | os.PathLike[str], config: Mapping[str, Any], compress: bool = False
    ) -> FeatureCache:
        """Create a cache for ``config`` or reopen the one already there.

        Raises:
            InputError: when ``root`` already holds features of a different configuration
                (caches never mix configurations).
        """
        root = Path(root)
        digest = config_hash(config)
        info_path = root / "cache.json"
        if info_path.is_file():
            cache = cls(root, compress=compress)
            if cache.config_hash != digest:
                raise InputError(
                    f"{root}: the cache holds features of config {cache.config_hash} "
                    f"({_describe(cache.config)}), this run's config is {digest} "
                    f"({_describe(config)}); use another --cache folder"
                )
            return cache
        if root.exists() and not root.is_dir():
            raise InputError(f"{root}: exists and is not a folder")
        payload = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "config_hash": digest,
            "config": json.loads(canonical_json(config)),
        }
        atomic_write_json(info_path, payload)
        return cls(root, compress=compress)

    @classmethod
    def for_backbone(
        cls,
        root: str | os.PathLike[str],
        backbone: Backbone,
        weights: str | None = None,
        storage: str = "float16",
        flip: bool = False,
        options: Mapping[str, Any] | None = None,
        compress: bool = False,
    ) -> FeatureCache:
        """:meth:`create` with the :func:`extraction_config` of ``backbone`` (what ``semcorr
        extract`` does): the cache an evaluation or a training run should use."""
        config = extraction_config(backbone, weights, storage, flip, options)
        return cls.create(root, config, compress=compress)

    @property
    def flip(self) -> bool:
        """Whether entries hold the flipped image's features too."""
        return bool(self.config.get("flip", False))

    @property
    def storage(self) -> str:
        return str(self.config.get("storage", "float32"))

    def entry_path(self, image_id: str) -> Path:
        """Where the entry of ``image_id`` lives (whether or not it exists)."""
        key = _entry_key(image_id)
        return self.root / "entries" / key[:2] / f"{key}.safetensors"

    def entry(self, image_id: str) -> CacheEntry | None:
        """The entry of ``image_id`` (header parsed), or ``None`` when there is none.

        Raises:
            CacheError: when the entry is truncated, corrupt or of another configuration.
        """
        path = self.entry_path(image_id)
        if not path.is_file():
            return None
        entry = CacheEntry.open(path)
        if entry.meta.get("config_hash") != self.config_hash:
            raise CacheError(f"{path}: entry of config {entry.meta.get('config_hash')}, "
                             f"cache is {self.config_hash}")
        if entry.image_id != image_id:
            raise CacheError(f"{path}: entry of {entry.image_id!r}, expected {image_id!r}")
        return entry

    def contains(self, image_id: str, stamp: Mapping[str, Any] | None = None) -> bool:
        """Whether a complete, readable entry of ``image_id`` exists (of the same source file
        content when ``stamp`` from :func:`file_stamp` is given). Checks headers only."""
        try:
            entry = self.entry(image_id)
        except CacheError:
            return False
        if entry is None:
            return False
        return stamp is None or entry.meta.get("source") == dict(stamp)

    __contains__ = contains

    def get(
        self,
        image_id: str,
        flip: bool = False,
        parts: Sequence[str] | None = None,
        dtype: torch.dtype | None = torch.float32,
    ) -> dict[str, torch.Tensor]:
        """The cached parts ``{name: (C, h, w)}`` of one image (see :meth:`CacheEntry.tensors`).

        Raises:
            KeyError: when the image is not cached.
            CacheError: when its entry is corrupt.
        """
        entry = self.entry(image_id)
        if entry is None:
            raise KeyError(image_id)
        return entry.tensors(flip=flip, parts=parts, dtype=dtype)

    def _entry_files(self) -> Iterator[Path]:
        entries = self.root / "entries"
        if entries.is_dir():
            yield from sorted(entries.glob("*/*.safetensors"))

    def keys(self) -> list[str]:
        """Image ids of the readable entries, sorted (reads every header, not the data)."""
        ids = []
        for path in self._entry_files():
            try:
                ids.append(CacheEntry.open(path).image_id)
            except CacheError:
                continue
        return sorted(ids)

    def __len__(self) -> int:
        return len(self.keys())

    def put(
        self,
        image_id: str,
        features: Mapping[str, Mapping[str, torch.Tensor]],
        transform: ResizePad,
        source: Mapping[str, Any] | None = None,
    ) -> int:
        """Write (atomically) the entry of one image.

        Args:
            image_id: the image's identity.
            features: ``{"original": {part: (C, h, w)}, "flipped": {...}}``; ``flipped`` is
                required exactly when the cache is configured with ``flip``.
            transform: the image's resize/pad transform.
            source: the source file's :func:`file_stamp`.

        Returns:
            The number of bytes written.
        """
        from safetensors.torch import save

        expected = [ORIGINAL, FLIPPED] if self.flip else [ORIGINAL]
        if sorted(features) != sorted(expected):
            raise ValueError(f"features must have orientations {expected}, got {list(features)}")
        part_names = sorted(features[ORIGINAL])
        tensors: dict[str, torch.Tensor] = {}
        records: dict[str, Any] = {}
        for orientation in expected:
            if sorted(features[orientation]) != part_names:
                raise ValueError("the flipped features must have the same parts")
            for name in part_names:
                x = features[orientation][name]
                if x.dim() != 3:
                    raise ValueError(f"part {name!r} must be (C, h, w), got {tuple(x.shape)}")
                stored, record = _encode_part(x, self.storage, self.compress)
                tensors.update({f"{orientation}/{name}{k}": v for k, v in stored.items()})
                records[name] = record
        meta = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "image_id": image_id,
            "config_hash": self.config_hash,
            "source": dict(source) if source is not None else None,
            "original_size": [transform.width, transform.height],
            "transform": {"width": transform.width, "height": transform.height,
                          "size": transform.size, "stride": transform.stride},
            "orientations": expected,
            "parts": records,
            "checksum_algorithm": CHECKSUM_ALGORITHM,
            "checksum": {k: checksum(_tensor_bytes(v)) for k, v in sorted(tensors.items())},
        }
        data = save(tensors, metadata={"semcorr": json.dumps(meta, sort_keys=True)})
        atomic_write_bytes(self.entry_path(image_id), data)
        return len(data)

    def clean_temporary(self) -> int:
        """Delete temporary files left by killed writers; returns how many were removed.

        Only call it when no job is writing to this cache.
        """
        removed = 0
        entries = self.root / "entries"
        if entries.is_dir():
            for tmp in entries.glob("*/.*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed


def _describe(config: Mapping[str, Any]) -> str:
    keys = ("backbone", "weights", "image_size", "storage", "flip")
    return ", ".join(f"{k}={config.get(k)}" for k in keys)


# --- extraction ----------------------------------------------------------------------------------


def extract_parts(
    backbone: Backbone, images: Sequence[torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[ResizePad]]:
    """Named feature parts of original images ``(3, H_i, W_i)``.

    In order of preference: the backbone's own ``extract_parts(images)`` (same contract as this
    function: for backbones that prepare several inputs from the originals, like SD + DINO at
    two resolutions), its ``feature_parts(normalised batch)`` (multi-part backbones such as
    Stable Diffusion's s3/s4/s5), else its single feature map named after the backbone.

    Returns:
        ``{part: (B, C_k, h_k, w_k)}`` and one transform per image.
    """
    own = getattr(backbone, "extract_parts", None)
    if own is not None:
        with torch.inference_mode():
            parts, transforms = own(images)
        return dict(parts), list(transforms)
    parts_fn = getattr(backbone, "feature_parts", None)
    if parts_fn is None:
        features, transforms = backbone.extract(images)
        return {backbone.info.name: features}, transforms
    batch, transforms = backbone.prepare(images)
    with torch.inference_mode():
        return dict(parts_fn(backbone.normalize(batch))), transforms


def _image_features(
    backbone: Backbone, images: Sequence[torch.Tensor], flip: bool
) -> tuple[list[dict[str, dict[str, torch.Tensor]]], list[ResizePad]]:
    """Per image ``{"original": {part: (C, h, w)}, ["flipped": ...]}`` and transforms."""
    orientations = {ORIGINAL: list(images)}
    if flip:
        orientations[FLIPPED] = [img.flip(-1) for img in images]
    per_image: list[dict[str, dict[str, torch.Tensor]]] = [{} for _ in images]
    transforms: list[ResizePad] = []
    for orientation, batch in orientations.items():
        parts, transforms = extract_parts(backbone, batch)
        for index, item in enumerate(per_image):
            item[orientation] = {name: x[index] for name, x in parts.items()}
    return per_image, transforms


@dataclass
class ExtractSummary:
    """What an extraction job did.

    Attributes:
        images: images asked for.
        computed: entries computed and written by this job.
        skipped: images whose entry was already there (same config, same source content).
        failed: ``(image id, reason)`` of images that could not be read.
        bytes: bytes written.
        seconds: wall-clock time.
    """

    images: int = 0
    computed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def merge(self, other: ExtractSummary) -> ExtractSummary:
        """Sum of two summaries (e.g. of two ranks); time is the longest of the two."""
        return ExtractSummary(
            self.images + other.images,
            self.computed + other.computed,
            self.skipped + other.skipped,
            self.failed + other.failed,
            self.bytes + other.bytes,
            max(self.seconds, other.seconds),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "computed": self.computed,
            "skipped": self.skipped,
            "failed": [list(item) for item in self.failed],
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        }


def _pending(
    cache: FeatureCache, items: Sequence[tuple[str, Path]], overwrite: bool,
    summary: ExtractSummary,
) -> list[tuple[str, Path, dict[str, Any]]]:
    """The items whose entry must be computed, with their source stamps."""
    todo = []
    for image_id, path in items:
        try:
            stamp = file_stamp(path)
        except ImageError as exc:
            summary.failed.append((image_id, str(exc)))
            continue
        if not overwrite and cache.contains(image_id, stamp):
            summary.skipped += 1
        else:
            todo.append((image_id, path, stamp))
    return todo


def _compute_batch(
    backbone: Backbone,
    cache: FeatureCache,
    batch: Sequence[tuple[str, Path, dict[str, Any]]],
    summary: ExtractSummary,
    delay_per_image: float,
) -> None:
    """Load, extract and write one batch of ``(image id, path, stamp)``; updates ``summary``."""
    loaded = []
    for image_id, path, stamp in batch:
        try:
            loaded.append((image_id, load_image(path), stamp))
        except ImageError as exc:
            summary.failed.append((image_id, str(exc)))
    if not loaded:
        return
    features, transforms = _image_features(backbone, [x[1] for x in loaded], cache.flip)
    for (image_id, _, stamp), item, transform in zip(loaded, features, transforms, strict=True):
        if delay_per_image > 0:
            time.sleep(delay_per_image)
        summary.bytes += cache.put(image_id, item, transform, stamp)
        summary.computed += 1


def cached_extract(
    backbone: Backbone,
    cache: FeatureCache,
    paths: Sequence[str | os.PathLike[str]],
    ids: Sequence[str] | None = None,
    *,
    batch_size: int = 1,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    delay_per_image: float = 0.0,
) -> ExtractSummary:
    """Make sure the cache holds the features of every image; compute only what is missing.

    Images already cached with the same configuration and the same file content are skipped;
    unreadable images are reported in the summary and skipped; every entry is written
    atomically as soon as its batch is done, so an interrupted job resumes where it stopped.

    Args:
        backbone: built with the configuration the cache was created for.
        cache: the cache (see :meth:`FeatureCache.create`).
        paths: image files.
        ids: the image identities (default: each resolved path).
        batch_size: images per backbone call.
        overwrite: recompute entries that exist.
        progress: called with the number of images finished (computed, skipped or failed).
        delay_per_image: seconds to sleep per computed image before writing it — a test hook
            that makes a job slow enough to be interrupted; leave at 0.

    Returns:
        An :class:`ExtractSummary` of this call.
    """
    if cache.config.get("backbone") != backbone.info.name:
        raise InputError(
            f"{cache.root}: the cache holds {cache.config.get('backbone')} features, "
            f"not {backbone.info.name}"
        )
    if ids is None:
        ids = [str(Path(p).resolve()) for p in paths]
    if len(ids) != len(paths):
        raise ValueError("ids and paths must have the same length")
    start = time.perf_counter()
    summary = ExtractSummary(images=len(paths))
    todo = _pending(cache, list(zip(ids, map(Path, paths), strict=True)), overwrite, summary)
    if progress is not None:
        progress(summary.skipped + len(summary.failed))
    for begin in range(0, len(todo), max(1, batch_size)):
        batch = todo[begin : begin + max(1, batch_size)]
        _compute_batch(backbone, cache, batch, summary, delay_per_image)
        if progress is not None:
            progress(len(batch))
    summary.seconds = time.perf_counter() - start
    return summary


def cached_features(
    backbone: Backbone,
    cache: FeatureCache,
    path: str | os.PathLike[str],
    image_id: str | None = None,
    flip: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, torch.Tensor], ResizePad]:
    """The features of one image from the cache, computed and stored first when missing,
    stale (the file changed) or corrupt.

    Args:
        backbone: built with the cache's configuration.
        cache: the cache.
        path: the image file.
        image_id: its identity (default: the resolved path).
        flip: the features of the horizontally flipped image (the cache must hold them).
        dtype: dtype of the returned tensors.

    Returns:
        ``{part: (1, C, h, w)}`` on the CPU and the image's transform.
    """
    image_id = image_id if image_id is not None else str(Path(path).resolve())
    stamp = file_stamp(path)
    for attempt in range(2):
        entry = None
        if cache.contains(image_id, stamp):
            entry = cache.entry(image_id)
        if entry is not None:
            try:
                parts = entry.tensors(flip=flip, dtype=dtype)
                return {k: v[None] for k, v in parts.items()}, entry.transform
            except CacheError:
                if attempt:
                    raise
        cached_extract(backbone, cache, [path], [image_id], overwrite=True)
    raise CacheError(f"{cache.root}: could not cache {path}")  # pragma: no cover

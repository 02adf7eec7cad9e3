"""The cache folder: its configuration (what determines the features, hashed), the identity
of source files, and :class:`FeatureCache`, which creates, opens, reads and atomically writes
entries."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from semcorr.config import canonical_json, config_hash
from semcorr.errors import ImageError, InputError
from semcorr.features.base import Backbone
from semcorr.features.cache.encoding import (
    CACHE_FORMAT,
    CACHE_VERSION,
    CHECKSUM_ALGORITHM,
    FLIPPED,
    ORIGINAL,
    STORAGE_DTYPES,
    CacheError,
    _encode_part,
    _tensor_bytes,
    checksum,
)
from semcorr.features.cache.entry import CacheEntry
from semcorr.geometry import ResizePad
from semcorr.io import atomic_write_bytes, atomic_write_json

__all__ = ["FeatureCache", "extraction_config", "file_stamp"]


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

    def contains(self, image_id: str, stamp: Mapping[str, Any] | None = None,
                 verify: bool = False) -> bool:
        """Whether a complete, readable entry of ``image_id`` exists (of the same source file
        content when ``stamp`` from :func:`file_stamp` is given). Checks headers only, unless
        ``verify``: then every tensor is read and its stored checksum checked too."""
        try:
            entry = self.entry(image_id)
            if entry is not None and verify:
                entry.verify()
        except CacheError:
            return False
        if entry is None:
            return False
        return stamp is None or entry.meta.get("source") == dict(stamp)

    def verify(self) -> tuple[int, list[tuple[str, str]]]:
        """Read every entry and check every tensor's checksum.

        Returns:
            The number of entry files checked, and ``(entry file, reason)`` of each bad one
            (a later ``extract`` recomputes them).
        """
        bad = []
        files = list(self._entry_files())
        for path in files:
            try:
                entry = CacheEntry.open(path)
                if entry.meta.get("config_hash") != self.config_hash:
                    raise CacheError(f"{path}: entry of another configuration")
                entry.verify()
            except CacheError as exc:
                bad.append((str(path), str(exc)))
        return len(files), bad

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
                          "size": transform.size, "stride": transform.stride,
                          "anchor": transform.anchor,
                          "fill": None if transform.fill is None else list(transform.fill)},
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

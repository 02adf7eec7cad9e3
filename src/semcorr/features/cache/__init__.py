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

The package holds one idea per module: :mod:`~semcorr.features.cache.encoding` (storage
types, quantisation, checksum), :mod:`~semcorr.features.cache.entry` (reading one entry),
:mod:`~semcorr.features.cache.store` (the folder, :class:`FeatureCache`) and
:mod:`~semcorr.features.cache.extract` (extraction jobs).
"""

from semcorr.features.cache.encoding import (
    CACHE_FORMAT,
    CACHE_VERSION,
    STORAGE_DTYPES,
    CacheError,
    checksum,
    dequantize_int8,
    quantize_int8,
)
from semcorr.features.cache.entry import CacheEntry
from semcorr.features.cache.extract import (
    ExtractSummary,
    cached_extract,
    cached_features,
    extract_parts,
)
from semcorr.features.cache.store import FeatureCache, extraction_config, file_stamp

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

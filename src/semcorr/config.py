"""Configuration helpers shared by the stages: canonical JSON and stable config hashes.

A cache (features, predictions) is keyed by a hash of the configuration that produced it, so that
results of different configurations are never mixed. The hash must not depend on the order of
keys, on tuples versus lists, or on the Python version: :func:`config_hash` hashes the canonical
JSON text of the configuration (sorted keys, no whitespace, UTF-8) with SHA-256.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_json", "config_hash", "to_plain"]


def to_plain(value: Any) -> Any:
    """Convert a configuration value to plain JSON types, refusing anything ambiguous.

    Mappings become dicts with string keys, tuples/lists/sets become lists (sets sorted), paths
    become strings, enums their value, ``torch.dtype`` its name (``"torch.float16"``).

    Raises:
        TypeError: for a value whose text form would not be stable (arbitrary objects) or a
            non-finite float.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"non-finite float {value!r} in a configuration")
        return value
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"configuration keys must be strings, got {key!r}")
            plain[key] = to_plain(item)
        return plain
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(to_plain(item) for item in value)
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value)
    raise TypeError(f"cannot put {type(value).__name__} {value!r} in a configuration")


def canonical_json(config: Mapping[str, Any]) -> str:
    """The canonical JSON text of a configuration: sorted keys, no spaces, ASCII only."""
    return json.dumps(
        to_plain(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
        allow_nan=False,
    )


def config_hash(config: Mapping[str, Any], length: int = 16) -> str:
    """A stable hexadecimal hash of a configuration.

    Args:
        config: plain data (see :func:`to_plain`).
        length: number of hex digits kept (16 = 64 bits; at most 64).

    Returns:
        The first ``length`` hex digits of the SHA-256 of :func:`canonical_json`.

    Example:
        >>> config_hash({"b": 1, "a": (1, 2)}) == config_hash({"a": [1, 2], "b": 1})
        True
    """
    if not 1 <= length <= 64:
        raise ValueError(f"length must be in [1, 64], got {length}")
    digest = hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()
    return digest[:length]

"""Configuration helpers shared by the stages: layered configs, canonical JSON, stable hashes.

Layered configuration: a component declares its defaults as a dataclass; :func:`build_config`
merges a YAML/JSON file over them, then ``key=value`` command-line overrides over that
(precedence defaults < file < command line), refusing unknown keys with the source named.

A cache (features, predictions) is keyed by a hash of the configuration that produced it, so that
results of different configurations are never mixed. The hash must not depend on the order of
keys, on tuples versus lists, or on the Python version: :func:`config_hash` hashes the canonical
JSON text of the configuration (sorted keys, no whitespace, UTF-8) with SHA-256.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from semcorr.errors import InputError

C = TypeVar("C")

__all__ = [
    "build_config",
    "canonical_json",
    "config_hash",
    "config_to_dict",
    "load_config_file",
    "parse_overrides",
    "to_plain",
]


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


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a configuration mapping from a ``.yaml``/``.yml`` or ``.json`` file.

    Raises:
        InputError: naming the file when it is missing, unparsable or not a mapping.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"{file}: no such config file")
    try:
        text = file.read_text(encoding="utf-8")
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml/json/unicode errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{file}: not a valid config file ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{file}: a config file holds a mapping of settings")
    return data


def _parse_value(text: str) -> Any:
    """A command-line value: JSON/YAML scalars and lists (``3``, ``1e-3``, ``true``, ``[1,2]``),
    else the text itself."""
    try:
        return json.loads(text)  # numbers such as 3e-3 (YAML 1.1 reads them as text)
    except ValueError:
        pass
    try:
        import yaml

        return yaml.safe_load(text) if text.strip() else text
    except Exception:
        return text


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "pair_augment=false"]`` → ``{"lr": 0.001, "pair_augment": False}``.

    Raises:
        InputError: for an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"override {item!r} is not key=value")
        out[key] = _parse_value(value)
    return out


def _coerce(value: Any, kind: Any, key: str, source: str) -> Any:
    """Convert ``value`` to the field type ``kind`` (int/float/bool/str/tuple/list/Optional)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for option in options:
            try:
                return _coerce(value, option, key, source)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if errors else f"{source}: bad value for {key}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{source}: {key} must be a list, got {value!r}")
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        item = args[0] if args else Any
        items = [_coerce(v, item, key, source) for v in value]
        return tuple(items) if origin is tuple else items
    if kind is Any or kind is object:
        return value
    if origin is dict or kind is dict:
        if not isinstance(value, Mapping):
            raise InputError(f"{source}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"{source}: {key} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InputError(f"{source}: {key} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise InputError(f"{source}: {key} must be a finite number, got {value!r}")
            return float(value)
        raise InputError(f"{source}: {key} must be a number, got {value!r}")
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise InputError(f"{source}: {key} must be text, got {value!r}")
    return value


def _merge_into(cls: type, values: dict[str, Any], layer: Mapping[str, Any], source: str
                ) -> None:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(layer) - names)
    if unknown:
        raise InputError(
            f"{source}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})"
        )
    for key, value in layer.items():
        values[key] = _coerce(value, hints[key], key, source)


def build_config(
    cls: type[C],
    file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    base: Mapping[str, Any] | None = None,
) -> C:
    """A dataclass configuration from defaults < ``base`` < file < command-line overrides.

    Args:
        cls: a dataclass whose field defaults are the defaults.
        file: optional YAML/JSON file of settings.
        overrides: ``key=value`` strings (or an already-parsed mapping), applied last.
        base: optional preset values applied over the defaults, before the file.

    Returns:
        A new ``cls`` instance (nothing given is mutated).

    Raises:
        InputError: naming the source (preset, file or command line) of an unknown key or a
            badly typed value.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    values: dict[str, Any] = {}
    if base:
        _merge_into(cls, values, base, "preset")
    if file is not None:
        _merge_into(cls, values, load_config_file(file), str(file))
    layer = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    _merge_into(cls, values, layer, "command line")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad configuration: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass configuration as plain JSON data (see :func:`to_plain`)."""
    return to_plain(dataclasses.asdict(config))

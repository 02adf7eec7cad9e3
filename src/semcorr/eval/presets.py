"""Named evaluation settings: ``semcorr eval --preset NAME``.

A preset is the evaluation of a published method written out setting for setting (the official
config file it mirrors is named in :attr:`EvalPreset.source`). Its ``settings`` are values of
``semcorr eval`` options, keyed by the option's ``argparse`` destination (``window``,
``pose_align``, ``dataset_option``, ...). Precedence is option default < preset < an option given
on the command line; ``semcorr eval --preset NAME --print-config`` shows the result.

The registry holds one kind of plug-in, like the backbone and head registries: add a preset with
:func:`register_eval_preset`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from semcorr.errors import UnknownNameError

__all__ = [
    "EvalPreset",
    "get_eval_preset",
    "list_eval_presets",
    "register_eval_preset",
]


@dataclass(frozen=True)
class EvalPreset:
    """One published evaluation, setting for setting.

    Attributes:
        name: the preset's name (``--preset NAME``).
        description: one line.
        source: the official file (and repository) whose settings these are.
        settings: ``semcorr eval`` option destination → value.
        headline: the number the method reports under this setting, e.g. ``"PCK@0.10 per
            image"``.
        published: published results, metric name → value (PCK in %).
    """

    name: str
    description: str
    source: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    headline: str = ""
    published: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


_PRESETS: dict[str, EvalPreset] = {}


def register_eval_preset(preset: EvalPreset) -> EvalPreset:
    """Add ``preset`` to the registry (a name can be registered once)."""
    if preset.name in _PRESETS:
        raise ValueError(f"evaluation preset {preset.name!r} is already registered")
    _PRESETS[preset.name] = preset
    return preset


def get_eval_preset(name: str) -> EvalPreset:
    """The preset called ``name``.

    Raises:
        UnknownNameError: listing the known names.
    """
    if name not in _PRESETS:
        raise UnknownNameError(f"unknown evaluation preset {name!r} (known: "
                               f"{', '.join(list_eval_presets()) or 'none'})")
    return _PRESETS[name]


def list_eval_presets() -> list[str]:
    """Registered preset names, sorted."""
    return sorted(_PRESETS)


# --- GeoAware-SC (Junyi42/GeoAware-SC, configs/eval_*.yaml) -----------------------------------


# --- SD4Match (ActiveVisionLab/SD4Match, test.py and config/) ---------------------------------

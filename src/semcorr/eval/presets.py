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

#: SD4Match's test.py at evaluation: timestep 50 (training uses 261), an ensemble of 8 draws,
#: each from a sampled VAE latent with fresh noise (torch.manual_seed(0) once); SD 2.1's
#: up-block 1 output at 768 px (the prompt file's size); kernel soft-argmax, σ 7 cells,
#: temperature 0.04, Gaussian on the similarities; the sd4match PCK protocol.
_SD4MATCH_EVAL: dict[str, Any] = {
    "backbone": "sd4match",
    "head": "sd4match",
    "backbone_option": ["feature_timestep=50", "ensemble=8", "latent=sample", "noise=fresh",
                        "seed=0"],
    "refine": "kernel",
    "sigma": 7.0,
    "temperature": 0.04,
    "kernel_weighting": "score",
    "pose_align": False,
    "protocol": "sd4match",
    "thresholds": "0.05,0.10,0.15",
    "split": "test",
}
_SD4MATCH_HEADLINE = ("kernel soft-argmax PCK@0.10 per image (mean over pairs), measured in the "
                      "768x768 stretched frame with <=")

for _name, _dataset, _options, _published in (
    ("sd4match-spair", "spair", ["layout=large"], 75.5),
    ("sd4match-pfpascal", "pf-pascal", ["normalisation=image"], 95.2),
    ("sd4match-pfwillow", "pf-willow", [], 81.3),
):
    register_eval_preset(EvalPreset(
        _name,
        f"SD4Match on {_dataset} as its test.py evaluates it: SD 2.1 up-block 1 at the prompt "
        "file's 768 px, stretched (give the prompt file with --head-weights and SD 2.1 with "
        "--weights)",
        "ActiveVisionLab/SD4Match test.py, config/learnedToken.py, utils/evaluator.py",
        settings={"dataset": _dataset, "dataset_option": _options, **_SD4MATCH_EVAL},
        headline=_SD4MATCH_HEADLINE,
        published=(("PCK@0.10 per image (SD4Match-CPM)", _published),),
    ))

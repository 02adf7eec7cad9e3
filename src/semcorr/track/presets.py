"""Named tracking presets: the published settings of DIFT's video evaluations.

``dift-davis`` is DIFT's DAVIS-2017 command for DIFT_sd (github.com/Tsingularity/dift
``README.md``, section DAVIS): ``--dift_model sd --t 51 --up_ft_index 2 --temperature 0.2
--topk 15 --n_last_frames 28 --ensemble_size 8 --size_mask_neighborhood 15``, frames resized
so that the short side is 480 and the long side a multiple of 32 (``eval_davis.py``
``read_frame``), SD 2.1 (``src/models/dift_sd.py``) with an empty prompt. ``up_ft_index 2`` is
the output of the U-Net's up-block 2, i.e. the input of ``up_blocks.3`` (stride 8). semcorr's
SD backbones take a square input whose side is a multiple of 64, long side first: 832 is DIFT's
long side for DAVIS's 854 x 480 frames (854 floored to a multiple of 32), the short side then
being 468 instead of 480.

``dift-jhmdb``: the DIFT repository ships no JHMDB script; its paper evaluates JHMDB with the
CRW protocol, so the propagation settings are CRW's test defaults (videowalk
``code/utils/arguments.py``: ``--videoLen 20 --topk 10 --radius 12``, 320-pixel frames
``--cropSize 320``) with DIFT_sd's features and temperature of its DAVIS command. Marked
``published=False`` for that reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from semcorr.errors import UnknownNameError
from semcorr.track.propagate import PropagationConfig

__all__ = ["PRESETS", "TRACK_DEFAULT", "TRACK_PRESENCE_COLOUR", "TrackPreset", "get_preset"]

#: ``semcorr track``'s propagation without a preset: CRW's context, top-k and radius, and the
#: out-of-view decision (``presence_margin``), chosen on the development clip only
#: (``benchmarks/sweep_track_dev.py --presence``: best J for margins -0.01 to -0.0025;
#: docs/protocol.md), with its relative threshold (``presence_ratio``) chosen on ten
#: development clips only (``sweep_track_dev.py --ratio``: best mean J).
TRACK_DEFAULT = PropagationConfig(presence_margin=-0.0075, presence_ratio=0.1)

#: ``semcorr track``'s weight of each cell's colour in that decision (``--presence-colour``),
#: chosen on development clips only (``sweep_track_dev.py --colour``; docs/protocol.md).
TRACK_PRESENCE_COLOUR = 3.0


@dataclass(frozen=True)
class TrackPreset:
    """A backbone with its options, an image size and the propagation settings.

    Attributes:
        backbone: registered backbone name.
        backbone_options: its options (``--backbone-option``).
        image_size: side of the backbone input in pixels.
        propagation: context, top-k, radius, temperature.
        sigma: Gaussian of first-frame points, in cells.
        mask_normalise: the mask read-out (``"minmax"``: DIFT's ``norm_mask``).
        source: where the numbers come from.
        published: whether every number is the source's own published setting.
    """

    backbone: str
    backbone_options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    propagation: PropagationConfig = PropagationConfig()
    sigma: float = 0.5
    mask_normalise: str = "minmax"
    source: str = ""
    published: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_DIFT_SD = {"timestep": 51, "ensemble": 8, "prompt": "", "parts": {"dift": "up_blocks.3"}}

PRESETS: dict[str, TrackPreset] = {
    "dift-davis": TrackPreset(
        backbone="sd21",
        backbone_options=_DIFT_SD,
        image_size=832,
        propagation=PropagationConfig(context=28, topk=15, radius=15, temperature=0.2),
        source="Tsingularity/dift README.md (DAVIS, DIFT_sd) and eval_davis.py",
    ),
    "dift-jhmdb": TrackPreset(
        backbone="sd21",
        backbone_options=_DIFT_SD,
        image_size=320,
        propagation=PropagationConfig(context=20, topk=10, radius=12, temperature=0.2),
        source="CRW test defaults (ajabri/videowalk code/utils/arguments.py) with DIFT_sd "
               "features and temperature; DIFT publishes no JHMDB script",
        published=False,
    ),
}


def get_preset(name: str) -> TrackPreset:
    """The preset called ``name``.

    Raises:
        UnknownNameError: listing the known presets.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown tracking preset {name!r}; known: {', '.join(sorted(PRESETS))}"
        ) from None

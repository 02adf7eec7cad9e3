"""Named PCK protocols: ``semcorr eval --protocol NAME``.

Published numbers are measured in different ways: in the original image or in a stretched
square, with ``<`` or ``<=``, against a box, the image or the keypoints' extent, averaged over
pairs or over categories. A :class:`PCKProtocol` writes one such way out rule by rule; the
registry holds eight:

* ``geoaware``: the original image, ``distance < α · max side of the target box`` (the dataset's
  own reference: box for SPair-71k, AP-10k and CUB), per image = mean over pairs (semcorr's rule
  for SPair-71k, AP-10k, CUB and keypoints JSON, as GeoAware-SC measures them);
* ``pf``: the PF benchmarks as usually reported: PF-PASCAL ``< α · max(image)`` averaged over
  pairs, PF-WILLOW ``< α · max extent of the target keypoints`` averaged over pairs, then over
  classes (semcorr's rule for PF-PASCAL and PF-WILLOW);
* ``sd4match``: SD4Match's ``test.py`` and ``utils/evaluator.py``: both images stretched to
  768 × 768 (aspect ignored, no padding) *before the backbone*, keypoints mapped by
  ``x · 768 / w``, ``y · 768 / h`` and clamped to ``[1e-4, 767 - 1e-4]``, the reference in that
  frame (SPair-71k: the stretched target box's larger side; PF-WILLOW: the larger extent of the
  stretched target keypoints; PF-PASCAL: 768), ``distance <= α · reference`` in float32, per
  image = mean over pairs, for every dataset;
* ``foundation-finetune``: the DINOv2/DINOv3/SAM fine-tuning study's table: the original image,
  ``distance <= α · max side of the target box`` (of the original image when there is no box),
  α 0.05–0.20, per keypoint as the headline, mean ± standard deviation (over images per image,
  over keypoints per keypoint) overall, by category and by SPair-71k difficulty.
* ``spair-u``: Jamais Vu's ``pck_train.py --UNSEEN_KPS`` (VICO-UoE/JamaisVu): the original
  image, ``distance < α · max side of the target box`` (from the pair file), per image = mean over
  pairs, α 0.01, 0.05, 0.10 and 0.15, broken down by keypoint set (seen: SPair-71k's own
  keypoints; unseen: SPair-U's; the headline is unseen, the paper's figure);
* ``marco``: MARCO's ``evaluate.py`` (visinf/MARCO ``util/evaluator.py``,
  ``datasets/dataset.py``, ``configs/dataset/spair-u.yaml``): both images stretched to 770 × 770
  before the backbone, keypoints scaled and clamped to ``[1e-4, 769 - 1e-4]``, the stretched
  target box's larger side, ``distance <= α · reference`` in float32, per image = mean over
  pairs, α 0.01, 0.05, 0.10 and 0.15 (its evaluator also reports 0.20);
* ``generalisation``: the same rule for any dataset (its own reference), α 0.01, 0.05, 0.10 and
  0.15, per image and per keypoint, with every keypoint group the dataset declares
  (:mod:`semcorr.eval.groups`): the suite's rule for a benchmark without a protocol of its own;
* ``soco``: SOCO's ``scripts/evaluate_dinov2.py`` (GenIntel/SOCO): each image padded (right and
  bottom) to a square of its larger side and resized to 798 × 798 (the script's default 800
  rounded to DINOv2's 14-pixel patches); ground truth truncated to whole pixels, scaled to 798
  and truncated again, then divided by 798; predictions ``x / max(w, h)``; the reference
  ``max side of the target box / max(w, h)``; ``distance < α · reference`` in float32 (the
  product ``α · reference`` in float64, as the script's Python floats); per pair, then per pair
  group, then the mean over groups, intra (SOC) and cross (Cross-SOC) pairs apart; concept
  correspondences (CC) correct when within reach of any of their targets.

:data:`DEFAULT_PROTOCOLS` gives each dataset's protocol when ``--protocol`` is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from semcorr.data.base import PairDataset, PairSample
from semcorr.errors import UnknownNameError
from semcorr.eval.pck import DEFAULT_THRESHOLDS, format_threshold, pck_correct
from semcorr.geometry import Stretch
from semcorr.registry import Registry

__all__ = [
    "DEFAULT_PROTOCOLS",
    "GENERALISATION_THRESHOLDS",
    "PCKProtocol",
    "SOCO_SIZE",
    "PROTOCOLS",
    "StretchedPair",
    "default_protocol",
    "get_protocol",
    "list_protocols",
    "padded_points",
    "register_protocol",
]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class PCKProtocol:
    """One way of measuring PCK, rule by rule.

    Attributes:
        name: ``--protocol NAME``.
        description: one line.
        source: where the rules are read from.
        comparison: ``"<"`` or ``"<="`` between the distance and ``α · reference``.
        precision: ``float64`` or ``float32`` for distances, references and their comparison.
        limit_precision: precision of ``α · reference`` before it is rounded to ``precision``
            (``None``: ``precision``).
        frame: ``original`` (the dataset's pixels), ``stretched`` (both images resized to
            ``stretch_size`` squares before the backbone; PCK measured there) or ``padded``
            (PCK in the unit square of each image padded to its larger side, ground truth
            truncated to whole pixels of a ``stretch_size`` square: :func:`padded_points`;
            the backbone sees the original image).
        reference: ``dataset`` (the dataset's own reference: :attr:`PairSample.pck_reference`)
            or ``box-or-image`` (larger side of the target box, else of the target image).
        average: overall per-image PCK as the mean over ``pairs``, or ``dataset`` (the
            dataset's own averaging, e.g. over categories for PF-WILLOW).
        thresholds: the α reported when ``--thresholds`` is left out.
        headline: ``per_image`` or ``per_keypoint``: the number the protocol reports.
        statistics: add mean ± standard deviation tables (:class:`PCKStatistics`).
        stretch_size: side of the stretched (or padded) PCK frame.
        stretch_antialias: antialiased bilinear stretch (PIL's resize) rather than plain
            bilinear.
        clamp_margin: stretched keypoints are clamped to ``[m, size - 1 - m]``.
    """

    name: str
    description: str
    source: str
    comparison: str = "<"
    precision: str = "float64"
    limit_precision: str | None = None
    frame: str = "original"
    reference: str = "dataset"
    average: str = "dataset"
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    headline: str = "per_image"
    statistics: bool = False
    stretch_size: int = 768
    stretch_antialias: bool = True
    clamp_margin: float = 1e-4

    def __post_init__(self) -> None:
        checks = (("comparison", ("<", "<=")), ("precision", tuple(_DTYPES)),
                  ("limit_precision", (None, *_DTYPES)),
                  ("frame", ("original", "stretched", "padded")),
                  ("reference", ("dataset", "box-or-image")),
                  ("average", ("pairs", "dataset")), ("headline", ("per_image", "per_keypoint")))
        for attribute, allowed in checks:
            if getattr(self, attribute) not in allowed:
                raise ValueError(f"protocol {self.name}: {attribute} must be one of {allowed}")

    @property
    def stretched(self) -> bool:
        return self.frame == "stretched"

    @property
    def padded(self) -> bool:
        return self.frame == "padded"

    def correct(self, pred: torch.Tensor, gt: torch.Tensor, reference: float | torch.Tensor,
                thresholds: Sequence[float]) -> torch.Tensor:
        """``(N, T)`` bool: :func:`~semcorr.eval.pck.pck_correct` under this protocol's
        comparison and precision (``pred``, ``gt``: ``(N, 2)`` in the protocol's frame)."""
        return pck_correct(pred, gt, reference, thresholds, inclusive=self.comparison == "<=",
                           dtype=_DTYPES[self.precision],
                           limit_dtype=_DTYPES.get(self.limit_precision or self.precision))

    def averaging(self, dataset: PairDataset) -> str:
        """``pairs`` or ``categories``: how the overall per-image PCK is formed."""
        return "pairs" if self.average == "pairs" else dataset.protocol.get("average", "pairs")

    def original_reference(self, sample: PairSample) -> float:
        """The reference length of a pair in original pixels (frame ``original``)."""
        if self.reference == "dataset":
            return float(sample.pck_reference)
        if sample.target_bbox is not None:
            box = sample.target_bbox.double()
            return float(torch.maximum(box[2] - box[0], box[3] - box[1]))
        return float(max(sample.target_size))

    def reference_words(self, normalisation: str) -> str:
        """The reference rule, in words, for a dataset of ``normalisation`` (its
        ``protocol["normalisation"]``)."""
        if self.stretched:
            size = self.stretch_size
            return {
                "image": f"{size} (the stretched target image's side)",
                "keypoints": f"larger extent of the target keypoints scaled to {size}x{size} "
                             "(before clamping)",
            }.get(normalisation, f"larger side of the target box scaled to {size}x{size} "
                                 "(x by size/width, y by size/height)")
        if self.padded:
            return f"{normalisation} reference divided by the target image's larger side"
        if self.reference == "box-or-image":
            return "larger side of the target box; of the target image when there is no box"
        return str(normalisation)

    def rules(self, dataset: PairDataset) -> dict[str, Any]:
        """Every rule of this protocol on ``dataset``, for ``results.json``."""
        average = self.averaging(dataset)
        frame = ("original image pixels" if self.frame == "original" else
                 f"unit square of each image padded right and bottom to its larger side; ground "
                 f"truth truncated to whole pixels, scaled to {self.stretch_size} and truncated "
                 f"again, then divided by {self.stretch_size}; predictions x / max(w, h)"
                 if self.padded else
                 f"both images stretched to {self.stretch_size}x{self.stretch_size} (aspect "
                 "ignored, no padding, bilinear" + (", antialiased" if self.stretch_antialias
                                                   else "") + ") before the backbone; "
                 f"keypoints x*{self.stretch_size}/w, y*{self.stretch_size}/h, clamped to "
                 f"[{self.clamp_margin:g}, {self.stretch_size - 1} - {self.clamp_margin:g}]; "
                 "feature cells span the frame corner to corner (x/(size-1)*(grid-1))")
        return {
            "name": self.name,
            "source": self.source,
            "normalisation": dataset.protocol.get("normalisation", "bbox"),
            "reference": self.reference_words(dataset.protocol.get("normalisation", "bbox")),
            "frame": frame,
            "comparison": f"distance {self.comparison} alpha * reference",
            "precision": self.precision + (f" (alpha * reference in {self.limit_precision})"
                                           if self.limit_precision else ""),
            "average": average,
            "per_image": "mean over pairs of each pair's PCK"
                         + (", then mean over categories" if average == "categories" else ""),
            "per_keypoint": "all visible keypoints pooled",
            "headline": self.headline,
            "default_thresholds": [format_threshold(a) for a in self.thresholds],
            "statistics": ("mean ± std: per image over pairs, per keypoint over keypoints; "
                           "overall, by category and by difficulty") if self.statistics else None,
        }


@dataclass(frozen=True)
class StretchedPair:
    """A pair under a stretched protocol: its two :class:`~semcorr.geometry.Stretch` frames,
    the ground truth and reference in the PCK frame, and the conversions between that frame
    and the stretched square the Matcher sees.

    Args:
        protocol: a ``stretched`` protocol.
        sample: the pair.
        input_size: side ``S`` of the square given to the backbone.
        grid: cells per side of the backbone's feature grid for that square.
    """

    protocol: PCKProtocol
    sample: PairSample
    input_size: int
    grid: int

    @property
    def source(self) -> Stretch:
        return Stretch(*self.sample.source_size, self.protocol.stretch_size)

    @property
    def target(self) -> Stretch:
        return Stretch(*self.sample.target_size, self.protocol.stretch_size)

    def image_stretch(self, width: int, height: int) -> Stretch:
        """The stretch of an original image to the backbone's square."""
        return Stretch(width, height, self.input_size)

    def points(self, points: torch.Tensor, frame: Stretch) -> torch.Tensor:
        """Original points ``(N, 2)`` → the PCK frame, clamped (float32)."""
        return frame.clamp(frame.to_frame(points), self.protocol.clamp_margin)

    def reference(self, normalisation: str, rows: torch.Tensor) -> float:
        """The reference length in the PCK frame (float32 arithmetic).

        Args:
            normalisation: the dataset's ``protocol["normalisation"]``.
            rows: the pair's visible keypoint rows.
        """
        frame, sample = self.target, self.sample
        if normalisation == "image":
            return float(self.protocol.stretch_size)
        if normalisation != "keypoints" and sample.target_bbox is not None:
            box = frame.box_to_frame(sample.target_bbox)
            return float(torch.maximum(box[2] - box[0], box[3] - box[1]))
        points = frame.to_frame(sample.target_points[rows])  # before clamping, as the official
        if points.shape[0] == 0:
            return float("nan")
        return float((points.amax(dim=0) - points.amin(dim=0)).amax())

    def to_matcher(self, points: torch.Tensor) -> torch.Tensor:
        """PCK-frame points → pixels of the backbone's square as the Matcher reads them
        (cell centres at ``(c + 0.5) · S / grid - 0.5``), through corner-to-corner cells."""
        cells = self.source.to_cells(points, self.grid)
        return (cells + 0.5) * (self.input_size / self.grid) - 0.5

    def from_matcher(self, points: torch.Tensor) -> torch.Tensor:
        """Matcher output on the target's square → PCK-frame points (float32)."""
        cells = (points.to(torch.float32) + 0.5) * (self.grid / self.input_size) - 0.5
        return self.target.from_cells(cells, self.grid)


PROTOCOLS: Registry[PCKProtocol] = Registry("PCK protocol")


def register_protocol(protocol: PCKProtocol) -> PCKProtocol:
    """Add ``protocol`` to the registry (a name can be registered once)."""
    PROTOCOLS.register(protocol.name)(lambda: protocol)
    return protocol


def get_protocol(name: str) -> PCKProtocol:
    """The protocol called ``name``.

    Raises:
        UnknownNameError: listing the known names.
    """
    return PROTOCOLS.create(name)


def list_protocols() -> list[str]:
    """Registered protocol names, sorted."""
    return PROTOCOLS.names()


#: The protocol of each dataset when ``--protocol`` is left out (dataset registry name → name).
DEFAULT_PROTOCOLS: dict[str, str] = {
    "spair": "geoaware",
    "ap10k": "geoaware",
    "cub": "geoaware",
    "keypoints-json": "geoaware",
    "pf-pascal": "pf",
    "pf-willow": "pf",
    "spair-u": "spair-u",
    "soco": "soco",
    "mp100": "marco",
}
#: The α of the generalisation benchmarks (MARCO's table and SPair-U's).
GENERALISATION_THRESHOLDS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.15)


#: Side of SOCO's square: ``--image-size 800`` rounded to DINOv2's 14-pixel patches.
SOCO_SIZE = 798


def padded_points(points: torch.Tensor, size: tuple[int, int], side: int) -> torch.Tensor:
    """Points ``(N, 2)`` of a ``size = (w, h)`` image → the unit square of that image padded to
    its larger side, through whole pixels as SOCO's script rounds them: each coordinate
    truncated, scaled to a ``side`` square and truncated again, then divided by ``side``.

    Returns:
        ``(N, 2)`` float32.
    """
    whole = points.trunc().to(torch.int32)
    scaled = (whole * side / max(size)).to(torch.int32)
    return scaled.to(torch.float32) / side


def default_protocol(dataset_name: str) -> str:
    """The default protocol of a dataset (its registry name or the dataset's ``name``)."""
    from semcorr.data.base import DATASETS

    try:
        constructor = DATASETS.get(dataset_name)
    except UnknownNameError:
        return "geoaware"
    for name, default in DEFAULT_PROTOCOLS.items():
        if name == dataset_name or DATASETS.get(name) is constructor:
            return default
    return "geoaware"


register_protocol(PCKProtocol(
    "geoaware", "original frame, distance < alpha * max side of the target box, mean over pairs",
    "Junyi42/GeoAware-SC (semcorr's SPair-71k, AP-10k and CUB rule)",
    average="pairs",
))
register_protocol(PCKProtocol(
    "pf", "original frame, distance < alpha * the PF rule (PF-PASCAL image, PF-WILLOW keypoint "
    "extent, averaged over classes)", "Proposal Flow benchmarks (semcorr's PF rule)",
))
register_protocol(PCKProtocol(
    "sd4match", "images stretched to 768x768 before the backbone, stretched reference, "
    "distance <= alpha * reference in float32, mean over pairs",
    "ActiveVisionLab/SD4Match test.py, utils/evaluator.py, dataset/*.py",
    comparison="<=", precision="float32", frame="stretched", average="pairs",
    thresholds=(0.05, 0.10, 0.15),
))
register_protocol(PCKProtocol(
    "foundation-finetune", "original frame, distance <= alpha * max side of the target box "
    "(of the image when there is none), alpha 0.05-0.20, per keypoint, mean ± std",
    "the DINOv2/DINOv3/SAM fine-tuning study (protocol restated in semcorr issue 17)",
    comparison="<=", reference="box-or-image", average="pairs",
    thresholds=(0.05, 0.10, 0.15, 0.20), headline="per_keypoint", statistics=True,
))
register_protocol(PCKProtocol(
    "spair-u", "original frame, distance < alpha * max side of the target box, mean over pairs, "
    "seen vs unseen keypoints (headline: unseen)",
    "VICO-UoE/JamaisVu pck_train.py --UNSEEN_KPS, utils/utils_dataset.py load_spair_data",
    average="pairs", thresholds=GENERALISATION_THRESHOLDS,
))
register_protocol(PCKProtocol(
    "marco", "images stretched to 770x770 before the backbone, stretched target box, "
    "distance <= alpha * reference in float32, mean over pairs, alpha 0.01-0.15",
    "visinf/MARCO evaluate.py, util/evaluator.py, datasets/dataset.py, configs/dataset/*.yaml",
    comparison="<=", precision="float32", frame="stretched", average="pairs",
    thresholds=GENERALISATION_THRESHOLDS, stretch_size=770,
))
register_protocol(PCKProtocol(
    "generalisation", "original frame, distance < alpha * the dataset's reference, mean over "
    "pairs, alpha 0.01-0.15, every keypoint group the dataset declares",
    "semcorr issue 23 (the generalisation suite's rule when a benchmark has none of its own)",
    average="pairs", thresholds=GENERALISATION_THRESHOLDS,
))
register_protocol(PCKProtocol(
    "soco", "unit square of the image padded to its larger side, whole-pixel ground truth, "
    "distance < alpha * target box / image side in float32, per pair then per group, SOC and CC",
    "GenIntel/SOCO scripts/evaluate_dinov2.py (_eval_points, _pck, _aggregate)",
    precision="float32", limit_precision="float64", frame="padded",
    thresholds=GENERALISATION_THRESHOLDS, stretch_size=SOCO_SIZE,
))

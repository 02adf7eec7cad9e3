"""Keypoint transfer at scale: annotate a few images, label many.

The stage reads annotated *sources* (COCO keypoints, or the JSON of ``semcorr match``), finds
every source's points in each *target* image, and keeps per target and point the consensus of the
sources' votes (a score-weighted geometric median), a confidence and the spread of the votes.

Data flow of :func:`main`::

    annotations --load_annotations--> sources (image, points (N, 2), labelled (N,))
    sources --Matcher.source_features--> features and query descriptors, computed once
    targets --streamed in batches--> votes (B, S, N, 2) + scores (B, S, N)
            [--cycle check: target point -> back to its source within a radius]
            --consensus--> points (B, N, 2), score (B, N), spread (B, N)
            --> OUT.parts/<rank>-<index>.json  (one atomic file per batch: the resume state)
    all parts --assemble--> OUT (COCO keypoints, atomic), optional contact sheet

A killed run restarts where it stopped: targets found in ``OUT.parts`` are not transferred again,
and the final file is assembled from the parts in the order of the target list, so an
interrupted-then-resumed run writes the same file as an uninterrupted one. Under ``torchrun``
every rank takes an interleaved share of the targets and rank 0 assembles.

Coordinates are semcorr's (see :mod:`semcorr.conventions`): ``(x, y)`` in original pixels with
``(0, 0)`` the centre of the top-left pixel, read from and written to COCO ``keypoints`` as-is.

The package holds one idea per module: :mod:`~semcorr.transfer.options` (the job's options),
:mod:`~semcorr.transfer.annotations` (sources and targets), :mod:`~semcorr.transfer.combine`
(consensus of votes), :mod:`~semcorr.transfer.voting` (votes on a batch of targets),
:mod:`~semcorr.transfer.output` (resume state and the COCO document) and
:mod:`~semcorr.transfer.job` (the stage, :func:`main`).
"""

from semcorr.transfer.annotations import (
    KeypointSchema,
    SourceAnnotation,
    TransferSources,
    flip_permutation_from_names,
    list_images,
    load_annotations,
)
from semcorr.transfer.combine import Consensus, consensus, geometric_median
from semcorr.transfer.job import main
from semcorr.transfer.options import TransferConfig
from semcorr.transfer.output import read_parts

__all__ = [
    "Consensus",
    "KeypointSchema",
    "SourceAnnotation",
    "TransferConfig",
    "TransferSources",
    "consensus",
    "flip_permutation_from_names",
    "geometric_median",
    "list_images",
    "load_annotations",
    "main",
    "read_parts",
]

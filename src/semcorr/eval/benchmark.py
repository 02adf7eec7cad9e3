"""Stage 4: evaluate a :class:`~semcorr.Matcher` on a benchmark dataset.

:func:`evaluate` runs in two passes, like glue-factory's ``EvalPipeline``:

1. **export**: predict every pair and append one JSON line per pair to
   ``OUT/predictions.jsonl`` (flushed per line; a rerun skips the pairs already there, so a
   killed run resumes). ``OUT/config.json`` records the matcher and dataset; a rerun with a
   different configuration is refused unless ``overwrite``. A pair whose image cannot be read is
   recorded as skipped, counted and reported; it never ends the run.
2. **metrics** (:mod:`semcorr.eval.metrics`): stream the predictions file through
   :class:`~semcorr.eval.pck.PCKAccumulator` and write ``OUT/results.json``, ``OUT/results.md``
   and ``OUT/pck_curve.png``.

PCK follows a named protocol (:mod:`semcorr.eval.protocols`; the dataset's default when none is
given). A ``stretched`` protocol (``sd4match``) stretches both images to the backbone's square
before the backbone and records ground truth, reference and predictions in its stretched frame.

Memory stays flat in the number of pairs: predictions go to disk as they are made, metrics are
running sums, and source and target features are kept in small LRU caches keyed by image path
(and category, for a backbone conditioned on it; a pair-conditioned backbone's features are
computed per pair).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from semcorr.data.base import (
    ALTERNATIVES_KEY,
    BadPair,
    PairDataset,
    PairSample,
    alternatives_problem,
    sample_problem,
)
from semcorr.errors import ImageError, InputError
from semcorr.eval.groups import group_labels, group_tables, headline_of
from semcorr.eval.metrics import (  # noqa: F401  (public here as before)
    CURVE_ALPHAS,
    compute_metrics,
    read_predictions,
)
from semcorr.eval.pck import format_threshold
from semcorr.eval.protocols import (
    PCKProtocol,
    StretchedPair,
    default_protocol,
    get_protocol,
    padded_points,
)
from semcorr.io import atomic_write_bytes, atomic_write_json, load_image
from semcorr.match.pose import NO_PARTNER, PARTNER_UNSEEN
from semcorr.pipeline import Matcher, SourceFeatures, TargetFeatures
from semcorr.postprocess.masks import load_mask

__all__ = [
    "CURVE_ALPHAS",
    "FeatureLRU",
    "compute_metrics",
    "describe_matcher",
    "evaluate",
    "export_predictions",
    "read_predictions",
    "resolve_protocol",
]

PREDICTIONS = "predictions.jsonl"
CONFIG = "config.json"
RESULTS = "results.json"
TABLE = "results.md"
CURVE = "pck_curve.png"


class FeatureLRU:
    """A bounded cache of source (or, with ``target=True``, target) features keyed by image
    path and condition, least recently used out.

    Args:
        matcher: computes the features.
        size: the most images kept.
        target: cache target features (:meth:`Matcher.target_features`) instead of source ones.
        prepare: applied to each image ``(3, H, W)`` before the backbone (e.g. a protocol's
            stretch); ``None``: the image as read.
    """

    def __init__(self, matcher: Matcher, size: int = 4, target: bool = False,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.matcher = matcher
        self.size = max(0, size)
        self.target = target
        self.prepare = prepare or (lambda image: image)
        self._items: OrderedDict[tuple[str, str], SourceFeatures | TargetFeatures] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __call__(self, path: Path, matcher: Matcher | None = None, condition: str = "") -> Any:
        """Features of the image at ``path``.

        Args:
            path: the image file.
            matcher: the matcher computing them (default: the cache's), e.g. a view
                conditioned on a category (:meth:`Matcher.conditioned`).
            condition: what that view was conditioned on (part of the key).
        """
        key = (str(path), condition)
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        matcher = matcher or self.matcher
        compute = matcher.target_features if self.target else matcher.source_features
        features = compute(self.prepare(load_image(path)))
        if self.size:
            self._items[key] = features
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return features


def _simple(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (tuple, list)) and all(
        isinstance(v, (str, int, float, bool)) for v in value
    ):
        return list(value)
    return None


def _public_options(module: Any) -> dict[str, Any]:
    return {
        k: _simple(v)
        for k, v in sorted(vars(module).items())
        if not k.startswith("_") and k != "training" and _simple(v) is not None
    }


def describe_matcher(matcher: Matcher) -> dict[str, Any]:
    """A JSON description of the matcher: backbone, its options, refinement rule, pose choice."""
    info = matcher.backbone.info
    return {
        "backbone": info.name,
        "image_size": info.image_size,
        "stride": info.stride,
        "backbone_options": _public_options(matcher.backbone),
        "refine": type(matcher.refiner).__name__,
        "refine_options": _public_options(matcher.refiner),
        "pose_align": matcher.pose_align,
        "poses": list(matcher.poses),
        "pose_distance": matcher.pose_distance if matcher.pose_align else None,
        "prior": None if matcher.prior is None else dataclasses.asdict(matcher.prior),
    }


def _repair(path: Path) -> set[str]:
    """Drop a torn last line of ``path``; return the pair ids already recorded."""
    if not path.is_file():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
    return {record["pair_id"] for record in read_predictions(path) if "pair_id" in record}


def _check_config(out_dir: Path, config: dict[str, Any], overwrite: bool) -> None:
    path = out_dir / CONFIG
    predictions = out_dir / PREDICTIONS
    if path.is_file() and not overwrite:
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != json.loads(json.dumps(config)) and predictions.is_file():
            raise InputError(
                f"{path}: {out_dir} holds predictions made with another configuration; "
                "use another --out folder or --overwrite"
            )
    if overwrite:
        predictions.unlink(missing_ok=True)
    atomic_write_json(path, config)


def _pair_features(
    matcher: Matcher, sources: FeatureLRU, targets: FeatureLRU, sample: PairSample
) -> tuple[Matcher, SourceFeatures, TargetFeatures]:
    """The matcher under the condition the backbone needs (see
    :attr:`~semcorr.features.base.Backbone.condition`) and the pair's features under it: cached
    per image, per image and category, or computed for this pair alone. A pair's condition is
    taken from the images as read (SD4Match's CPM reads the raw images); the features from the
    prepared ones."""
    condition = matcher.backbone.condition
    if condition == "pair":
        source_image, target_image = load_image(sample.source_path), load_image(
            sample.target_path)
        view = matcher.conditioned(pair=(source_image, target_image), category=sample.category)
        return (view, view.source_features(sources.prepare(source_image)),
                view.target_features(targets.prepare(target_image)))
    if condition == "category":
        view = matcher.conditioned(category=sample.category)
        return (view, sources(sample.source_path, view, sample.category),
                targets(sample.target_path, view, sample.category))
    return matcher, sources(sample.source_path), targets(sample.target_path)


def _stretcher(size: int, antialias: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Stretches an image ``(3, H, W)`` to ``(3, size, size)`` (aspect ignored)."""
    from semcorr.geometry import Stretch

    def stretch(image: torch.Tensor) -> torch.Tensor:
        frame = Stretch(image.shape[-1], image.shape[-2], size)
        return frame.apply(image[None], antialias=antialias)[0].clamp(0, 1)

    return stretch


def _square_grid(matcher: Matcher) -> tuple[int, int]:
    """Side ``S`` of the backbone's square input and its feature grid's cells per side."""
    size = matcher.backbone.info.image_size
    return size, matcher.backbone.transform_for(size, size).grid_size


def _predict(
    matcher: Matcher,
    sources: FeatureLRU,
    targets: FeatureLRU,
    sample: PairSample,
    protocol: PCKProtocol,
    normalisation: str = "bbox",
) -> dict[str, Any]:
    """One prediction record: points for the visible keypoints, ground truth, reference, all
    in the protocol's frame."""
    visible = sample.visible
    rows = visible.nonzero().flatten()
    stretched = None
    if protocol.stretched:
        stretched = StretchedPair(protocol, sample, *_square_grid(matcher))
        reference = stretched.reference(normalisation, rows)
    elif protocol.padded:
        reference = protocol.original_reference(sample) / max(sample.target_size)
    else:
        reference = protocol.original_reference(sample)
    to_frame = _target_frame(protocol, sample, stretched)
    gt = to_frame(sample.target_points[rows])
    record: dict[str, Any] = {
        "pair_id": sample.pair_id,
        "category": sample.category,
        "reference": reference,
        "keypoint_ids": sample.keypoint_ids[rows].tolist(),
        "gt": gt.tolist(),
        "geo_aware": sample.geometry_aware()[rows].tolist(),
        # for galleries and difficulty breakdowns, drawn from this file alone
        "source_path": str(sample.source_path),
        "target_path": str(sample.target_path),
        "src": sample.source_points[rows].tolist(),
        "extra": {k: v for k, v in sample.extra.items() if isinstance(v, (str, int, float, bool))},
        **_group_fields(sample, rows),
        **_alternatives(sample, rows, to_frame),
    }
    if rows.numel() == 0:
        record.update(pred=[], scores=[], pose="identity")
        return record
    view, source, target = _pair_features(matcher, sources, targets, sample)
    if stretched is not None:
        points = stretched.to_matcher(stretched.points(sample.source_points[rows],
                                                       stretched.source))
        source_mask = target_mask = None  # masks live in the original frame, not the stretched
    else:
        given = sample.source_points[rows].float()
        points = torch.stack(  # annotations a hair outside the image are pulled onto its border
            [given[:, 0].clamp(0, source.width - 1), given[:, 1].clamp(0, source.height - 1)],
            dim=1)
        moved = int((points != given).any(dim=1).sum())
        if moved:  # reported: counted in results.json ("source_keypoints_clamped")
            record["source_clamped"] = moved
        source_mask, target_mask = _pair_masks(view, sample)
    result = view.match(source, [target], points, flip_permutation=_partners(sample, rows),
                        source_mask=source_mask, target_masks=[target_mask])[0]
    pred = (stretched.from_matcher(result.points) if stretched is not None else
            result.points.to(torch.float32) / max(sample.target_size) if protocol.padded else
            result.points)
    record.update(pred=pred.tolist(), scores=result.scores.tolist(), pose=result.pose)
    if result.pose_metric:
        record["pose_distance"] = result.pose_metric
    return record


def _target_frame(protocol: PCKProtocol, sample: PairSample, stretched: StretchedPair | None
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Original target points ``(N, 2)`` → the protocol's PCK frame."""
    if stretched is not None:
        return lambda points: stretched.points(points, stretched.target)
    if protocol.padded:
        return lambda points: padded_points(points, sample.target_size, protocol.stretch_size)
    return lambda points: points


def _alternatives(sample: PairSample, rows: torch.Tensor,
                  to_frame: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
    """The record's ``gt_any`` (every correct target of each visible row, in the PCK frame)
    when the sample declares :data:`~semcorr.data.base.ALTERNATIVES_KEY`."""
    given = sample.extra.get(ALTERNATIVES_KEY)
    if given is None:
        return {}
    problem = alternatives_problem(given, sample.num_keypoints)
    if problem is not None:
        raise InputError(f"{sample.pair_id}: {problem}")
    chosen = [given[r] for r in rows.tolist()]
    counts = torch.tensor([len(c) for c in chosen], dtype=torch.long)
    flat = to_frame(torch.tensor([p for c in chosen for p in c], dtype=torch.float32)
                    .reshape(-1, 2))
    return {"gt_any": [part.tolist() for part in flat.split(counts.tolist())]}


def _group_fields(sample: PairSample, rows: torch.Tensor) -> dict[str, Any]:
    """The record's ``groups`` (labels of the visible ``rows``) and ``headline_group``, when the
    sample declares them (:mod:`semcorr.eval.groups`)."""
    try:
        groups, headline = group_labels(sample.extra, rows), headline_of(sample.extra)
    except ValueError as exc:
        raise InputError(f"{sample.pair_id}: {exc}") from None
    return {**({"groups": groups} if groups else {}),
            **({"headline_group": headline} if headline else {})}


def _partners(sample: PairSample, rows: torch.Tensor) -> list[int]:
    """Flip partner codes of the visible ``rows`` (see :meth:`Matcher.match`): the partner's
    position among the rows, ``NO_PARTNER``, or ``PARTNER_UNSEEN`` when the partner is not
    visible in both images (GeoAware-SC then keeps the identity prediction)."""
    new_index = torch.full((sample.num_keypoints,), PARTNER_UNSEEN, dtype=torch.long)
    new_index[rows] = torch.arange(rows.numel())
    partner = sample.flip_permutation[rows]
    return torch.where(partner >= 0, new_index[partner.clamp_min(0)], NO_PARTNER).tolist()


def _pair_masks(matcher: Matcher, sample: PairSample
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The pair's instance masks when pose alignment may use them (both files exist)."""
    paths = (sample.source_mask_path, sample.target_mask_path)
    if not matcher.pose_align or matcher.pose_distance == "mutual-nn" or None in paths:
        return None, None
    return (load_mask(paths[0], sample.source_size), load_mask(paths[1], sample.target_size))


def export_predictions(
    matcher: Matcher,
    dataset: PairDataset,
    out_dir: Path,
    limit: int | None = None,
    cache_size: int = 16,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    protocol: PCKProtocol | None = None,
) -> dict[str, Any]:
    """Predict every pair not yet in ``out_dir/predictions.jsonl`` and append it there.

    Args:
        matcher: the matcher to evaluate.
        dataset: any :class:`~semcorr.data.PairDataset`.
        out_dir: output folder (created).
        limit: only the first ``limit`` pairs.
        cache_size: source images, and as many target images, whose features are kept.
        progress: show a progress bar.
        log: called with one line per skipped pair.
        protocol: the PCK protocol whose frame and reference are recorded (default: the
            dataset's).

    Returns:
        ``{"pair_ids": set of the pairs in scope, "predicted": int (this run),
        "seconds": float (this run)}``.

    Raises:
        InputError: for an incomplete dataset (a missing annotation file).
    """
    from tqdm.auto import tqdm

    path = out_dir / PREDICTIONS
    done = _repair(path)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    protocol = protocol or get_protocol(default_protocol(dataset.name))
    prepare = (_stretcher(matcher.backbone.info.image_size, protocol.stretch_antialias)
               if protocol.stretched else None)
    normalisation = dataset.protocol.get("normalisation", "bbox")
    sources = FeatureLRU(matcher, cache_size, prepare=prepare)
    targets = FeatureLRU(matcher, cache_size, target=True, prepare=prepare)
    in_scope: set[str] = set()
    predicted = 0
    start = time.perf_counter()
    with path.open("a", encoding="utf-8") as handle:
        for index in tqdm(range(total), desc="evaluating", unit="pair", disable=not progress):
            try:
                sample = dataset[index]  # validated on read (data.base.annotation_problem)
            except (ImageError, InputError) as exc:  # a bad image or annotation file
                pair_id = exc.pair_id if isinstance(exc, BadPair) else f"#{index}"
                reason = exc.reason if isinstance(exc, BadPair) else str(exc)
                in_scope.add(pair_id)
                if pair_id not in done:
                    handle.write(json.dumps({"pair_id": pair_id, "skipped": reason}) + "\n")
                    handle.flush()
                    done.add(pair_id)
                    if log is not None:
                        log(f"skipped {pair_id}: {reason}")
                continue
            in_scope.add(sample.pair_id)
            if sample.pair_id in done:
                continue
            try:
                problem = sample_problem(sample)
                if problem is not None:
                    raise InputError(problem)
                record = _predict(matcher, sources, targets, sample, protocol, normalisation)
            except (ImageError, InputError) as exc:  # skipped, counted and listed, never scored
                record = {
                    "pair_id": sample.pair_id,
                    "category": sample.category,
                    "skipped": str(exc),
                }
                if log is not None:
                    log(f"skipped {sample.pair_id}: {exc}")
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            done.add(sample.pair_id)
            predicted += 1
    return {"pair_ids": in_scope, "predicted": predicted, "seconds": time.perf_counter() - start}


def resolve_protocol(protocol: str | PCKProtocol | None, dataset: PairDataset) -> PCKProtocol:
    """The protocol object: by name, as given, or the dataset's default when ``None``.

    Raises:
        UnknownNameError: for an unknown name.
    """
    if isinstance(protocol, PCKProtocol):
        return protocol
    return get_protocol(protocol or default_protocol(dataset.name))


def evaluate(
    matcher: Matcher,
    dataset: PairDataset,
    out_dir: str | Path,
    thresholds: Sequence[float] | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    cache_size: int = 16,
    progress: bool = True,
    plot: bool = True,
    extra_config: dict[str, Any] | None = None,
    save_examples: int = 0,
    examples_alpha: float = 0.1,
    protocol: str | PCKProtocol | None = None,
) -> dict[str, Any]:
    """Export predictions, then compute and write the metrics.

    Args:
        matcher: the matcher to evaluate (its flip handling uses each sample's permutation).
        dataset: the benchmark pairs.
        out_dir: where ``predictions.jsonl``, ``config.json``, ``results.json``,
            ``results.md`` and ``pck_curve.png`` go.
        thresholds: reported α values (two decimals in the results; default: the
            protocol's).
        limit: evaluate the first ``limit`` pairs only.
        overwrite: discard earlier predictions in ``out_dir`` instead of resuming.
        cache_size: source images, and as many target images, whose features are kept.
        progress: show a progress bar.
        plot: write the PCK-vs-α plot.
        extra_config: more JSON fields recorded in ``config.json`` (e.g. the command line).
        save_examples: write the N best and N worst pairs as pictures and an offline
            ``examples/index.html`` (see :func:`semcorr.viz.gallery.save_gallery`).
        examples_alpha: the PCK threshold that ranks and colours the examples.
        protocol: a name of :mod:`semcorr.eval.protocols` or a protocol (default: the
            dataset's, :data:`~semcorr.eval.protocols.DEFAULT_PROTOCOLS`).

    Returns:
        The ``results.json`` content: ``dataset``, ``split``, ``pairs``, ``skipped``,
        ``protocol``, ``thresholds``, ``pck``, ``per_category``, ``geo_aware``, ``counts``,
        ``curve``, ``breakdowns``, ``config``, ``timing`` (and ``examples`` when saved).
    """
    from semcorr.analysis.breakdowns import breakdown_tables
    from semcorr.eval.report import markdown_table

    if limit is not None and limit < 1:
        raise InputError("--limit must be at least 1")
    rule = resolve_protocol(protocol, dataset)
    thresholds = [float(a) for a in (rule.thresholds if thresholds is None else thresholds)]
    if not thresholds or any(not (0 < a < 1) or math.isnan(a) for a in thresholds):
        raise InputError("thresholds must be numbers between 0 and 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "dataset": dataset.name,
        "split": dataset.split,
        "root": str(dataset.root),
        "matcher": describe_matcher(matcher),
        "protocol": rule.name,
        **(extra_config or {}),
    }
    _check_config(out, config, overwrite)
    export = export_predictions(matcher, dataset, out, limit, cache_size, progress,
                                protocol=rule)
    metrics = compute_metrics(out / PREDICTIONS, export["pair_ids"], thresholds,
                              rule.averaging(dataset), rule)
    results = {
        "dataset": dataset.name,
        "split": dataset.split,
        "pairs": metrics.pop("pairs"),
        "skipped": metrics.pop("skipped"),
        "protocol": rule.rules(dataset),
        "thresholds": [format_threshold(a) for a in thresholds],
        **metrics,
        "config": config,
        "timing": {
            "predicted_this_run": export["predicted"],
            "seconds_this_run": round(export["seconds"], 3),
        },
    }
    if save_examples:
        from semcorr.viz.gallery import save_gallery

        results["examples"] = save_gallery(
            lambda: read_predictions(out / PREDICTIONS), out / "examples", save_examples,
            examples_alpha,
            export["pair_ids"], title=f"{dataset.name} ({dataset.split}): best and worst pairs",
        )
    atomic_write_json(out / RESULTS, results)
    tables = breakdown_tables(results["breakdowns"], results["thresholds"])
    if results.get("groups"):
        tables = group_tables(results["groups"], results["thresholds"]) + "\n" + tables
    if "statistics" in results:
        from semcorr.eval.report import statistics_tables

        tables = statistics_tables(results["statistics"], results["thresholds"]) + "\n\n" + tables
    atomic_write_bytes(
        out / TABLE, (markdown_table(results) + "\n\n" + tables + "\n").encode("utf-8")
    )
    if plot:
        from semcorr.viz.plots import save_pck_curve

        save_pck_curve(out / CURVE, results["curve"], title=f"{dataset.name} ({dataset.split})")
    return results

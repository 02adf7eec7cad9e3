"""Run a video benchmark (DAVIS-2017, JHMDB): propagate each clip's first-frame labels with
:class:`~semcorr.track.LabelPropagator`, score it, and write ``results.json`` and a table.

Resumable per video: each clip's scores go to ``OUT/videos/<name>.json`` (written atomically,
once the clip is done), and a rerun skips the clips already there. DAVIS predictions are also
written as index PNGs in the DAVIS palette (``OUT/predictions/<sequence>/<frame>.png``), the
layout davis2017-evaluation reads.

Frames are brought to the backbone with its :class:`~semcorr.geometry.ResizePad`; labels live
in the backbone-input square (points mapped with ``to_input``, masks resized with nearest
neighbours into the content area), so the label conversions of :mod:`semcorr.track.labels` see
a grid that covers exactly the square they are given.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semcorr.data.video import VideoDataset, VideoSample, write_index_png
from semcorr.errors import InputError
from semcorr.eval.video import (
    JHMDB_THRESHOLDS,
    davis_sequence_scores,
    davis_summary,
    jhmdb_normalised_distances,
    jhmdb_pck,
)
from semcorr.features.base import Backbone
from semcorr.geometry import ResizePad
from semcorr.io import atomic_write_json, load_image
from semcorr.track import LabelPropagator, PropagationConfig, mask_to_labels, points_to_labels
from semcorr.track.run import mask_from_square, mask_on_square, points_from_square

__all__ = ["evaluate_videos", "propagate_masks", "propagate_points", "video_table"]

CONFIG = "config.json"
RESULTS = "results.json"


def _frame_features(backbone: Backbone, path: Path) -> tuple[torch.Tensor, ResizePad]:
    """Features ``(C, g, g)`` of one frame and its resize/pad transform."""
    features, transforms = backbone.extract([load_image(path)])
    return features[0], transforms[0]


def propagate_masks(backbone: Backbone, sample: VideoSample, config: PropagationConfig
                    ) -> list[np.ndarray]:
    """Index masks ``(H, W)`` of every frame (the first is the given one)."""
    first = sample.read_masks([0])[0]
    features, transform = _frame_features(backbone, sample.frames[0])
    grid = tuple(features.shape[-2:])
    labels = mask_to_labels(mask_on_square(torch.from_numpy(first.astype(np.int64)), transform),
                           int(first.max()), grid=grid)
    propagator = LabelPropagator(config)
    propagator.start(features, labels.to(features.device))
    masks = [first]
    for path in sample.frames[1:]:  # frames are sequential: each needs the previous labels
        features, transform = _frame_features(backbone, path)
        masks.append(mask_from_square(propagator.step(features).cpu(), transform).numpy())
    return masks


def propagate_points(backbone: Backbone, sample: VideoSample, config: PropagationConfig,
                     sigma: float = 0.5) -> np.ndarray:
    """Points ``(T, K, 2)`` of every frame in original pixels (the first is the given one;
    ``-1`` where a heatmap vanished)."""
    assert sample.points is not None
    features, transform = _frame_features(backbone, sample.frames[0])
    size = (transform.size, transform.size)
    heatmaps = points_to_labels(transform.to_input(sample.points[0].double()).float(), size,
                                tuple(features.shape[-2:]), sigma)
    propagator = LabelPropagator(config)
    propagator.start(features, heatmaps.to(features.device))
    points = [sample.points[0].numpy().astype(np.float64)]
    for path in sample.frames[1:]:
        features, transform = _frame_features(backbone, path)
        found, _ = points_from_square(propagator.step(features).cpu(), transform)
        points.append(found.numpy().astype(np.float64))
    return np.stack(points)


def _safe_name(name: str) -> str:
    return name.replace("/", "__")


def _check_config(out: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix videos scored under another configuration (unless ``overwrite``)."""
    path, videos = out / CONFIG, out / "videos"
    if overwrite and videos.is_dir():
        for item in videos.glob("*.json"):
            item.unlink()
    elif path.is_file() and any(videos.glob("*.json")):
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != json.loads(json.dumps(config)):
            raise InputError(f"{path}: {out} holds videos scored with another configuration; "
                             "use another --out folder or --overwrite")
    atomic_write_json(path, config)


def _score_video(backbone: Backbone, sample: VideoSample, config: PropagationConfig,
                 sigma: float, out: Path) -> dict[str, Any]:
    """Propagate and score one clip; DAVIS masks are also written as index PNGs."""
    if sample.kind == "points":
        assert sample.points is not None
        predicted = propagate_points(backbone, sample, config, sigma)
        distances = jhmdb_normalised_distances(predicted, sample.points.numpy())
        return {"name": sample.name, "frames": len(sample.frames),
                "distances": np.where(np.isnan(distances), -1.0, distances).round(6).tolist(),
                "points": predicted.round(3).tolist()}
    masks = propagate_masks(backbone, sample, config)
    folder = out / "predictions" / sample.name
    for path, mask in zip(sample.annotations, masks):
        write_index_png(folder / f"{path.stem}.png", mask)
    gt = sample.read_masks()
    scores = davis_sequence_scores(gt, np.stack(masks))
    return {"name": sample.name, "frames": len(sample.frames), "objects": scores}


def _summarise(dataset: VideoDataset, videos: list[dict[str, Any]],
               thresholds: tuple[float, ...]) -> dict[str, Any]:
    if dataset.kind == "points":
        distances = [np.where(np.asarray(v["distances"]) < 0, np.nan, v["distances"])
                     for v in videos]
        return {"metric": "PCK", "normalisation": "0.6 x diagonal of the ground-truth joints' "
                "box (CRW eval_pck.py)", **jhmdb_pck(distances, thresholds)}
    return {"metric": "J&F", **davis_summary({v["name"]: v["objects"] for v in videos})}


def evaluate_videos(backbone: Backbone, dataset: VideoDataset, out_dir: str | os.PathLike[str],
                    config: PropagationConfig, *, sigma: float = 0.5,
                    thresholds: tuple[float, ...] = JHMDB_THRESHOLDS, limit: int | None = None,
                    overwrite: bool = False, progress: bool = True,
                    settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Propagate and score every clip of ``dataset`` (resuming from ``out_dir``).

    Args:
        backbone: dense features of a frame (an unconditioned backbone).
        dataset: a :class:`VideoDataset` (``masks`` or ``points``).
        out_dir: output folder (per-video results, predictions, ``results.json``).
        config: propagation settings.
        sigma: Gaussian of first-frame points, in cells (points datasets).
        thresholds: PCK thresholds (points datasets).
        limit: first N videos only.
        overwrite: discard earlier per-video results instead of resuming.
        progress: show a progress bar.
        settings: extra JSON-able settings recorded in the configuration (backbone, ...).

    Returns:
        The ``results.json`` dict: ``dataset``, ``settings``, ``videos``, ``summary``,
        ``per_video``.
    """
    from tqdm.auto import tqdm

    if backbone.condition != "image":
        raise InputError(f"video benchmarks need a backbone whose features depend on the image "
                         f"only; this one is conditioned on the {backbone.condition}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    recorded = {"dataset": dataset.describe() | {"videos": None},
                "propagation": asdict(config), "sigma": sigma, **(settings or {})}
    _check_config(out, recorded, overwrite)
    samples = list(dataset)[:limit] if limit else list(dataset)
    videos = []
    for sample in tqdm(samples, desc=dataset.name, unit="video", disable=not progress):
        path = out / "videos" / f"{_safe_name(sample.name)}.json"
        if path.is_file():
            videos.append(json.loads(path.read_text()))
            continue
        videos.append(_score_video(backbone, sample, config, sigma, out))
        atomic_write_json(path, videos[-1], indent=None)
    results = {"dataset": dataset.name, "split": dataset.split, "root": str(dataset.root),
               "videos": len(videos), "settings": recorded,
               "summary": _summarise(dataset, videos, tuple(thresholds)),
               "per_video": {v["name"]: v["frames"] for v in videos}}
    atomic_write_json(out / RESULTS, results)
    (out / "results.md").write_text(video_table(results) + "\n")
    return results


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def video_table(results: dict[str, Any]) -> str:
    """Markdown table of :func:`evaluate_videos` results (values in %)."""
    summary = results["summary"]
    title = f"**{results['dataset']}** ({results['split']}): {results['videos']} videos"
    if summary["metric"] == "PCK":
        keys = list(summary["pck"])
        header = ["videos", "frames scored", *[f"PCK@{k}" for k in keys]]
        row = [str(results["videos"]), str(summary["frames"]),
               *[_percent(summary["pck"][k]) for k in keys]]
        title += f"; PCK in %, normalised by {summary['normalisation']}"
    else:
        keys = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
        header = ["objects", *keys]
        row = [str(summary["objects"]), *[_percent(summary[k]) for k in keys]]
        title += "; in %, as davis2017-evaluation (first and last frames excluded)"
    return "\n".join([title, "", "| " + " | ".join(header) + " |",
                      "|" + "|".join(["---:"] * len(header)) + "|", "| " + " | ".join(row) + " |"])


"""What a transfer job writes: the resume state (one atomic part file per batch in
``OUT.parts/``, guarded by the job's fingerprint) and the final COCO keypoints document
assembled from the parts in target order."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from semcorr.errors import InputError
from semcorr.io import atomic_write_json
from semcorr.transfer.annotations import TransferSources
from semcorr.transfer.combine import Consensus
from semcorr.transfer.options import SPEED_OPTIONS, TransferConfig

__all__ = ["read_parts"]


PARTS_FORMAT = "semcorr-transfer-parts"


# --- resume state --------------------------------------------------------------------------------


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _output_options(config: TransferConfig) -> dict[str, Any]:
    """The options that determine the output (all but :data:`SPEED_OPTIONS`)."""
    return {k: v for k, v in asdict(config).items() if k not in SPEED_OPTIONS}


def _job_fingerprint(config: TransferConfig, sources: TransferSources, backbone: str,
                     extra: Mapping[str, Any]) -> str:
    payload = {
        "config": _output_options(config),
        "backbone": backbone,
        "extra": dict(extra),
        "category": sources.schema.category,
        "sources": [[str(s.image), s.points.tolist(), s.labelled.tolist()]
                    for s in sources.sources],
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _open_state(out: Path, fingerprint: str, overwrite: bool, is_main: bool) -> Path:
    """The parts folder of ``out``, checked to belong to this job (or emptied on overwrite)."""
    parts = _parts_dir(out)
    info = parts / "job.json"
    if is_main:
        if overwrite and parts.exists():
            shutil.rmtree(parts)
        if info.is_file():
            try:
                found = json.loads(info.read_text()).get("fingerprint")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                raise InputError(f"{info}: unreadable record of a previous transfer job; remove "
                                 f"{parts} or use --overwrite") from None
            if found != fingerprint:
                raise InputError(f"{parts}: holds results of another transfer job (other "
                                 "sources, backbone or options); use --overwrite or another --out")
        else:
            atomic_write_json(info, {"format": PARTS_FORMAT, "fingerprint": fingerprint})
    return parts


def read_parts(parts: Path) -> dict[str, dict[str, Any]]:
    """All per-target records written so far, keyed by target path (later files win).

    Unreadable part files (never produced by atomic writes, but possibly copied in) are skipped.
    """
    done: dict[str, dict[str, Any]] = {}
    for file in sorted(parts.glob("part-*.json")):
        try:
            records = json.loads(file.read_text())["targets"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
        done.update(records)
    return done


def _record(result: Consensus, i: int, transform: Any) -> dict[str, Any]:
    points = result.points[i].cpu()
    scores = result.scores[i].cpu()
    return {
        "width": transform.width,
        "height": transform.height,
        "points": [[round(float(x), 2), round(float(y), 2)] for x, y in points.tolist()],
        "scores": [round(float(s), 4) for s in scores.tolist()],
        "spread": [round(float(s), 2) for s in result.spread[i].cpu().tolist()],
        "support": [int(c) for c in result.support[i].cpu().tolist()],
    }


# --- output --------------------------------------------------------------------------------------


def _annotation(record: Mapping[str, Any], image_id: int, category_id: int, min_score: float
                ) -> dict[str, Any]:
    keypoints: list[float] = []
    visible_xy = []
    rows = zip(record["points"], record["scores"], record["support"], strict=True)
    for (x, y), score, support in rows:
        ok = support > 0 and score >= min_score
        keypoints += [x, y, 2 if ok else 0]
        if ok:
            visible_xy.append((x, y))
    if visible_xy:
        xs, ys = zip(*visible_xy, strict=True)
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    else:
        bbox = [0.0, 0.0, 0.0, 0.0]
    scores = record["scores"]
    return {
        "id": image_id,
        "image_id": image_id,
        "category_id": category_id,
        "keypoints": keypoints,
        "num_keypoints": len(visible_xy),
        "score": round(sum(scores) / max(len(scores), 1), 4),
        "keypoint_scores": scores,
        "keypoint_uncertainty": record["spread"],
        "keypoint_support": record["support"],
        "bbox": [round(v, 2) for v in bbox],
        "area": round(bbox[2] * bbox[3], 2),
        "iscrowd": 0,
    }


def _file_name(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            pass
    return str(path)


def _assemble(
    targets: Sequence[Path],
    done: Mapping[str, Mapping[str, Any]],
    sources: TransferSources,
    config: TransferConfig,
    backbone: str,
    base: Path | None,
) -> dict[str, Any]:
    """The COCO keypoints document of all targets, in target order."""
    category = sources.schema.category
    images, annotations, failed = [], [], []
    for index, target in enumerate(targets, start=1):
        record = done.get(str(target))
        if record is None:
            continue
        if "error" in record:
            failed.append({"file_name": _file_name(target, base), "error": record["error"]})
            continue
        images.append({"id": index, "file_name": _file_name(target, base),
                       "width": record["width"], "height": record["height"]})
        annotations.append(_annotation(record, index, int(category["id"]), config.min_score))
    return {
        "info": {"description": "keypoints transferred by semcorr transfer"},
        "images": images,
        "annotations": annotations,
        "categories": [category],
        "semcorr": {
            "backbone": backbone,
            "config": _output_options(config),
            "sources": [str(s.image) for s in sources.sources],
            "failed": failed,
            "coordinates": "x, y in original pixels, (0, 0) = centre of the top-left pixel",
        },
    }

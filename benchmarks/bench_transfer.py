"""PF-WILLOW keypoint transfer from k = 1, 3, 5 annotated sources per class.

For every class and split, 5 images are drawn as annotated sources and the other 5 are the
targets; k = 1, 3, 5 uses the first k of the 5 sources, so every k is scored on the same targets.
Each run goes through :func:`semcorr.transfer.main` (COCO in, COCO out). Prints PCK@0.1 (α times
the larger side of the target keypoints' box, strict ``<``; per target image, then per class,
then over classes), and the pooled PCK of all points versus the points left after dropping the
lowest-scored 20 %.

Run (one command; 6 CPU-minutes with dense-sift, 23 minutes of wall time at load 11-15 on
the 2 shared cores)::

    python benchmarks/bench_transfer.py --splits 3 [--backbone dense-sift] [--no-cycle]

``python benchmarks/bench_transfer.py speed [...]`` runs the speed and memory benchmark of
streaming transfer instead (``bench_transfer_speed.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from semcorr.data.pfwillow import keypoint_extent, read_willow_points
from semcorr.features import create_backbone
from semcorr.features.cache import FeatureCache
from semcorr.transfer import TransferConfig, main

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pf-willow"
KS = (1, 3, 5)


def write_sources(path: Path, images: list[Path], points: list[torch.Tensor]) -> None:
    """COCO keypoints file of the annotated sources."""
    n = points[0].shape[0]
    coco = {
        "images": [{"id": i + 1, "file_name": str(p), "width": 0, "height": 0}
                   for i, p in enumerate(images)],
        "categories": [{"id": 1, "name": "object", "keypoints": [f"k{j}" for j in range(n)],
                        "skeleton": []}],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1,
             "keypoints": torch.cat([p, torch.full((n, 1), 2.0)], 1).flatten().tolist()}
            for i, p in enumerate(points)
        ],
    }
    path.write_text(json.dumps(coco))


def measure(backbone_name: str = "dense-sift", splits: int = 3, refine: str = "window",
            cycle: bool = True, alpha: float = 0.1, root: Path = ROOT
            ) -> dict[int, dict[str, float]]:
    """The table's figures, per k: ``pck`` (per image, then per class, then over classes),
    ``pooled`` (over all points), ``kept`` (pooled after dropping the lowest-scored 20 %) and
    ``kept_points`` / ``points``; fractions in [0, 1]."""
    backbone = create_backbone(backbone_name).eval()
    config = TransferConfig(batch_size=5, cycle=cycle, refine=refine)
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    # per k: class -> list of per-image PCK; and pooled (score, correct) over all points
    per_image: dict[int, dict[str, list[float]]] = {k: {} for k in KS}
    pooled: dict[int, list[torch.Tensor]] = {k: [] for k in KS}
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache.for_backbone(Path(tmp) / "cache", backbone, storage="float32")
        for cls in classes:
            images = sorted(cls.glob("*.png"))
            truth = {p: read_willow_points(p.with_suffix(".mat")) for p in images}
            for split in range(splits):
                order = torch.randperm(len(images), generator=torch.Generator().manual_seed(split))
                chosen = [images[i] for i in order[:5].tolist()]
                targets = [images[i] for i in order[5:].tolist()]
                for k in KS:
                    ann = Path(tmp) / f"{cls.name}-{split}-{k}.json"
                    write_sources(ann, chosen[:k], [truth[p] for p in chosen[:k]])
                    out = main(ann, targets, Path(tmp) / f"out-{cls.name}-{split}-{k}.json",
                               backbone, config, cache=cache)
                    doc = json.loads(out.read_text())
                    for image, annotation in zip(doc["images"], doc["annotations"], strict=True):
                        gt = truth[Path(image["file_name"])]
                        pred = torch.tensor(annotation["keypoints"]).view(-1, 3)[:, :2]
                        correct = (pred - gt).norm(dim=-1) < alpha * keypoint_extent(gt)
                        per_image[k].setdefault(cls.name, []).append(correct.float().mean().item())
                        scores = torch.tensor(annotation["keypoint_scores"])
                        pooled[k].append(torch.stack([scores, correct.float()], 1))
    table = {}
    for k in KS:
        by_class = [sum(v) / len(v) for v in per_image[k].values()]
        points = torch.cat(pooled[k])
        kept = points[points[:, 0] > torch.quantile(points[:, 0], 0.2)]
        table[k] = {"pck": sum(by_class) / len(by_class), "pooled": points[:, 1].mean().item(),
                    "kept": kept[:, 1].mean().item(), "kept_points": len(kept),
                    "points": len(points)}
    return table


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    table = measure(args.backbone, args.splits, args.refine, args.cycle, args.alpha)
    seconds = time.perf_counter() - start
    print(f"PF-WILLOW, backbone {args.backbone}, refine {args.refine}, cycle {args.cycle}, "
          f"{args.splits} split(s) x 10 classes x 5 targets, {seconds:.0f} s, "
          f"torch threads {torch.get_num_threads()}")
    print(f"| k | PCK@{args.alpha:g} (per image, per class) | pooled PCK | PCK after dropping "
          "lowest-scored 20% | points kept |")
    print("|---|---|---|---|---|")
    for k, row in table.items():
        print(f"| {k} | {100 * row['pck']:.1f} | {100 * row['pooled']:.1f} | "
              f"{100 * row['kept']:.1f} | {row['kept_points']}/{row['points']} |")


if __name__ == "__main__" and sys.argv[1:2] == ["speed"]:
    from bench_transfer_speed import run as run_speed

    run_speed(sys.argv[2:])
elif __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dense-sift")
    parser.add_argument("--refine", default="window")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--no-cycle", dest="cycle", action="store_false",
                        help="without the cycle-consistency check (on by default, as in the CLI)")
    run(parser.parse_args())

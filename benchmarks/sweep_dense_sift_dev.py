"""Choose dense-sift's default matching settings on the PF-Willow development classes only.

    python benchmarks/sweep_dense_sift_dev.py --prior-grid [--category CLASS] [--cache DIR]
    python benchmarks/sweep_dense_sift_dev.py [--split dev|heldout|all] [--only NAME ...]
    python benchmarks/sweep_dense_sift_dev.py --explore [NAME ...] [--full] [--local W,S,K ...]

Every candidate (a backbone setting and a matching setting, listed in ``CANDIDATES``) is scored
by PCK@0.05/0.10/0.15 (α · the larger side of the target keypoints' box, per pair, then per
class) on the split given, ``dev`` by default (docs/protocol.md: car(G), motorbike(G),
winebottle(M), 270 ordered pairs). Features are computed once per image and backbone setting and
reused by every pair and matching setting. ``--prior-grid`` scores every (sigma, strength) of
the affine prior in ``PRIOR_GRID`` on one fit per pair. The selection was made on ``dev`` (the
three classes were run as three processes, ``--category``); the held-out classes were measured
once, for the final candidate (``--split heldout --only "affine s.20 k.10"``). ``--explore``
scores the backbone settings of ``BACKBONE_GRID`` (bin sizes, input size) and matching variants
(no prior, the affine prior, its local refinement, ``--full``: every ``LOCAL_GRID`` setting and
a mutual re-weighting) on one fit per pair. The numbers are logged in docs/protocol.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from semcorr import Matcher, create_backbone, load_image
from semcorr.data import create_dataset
from semcorr.eval.pck import pck_correct
from semcorr.match.geometric import AffinePrior
from semcorr.pipeline import TargetFeatures

REPO = Path(__file__).resolve().parents[1]
ALPHAS = (0.05, 0.10, 0.15)

#: name → (backbone options, matcher factory options); run in this order.
CANDIDATES: dict[str, tuple[dict, dict]] = {
    "before (semantic, window)": ({}, {"prior": "none"}),
    # the final candidate: the best of PRIOR_GRID on dev at PCK@0.10 (run with --prior-grid)
    "affine s.20 k.10": ({}, {"prior": AffinePrior(sigma=0.20, strength=0.10)}),
}


def evaluate(matcher: Matcher, dataset, feature: Callable) -> dict[str, dict[str, float]]:  # noqa: ANN001
    """PCK per class and overall (mean over classes) at :data:`ALPHAS`; the pairs of one
    source are matched in one call (its features queried once, the targets batched)."""
    by_source: dict[Path, list] = defaultdict(list)
    for index in range(len(dataset)):
        sample = dataset.sample(index)
        by_source[sample.source_path].append(sample)
    per_class: dict[str, list[torch.Tensor]] = defaultdict(list)
    for path, samples in by_source.items():
        source = feature(path, "s")
        points = samples[0].source_points
        points = torch.stack([points[:, 0].clamp(0, source.width - 1),
                              points[:, 1].clamp(0, source.height - 1)], 1)
        results = matcher.match(source, [feature(s.target_path, "t") for s in samples], points)
        for sample, result in zip(samples, results, strict=True):
            correct = pck_correct(result.points, sample.target_points, sample.pck_reference,
                                  ALPHAS)  # (N, A)
            per_class[sample.category].append(correct.float().mean(dim=0))
    table = {c: torch.stack(v).mean(dim=0) for c, v in per_class.items()}
    table["mean"] = torch.stack(list(table.values())).mean(dim=0)
    return {c: {f"{a:.2f}": round(float(v[i]), 4) for i, a in enumerate(ALPHAS)}
            for c, v in table.items()}


#: (sigma, strength) of the affine prior tried by ``--prior-grid`` (0 strength: no prior).
PRIOR_GRID: tuple[tuple[float, float], ...] = (
    (0.1, 0.1), (0.1, 0.3), (0.15, 0.2), (0.2, 0.1), (0.2, 0.3), (0.3, 0.3),
)


def prior_grid(dataset, feature: Callable, matcher: Matcher) -> None:  # noqa: ANN001
    """Every (sigma, strength) of :data:`PRIOR_GRID` on the same affine fit per pair (the fit
    does not depend on them): the similarities, the fit and the refiner are the Matcher's
    (:meth:`Matcher._with_prior` on the identity pose), computed once per pair."""
    from semcorr.match.similarity import cosine_similarity, sample_descriptors

    base = AffinePrior()
    priors = [dataclasses.replace(base, sigma=s, strength=max(k, 1e-9)) for s, k in PRIOR_GRID]
    per_class: dict[str, list[torch.Tensor]] = defaultdict(list)
    for index in range(len(dataset)):
        sample = dataset.sample(index)
        source, target = feature(sample.source_path, "s"), feature(sample.target_path, "t")
        points = torch.stack([sample.source_points[:, 0].clamp(0, source.width - 1),
                              sample.source_points[:, 1].clamp(0, source.height - 1)], 1)
        cells = source.transforms[0].to_grid(points)
        queries = sample_descriptors(source.features[:1], cells[None])
        unit = torch.nn.functional.normalize(target.features[None], dim=1)
        similarity = cosine_similarity(queries, unit)[0]  # (N, h, w)
        valid = target.transform.valid_cells()
        matrix, _ = base.fit(source.features[0], target.features,
                             source.transforms[0].valid_cells(), valid)
        rows = []
        for prior in priors:
            found, _ = matcher.refiner(prior.apply(similarity, cells, matrix)[None], valid[None])
            pred = target.transform.from_grid(found[0].float())
            rows.append(pck_correct(pred, sample.target_points, sample.pck_reference,
                                    ALPHAS).float().mean(dim=0))
        per_class[sample.category].append(torch.stack(rows))  # (P, A)
    table = torch.stack([torch.stack(v).mean(dim=0) for v in per_class.values()])  # (C, P, A)
    for p, (sigma, strength) in enumerate(PRIOR_GRID):
        mean = table[:, p].mean(dim=0)
        classes = "  ".join(f"{c} {float(table[i, p, 1]):.3f}" for i, c in enumerate(per_class))
        print(f"grid | affine sigma {sigma:.2f} strength {strength:.2f} | "
              f"{float(mean[0]):.4f} {float(mean[1]):.4f} {float(mean[2]):.4f} | {classes}",
              flush=True)


#: Backbone settings tried by ``--explore`` (dense-sift options over the ``semantic`` preset).
BACKBONE_GRID: dict[str, dict] = {
    "bins 8-64 @256": {},
    "bins 16-64 @256": {"bin_sizes": (16, 32, 64)},
    "bins 8-32 @256": {"bin_sizes": (8, 16, 32)},
    "bins 4-64 @256": {"bin_sizes": (4, 8, 16, 32, 64)},
    "bins 8-128 @256": {"bin_sizes": (8, 16, 32, 64, 128)},
    "bins 12-96 @256": {"bin_sizes": (12, 24, 48, 96)},
    "bins 10-80 @320": {"image_size": 320, "bin_sizes": (10, 20, 40, 80)},
    "bins 6-48 @192": {"image_size": 192, "bin_sizes": (6, 12, 24, 48)},
}


#: (kernel width, sigma, strength) of the local refinement tried by ``--explore``.
LOCAL_GRID: tuple[tuple[float, float, float], ...] = (
    (0.1, 0.2, 0.1), (0.1, 0.1, 0.1), (0.2, 0.15, 0.1), (0.1, 0.15, 0.2), (0.05, 0.1, 0.1),
)


def mutual_variants(source: torch.Tensor, target: torch.Tensor, similarity: torch.Tensor,
                    cells: torch.Tensor, fit: object, prior: AffinePrior,
                    lam: float = 0.5) -> dict[str, torch.Tensor]:
    """Mutual re-weighting of the similarities ``(N, h, w)``: each target cell loses ``lam``
    times how far its best source match (source ``(C, h, w)`` area-pooled to 32², target
    ``(C, h, w)`` unit cells) is above the query's similarity (0 when the query is its best
    match); without and with the affine prior."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(source[None], 32)
    pooled = torch.nn.functional.normalize(pooled.flatten(2)[0].t(), dim=1)  # (P, C)
    back = (pooled @ target.flatten(1)).max(dim=0).values.view(1, *similarity.shape[1:])
    moved = similarity - lam * (back - similarity).clamp_min(0)
    return {f"mutual l{lam}": moved,
            f"mutual l{lam} + affine": prior.apply_fit(moved, cells, fit)}  # type: ignore[arg-type]


def explore(dataset, feature: Callable, matcher: Matcher, label: str,  # noqa: ANN001
            full: bool, local_grid: tuple[tuple[float, float, float], ...]) -> None:
    """Matching variants on one backbone setting, every pair's similarities and fit computed
    once: no prior, the affine prior, the local (non-rigid) refinement of its prediction for
    each (width, sigma, strength) of ``local_grid`` and (``full``) a mutual re-weighting;
    with the matcher's flip candidate (``pose_align``), the same again in the pose the
    instance matching distance chooses."""
    from semcorr.match.pose import mutual_nn_distance
    from semcorr.match.similarity import cosine_similarity, sample_descriptors

    base = AffinePrior()
    per_class: dict[str, list[torch.Tensor]] = defaultdict(list)
    names: list[str] = []
    for index in range(len(dataset)):
        sample = dataset.sample(index)
        source, target = feature(sample.source_path, "s"), feature(sample.target_path, "t")
        points = torch.stack([sample.source_points[:, 0].clamp(0, source.width - 1),
                              sample.source_points[:, 1].clamp(0, source.height - 1)], 1)
        allcells = matcher.query_cells(source, points, None)  # (K, N, 2)
        unit = torch.nn.functional.normalize(target.features[None], dim=1)
        valid = target.transform.valid_cells()
        flips = (False, True) if len(source.poses) > 1 else (False,)
        distances = torch.stack([mutual_nn_distance(source.features[k:k + 1],
                                                    target.features[None], max_size=64)
                                 for k in range(len(source.poses))])[:, 0] if flips[-1] else None
        rows, names = [], []
        if index % 30 == 0:
            print(f"  {label}: pair {index}/{len(dataset)} {time.strftime('%H:%M:%S')}",
                  flush=True)
        for flip in flips:
            k = int(distances.argmin()) if flip else 0
            cells = allcells[k]
            queries = sample_descriptors(source.features[k:k + 1], cells[None])
            similarity = cosine_similarity(queries, unit)[0]  # (N, h, w)
            fit = base.fit_pair(source.features[k], target.features,
                                source.transforms[k].valid_cells(), valid)
            variants = {"none": similarity, "affine s.20 k.10": base.apply_fit(similarity,
                                                                               cells, fit)}
            for width, sigma, strength in local_grid:
                local = AffinePrior(sigma=sigma, strength=strength, local=width)
                variants[f"local w{width} s{sigma} k{strength}"] = local.apply_fit(
                    similarity, cells, fit)
            if full:
                variants.update(mutual_variants(source.features[k], unit[0], similarity,
                                                cells, fit, base))
            for name, scores in variants.items():
                found, _ = matcher.refiner(scores[None], valid[None])
                pred = target.transform.from_grid(found[0].float())
                rows.append(pck_correct(pred, sample.target_points, sample.pck_reference,
                                        ALPHAS).float().mean(dim=0))
                names.append(("flip | " if flip else "") + name)
        per_class[sample.category].append(torch.stack(rows))  # (V, A)
    table = torch.stack([torch.stack(v).mean(dim=0) for v in per_class.values()])  # (C, V, A)
    for v, name in enumerate(names):
        mean = table[:, v].mean(dim=0)
        classes = "  ".join(f"{c} {float(table[i, v, 1]):.3f}" for i, c in enumerate(per_class))
        print(f"explore | {label} | {name:32s} | {float(mean[0]):.4f} {float(mean[1]):.4f} "
              f"{float(mean[2]):.4f} | {classes}", flush=True)


def features_of(cache: dict, key: tuple, matcher: Matcher, folder: Path | None) -> Callable:
    """``feature(path, role)``: the image's features in the matcher's poses, computed once per
    backbone setting (kept in memory, and in ``folder`` when given; features with more poses
    are reused), cut to the matcher's poses for a source and to the identity for a target."""
    tag = hashlib.sha1(repr(key).encode()).hexdigest()[:8]

    def feature(path: Path, role: str):  # noqa: ANN202
        found = None
        for poses in (("identity", "hflip"), ("identity",)):
            slot = (tag, path, poses)
            stored = None if folder is None else (
                folder / f"{tag}-{len(poses)}-{path.parent.name}-{path.stem}.pt")
            if slot not in cache and stored is not None and stored.is_file():
                cache[slot] = torch.load(stored, weights_only=False)
            if slot in cache and len(poses) >= len(matcher.poses):
                found = cache[slot]
                break
        if found is None:
            found = matcher.source_features(load_image(path))
            cache[(tag, path, matcher.poses)] = found
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                torch.save(found, folder / f"{tag}-{len(matcher.poses)}-{path.parent.name}-"
                           f"{path.stem}.pt")
        if role == "t":
            return TargetFeatures(found.features[0], found.transforms[0])
        k = len(matcher.poses)
        return dataclasses.replace(found, poses=found.poses[:k], features=found.features[:k],
                                   transforms=found.transforms[:k])

    return feature


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared/data/pf-willow")
    parser.add_argument("--split", default="dev", choices=("dev", "heldout", "all"))
    parser.add_argument("--only", nargs="*", default=None, help="candidate names to run")
    parser.add_argument("--category", default=None, help="one class of the split only")
    parser.add_argument("--prior-grid", action="store_true",
                        help="score every setting of PRIOR_GRID (one affine fit per pair)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder keeping the features between runs (trusted files only)")
    parser.add_argument("--explore", nargs="*", default=None,
                        help="BACKBONE_GRID names (none: all) scored with every matching variant")
    parser.add_argument("--full", action="store_true",
                        help="--explore: every LOCAL_GRID setting and the mutual re-weighting")
    parser.add_argument("--local", nargs="*", default=["0.1,0.2,0.1"],
                        help="--explore without --full: local refinements WIDTH,SIGMA,STRENGTH")
    parser.add_argument("--flip", action="store_true",
                        help="--explore: also the flip candidate (pose alignment)")
    args = parser.parse_args()
    dataset = create_dataset("pf-willow", args.root, split=args.split, category=args.category)
    cache: dict[tuple, object] = {}
    if args.explore is not None:
        for label, options in BACKBONE_GRID.items():
            if args.explore and label not in args.explore:
                continue
            matcher = Matcher(create_backbone("dense-sift", **options), refine="window",
                              pose_align=args.flip)
            key = tuple(sorted(options.items()))
            grid = LOCAL_GRID if args.full else tuple(
                tuple(float(v) for v in item.split(",")) for item in args.local)
            explore(dataset, features_of(cache, key, matcher, args.cache), matcher, label,
                    args.full, grid)
        return
    if args.prior_grid:
        matcher = Matcher(create_backbone("dense-sift"), refine="window")
        prior_grid(dataset, features_of(cache, (), matcher, args.cache), matcher)
        return
    for name, (backbone_options, matcher_options) in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        backbone = create_backbone("dense-sift", **backbone_options)
        matcher = Matcher(backbone, refine=matcher_options.get("refine", "window"),
                          **{k: v for k, v in matcher_options.items() if k != "refine"})
        key = tuple(sorted(backbone_options.items()))
        feature = features_of(cache, key, matcher, args.cache)
        table = evaluate(matcher, dataset, feature)
        seconds = time.perf_counter() - start
        classes = "  ".join(f"{c} {v['0.10']:.3f}" for c, v in table.items() if c != "mean")
        mean = table["mean"]
        print(f"{args.split:8s} | {name:32s} | {mean['0.05']:.4f} {mean['0.10']:.4f} "
              f"{mean['0.15']:.4f} | {classes} | {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()

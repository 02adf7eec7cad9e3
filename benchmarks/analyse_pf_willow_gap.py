"""Where dense-sift + ``--prior affine-local`` loses on PF-Willow: oracle decomposition of PCK.

    python benchmarks/analyse_pf_willow_gap.py [--split dev|heldout|all] [--category CLASS]
        [--cache DIR] [--no-flip] [--limit N] [--json FILE]

Each row is one way of predicting the keypoints of every pair, all on the same features and the
same affine fit per pair (PCK per pair, then per class, then the class mean, as
``semcorr eval``):

- ``shipped``: :class:`semcorr.Matcher` with ``prior="affine-local"`` (the opt-in pipeline, the
  figure ``semcorr eval --prior affine-local`` reports); ``affine-local (recomputed)`` rebuilds
  it from the stages and must agree (a check of the rows below, which share those stages).
- ORACLE GEOMETRY: the least-squares affine map of the ground-truth keypoints (source grid →
  target grid), used alone as the prediction, or as the prior's centre in place of the RANSAC
  fit (without and with the local refinement around it).
- DESCRIPTOR RECALL: a keypoint counts when its true location is within the threshold of one of
  the top-k local maxima (3 x 3 non-maximum suppression) of its similarity map (without the
  prior, and with affine-local's): what a perfect choice among k candidates would reach.
- FLIPS: the source's horizontal flip against the identity, both with affine-local: how often
  the instance matching distance (mutual nearest neighbours, as ``--pose-align``) prefers the
  flip, the PCK when it chooses (a mean to try: pose alignment + the prior), and the oracle that
  keeps the better pose of each pair.
- ``mutual l0.5 + affine-local``: the mutual re-weighting of ``sweep_dense_sift_dev.py``, then
  affine-local (a second mean to try).

Vectorised over keypoints; loops run over pairs only. ``--cache`` keeps the features between
runs (``sweep_dense_sift_dev.py``'s files; trusted files only). The figures and the commands
that produced them are in docs/protocol.md ("Why held-out stays below 0.50").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from semcorr import Matcher, create_backbone
from semcorr.data import create_dataset
from semcorr.eval.pck import pck_correct
from semcorr.match.geometric import (
    LOCAL_PRIOR,
    AffinePrior,
    PriorFit,
    apply_affine,
)
from semcorr.match.pose import mutual_nn_distance
from semcorr.match.similarity import cosine_similarity, sample_descriptors

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.* by the tests
    from sweep_dense_sift_dev import features_of, mutual_variants
except ImportError:  # pragma: no cover - depends on how it is imported
    from benchmarks.sweep_dense_sift_dev import features_of, mutual_variants

REPO = Path(__file__).resolve().parents[1]
ALPHAS = (0.05, 0.10, 0.15)
TOP_K = (1, 3, 5)
LOCAL = AffinePrior(**LOCAL_PRIOR)


def gt_affine(src: torch.Tensor, trg: torch.Tensor) -> torch.Tensor:
    """Least-squares affine map ``(3, 2)`` (``[x, y, 1] @ A``) from ``src`` to ``trg``
    ``(N, 2)``."""
    design = torch.cat([src, torch.ones_like(src[:, :1])], dim=1).double()
    return torch.linalg.lstsq(design, trg.double()).solution.float()


def gt_affine_loo(src: torch.Tensor, trg: torch.Tensor) -> torch.Tensor:
    """Each point ``(N, 2)`` of ``src`` through the least-squares affine map of the *other*
    N - 1 pairs (leave-one-out: the map does not see the point it predicts) → ``(N, 2)``."""
    n = src.shape[0]
    others = torch.arange(n).expand(n, n)[~torch.eye(n, dtype=torch.bool)].view(n, n - 1)
    design = torch.cat([src, torch.ones_like(src[:, :1])], dim=1).double()  # (N, 3)
    maps = torch.linalg.lstsq(design[others], trg.double()[others]).solution  # (N, 3, 2)
    return (design[:, None] @ maps)[:, 0].float()


def peak_cells(scores: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """The ``k`` highest local maxima (3 x 3 non-maximum suppression) of each map ``(N, h, w)``
    on the valid cells ``(h, w)``: cells ``(N, k, 2)`` (x, y) and whether each exists
    ``(N, k)``."""
    n, h, w = scores.shape
    masked = scores.masked_fill(~valid[None], float("-inf"))
    pooled = F.max_pool2d(masked[:, None], 3, stride=1, padding=1)[:, 0]
    peaks = (masked == pooled) & valid[None]
    values, index = masked.masked_fill(~peaks, float("-inf")).flatten(1).topk(k, dim=1)
    cells = torch.stack([index % w, index // w], dim=-1).float()
    return cells, torch.isfinite(values)


def recall(scores: torch.Tensor, valid: torch.Tensor, transform, gt: torch.Tensor,  # noqa: ANN001
           reference: float, alpha: float = 0.10) -> dict[int, torch.Tensor]:
    """Per keypoint ``(N,)``: its true location ``gt`` ``(N, 2)`` is within ``alpha *
    reference`` of one of the top-k peaks of its map ``(N, h, w)``, for every k of TOP_K."""
    cells, exists = peak_cells(scores, valid, max(TOP_K))
    n, k, _ = cells.shape
    pixels = transform.from_grid(cells.reshape(n * k, 2)).reshape(n, k, 2)
    near = ((pixels - gt[:, None]).norm(dim=-1) < alpha * reference) & exists  # (N, K)
    return {top: near[:, :top].any(dim=1) for top in TOP_K}


@dataclasses.dataclass
class Pair:
    """One pair's inputs: source features (one or two poses), target features, points."""

    sample: object
    source: object
    target: object
    points: torch.Tensor


@torch.inference_mode()
def predictions(pair: Pair, matcher: Matcher, flip: bool) -> tuple[dict[str, torch.Tensor],
                                                                  dict[str, torch.Tensor],
                                                                  dict[str, float]]:
    """Every row's predicted points ``(N, 2)``, the recall rows ``(N,)`` bool and the pair's
    flip facts (instance matching distances)."""
    sample, source, target = pair.sample, pair.source, pair.target
    identity = dataclasses.replace(source, poses=source.poses[:1], features=source.features[:1],
                                   transforms=source.transforms[:1])
    shipped = matcher.match(identity, [target], pair.points)[0].points
    valid = target.transform.valid_cells()
    unit = F.normalize(target.features[None], dim=1)
    perm, _ = matcher.check_permutation(sample.flip_permutation.tolist(), pair.points.shape[0])
    allcells = matcher.query_cells(source, pair.points, perm)  # (K, N, 2)

    def scored(k: int) -> tuple[torch.Tensor, torch.Tensor, PriorFit]:
        cells = allcells[k]
        sim = cosine_similarity(sample_descriptors(source.features[k:k + 1], cells[None]),
                                unit)[0]  # (N, h, w)
        fit = LOCAL.fit_pair(source.features[k], target.features,
                             source.transforms[k].valid_cells(), valid)
        return cells, sim, fit

    def found(scores: torch.Tensor) -> torch.Tensor:
        return target.transform.from_grid(matcher.refiner(scores[None], valid[None])[0][0]
                                          .float())

    cells, sim, fit = scored(0)
    side = sim.shape[-1]
    local_scores = LOCAL.apply_fit(sim, cells, fit)
    oracle = gt_affine(cells, target.transform.to_grid(sample.target_points))
    oracle_fit = LOCAL.fit_pair(source.features[0], target.features,
                                source.transforms[0].valid_cells(), valid, matrix=oracle)
    mutual = mutual_variants(source.features[0], unit[0], sim, cells, fit, LOCAL)
    rows = {
        "default (no prior)": found(sim),
        "shipped: --prior affine-local": shipped,
        "affine-local (recomputed)": found(local_scores),
        "RANSAC affine alone": target.transform.from_grid(apply_affine(cells, fit.matrix)),
        "RANSAC affine + local, alone": target.transform.from_grid(
            LOCAL.predict(cells, fit, side)),
        "oracle affine alone": target.transform.from_grid(apply_affine(cells, oracle)),
        "oracle affine alone, leave-one-out": target.transform.from_grid(
            gt_affine_loo(cells, target.transform.to_grid(sample.target_points))),
        "oracle affine as prior centre": found(
            LOCAL.penalise(sim, apply_affine(cells, oracle))),
        "oracle affine + local as centre": found(LOCAL.apply_fit(sim, cells, oracle_fit)),
        "mutual l0.5 + affine-local": found(mutual["mutual l0.5 + affine"]),
    }
    hits = {f"recall top-{k} (no prior)": v for k, v in recall(
        sim, valid, target.transform, sample.target_points, sample.pck_reference).items()}
    hits.update({f"recall top-{k} (affine-local)": v for k, v in recall(
        local_scores, valid, target.transform, sample.target_points,
        sample.pck_reference).items()})
    facts: dict[str, float] = {}
    if flip:
        flipped_cells, flipped_sim, flipped_fit = scored(1)
        rows["hflip + affine-local"] = found(LOCAL.apply_fit(flipped_sim, flipped_cells,
                                                             flipped_fit))
        distances = torch.stack([mutual_nn_distance(source.features[k:k + 1],
                                                    target.features[None], max_size=64)
                                 for k in range(2)])[:, 0]
        facts = {"identity": float(distances[0]), "hflip": float(distances[1])}
    return rows, hits, facts


def pck10(points: torch.Tensor, sample) -> torch.Tensor:  # noqa: ANN001
    """PCK of one pair at ALPHAS ``(A,)``."""
    return pck_correct(points, sample.target_points, sample.pck_reference,
                       ALPHAS).float().mean(dim=0)


def analyse(dataset, feature: Callable, matcher: Matcher, flip: bool,  # noqa: ANN001
            limit: int | None = None) -> dict[str, dict[str, list[float]]]:
    """Every row's PCK at ALPHAS, per class and as the class mean: ``{row: {class: [A]}}``."""
    per_class: dict[str, dict[str, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in range(count):
        sample = dataset.sample(index)
        source, target = feature(sample.source_path, "s"), feature(sample.target_path, "t")
        points = torch.stack([sample.source_points[:, 0].clamp(0, source.width - 1),
                              sample.source_points[:, 1].clamp(0, source.height - 1)], 1)
        rows, hits, facts = predictions(Pair(sample, source, target, points), matcher, flip)
        table = per_class[sample.category]
        scores = {name: pck10(points_, sample) for name, points_ in rows.items()}
        scores.update({name: v.float().mean().repeat(len(ALPHAS)) for name, v in hits.items()})
        if flip:
            ident, flipped = scores["shipped: --prior affine-local"], scores[
                "hflip + affine-local"]
            chose_flip = facts["hflip"] < facts["identity"]
            scores["flip chosen by distance + affine-local"] = flipped if chose_flip else ident
            scores["flip oracle (better pose per pair)"] = (flipped if flipped[1] > ident[1]
                                                            else ident)
            scores["pairs: distance prefers hflip"] = torch.full((len(ALPHAS),),
                                                                 float(chose_flip))
            scores["pairs: hflip scores higher"] = (flipped > ident).float()
        for name, value in scores.items():
            table[name].append(value)
        if index % 30 == 0:
            print(f"  pair {index}/{count} {time.strftime('%H:%M:%S')}", flush=True)
    out: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for category, table in per_class.items():
        for name, values in table.items():
            out[name][category] = torch.stack(values).mean(dim=0).tolist()
    for classes in out.values():
        classes["mean"] = torch.tensor(list(classes.values())).mean(dim=0).tolist()
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared/data/pf-willow")
    parser.add_argument("--split", default="dev", choices=("dev", "heldout", "all"))
    parser.add_argument("--category", default=None, help="one class of the split only")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder keeping the features between runs (trusted files only)")
    parser.add_argument("--no-flip", action="store_true", help="skip the flip rows")
    parser.add_argument("--limit", type=int, default=None, help="first N pairs only")
    parser.add_argument("--json", type=Path, default=None, help="write the table here")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = create_dataset("pf-willow", args.root, split=args.split, category=args.category)
    flip = not args.no_flip
    matcher = Matcher(create_backbone("dense-sift"), refine="window", prior="affine-local",
                      pose_align=flip)
    start = time.perf_counter()
    table = analyse(dataset, features_of({}, (), matcher, args.cache), matcher, flip, args.limit)
    seconds = time.perf_counter() - start
    classes = [c for c in next(iter(table.values())) if c != "mean"]
    print(f"{args.split} | PCK@0.05/0.10/0.15 (recall and pair rows: fractions) | "
          + "  ".join(f"{c} @0.10" for c in classes) + f" | {seconds:.0f} s")
    for name, row in table.items():
        mean = row["mean"]
        per = "  ".join(f"{row[c][1]:.3f}" for c in classes)
        print(f"{name:42s} | {mean[0]:.4f} {mean[1]:.4f} {mean[2]:.4f} | {per}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"split": args.split, "table": table}, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark datasets in their official on-disk layouts, yielding :class:`PairSample`."""

# the loaders register themselves (davis, jhmdb: the video benchmarks)
from semcorr.data import (  # noqa: F401
    ap10k,
    cub,
    davis,
    jhmdb,
    keypoints_json,
    mp100,
    pfpascal,
    pfwillow,
    soco,
    spair,
    spair_u,
)
from semcorr.data.base import (
    DATASETS,
    PairDataset,
    PairSample,
    create_dataset,
    list_datasets,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "PairDataset",
    "PairSample",
    "create_dataset",
    "list_datasets",
    "register_dataset",
]

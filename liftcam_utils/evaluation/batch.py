"""Batch evaluation: every method on every image, with every metric, into one tidy table.

``evaluate`` splits the image selection into shards. For each shard the body runs once and its
maps ``A`` are shared by all methods. With a ``cache_dir`` each (shard, method) result is stored
as one JSON file, named by a hash of everything that determines it (:mod:`.cache`: the network's
structure and the bytes of its weights, its output function, the preprocessing, the layer, the
shard's images, the method's label, name and options, the metrics, the baseline, the reference
method and the code version). Files are written atomically, so a rerun reads them and an interrupted run resumes; a
damaged file is recomputed, with a warning naming it, and rewritten. Shards run in this process
by default, or on a Dask cluster (``dask_scheduler="local"`` starts one on this machine; an
address such as ``"tcp://10.0.0.5:8786"`` uses an existing one). The model is sent to the
workers as it is in this process, weights and output function included, so they compute exactly what
this process would.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import numbers
import os
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..datasets.records import ImageRecord, select
from ..engine.cam_input import prepare
from ..engine.cam_map import cam_map
from ..engine.inference_net import inference_net
from ..engine.outputs import check_output
from ..engine.split import eval_mode
from ..json_values import VALID_TYPES, json_value
from ..methods import METHODS
from ..models import LoadedModel
from . import metrics as M
from .cache import ExpectedRows, cache_key, code_version, model_fingerprint, read_cached, record_digest, store

METRICS = ("faithfulness", "insertion_deletion", "road", "pointing", "cosine")
# summary column -> how the rows are averaged
SUMMARY_COLUMNS = ("IC", "AD", "ADD", "insertion_auc", "deletion_auc", "road_morf", "road_lerf", "pointing", "cosine",
                   "seconds")
# the columns of every result frame, then those each metric adds (in METRICS order)
ROW_COLUMNS = ("image", "target", "method", "seconds")
METRIC_COLUMNS = {"faithfulness": ("Y", "O", "D", "IC", "AD", "ADD"),
                  "insertion_deletion": ("insertion_auc", "deletion_auc", "insertion_curve", "deletion_curve"),
                  "road": ("road_morf", "road_lerf", "road_morf_curve", "road_lerf_curve"),
                  "pointing": ("pointing",), "cosine": ("cosine",)}
# the points of each curve column, and the columns that are NaN where the metric is undefined (a target with no
# box, a method with per-pixel weights); every other number is finite
CURVE_POINTS = {"insertion_curve": len(M.DELTAS), "deletion_curve": len(M.DELTAS),
                "road_morf_curve": len(M.ROAD_FRACTIONS), "road_lerf_curve": len(M.ROAD_FRACTIONS)}
UNDEFINED_AS_NAN = ("pointing", "cosine")
_SCORED = ("faithfulness", "insertion_deletion", "road")  # the metrics that run the network


@dataclass(frozen=True)
class MethodSpec:
    """A row label, the registered method and its options (e.g. SHAP-CAM with P orderings), the options
    as JSON text with sorted keys: one text per set of options, and hashable."""

    label: str
    method: str
    options_json: str = "{}"

    @property
    def kwargs(self) -> dict:
        """The options, as keyword arguments of the method (a fresh copy on each call)."""
        return json.loads(self.options_json)

    @property
    def description(self) -> dict:
        """The spec as a part of a cache key."""
        return {"label": self.label, "method": self.method, "options": self.options_json}


def _method_spec(label: str, method: str, options: Mapping) -> MethodSpec:
    """The spec of ``method`` with ``options`` under the row label ``label``, its options checked."""
    if not isinstance(options, Mapping):
        raise TypeError(f"the options of {label!r} must be a dict of keyword arguments, got "
                        f"{type(options).__name__}")
    for name, value in options.items():
        try:
            json_value(value, f"option {name!r} of {label!r}")
        except (TypeError, ValueError) as error:  # only JSON values have one exact text in a cache key
            raise type(error)(f"{error}; method options must be JSON values: {VALID_TYPES}") from None
    return MethodSpec(label, method, json.dumps(dict(options), sort_keys=True))


def method_specs(methods: Sequence[str] | Mapping[str, tuple[str, dict]]) -> list[MethodSpec]:
    """``["gradcam", "liftcam"]`` or ``{"SHAP-CAM_10": ("shapcam", {"n_permutations": 10})}``; option
    values must be JSON values (``TypeError`` naming the option otherwise)."""
    if isinstance(methods, str):
        raise TypeError(f"methods must be a list of method names such as ['gradcam'] or a dict of labels to "
                        f"(method name, options dict) pairs, not the str {methods!r}")
    if isinstance(methods, Mapping):
        for label, pair in methods.items():
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TypeError(f"{label!r} must be a (method name, options dict) pair, e.g. "
                                f"('shapcam', {{'n_permutations': 10}}), got {pair!r}")
        specs = [_method_spec(label, name, options) for label, (name, options) in methods.items()]
    else:
        specs = [MethodSpec(name, name) for name in methods]
    if not specs:
        raise ValueError(f"no methods given; name at least one of: {', '.join(METHODS)}")
    for spec in specs:
        if spec.method not in METHODS:
            raise ValueError(f"unknown method {spec.method!r}; valid methods: {', '.join(METHODS)}")
    return specs


def box_mask_after_preprocess(record: ImageRecord, preprocess, label: int, size) -> torch.Tensor:
    """The target's boxes as a mask in the coordinates of the preprocessed image: the mask is
    drawn at the original size and sent through the same resize and crop steps."""
    image = record.image()
    boxes = [b for b in record.boxes if b.label == label]
    mask = Image.fromarray((M.box_mask(boxes, image.height, image.width).numpy() * 255).astype("uint8"))
    for step in getattr(preprocess, "transforms", []):
        if type(step).__name__ in ("ToTensor", "PILToTensor", "Normalize"):
            break
        mask = step(mask)
    mask = torch.tensor(np.array(mask), dtype=torch.float32)
    if tuple(mask.shape) != tuple(size):
        raise ValueError(f"box mask of {record.name!r} has size {tuple(mask.shape)}, the image {tuple(size)}")
    return (mask > 127).to(torch.float32)


def _shard_rows(model: LoadedModel, layer: str | None, records: list[ImageRecord], specs: list[MethodSpec],
                metrics: tuple[str, ...], absent: str, reference: MethodSpec | None) -> dict[MethodSpec, pd.DataFrame]:
    """Evaluate one shard; VQA records (with a ``question``) in groups that share the question, each
    with that question fixed (paper Sec. 4.4), rows in the shard's order."""
    questions = list(dict.fromkeys(r.question for r in records))
    if questions == [None]:
        return _image_rows(model, layer, records, specs, metrics, absent, reference)
    if None in questions or model.questions is None:
        raise ValueError(f"model {model.name!r} and these records do not match: VQA records need a VQA model "
                         "(e.g. shapes_vqa), image records a model that takes no question")
    parts = [_image_rows(model.fixed(q), layer, [r for r in records if r.question == q], specs, metrics, absent,
                         reference) for q in questions]
    order = {r.name: i for i, r in enumerate(records)}
    return {spec: pd.concat([part[spec] for part in parts], ignore_index=True)
            .sort_values("image", key=lambda names: names.map(order), kind="stable", ignore_index=True)
            for spec in specs}


def _metric_columns(net: nn.Module, output: str, x: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor,
                    baseline: torch.Tensor, metrics: tuple[str, ...], road_noise: torch.Tensor | None,
                    box_masks: torch.Tensor | None) -> dict[str, list]:
    """The columns of ``metrics`` (all but ``"cosine"``) for the (B, H, W) ``saliency`` maps of images ``x``, scored
    by ``net`` under the output function ``output``."""
    columns = {}
    if "faithfulness" in metrics:
        scores = M.confidence_scores(net, x, saliency, target, baseline, output=output)
        columns.update({key: value.tolist() for key, value in scores.items()})
        columns["IC"] = M.increase_in_confidence(scores["Y"], scores["O"]).tolist()
        columns["AD"] = M.average_drop(scores["Y"], scores["O"]).tolist()
        columns["ADD"] = M.average_drop_in_deletion(scores["Y"], scores["D"]).tolist()
    if "insertion_deletion" in metrics:
        curves = M.insertion_deletion_curves(net, x, saliency, target, baseline, output=output)
        columns["insertion_auc"] = M.auc(curves["insertion"]).tolist()
        columns["deletion_auc"] = M.auc(curves["deletion"]).tolist()
        columns["insertion_curve"] = curves["insertion"].tolist()  # at metrics.DELTAS, for plots
        columns["deletion_curve"] = curves["deletion"].tolist()
    if "road" in metrics:
        curves = M.road_curves(net, x, saliency, target, noise=road_noise, output=output)
        columns["road_morf"] = M.road_score(curves["morf"]).tolist()
        columns["road_lerf"] = M.road_score(curves["lerf"]).tolist()
        columns["road_morf_curve"] = curves["morf"].tolist()  # at metrics.ROAD_FRACTIONS, for plots
        columns["road_lerf_curve"] = curves["lerf"].tolist()
    if box_masks is not None:
        masks = box_masks.to(x.device)
        energy = M.energy_pointing_game(saliency, masks)
        has_box = masks.flatten(1).any(1)  # no box of the target: the game is undefined (NaN), not 0
        columns["pointing"] = torch.where(has_box, energy, torch.nan).tolist()
    return columns


def _image_rows(model: LoadedModel, layer: str | None, records: list[ImageRecord], specs: list[MethodSpec],
                metrics: tuple[str, ...], absent: str, reference: MethodSpec | None) -> dict[MethodSpec, pd.DataFrame]:
    """Evaluate records of one model: the body once, then every method and metric on the shared maps."""
    split = model.split(layer)
    x = torch.stack([model.preprocess(r.image()) for r in records])
    target = torch.tensor([r.label for r in records])
    size = tuple(x.shape[-2:])
    baseline = M.baseline_image(model.preprocess, absent)
    road_noise = M.imputation_noise(model.preprocess) if "road" in metrics else None
    results = {}
    with eval_mode(model.net):
        inputs = prepare(split, x, target)
        x, target = inputs.x, inputs.target
        baseline = baseline.to(x.device)
        reference_alpha = METHODS[reference.method](inputs, **reference.kwargs) if reference else None
        box_masks = (torch.stack([box_mask_after_preprocess(r, model.preprocess, r.label, size) for r in records])
                     if "pointing" in metrics else None)
        # the scores' forward passes: batch norms folded where they fold (the same function, fewer passes)
        scoring = inference_net(model.net, x[:1]) if set(metrics) & set(_SCORED) else model.net
        scored: list[tuple[torch.Tensor, dict]] = []  # (saliency maps, their metric columns) of this shard
        for spec in specs:
            start = time.perf_counter()
            alpha = METHODS[spec.method](inputs, **spec.kwargs)
            saliency = cam_map(alpha, inputs.maps, size)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / len(records)
            columns = {"image": [r.name for r in records], "target": target.tolist(),
                       "method": spec.label, "seconds": seconds}
            # a method whose maps equal an earlier method's (e.g. ShapleyCAM and Grad-CAM with the logit
            # utility) gets that method's scores: every metric is a function of the maps alone
            same = next((done for maps, done in scored if torch.equal(maps, saliency)), None)
            if same is None:
                same = _metric_columns(scoring, model.output, x, saliency, target, baseline, metrics, road_noise,
                                       box_masks)
                scored.append((saliency, same))
            columns.update(same)
            if reference_alpha is not None:  # cosine of two alphas (B, N); NaN for per-pixel weights (B, N, h, w)
                columns["cosine"] = (M.cosine_similarity(alpha.double(), reference_alpha.double()).tolist()
                                     if alpha.dim() == reference_alpha.dim() == 2 else [torch.nan] * len(records))
            results[spec] = pd.DataFrame(columns)
    return results


# on a Dask worker: network received -> {device: the model moved there}, made once per worker and device
_device_copies: weakref.WeakKeyDictionary[nn.Module, dict[str, LoadedModel]] = weakref.WeakKeyDictionary()


def _on_device(model: LoadedModel, device: str) -> LoadedModel:
    """``model`` on ``device``: itself when it is there, else a copy moved there (kept for later shards).
    The received model is never moved in place: an in-process worker shares it with the caller."""
    if model.device == torch.device(device):
        return model
    copies = _device_copies.setdefault(model.net, {})
    if device not in copies:
        copies[device] = dataclasses.replace(model, net=copy.deepcopy(model.net).to(device))
    return copies[device]


def _remote_shard(model, device, layer, records, specs, metrics, absent, reference):
    """On a Dask worker: :func:`_shard_rows` with the model this process sent, on ``device``. The model
    travels whole (a :class:`LoadedModel`, its ``output`` included), so the worker scores the same
    probabilities as this process."""
    return _shard_rows(_on_device(model, device), layer, records, specs, metrics, absent, reference)


@dataclass
class Evaluation:
    """``rows``: one row per (image, method) with every metric and the seconds per image;
    ``summary``: per method, the mean of each metric (the paper's tables)."""

    rows: pd.DataFrame
    summary: pd.DataFrame


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric per method, methods in the order they were evaluated."""
    present = [c for c in SUMMARY_COLUMNS if c in rows.columns]
    order = list(dict.fromkeys(rows["method"]))
    return rows.groupby("method", sort=False)[present].mean().loc[order]


def paper_table(rows_by_dataset: Mapping[str, pd.DataFrame], metric: str) -> pd.DataFrame:
    """One metric as methods x datasets, the layout of the paper's tables."""
    columns = {name: summarize(rows)[metric] for name, rows in rows_by_dataset.items()}
    order = list(dict.fromkeys(method for column in columns.values() for method in column.index))
    return pd.DataFrame(columns).reindex(order)


def _is_int(value) -> bool:
    """An int (Python's or NumPy's), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _shards(records: list[ImageRecord], shard_size: int) -> Iterable[list[ImageRecord]]:
    for start in range(0, len(records), shard_size):
        yield records[start:start + shard_size]


def evaluate(model: LoadedModel, dataset: Sequence[ImageRecord],
             methods: Sequence[str] | Mapping[str, tuple[str, dict]],
             metrics: Sequence[str] = ("faithfulness",), n_images: int | None = None, seed: int = 0,
             layer: str | None = None, absent: str = "mean",
             reference: tuple[str, dict] | None = None, shard_size: int = 8,
             cache_dir: str | os.PathLike | None = None, dask_scheduler: str | None = None,
             device: str | None = None, progress: bool = True) -> Evaluation:
    """Evaluate ``methods`` on ``n_images`` records of ``dataset`` drawn with ``seed``.

    ``metrics``: any of ``"faithfulness"`` (IC, AD, ADD; Eqs. 11-13), ``"insertion_deletion"``
    (AUCs, Table 4, and each row's two curves at ``metrics.DELTAS`` as lists), ``"road"`` (ROAD,
    Rong et al. 2022: the means ``road_morf`` / ``road_lerf`` of the target's probability after the
    10 %, ..., 90 % most / least relevant pixels are removed by noisy linear imputation with the
    authors' noise, 0.01 on raw pixels, and the two curves at ``metrics.ROAD_FRACTIONS``; it
    ignores ``absent``; see :func:`liftcam_utils.evaluation.metrics.road_curves`), ``"pointing"``
    (energy-based pointing game on the target's boxes, Eq. 14; NaN for a record with no box of its
    target, e.g. a folder of one's own images, and left out of the means) and ``"cosine"`` (cosine
    similarity to the ``reference`` method's alpha, e.g.
    ``("shapcam", {"n_permutations": 10000})`` as in Table 2). ``absent`` is the value of a
    removed pixel (see :mod:`liftcam_utils.evaluation.metrics`). The target of each image is its first label.
    The confidences (``Y``, ``O``, ``D``, the curves) are the target's probability under the model's output
    function, ``model.output``: its softmax for a single-label model, the sigmoid of its logit for a
    multi-label one (:func:`liftcam_utils.evaluation.metrics.target_probability`).
    ``device``: where Dask workers compute (default: the model's device); in this process the model's own
    device is used.

    ``cache_dir``: a folder of cached results, one JSON file per (shard of ``shard_size`` images,
    method), keyed as described in this module's docstring. Files found there are read instead of
    recomputed; missing ones are computed and written atomically; a damaged one (unreadable, or not
    the rows this run expects: other columns or dtypes, images, targets or method, a number that
    must be finite and is not, a curve of another length) is recomputed with a warning naming it
    and overwritten. Something other than a file at a file's path (a folder) is left alone: its
    rows are recomputed and not stored, with a warning.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty; evaluate needs at least one ImageRecord")
    if isinstance(metrics, str):
        raise TypeError(f"metrics must be a list of metric names such as ['faithfulness'], not the str {metrics!r}; "
                        f"valid metrics: {', '.join(METRICS)}")
    if not _is_int(shard_size) or shard_size < 1:
        raise (ValueError if _is_int(shard_size) else TypeError)(
            f"shard_size must be a positive int (images per shard), got {shard_size!r}")
    if n_images is not None and not _is_int(n_images):
        raise TypeError(f"n_images must be an int in 1 .. {len(dataset)} (the dataset's size) or None (every "
                        f"record), got {n_images!r}")
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; valid metrics: {', '.join(METRICS)}")
    if ("cosine" in metrics) != (reference is not None):
        raise ValueError("the 'cosine' metric needs a reference method, e.g. reference=('shapcam', "
                         "{'n_permutations': 10000}), and a reference is only used by 'cosine'")
    if absent not in M.ABSENT_CHOICES:
        raise ValueError(f"absent must be one of {M.ABSENT_CHOICES}, got {absent!r}")
    check_output(model.output, f"model {model.name!r}: ")  # one set after loading was not checked: before any work
    specs = method_specs(methods)
    reference_spec = method_specs({"reference": reference})[0] if reference else None
    records = select(dataset, n_images, seed)
    model.check_label_space(records)  # a label of another dataset's classes would explain another class
    layer = layer or model.layer
    metrics = tuple(m for m in METRICS if m in metrics)
    shards = list(_shards(records, shard_size))
    files: dict[tuple[int, MethodSpec], Path] = {}
    if cache_dir is not None:
        run = {"model": model_fingerprint(model, layer), "metrics": list(metrics), "absent": absent,
               "reference": None if reference_spec is None else reference_spec.description, "code": code_version()}
        for index, shard in enumerate(shards):
            images = [record_digest(r) for r in shard]
            for spec in specs:
                key = cache_key({**run, "images": images, "method": spec.description})
                files[index, spec] = Path(cache_dir) / f"{key}.json"
    columns = [*ROW_COLUMNS, *(column for metric in metrics for column in METRIC_COLUMNS[metric])]

    done: dict[tuple[int, MethodSpec], pd.DataFrame] = {}
    todo: list[tuple[int, list[ImageRecord], list[MethodSpec]]] = []
    for index, shard in enumerate(shards):
        missing = []
        for spec in specs:
            cached = None if cache_dir is None else read_cached(files[index, spec], ExpectedRows(
                spec.label, tuple(r.name for r in shard), tuple(r.label for r in shard), tuple(columns),
                tuple((c, n) for c, n in CURVE_POINTS.items() if c in columns), UNDEFINED_AS_NAN))
            if cached is None:
                missing.append(spec)
            else:
                done[index, spec] = cached
        if missing:
            todo.append((index, shard, missing))

    def keep(index, shard, results):
        for spec, frame in results.items():
            if cache_dir is not None:
                store(files[index, spec], frame)
            done[index, spec] = frame

    bar = tqdm(total=sum(len(s) for _, s, _ in todo), desc="images", unit="img", disable=not progress)
    if dask_scheduler is None:
        for index, shard, missing in todo:
            keep(index, shard, _shard_rows(model, layer, shard, missing, metrics, absent, reference_spec))
            bar.update(len(shard))
    else:
        _run_on_dask(dask_scheduler, model, device, layer, todo, metrics, absent, reference_spec, keep, bar)
    bar.close()
    rows = pd.concat([done[i, spec] for spec in specs for i in range(len(shards))], ignore_index=True)
    return Evaluation(rows=rows, summary=summarize(rows))


MODEL_SENDS = 3  # how often the model is sent to Dask workers in one run, when it is lost with the workers holding it


def local_cluster():
    """The Dask cluster of ``dask_scheduler="local"``: one worker process with one thread on this machine.

    Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (its ``distributed.nanny.pre-spawn-environ``),
    which makes glibc hand memory back to the system after every large free: a worker then spends most of a
    forward pass in page faults (an EfficientNet-Lite0 forward took 3 times as long as in this process).
    Its workers start without it (any value turns off glibc's adaptive thresholds); the other variables (one
    OpenMP / MKL / OpenBLAS thread) are kept. Dask also leaves the variable in this process's environment after
    starting a cluster, where later workers would inherit it: it is removed there when it holds Dask's value."""
    import dask
    from dask.distributed import LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    dask_trim = environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    if dask_trim is not None and os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(dask_trim):
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None)


def _run_on_dask(scheduler, model, device, layer, todo, metrics, absent, reference_spec, keep, bar) -> None:
    """Compute the shards of ``todo`` on Dask workers. The model itself (network with its weights as they are
    now in this process, preprocessing, vocabulary) is sent to every worker, on the CPU; each worker moves it
    to ``device`` (default: the model's device here). A worker that dies in a shard has that shard
    computed again by Dask; when every worker holding the model has died (e.g. the only one), the shards not
    yet done are lost with it: the model is sent again and they are resubmitted, up to ``MODEL_SENDS`` times."""
    from dask.distributed import CancelledError, Client, as_completed

    device = str(device or model.device)
    sent = model if model.device.type == "cpu" else dataclasses.replace(model, net=copy.deepcopy(model.net).cpu())
    cluster = local_cluster() if scheduler == "local" else None
    client = Client(cluster if cluster is not None else scheduler)
    try:
        for _ in range(MODEL_SENDS):
            remote_model = client.scatter(sent, broadcast=True, hash=False)
            futures = {client.submit(_remote_shard, remote_model, device, layer, shard, missing, metrics, absent,
                                     reference_spec, pure=False): (index, shard, missing)
                       for index, shard, missing in todo}
            todo = []
            for future in as_completed(futures):
                index, shard, missing = futures[future]
                try:
                    results = future.result()
                except CancelledError:  # its model was lost
                    todo.append((index, shard, missing))
                    continue
                keep(index, shard, results)
                bar.update(len(shard))
            if not todo:
                return
        raise RuntimeError(f"the model sent to the Dask workers was lost {MODEL_SENDS} times, each time with the "
                           f"last worker holding it; {len(todo)} shards were not computed (the others are cached "
                           "where a cache_dir was given: a rerun resumes)")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

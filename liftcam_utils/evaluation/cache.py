"""The batch runner's on-disk cache: the key of a result and its JSON file.

A result of :func:`liftcam_utils.evaluation.batch.evaluate` is the rows of one method on one shard
of images. Its file is named by a hash of everything the rows depend on, so that a file found
under that name can only hold them:

* the model (:func:`model_fingerprint`): its name, the structure of its network (every module's
  type and settings, and the code of its traced forward pass), the bytes of every tensor the
  network holds, the preprocessing, the output function (softmax or sigmoid: what the confidences are),
  the VQA vocabulary and any fixed question, and the layer;
* the shard's images (:func:`record_digest`: each record's name, pixels, labels, boxes, question);
* the method's row label, name and options (JSON values only, compared exactly), the metrics, the
  baseline, the reference method and the version of this package's code (:func:`code_version`).

Everything is read afresh on every run: nothing is remembered between runs about a network that
may have changed since. Hooks on the network can change what it computes without changing
anything above, so a network with hooks is refused (:func:`refuse_hooks`).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.modules import module as torch_module

from ..datasets.records import ImageRecord
from ..engine.split import CamTracer, eval_mode
from ..files import write_atomically
from ..models import LoadedModel

# the hooks a module keeps, and the global ones every module runs (torch.nn.modules.module)
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                     "_global_backward_pre_hooks")
TEXT_DTYPE = str(pd.Series(["text"]).dtype)  # the dtype pandas gives a column of str


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the package's source: results computed by other code never count as cached."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parents[1].rglob("*.py")):  # the whole liftcam_utils package
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def refuse_hooks(net: nn.Module) -> None:
    """``ValueError`` when a forward or backward hook is registered on a module of ``net`` or globally
    on every module: a hook can change what the network computes, and no cache key can see how."""
    for name, module in net.named_modules():
        registered = [hooks for hooks in HOOK_DICTS if getattr(module, hooks, None)]
        if registered:
            raise ValueError(f"module {name or '(the network itself)'!r} has hooks registered ({', '.join(registered)})"
                             "; a cache key cannot see what a hook does: remove the hooks (handle.remove()) or "
                             "evaluate without cache_dir")
    registered = [hooks for hooks in GLOBAL_HOOK_DICTS if getattr(torch_module, hooks, None)]
    if registered:
        raise ValueError(f"global module hooks are registered ({', '.join(registered)}); a cache key cannot see "
                         "what a hook does: remove them (handle.remove()) or evaluate without cache_dir")


def network_structure(net: nn.Module) -> str:
    """``repr(net)`` (every module's type and settings: padding, dilation, pooling, activation, ...)
    followed by the Python code of its ``torch.fx`` graph in eval mode (how ``forward`` wires the
    modules and functions together), traced as :func:`liftcam_utils.engine.split.split_model` does."""
    with eval_mode(net):
        graph = net.graph if isinstance(net, torch.fx.GraphModule) else CamTracer().trace(net)
    return f"{net!r}\n{graph.python_code(root_module='self').src}"


def _step_description(step) -> str:
    """A preprocessing step's class and public attributes (e.g. a ``Lambda``'s function, which its repr omits)."""
    attributes = {name: value for name, value in getattr(step, "__dict__", {}).items() if not name.startswith("_")}
    return f"{type(step).__module__}.{type(step).__qualname__} {attributes!r}"


_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def preprocess_description(preprocess) -> str:
    """``repr(preprocess)`` and, for it and each of its ``transforms``, the class and public attributes.
    An object whose description holds its memory address (a plain function, a lambda) gets a new key in
    every process: never a wrong hit, at worst a recomputation, with a warning saying so."""
    steps = [preprocess, *getattr(preprocess, "transforms", [])]
    description = "\n".join([repr(preprocess), *map(_step_description, steps)])
    if _MEMORY_ADDRESS.search(description):
        warnings.warn("the model's preprocessing is described by a memory address (a function or lambda, e.g. in "
                      "transforms.Lambda): results cached by this process are never found by another, which "
                      "computes them again; a transform with a stable description (torchvision's transforms, or a "
                      "class whose repr names its settings) lets later runs read them", stacklevel=3)
    return description


def network_tensors(net: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every tensor ``net`` holds, by name: its parameters, its buffers (persistent or not) and plain
    tensor attributes of its modules (e.g. constants that ``torch.fx`` tracing stores)."""
    tensors = [*net.named_parameters(), *net.named_buffers()]
    for prefix, module in net.named_modules():
        tensors += [(f"{prefix}.{name}" if prefix else name, value) for name, value in vars(module).items()
                    if isinstance(value, torch.Tensor)]
    return tensors


def weights_digest(net: nn.Module) -> str:
    """A hash of every tensor of :func:`network_tensors`: its name, dtype, shape and exact bytes.
    Computed afresh on every call: writes through ``.data``, ``.numpy()`` or casts leave no other trace."""
    digest = hashlib.sha256()
    for name, tensor in network_tensors(net):
        data = tensor.detach().cpu().contiguous()
        digest.update(json.dumps([name, str(data.dtype), list(data.shape)]).encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def model_fingerprint(model: LoadedModel, layer: str) -> dict:
    """What ``model`` cut at ``layer`` contributes to every cache key (see the module docstring);
    ``ValueError`` when the network has hooks registered."""
    refuse_hooks(model.net)
    vocabulary = None if model.questions is None else [model.questions[0].words, model.questions[1]]
    return {"model": model.name, "structure": network_structure(model.net), "weights": weights_digest(model.net),
            "preprocess": preprocess_description(model.preprocess), "output": model.output, "questions": vocabulary,
            "question": model.question, "layer": layer}


def record_digest(record: ImageRecord) -> str:
    """A hash of all a record gives its rows: its name, RGB pixels, labels, boxes and question."""
    image = record.image()
    description = json.dumps({
        "name": record.name, "labels": list(record.labels), "boxes": [dataclasses.astuple(b) for b in record.boxes],
        "question": record.question, "size": list(image.size),
    }, default=str)
    digest = hashlib.sha256(description.encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def cache_key(description: dict) -> str:
    """The file name (without ``.json``) of the result ``description`` determines: a hash of its JSON.
    Every part must be a JSON value, so that two different descriptions never print alike."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]


def frame_to_json(frame: pd.DataFrame) -> str:
    """``frame`` (default index) as JSON that :func:`frame_from_json` reads back exactly: each
    column's name, dtype and values, floats as their shortest exact decimal (``NaN`` for NaN)."""
    return json.dumps({"columns": [{"name": name, "dtype": str(column.dtype), "values": column.tolist()}
                                   for name, column in frame.items()]})


def frame_from_json(text: str) -> pd.DataFrame:
    """The frame :func:`frame_to_json` wrote. ``ValueError`` when ``text`` is not such a file: not
    JSON, truncated, a column other than a str name, a str dtype and a list of values (e.g. a single
    value, which pandas would broadcast to every row), or columns of unequal length; the conversion to a
    stored dtype may raise ``TypeError`` or ``OverflowError`` as well. Too deep nesting raises
    ``RecursionError``."""
    stored = json.loads(text)
    columns = stored.get("columns") if isinstance(stored, dict) else None
    if not isinstance(columns, list):
        raise ValueError("not a frame: expected an object with a list of 'columns'")
    for column in columns:
        if not (isinstance(column, dict) and isinstance(column.get("name"), str)
                and isinstance(column.get("dtype"), str) and isinstance(column.get("values"), list)):
            raise ValueError(f"not a column (a str 'name', a str 'dtype' and a list of 'values'): {str(column)[:80]}")
    lengths = {column["name"]: len(column["values"]) for column in columns}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns of unequal length: {lengths}")
    values = pd.DataFrame({column["name"]: column["values"] for column in columns})
    return values.astype({column["name"]: column["dtype"] for column in columns})


def write_frame(frame: pd.DataFrame, path: str) -> None:
    """Write ``frame`` to ``path`` as :func:`frame_to_json` text."""
    Path(path).write_text(frame_to_json(frame))


@dataclass(frozen=True)
class ExpectedRows:
    """The rows a run expects of one method on one shard, against which a cached frame is checked:
    exactly ``columns`` (of :data:`TEXT_DTYPE` for ``image`` and ``method``, int64 for ``target``,
    lists for ``curves``, float64 for the others); one row per image of ``images`` in order, each
    labelled ``label``, with ``targets``; each curve a list of ``curves[column]`` finite numbers;
    numbers finite (``seconds`` also >= 0), except that the columns of ``undefined_as_nan`` may be NaN."""

    label: str
    images: tuple[str, ...]
    targets: tuple[int, ...]
    columns: tuple[str, ...]
    curves: tuple[tuple[str, int], ...] = ()  # (column, points)
    undefined_as_nan: tuple[str, ...] = ()

    def dtype_of(self, column: str) -> str:
        """The dtype ``column`` must have."""
        if column in ("image", "method"):
            return TEXT_DTYPE
        if column == "target":
            return "int64"
        return "object" if column in dict(self.curves) else "float64"

    def problem(self, frame: pd.DataFrame) -> str | None:
        """What is wrong with ``frame`` as these rows; None when nothing is."""
        if tuple(frame.columns) != self.columns:
            return f"columns {list(frame.columns)}, expected {list(self.columns)}"
        dtypes = {column: str(dtype) for column, dtype in frame.dtypes.items()}
        wrong = {column: dtype for column, dtype in dtypes.items() if dtype != self.dtype_of(column)}
        if wrong:
            return f"dtypes {wrong}, expected {({column: self.dtype_of(column) for column in wrong})}"
        if tuple(frame["image"]) != self.images:
            return f"images {frame['image'].tolist()}, expected {list(self.images)}"
        if (frame["method"] != self.label).any():
            return f"method labels {sorted(set(frame['method']))}, expected {self.label!r}"
        if tuple(frame["target"]) != self.targets:
            return f"targets {frame['target'].tolist()}, expected {list(self.targets)}"
        for column, points in self.curves:
            for row, curve in enumerate(frame[column]):
                if not (isinstance(curve, list) and len(curve) == points and all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in curve)):
                    return f"{column} of row {row} is not a list of {points} finite numbers: {str(curve)[:80]}"
        numbers = [column for column in self.columns if self.dtype_of(column) == "float64"]
        for column in numbers:
            values = frame[column].to_numpy()
            bad = np.isinf(values) if column in self.undefined_as_nan else ~np.isfinite(values)
            if bad.any():
                return f"{column} is {values[bad][0]} in row {int(np.flatnonzero(bad)[0])}; it must be finite"
        if (frame["seconds"] < 0).any():
            return f"negative seconds {frame['seconds'].min()}"
        return None


def read_cached(path: Path, expected: ExpectedRows) -> pd.DataFrame | None:
    """The rows cached in ``path``; None when there is no such file, and, with a warning that names the
    file and what is wrong, when something else is at ``path`` or the file does not hold the
    ``expected`` rows (unreadable, damaged, or of another schema, shard, method or target)."""
    if not path.exists():
        return None
    if not path.is_file():
        warnings.warn(f"cache path {path} is not a file; recomputing its rows, which are not stored there "
                      "(remove it to cache them)", stacklevel=3)
        return None
    try:
        frame = frame_from_json(path.read_text())
    except (OSError, ValueError, TypeError, OverflowError, RecursionError) as error:
        problem = f"unreadable: {type(error).__name__}: {str(error)[:200]}"
    else:
        problem = expected.problem(frame)
        if problem is None:
            return frame
    warnings.warn(f"cache file {path} is damaged ({problem}); recomputing it", stacklevel=3)
    return None


def store(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` to ``path`` atomically; where something other than a file is in the way (which
    :func:`read_cached` has warned of), leave it and do not store the rows, with a warning."""
    if path.exists() and not path.is_file():
        warnings.warn(f"cache path {path} is not a file; rows not stored", stacklevel=3)
        return
    write_atomically(path, functools.partial(write_frame, frame))

"""The batch runner's on-disk cache: the key of a result and its JSON file.

A result of :func:`liftcam_utils.evaluation.batch.evaluate` is the rows of one method on one shard
of images. Its file is named by a hash of everything the rows depend on, so that a file found
under that name can only hold them:

* the model (:func:`model_fingerprint`): its name, the structure of its network (every module's
  type and settings, and the code of its traced forward pass), the bytes of every tensor the
  network holds, the preprocessing, the VQA vocabulary and any fixed question, and the layer;
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
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn.modules import module as torch_module

from ..datasets.records import ImageRecord
from ..engine.split import CamTracer, eval_mode
from ..models import LoadedModel

# the hooks a module keeps, and the global ones every module runs (torch.nn.modules.module)
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                     "_global_backward_pre_hooks")


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


def preprocess_description(preprocess) -> str:
    """``repr(preprocess)`` and, for it and each of its ``transforms``, the class and public attributes.
    An object whose description holds its memory address (a plain function, a lambda) gets a new key in
    every process: never a wrong hit, at worst a recomputation."""
    steps = [preprocess, *getattr(preprocess, "transforms", [])]
    return "\n".join([repr(preprocess), *map(_step_description, steps)])


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
            "preprocess": preprocess_description(model.preprocess), "questions": vocabulary,
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
    """The frame :func:`frame_to_json` wrote; ``ValueError``, ``KeyError`` or ``TypeError`` when
    ``text`` is not such a file (not JSON, truncated, columns of unequal length or unknown dtype)."""
    columns = json.loads(text)["columns"]
    values = pd.DataFrame({column["name"]: column["values"] for column in columns})
    return values.astype({column["name"]: column["dtype"] for column in columns})


def write_frame(frame: pd.DataFrame, path: str) -> None:
    """Write ``frame`` to ``path`` as :func:`frame_to_json` text."""
    Path(path).write_text(frame_to_json(frame))


def read_cached(path: Path, images: list[str], label: str, columns: list[str]) -> pd.DataFrame | None:
    """The rows of the method labelled ``label`` on the shard of ``images`` cached in ``path``; None
    when there is no such file, and when the file is damaged (then with a warning that names it)."""
    if not path.is_file():
        return None
    try:
        frame = frame_from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as error:
        problem = f"unreadable: {type(error).__name__}: {error}"
    else:
        if list(frame.columns) != columns:
            problem = f"columns {list(frame.columns)}, expected {columns}"
        elif frame["image"].tolist() != images or (frame["method"] != label).any():
            problem = f"its rows are not those of {label!r} on this shard's images"
        else:
            return frame
    warnings.warn(f"cache file {path} is damaged ({problem}); recomputing it", stacklevel=3)
    return None

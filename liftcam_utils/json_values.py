"""JSON values: the only values the package takes where a value must have one exact text, the options of a
method in a cache key (``tensor(0.2500)`` prints alike for many tensors) and a notebook parameter that papermill
writes into code (it escapes only the types it knows)."""

from __future__ import annotations

import math

VALID_TYPES = "str, int, finite float, bool, None, and lists and dicts (with str keys) of them"


def json_value(value, where: str, *, tuples_and_sets_as_lists: bool = False):
    """``value`` checked to be a JSON value (:data:`VALID_TYPES`), ``where`` naming it in errors; with
    ``tuples_and_sets_as_lists`` a tuple becomes a list and a set its sorted list, at any depth (the value is
    returned with them converted). ``TypeError`` for another type, a dict key that is not a str or a set that
    cannot be sorted; ``ValueError`` for a NaN or infinite float."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}, not a finite float")
        return value
    convert = tuples_and_sets_as_lists
    if isinstance(value, list) or (convert and isinstance(value, tuple)):
        return [json_value(item, f"{where}[{k}]", tuples_and_sets_as_lists=convert) for k, item in enumerate(value)]
    if convert and isinstance(value, (set, frozenset)):
        try:
            items = sorted(value)
        except TypeError:
            raise TypeError(f"{where} is a set of items that cannot be sorted into a list") from None
        return [json_value(item, f"{where} item {item!r}", tuples_and_sets_as_lists=convert) for item in items]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"{where} has the key {key!r} ({type(key).__name__}), not a str")
        return {key: json_value(item, f"{where}[{key!r}]", tuples_and_sets_as_lists=convert)
                for key, item in value.items()}
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    raise TypeError(f"{where} is of type {name}")

"""Weights on disk: the device to load on, checkpoints read safely (``weights_only=True``) and loaded completely or
not at all, and published weights from the torch hub cache."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given; ``None`` picks CUDA when present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, read with ``weights_only=True`` (a file can never run code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {error}") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def load_checked(net: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load ``state`` completely or not at all: an error names ``source`` and the first missing,
    unexpected or mis-shaped key, and the network is untouched unless every key matches."""
    expected = net.state_dict()
    for key in expected:
        if key not in state:
            raise ValueError(f"checkpoint {str(source)!r} lacks key {key!r} of {type(net).__name__}")
        if tuple(state[key].shape) != tuple(expected[key].shape):
            raise ValueError(
                f"checkpoint {str(source)!r}: key {key!r} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    for key in state:
        if key not in expected:
            raise ValueError(f"checkpoint {str(source)!r} has key {key!r}, unknown to {type(net).__name__}")
    net.load_state_dict(state)


def load_state_dict_file(net: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint file safely and completely (see :func:`read_state_dict`, :func:`load_checked`)."""
    load_checked(net, read_state_dict(path), path)


def cached_download(url: str, what: str) -> Path:
    """The torch hub cache's copy of ``url``, downloading it when possible; a clear error otherwise."""
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not file.is_file():
        try:
            torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True)
        except Exception as error:  # URLError, HTTPError, socket errors, hash mismatch
            raise FileNotFoundError(
                f"{what} ({file.name}) are not cached and could not be downloaded ({error}). Put the file from "
                f"{url} at {file}, or pass weights='<path to the checkpoint>'."
            ) from error
    return file

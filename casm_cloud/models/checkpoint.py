"""Safe checkpoints: ``model.safetensors`` (weights) + ``model.json`` (everything else).

Loading never unpickles: the weights are read with ``safetensors`` and the
model is rebuilt from the JSON architecture through the registry.  The JSON
records the sha256 of the weights, so a checkpoint whose two files do not
belong together (a half-finished overwrite) is an error, not a silent mix.
The JSON is written last: a directory without it is not a checkpoint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import nn

from casm_cloud import __version__
from casm_cloud.errors import UserError
from casm_cloud.models import build_model
from casm_cloud.storage import join, url_to_fs

__all__ = ["Checkpoint", "CheckpointError", "CheckpointNotFoundError", "save_checkpoint",
           "load_checkpoint", "check_inputs", "WEIGHTS", "META"]

WEIGHTS = "model.safetensors"
META = "model.json"
REQUIRED_META = ("architecture", "inputs", "target", "scaler")


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, incomplete, inconsistent or does not fit the data."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A folder that holds no checkpoint (no ``model.json`` or ``model.safetensors``)."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes
    ----------
    model : torch.nn.Module
        The model in eval mode on the requested device.
    meta : dict
        Architecture, inputs, target, scaler, seed, metrics, package version, created.
    content_hash : str
        sha256 over the safetensors bytes followed by the JSON bytes.
    path : str
        Where it was loaded from.
    """

    model: nn.Module
    meta: dict
    content_hash: str
    path: str = ""


def _jsonable(obj: Any) -> Any:
    """Tuples to lists, numpy scalars to Python numbers (JSON round trip stays equal)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def save_checkpoint(model: nn.Module, path: str, meta: Mapping,
                    storage_options: Mapping | None = None) -> str:
    """Write ``path/model.safetensors`` and ``path/model.json``.

    Parameters
    ----------
    model : torch.nn.Module
        A model with an ``architecture`` dict (every model of :data:`MODELS` has one).
    path : str
        Checkpoint directory (local path or fsspec URL); existing files are replaced.
    meta : mapping
        At least ``inputs`` (ordered feature names), ``target`` and ``scaler``
        (``{"mean": {name: float}, "std": {name: float}}`` for every input and the
        target).  ``architecture``, ``package_version`` and ``created`` are filled in.
    storage_options : mapping, optional
        fsspec options for remote paths.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    CheckpointError
        If the meta lacks a required key, the scaler misses a name, or the
        given architecture differs from the model's.
    """
    arch = getattr(model, "architecture", None)
    if arch is None:
        raise CheckpointError(f"{type(model).__name__} has no 'architecture' dict; build it "
                              f"with casm_cloud.models.build_model")
    meta = _jsonable(dict(meta))
    if "architecture" in meta and meta["architecture"] != _jsonable(arch):
        raise CheckpointError(f"meta architecture {meta['architecture']} differs from the "
                              f"model's {arch}")
    meta["architecture"] = _jsonable(arch)
    meta.setdefault("package_version", __version__)
    meta.setdefault("created", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    _check_meta(meta, "checkpoint meta")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = _st_save(state)
    meta["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    text = json.dumps(meta, indent=1, sort_keys=True).encode()
    fs, root = url_to_fs(path, storage_options)
    fs.makedirs(root, exist_ok=True)
    old = [p for p in (join(root, META), join(root, WEIGHTS)) if fs.exists(p)]
    if old:  # (gcsfs refuses an empty list)
        fs.rm(old)
    fs.pipe(join(root, WEIGHTS), weights)
    fs.pipe(join(root, META), text)  # last: its presence marks a complete checkpoint
    return str(path)


def _check_meta(meta, where: str) -> None:
    """The keys every checkpoint has, and a scaler for every input and the target."""
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}")
    names = [*meta["inputs"], meta["target"]]
    for stat in ("mean", "std"):
        lack = [n for n in names if n not in (meta["scaler"] or {}).get(stat, {})]
        if lack:
            raise CheckpointError(f"{where}: scaler {stat!r} lacks {lack}")


def load_checkpoint(path: str, *, device: str | torch.device = "cpu",
                    storage_options: Mapping | None = None) -> Checkpoint:
    """Load a checkpoint without unpickling anything.

    Parameters
    ----------
    path : str
        Checkpoint directory (local path or fsspec URL).
    device : str or torch.device
        Where the model goes; it is returned in eval mode.
    storage_options : mapping, optional
        fsspec options for remote paths.

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointNotFoundError
        If either file is missing (also a ``FileNotFoundError``).
    CheckpointError
        If the JSON is unreadable or incomplete, or the weights do not match it
        (hash, names or shapes).
    """
    fs, root = url_to_fs(path, storage_options)
    for name in (META, WEIGHTS):
        if not fs.exists(join(root, name)):
            raise CheckpointNotFoundError(
                f"checkpoint {path}: no {name}; expected a checkpoint folder holding {META} and "
                f"{WEIGHTS} (written by casm-cloud training)")
    text = fs.cat(join(root, META))
    weights = fs.cat(join(root, WEIGHTS))
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path}: {META} is not valid JSON ({err})") from None
    _check_meta(meta, f"checkpoint {path}: {META}")
    if meta.get("weights_sha256") != hashlib.sha256(weights).hexdigest():
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} does not match the hash recorded "
                              f"in {META} (an interrupted or mixed write)")
    model = build_model(meta["architecture"])
    state = _st_load(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the architecture "
                              f"{meta['architecture']}: {err}") from None
    model.to(device).eval()
    digest = hashlib.sha256(weights + text).hexdigest()
    return Checkpoint(model=model, meta=meta, content_hash=digest, path=str(path))


def check_inputs(meta: Mapping, names: Sequence[str]) -> None:
    """Check that data offer exactly the model's inputs, in the model's order.

    Parameters
    ----------
    meta : mapping
        Checkpoint meta (its ``inputs`` list).
    names : sequence of str
        Feature names of the data, in column order.

    Raises
    ------
    CheckpointError
        Naming the missing, the extra or the misordered inputs.
    """
    want, have = list(meta["inputs"]), list(names)
    if want == have:
        return
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if not parts:
        parts.append(f"misordered: got {have}")
    raise CheckpointError(f"inputs do not match the checkpoint, which expects {want}: "
                          + "; ".join(parts))

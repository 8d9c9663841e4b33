"""Windowed SoMo.ml prediction as a lazy series: checks, the chunk plan, the block kernel.

:func:`predict` returns a dask-backed dataset of the target (e.g. ``sm``)
over ``time`` and the spatial dimensions that ``features`` and ``statics``
share (any names: ``y, x`` of a grid window, or ``station``).  Every output
time chunk reads the 364 days before it as a halo, so each day is computed
from its own 365-day window (:mod:`casm_cloud.somo.windowed`).  Inputs are
standardised with the means and stds stored in the checkpoint; the output is
``prediction × std + mean`` of the target, with negatives set to 0.

Models are loaded once per process (``lru_cache`` keyed by path and content
hash); tasks carry paths and hashes, never weights.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.inference.chunked import regions
from casm_cloud.inference.precision import (
    TOLERANCE,
    Precision,
    Sample,
    numerics,
    resolve_for_run,
)
from casm_cloud.inference.speed import Probe
from casm_cloud.somo.features import FeatureError
from casm_cloud.somo.windowed import WINDOW, WindowedModel, default_batch

__all__ = ["ModelSpec", "Plan", "load_spec", "make_plan", "predict", "spec_probe",
           "DEFAULT_TIME_CHUNK"]


def _checkpoint_error(message: str) -> Exception:
    """A :class:`casm_cloud.models.checkpoint.CheckpointError` (imported late: it needs torch)."""
    from casm_cloud.models.checkpoint import CheckpointError

    return CheckpointError(message)


#: Output days per chunk by default (with the 364-day halo, inputs are read ~2×).
DEFAULT_TIME_CHUNK = 365


@dataclass(frozen=True)
class ModelSpec:
    """What a task needs to know of a SoMo.ml checkpoint (small, picklable, no weights)."""

    path: str
    content_hash: str
    dynamic: tuple[str, ...]
    static: tuple[str, ...]
    target: str
    dyn_mean: tuple[float, ...]
    dyn_std: tuple[float, ...]
    sta_mean: tuple[float, ...]
    sta_std: tuple[float, ...]
    target_mean: float
    target_std: float
    units: tuple[tuple[str, str], ...]
    window: int = WINDOW
    clip_min: float | None = 0.0
    reference: tuple[str, ...] = ()   # statics' (mean, std) maps of the target's units
    storage_options: str = "{}"       # JSON
    architecture: str = "{}"          # JSON: the network's shapes, for precision="auto"


@functools.lru_cache(maxsize=16)
def _checkpoint(path: str, so_json: str):
    from casm_cloud.models.checkpoint import load_checkpoint

    return load_checkpoint(path, device="cpu", storage_options=json.loads(so_json) or None)


def load_spec(checkpoint: str, storage_options: Mapping | None = None) -> ModelSpec:
    """Read and check a SoMo.ml checkpoint (see :func:`casm_cloud.somo.import_published`).

    Raises
    ------
    CheckpointError
        If it is not an EA-LSTM with ``dynamic_inputs``/``static_inputs``
        whose counts match the weights, or its scaler lacks a name.
    FileNotFoundError
        If the checkpoint is missing.
    """
    so_json = json.dumps(dict(storage_options or {}), sort_keys=True)
    ck = _checkpoint(str(checkpoint), so_json)
    meta, arch = ck.meta, ck.meta["architecture"]
    if arch.get("name") != "ealstm" or "dynamic_inputs" not in meta or "static_inputs" not in meta:
        raise _checkpoint_error(f"checkpoint {checkpoint} is not a SoMo.ml EA-LSTM (architecture "
                              f"{arch.get('name')!r}, no dynamic_inputs/static_inputs)")
    dyn, sta = tuple(meta["dynamic_inputs"]), tuple(meta["static_inputs"])
    if len(dyn) != arch["n_dynamic"] or len(sta) != arch["n_static"]:
        raise _checkpoint_error(f"checkpoint {checkpoint}: {len(dyn)} dynamic and {len(sta)} static "
                              f"input names for weights of {arch['n_dynamic']} and "
                              f"{arch['n_static']} inputs")
    mean, std = meta["scaler"]["mean"], meta["scaler"]["std"]
    lack = [n for n in (*dyn, *sta, meta["target"]) if n not in mean or n not in std]
    if lack:
        raise _checkpoint_error(f"checkpoint {checkpoint}: scaler lacks {lack}")
    units = meta.get("units", {})
    return ModelSpec(
        path=str(checkpoint), content_hash=ck.content_hash, dynamic=dyn, static=sta,
        target=meta["target"], dyn_mean=tuple(float(mean[n]) for n in dyn),
        dyn_std=tuple(float(std[n]) for n in dyn), sta_mean=tuple(float(mean[n]) for n in sta),
        sta_std=tuple(float(std[n]) for n in sta), target_mean=float(mean[meta["target"]]),
        target_std=float(std[meta["target"]]),
        units=tuple((n, str(units[n])) for n in (*dyn, *sta, meta["target"]) if n in units),
        window=int(meta.get("window", WINDOW)), clip_min=meta.get("clip_min", 0.0),
        reference=tuple(meta.get("target_reference") or ()),
        storage_options=so_json, architecture=json.dumps(arch, sort_keys=True))


def spec_probe(spec: ModelSpec, batch: int | None, device: str) -> Probe:
    """What ``precision="auto"`` measures for this model: its LSTM on one batch of windows."""
    return Probe(spec.architecture, int(batch or default_batch(device)))


# --------------------------------------------------------------------------- input checks
def _check_vars(ds: xr.Dataset, names: Sequence[str], units: Mapping[str, str], what: str,
                ckpt: str) -> None:
    if not isinstance(ds, xr.Dataset):
        raise FeatureError(f"{what}: expected an xarray.Dataset, got {type(ds).__name__}")
    lack = [n for n in names if n not in ds.data_vars]
    if lack:
        raise FeatureError(f"{what} lack {lack}, which the checkpoint {ckpt} needs "
                           f"(have {sorted(map(str, ds.data_vars))})")
    for n in names:
        if n in units and ds[n].attrs.get("units") != units[n]:
            raise FeatureError(f"{what}: variable {n!r} has units {ds[n].attrs.get('units')!r}; "
                               f"the checkpoint expects {units[n]!r}")


def _spatial(features: xr.Dataset, statics: xr.Dataset, spec: ModelSpec) -> tuple[str, ...]:
    dims = {tuple(d for d in features[n].dims if d != "time") for n in spec.dynamic}
    if len(dims) != 1 or any("time" not in features[n].dims for n in spec.dynamic):
        raise FeatureError(f"features: the dynamic inputs {list(spec.dynamic)} need 'time' and "
                           f"the same spatial dimensions (got {sorted(dims)})")
    space = dims.pop()
    for n in spec.static:
        if set(statics[n].dims) != set(space):
            raise FeatureError(f"statics: variable {n!r} has dimensions {statics[n].dims}; "
                               f"expected the features' spatial dimensions {space}")
    for d in space:
        if statics.sizes[d] != features.sizes[d]:
            raise FeatureError(f"statics: dimension {d!r} has {statics.sizes[d]} cells, the "
                               f"features {features.sizes[d]}")
        if d in statics.indexes and d in features.indexes and not np.array_equal(
                statics.indexes[d].values, features.indexes[d].values):
            raise FeatureError(f"statics and features have different {d!r} coordinates "
                               "(another window or other stations?)")
    return space


def _out_times(times: np.ndarray, start, end, window: int) -> slice:
    t = np.asarray(times, dtype="datetime64[D]")
    if t.size > 1 and np.any(np.diff(t).astype(np.int64) != 1):
        raise FeatureError("features: 'time' must be consecutive days (a daily series)")
    first = t[0] + np.timedelta64(window - 1, "D")
    lo = first if start is None else np.datetime64(pd.Timestamp(start).date(), "D")
    hi = t[-1] if end is None else np.datetime64(pd.Timestamp(end).date(), "D")
    if lo < first:
        have = int((lo - t[0]).astype(int))
        raise FeatureError(f"features: the first output day {lo} needs {window - 1} days of "
                           f"forcing before it; the forcing starts {t[0]} ({max(have, 0)} days "
                           "before)")
    if hi > t[-1] or hi < lo:
        raise FeatureError(f"features: output period {lo}..{hi} is not within the forcing, "
                           f"which ends {t[-1]}")
    i0 = int((lo - t[0]).astype(int))
    return slice(i0, int((hi - t[0]).astype(int)) + 1)


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    """The chunks of one prediction: output times, dims, chunk sizes and the inputs."""

    spec: ModelSpec
    dims: tuple[str, ...]              # ("time", *spatial)
    times: np.ndarray                  # output days, datetime64[ns]
    i0: int                            # index of the first output day in the features
    chunks: dict[str, int]
    dynamic: xr.Dataset                # spec.dynamic over (time, *spatial)
    static: xr.Dataset                 # spec.static over spatial
    coords: dict                       # spatial coordinates of the output

    @property
    def sizes(self) -> dict[str, int]:
        """Sizes of the output's dimensions."""
        return {"time": self.times.size, **{d: self.dynamic.sizes[d] for d in self.dims[1:]}}

    def regions(self):
        """``(index, region)`` of every output chunk, time first."""
        return regions(self.dims, self.sizes, self.chunks)

    def inputs(self, region: Mapping[str, slice]) -> tuple[xr.Dataset, xr.Dataset]:
        """The lazy dynamic inputs of a region with its halo, and its statics."""
        r = region["time"]
        t = slice(self.i0 + r.start - (self.spec.window - 1), self.i0 + r.stop)
        space = {d: region[d] for d in self.dims[1:]}
        return self.dynamic.isel({"time": t, **space}), self.static.isel(space)


def make_plan(checkpoint: str | ModelSpec, features: xr.Dataset, statics: xr.Dataset, *,
              start=None, end=None, chunks: Mapping[str, int] | None = None,
              storage_options: Mapping | None = None) -> Plan:
    """Check checkpoint, features and statics against each other; lay out the chunks.

    Raises
    ------
    FeatureError
        A missing variable, wrong units, mismatched cells, or too short a forcing.
    CheckpointError
        A checkpoint that is not a SoMo.ml EA-LSTM or does not fit itself.
    """
    spec = checkpoint if isinstance(checkpoint, ModelSpec) else load_spec(checkpoint,
                                                                            storage_options)
    units = dict(spec.units)
    _check_vars(features, spec.dynamic, units, "features", spec.path)
    _check_vars(statics, (*spec.static, *spec.reference), units, "statics", spec.path)
    space = _spatial(features, statics, spec)
    sel = _out_times(features["time"].values, start, end, spec.window)
    dims = ("time", *space)
    dyn = features[list(spec.dynamic)]
    sizes = {d: (sel.stop - sel.start if d == "time" else features.sizes[d]) for d in dims}
    size = dict(zip(dyn[spec.dynamic[0]].dims, dyn[spec.dynamic[0]].chunks or (), strict=False))
    out = {"time": DEFAULT_TIME_CHUNK, **{d: int(size[d][0]) if d in size else sizes[d]
                                           for d in space}}
    for d, v in dict(chunks or {}).items():
        if d not in dims:
            raise FeatureError(f"chunks: unknown dimension {d!r}; expected some of {dims}")
        out[d] = sizes[d] if v in (None, -1) else int(v)
    if any(v < 1 for v in out.values()):
        raise FeatureError(f"chunks {out}: sizes must be positive")
    out = {d: min(out[d], sizes[d]) for d in dims}
    coords = {k: c.variable for k, c in features.coords.items()
              if k != "time" and set(c.dims) <= set(space)}
    return Plan(spec, dims, features["time"].values[sel].astype("datetime64[ns]"), sel.start,
                out, dyn, statics[list(dict.fromkeys((*spec.static, *spec.reference)))], coords)


# --------------------------------------------------------------------------- the kernel
@functools.lru_cache(maxsize=8)
def _model(path: str, content_hash: str, so_json: str, device: str, precision: str,
           batch: int | None) -> WindowedModel:
    ck = _checkpoint(path, so_json)
    if ck.content_hash != content_hash:
        _checkpoint.cache_clear()
        raise _checkpoint_error(f"checkpoint {path} changed during the run")
    return WindowedModel(ck.model, device, precision, window=ck.meta.get("window", WINDOW),
                         batch=batch)


def block_values(spec: ModelSpec, dynamic: xr.Dataset, static: xr.Dataset,
                 dims: Sequence[str], *, device: str = "cpu", precision: str = "fp32",
                 batch: int | None = None) -> np.ndarray:
    """NumPy result (time, *spatial) of one region from its in-memory inputs (with halo)."""
    space = tuple(dims[1:])
    dyn = np.stack([dynamic[n].transpose(*space, "time").values for n in spec.dynamic], axis=-1)
    shape = dyn.shape[:-2]
    cells = int(np.prod(shape, dtype=np.int64))
    x = dyn.reshape(cells, dyn.shape[-2], len(spec.dynamic)).astype(np.float32)
    x -= np.asarray(spec.dyn_mean, np.float32)
    x /= np.asarray(spec.dyn_std, np.float32)
    s = np.stack([static[n].transpose(*space).values.reshape(cells) for n in spec.static],
                 axis=-1).astype(np.float32)
    s -= np.asarray(spec.sta_mean, np.float32)
    s /= np.asarray(spec.sta_std, np.float32)
    model = _model(spec.path, spec.content_hash, spec.storage_options, device, precision, batch)
    with numerics(device, precision):
        y = model(x, s) * np.float32(spec.target_std) + np.float32(spec.target_mean)
    if spec.reference:                   # from ERA5's standardised units to m3 m-3
        mean, std = (static[n].transpose(*space).values.reshape(cells, 1).astype(np.float32)
                     for n in spec.reference)
        y = y * std + mean
    if spec.clip_min is not None:
        y = np.where(y < spec.clip_min, np.float32(spec.clip_min), y)
    return np.moveaxis(y.reshape(*shape, -1), -1, 0)


def run_region(plan_spec: ModelSpec, dims: tuple[str, ...], dynamic: xr.Dataset,
               static: xr.Dataset, device: str, precision: str,
               batch: int | None) -> tuple[np.ndarray, str, str]:
    """Task body: compute the inputs, resolve the device here, run the block in ``precision``
    (a resolved one: chosen once per run, :func:`casm_cloud.inference.precision.choose_precision`)."""
    from casm_cloud.inference import resolve_device

    if precision == "auto":
        raise ValueError("run_region runs a chosen precision; 'auto' is chosen once per run")
    dev = resolve_device(device)
    values = _region_values(plan_spec, dims, batch, _computed(dynamic, static), dev, precision)
    return values, dev, precision


def _computed(*parts: xr.Dataset) -> tuple[xr.Dataset, ...]:
    return tuple(p.compute(scheduler="sync") for p in parts)


def _region_values(spec: ModelSpec, dims: tuple[str, ...], batch: int | None, inputs: tuple,
                   device: str, precision: str) -> np.ndarray:
    return block_values(spec, *inputs, dims, device=device, precision=precision, batch=batch)


def region_sample(spec: ModelSpec, dims: tuple[str, ...], dynamic: xr.Dataset,
                  static: xr.Dataset, batch: int | None) -> Sample:
    """The precision check's sample: one region's values (the run's first chunk)."""
    return Sample(functools.partial(_computed, dynamic, static),
                  functools.partial(_region_values, spec, tuple(dims), batch))


def _lazy_block(spec, dims, dynamic, static, device, precision, batch):
    return run_region(spec, dims, dynamic, static, device, precision, batch)[0]


def predict(checkpoint: str, features: xr.Dataset, statics: xr.Dataset, start=None, end=None,
            *, chunks: Mapping[str, int] | None = None, precision: Precision = "auto",
            device: str = "auto", batch_size: int | None = None, tolerance: float = TOLERANCE,
            storage_options: Mapping | None = None) -> xr.Dataset:
    """The lazy daily SoMo.ml series of a checkpoint over the cells of ``features``.

    Parameters
    ----------
    checkpoint : str
        A casm_cloud SoMo.ml checkpoint (:func:`casm_cloud.somo.import_published`).
    features : xarray.Dataset
        Daily dynamic features over ``time`` and any spatial dimensions, with
        the checkpoint's dynamic inputs in its units.
    statics : xarray.Dataset
        The checkpoint's static inputs over the same spatial dimensions.
    start, end : optional
        First and last output day (default: the first day with a full
        365-day window, and the last forcing day).
    chunks : mapping, optional
        Output chunk sizes (``time`` default 365; spatial: the features').
    precision : {"auto", "fp32", "bf16", "tf32"}
        ``"auto"``: the fastest precision whose largest difference from fp32 on the
        first output chunk is within ``tolerance`` (chosen here, once, reading
        that chunk's inputs; :mod:`casm_cloud.inference.precision`).  The choice
        and its check are the result's attributes (``casm_precision``, ...).
    device : {"auto", "cpu", "cuda"}
    batch_size : int, optional
        Windows per forward.
    tolerance : float
        Largest difference from fp32 ``"auto"`` accepts, in the target's units.
    storage_options : mapping, optional
        fsspec options of the checkpoint.

    Returns
    -------
    xarray.Dataset
        The target variable (``float32``, NaN where an input is missing), lazy.

    Raises
    ------
    FeatureError, CheckpointError
        See :func:`make_plan`.
    """
    import dask
    import dask.array as dsa

    plan = make_plan(checkpoint, features, statics, start=start, end=end, chunks=chunks,
                     storage_options=storage_options)
    counts = [len(range(0, plan.sizes[d], plan.chunks[d])) for d in plan.dims]
    blocks = np.empty(counts, dtype=object)
    task = dask.delayed(_lazy_block, pure=True)
    choice = None
    for index, region in plan.regions():
        dyn, sta = plan.inputs(region)
        if choice is None:  # the run's first chunk decides, in this process
            choice = resolve_for_run(precision, device, spec_probe(plan.spec, batch_size, device),
                                     tolerance=tolerance,
                                     sample=region_sample(plan.spec, plan.dims, dyn, sta,
                                                          batch_size))
        shape = tuple(r.stop - r.start for r in region.values())
        blocks[index] = dsa.from_delayed(task(plan.spec, plan.dims, dyn, sta, device,
                                              choice.precision, batch_size),
                                         shape, dtype=np.float32)
    data = dsa.block(blocks.tolist())
    return _as_dataset(plan, data).assign_attrs(choice.attrs() if choice else {})


def _as_dataset(plan: Plan, data) -> xr.Dataset:
    coords = {"time": ("time", plan.times), **plan.coords}
    units = dict(plan.spec.units).get(plan.spec.target, "m3 m-3")
    da = xr.DataArray(data, dims=plan.dims, coords=coords, name=plan.spec.target,
                      attrs={"units": units, "long_name": f"soil moisture predicted by SoMo.ml "
                             f"({plan.spec.target})", "valid_min": 0.0, "valid_max": 1.0})
    return da.to_dataset()

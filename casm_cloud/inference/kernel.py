"""Inference's types, device and model cache, and the chunk task.

NumPy in, NumPy out: :func:`_run_chunk` reads one output chunk's region,
forms the residuals of the TB channels from the seasonal parameters
(:func:`casm_cloud.seasonal.cycle_values`), runs every member on noisy
copies of its input, writes its region and records it.  See
:mod:`casm_cloud.inference` for the definitions and guarantees.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from casm_cloud import storage
from casm_cloud.inference.device import Device, PredictError, resolve_device
from casm_cloud.inference.precision import Precision, Sample, numerics
from casm_cloud.seasonal import cycle_values

__all__ = ["PredictError", "PRODUCT_VARIABLES", "PARAM_FIELDS", "PredictSummary",
           "resolve_device"]

log = logging.getLogger(__name__)


#: Output variables, in the order they are written.
PRODUCT_VARIABLES: tuple[str, ...] = ("sm", "sm_residual", "seasonal_cycle",
                                      "structural_uncertainty", "data_uncertainty")
#: Seasonal parameters that inference reads (see ``casm_cloud.seasonal``).
PARAM_FIELDS: tuple[str, ...] = ("amplitude", "phase", "offset", "residual_std")
#: Attribute holding inference's own configuration hash.
PREDICT_HASH_ATTR = "casm_predict_hash"
_DIMS = ("time", "y", "x")
# Rows (samples × draws) per forward pass when batch_size is None.
_DEFAULT_BATCH = {"cpu": 8192, "cuda": 1 << 16}


# --------------------------------------------------------------------------- small types
@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict_to_zarr` did.

    Attributes
    ----------
    url : str
        The output store.
    config_hash : str
        Hash recorded under ``casm_config_hash`` (the caller's, if given).
    predict_hash : str
        Inference's own configuration hash (``casm_predict_hash``).
    n_chunks : int
        Chunks of the output.
    computed : int
        Chunks computed by this call.
    skipped : int
        Chunks found finished and skipped.
    precision : str
        The precision of the chunks and the check behind it, for the stage's line.
    """

    url: str
    config_hash: str
    predict_hash: str
    n_chunks: int
    computed: int
    skipped: int
    precision: str = ""


@dataclass(frozen=True)
class _Member:
    """One ensemble member as tasks see it: where it lives and its scalers, no weights."""

    path: str
    content_hash: str
    feat_mean: tuple[float, ...]       # scaler of the features, in model order
    feat_std: tuple[float, ...]
    target_mean: float
    target_std: float


@dataclass(frozen=True)
class _Spec:
    """Everything a chunk task needs besides its data: small, picklable, no model."""

    members: tuple[_Member, ...]
    features: tuple[str, ...]          # model inputs, in model order
    residual: tuple[str, ...]          # features that are TB residuals (noised)
    target: str
    n_noise: int
    noise_scale: float
    seed: int
    batch_size: int | None
    device: Device
    precision: Precision               # resolved: "fp32", "bf16" or "tf32"
    out: str
    storage_options: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class _Piece:
    """The data of one output chunk.

    A plain container on purpose: ``client.submit`` hands it to the task
    as it is (it would compute a bare dask collection argument first, on
    the scheduler's terms rather than the task's).
    """

    index: tuple[int, int, int]
    region: dict[str, slice]
    inputs: xr.Dataset                 # (time, y, x) variables, plus lat/lon coordinates
    params: xr.Dataset                 # PARAM_FIELDS over (variable, y, x)


# --------------------------------------------------------------------------- device, models
@functools.lru_cache(maxsize=32)
def _cached_checkpoint(path: str, device: str, so_json: str):
    """Load a checkpoint once per process and device (the worker-side model cache)."""
    from casm_cloud.models.checkpoint import load_checkpoint

    return load_checkpoint(path, device=device, storage_options=json.loads(so_json) or None)


def _load_member(member: _Member, device: str, storage_options: Mapping):
    ckpt = _cached_checkpoint(member.path, device, json.dumps(dict(storage_options),
                                                              sort_keys=True))
    if ckpt.content_hash != member.content_hash:
        # The checkpoint changed on storage since the run started: results would mix models.
        _cached_checkpoint.cache_clear()
        raise PredictError(f"checkpoint {member.path} changed during the run (content hash "
                         f"{ckpt.content_hash[:12]}, expected {member.content_hash[:12]})")
    return ckpt


# --------------------------------------------------------------------------- the chunk kernel
def _seed_words(seed: int, t: np.datetime64, y0: int, x0: int, member: int, draw: int) -> list:
    # SeedSequence wants non-negative integers; shift the time so pre-1970 dates work too.
    secs = int(np.datetime64(t, "s").astype(np.int64)) + (1 << 40)
    return [int(seed), secs, int(y0), int(x0), int(member), int(draw)]


def _noise(spec: _Spec, times: np.ndarray, t_of: np.ndarray, origin: tuple[int, int],
           member: int, n_res: int) -> np.ndarray:
    """Standard normals (n_noise, n_valid, n_res), seeded per time step, member and draw.

    Seeding per time step (not per chunk) keeps bits identical when an append
    grows a partially filled time chunk; samples are ordered by time.
    """
    n_valid = t_of.size
    z = np.empty((spec.n_noise, n_valid, n_res), dtype=np.float32)
    bounds = np.searchsorted(t_of, np.arange(times.size + 1))
    for ti in np.flatnonzero(np.diff(bounds)):
        lo, hi = bounds[ti], bounds[ti + 1]
        for d in range(spec.n_noise):
            rng = np.random.default_rng(_seed_words(spec.seed, times[ti], *origin, member, d))
            z[d, lo:hi] = rng.standard_normal((hi - lo, n_res), dtype=np.float32)
    return z


def _forward(model, x: np.ndarray, spec: _Spec, device: str) -> np.ndarray:
    """Model output for rows ``x`` (n, n_features) in batches; float32 (n,)."""
    import torch

    batch = spec.batch_size or _DEFAULT_BATCH[device]
    out = np.empty(x.shape[0], dtype=np.float32)
    use_bf16 = spec.precision == "bf16"
    with torch.inference_mode(), numerics(device, spec.precision), \
            torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
        for lo in range(0, x.shape[0], batch):
            xb = torch.from_numpy(x[lo:lo + batch]).to(device, non_blocking=True)
            out[lo:lo + batch] = model(xb).float().reshape(-1).cpu().numpy()
    return out


def _predict_arrays(spec: _Spec, inputs: Mapping[str, np.ndarray], lat: np.ndarray,
                    lon: np.ndarray, cycles: Mapping[str, np.ndarray],
                    resid_std: Mapping[str, np.ndarray], times: np.ndarray,
                    origin: tuple[int, int], device: str) -> dict[str, np.ndarray]:
    """NumPy in, NumPy out: the product variables of one (time, y, x) block.

    ``inputs[name]`` and ``cycles[name]`` are (time, y, x); ``resid_std[name]``
    is (y, x); ``lat`` is (y,), ``lon`` (x,).
    """
    shape = cycles[spec.target].shape
    nt, ny, nx = shape
    cols = []
    for name in spec.features:
        if name in spec.residual:
            cols.append((inputs[name] - cycles[name]).astype(np.float32, copy=False))
        elif name == "lat":
            cols.append(np.broadcast_to(lat[None, :, None], shape).astype(np.float32))
        elif name == "lon":
            cols.append(np.broadcast_to(lon[None, None, :], shape).astype(np.float32))
        else:  # a static (y, x) map or a further (time, y, x) variable, used as it is
            cols.append(np.broadcast_to(inputs[name], shape).astype(np.float32))
    sig = [np.broadcast_to(resid_std[name][None], shape) for name in spec.residual]
    valid = np.logical_and.reduce([np.isfinite(c) for c in cols + sig])
    flat = np.flatnonzero(valid.ravel())
    out = {name: np.full(shape, np.nan, dtype=np.float32) for name in PRODUCT_VARIABLES}
    if flat.size == 0:
        return out
    x = np.stack([c.reshape(-1)[flat] for c in cols], axis=1)              # (n, f)
    res_cols = [spec.features.index(n) for n in spec.residual]
    sigma = np.stack([s.reshape(-1)[flat] for s in sig], axis=1).astype(np.float32)
    sigma *= np.float32(spec.noise_scale)
    t_of = flat // (ny * nx)                                               # sorted
    n = flat.size
    member_mean = np.empty((len(spec.members), n), dtype=np.float64)
    member_std = np.empty((len(spec.members), n), dtype=np.float64)
    for k, member in enumerate(spec.members):
        model = _load_member(member, device, spec.storage_options).model
        z = _noise(spec, times, t_of, origin, k, len(res_cols))            # (d, n, r)
        noisy = np.broadcast_to(x, (spec.n_noise, n, x.shape[1])).copy()
        noisy[:, :, res_cols] += z * sigma
        noisy -= np.asarray(member.feat_mean, dtype=np.float32)
        noisy /= np.asarray(member.feat_std, dtype=np.float32)
        y = _forward(model, noisy.reshape(-1, x.shape[1]), spec, device)
        y = y.reshape(spec.n_noise, n).astype(np.float64) * member.target_std + member.target_mean
        member_mean[k] = y.mean(axis=0)
        member_std[k] = y.std(axis=0)
    resid = member_mean.mean(axis=0)
    cycle = cycles[spec.target].reshape(-1)[flat]
    values = {"sm_residual": resid, "seasonal_cycle": cycle, "sm": resid + cycle,
              "structural_uncertainty": member_mean.std(axis=0),
              "data_uncertainty": member_std.mean(axis=0)}
    for name, v in values.items():
        out[name].reshape(-1)[flat] = v
    return out


def _cycle(params: xr.Dataset, name: str, times: np.ndarray) -> np.ndarray:
    p = params.sel(variable=name)
    return np.asarray(cycle_values(p["amplitude"].values, p["phase"].values,
                                   p["offset"].values, times), dtype=np.float64)


def _chunk_inputs(spec: _Spec, piece: _Piece) -> dict:
    """One region's inputs, read: ``_predict_arrays``'s arguments but the spec and device."""
    ds = piece.inputs.compute(scheduler="sync")
    params = piece.params.compute(scheduler="sync")
    times = ds["time"].values
    names = [n for n in spec.features if n in ds.data_vars]
    needed = (*spec.residual, spec.target)
    return dict(
        inputs={n: ds[n].transpose(*[d for d in _DIMS if d in ds[n].dims]).values for n in names},
        lat=ds["lat"].values if "lat" in ds.coords else np.full(ds.sizes["y"], np.nan),
        lon=ds["lon"].values if "lon" in ds.coords else np.full(ds.sizes["x"], np.nan),
        cycles={n: _cycle(params, n, times) for n in needed},
        resid_std={n: params["residual_std"].sel(variable=n).values for n in spec.residual},
        times=times, origin=(piece.region["y"].start, piece.region["x"].start))


def _chunk_sm(spec: _Spec, inputs: dict, device: str, precision: str) -> np.ndarray:
    """``sm`` of one region from :func:`_chunk_inputs` in ``precision`` (the precision check)."""
    return _predict_arrays(dataclasses.replace(spec, precision=precision), device=device,
                           **inputs)["sm"]


def chunk_sample(spec: _Spec, piece: _Piece) -> Sample:
    """The precision check's sample: ``piece``'s ``sm`` in a precision."""
    return Sample(functools.partial(_chunk_inputs, spec, piece), functools.partial(_chunk_sm, spec))


def _run_chunk(spec: _Spec, piece: _Piece) -> dict:
    """Task: read one region, predict it, write it, record it.  Returns the record info."""
    t0 = time.perf_counter()
    device = resolve_device(spec.device)
    out = _predict_arrays(spec, device=device, **_chunk_inputs(spec, piece))
    part = xr.Dataset({n: (_DIMS, out[n]) for n in PRODUCT_VARIABLES})
    storage.write_region(part, spec.out, spec.storage_options, region=piece.region)
    info = {"pid": os.getpid(), "worker": _worker_address(), "device": device,
            "precision": spec.precision, "seconds": round(time.perf_counter() - t0, 4),
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            "n_valid": int(np.isfinite(out["sm_residual"]).sum())}
    storage.ChunkRecord(spec.out, spec.storage_options).mark(_chunk_key(piece), info)
    return info


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


def _chunk_key(piece: _Piece) -> dict:
    # The number of time steps is part of the key: a partial last time chunk
    # that grows on append is not "done" any more and is computed again.
    it, iy, ix = piece.index
    r = piece.region["time"]
    return {"t": it, "y": iy, "x": ix, "n": r.stop - r.start}

"""Windowed SoMo.ml prediction written chunk by chunk into Zarr, resumable and appendable;
the product exported as the published files (:func:`export_somo`).

The store follows the storage protocol (:mod:`casm_cloud.storage`): the
template first (metadata, coordinates), then one region per output chunk,
each recorded in the store's ``ChunkRecord``, then the completion attribute.
Each chunk task reads its region of the features with the 364 days before it
(the halo), computes, writes and records itself, so a killed run re-run with
the same arguments skips finished chunks and gives the same bits.  With
``append=True`` a store whose days are a prefix of the new output grows its
time axis; only new chunks (and a grown partial last chunk, whose record key
holds its length) are computed, so the result equals a full run.

With a dask ``client`` whose workers declare ``GPU`` resources, each chunk
is its own ``client.submit(..., resources={"GPU": 1})`` (no graph fusion can
drop the annotation, docs/architecture.md, "Known traps"); otherwise chunks run on CPU workers, or
in this process without a client.

``precision="auto"`` is decided once per store, on a worker of the kind that
runs the chunks, from the run's first chunk computed in fp32 and in each faster
candidate, and recorded in its attributes (``casm_precision``, with the
measured difference from fp32 and the tolerance); resumed
and appended runs compute in the recorded precision, and the configuration
hash holds the request, not the decision (:mod:`casm_cloud.inference.precision`).
The store machinery is shared with CASM's ensemble
(:mod:`casm_cloud.inference.chunked`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import storage
from casm_cloud.inference import PredictSummary
from casm_cloud.inference.chunked import (
    culled,
    prepare_store,
    run_pieces,
    set_attrs,
    task_resources,
    template,
)
from casm_cloud.inference.precision import (
    TOLERANCE,
    Precision,
    pinned_precision,
    resolve_for_run,
    summary_line,
)
from casm_cloud.somo.predict import (
    ModelSpec,
    Plan,
    make_plan,
    region_sample,
    run_region,
    spec_probe,
)

__all__ = ["SOMO_HASH_ATTR", "predict_to_zarr", "export_somo"]

log = logging.getLogger(__name__)

#: Attribute holding the prediction's own configuration hash.
SOMO_HASH_ATTR = "casm_somo_predict_hash"


@dataclass(frozen=True)
class _Task:
    """Everything a chunk task needs besides its data (small, picklable)."""

    spec: ModelSpec
    dims: tuple[str, ...]
    out: str
    storage_options: Mapping
    device: str
    precision: Precision
    batch: int | None


@dataclass(frozen=True)
class _Piece:
    """One output chunk: its key, region and lazy inputs (culled graphs)."""

    key: dict
    region: dict
    dynamic: xr.Dataset
    static: xr.Dataset


def _run_piece(task: _Task, piece: _Piece) -> dict:
    t0 = time.perf_counter()
    values, dev, prec = run_region(task.spec, task.dims, piece.dynamic, piece.static,
                                   task.device, task.precision, task.batch)
    part = xr.Dataset({task.spec.target: (task.dims, values)})
    storage.write_region(part, task.out, task.storage_options, region=piece.region)
    info = {"pid": os.getpid(), "device": dev, "precision": prec,
            "seconds": round(time.perf_counter() - t0, 4),
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")}
    storage.ChunkRecord(task.out, task.storage_options).mark(piece.key, info)
    return info


def _key(index: tuple[int, ...], region: Mapping[str, slice]) -> dict:
    # The number of days is part of the key: a partial last time chunk that
    # grows on append is not "done" any more and is computed again.
    r = region["time"]
    return {"t": index[0], **{f"s{i}_": v for i, v in enumerate(index[1:])},
            "n": r.stop - r.start}


def _hash(plan: Plan, features: xr.Dataset, statics: xr.Dataset, precision: str,
          tolerance: float) -> str:
    space = [[d, int(plan.dynamic.sizes[d]),
              *(str(v) for v in (plan.dynamic[d].values[[0, -1]] if d in plan.dynamic.coords
                                  else ()))] for d in plan.dims[1:]]
    doc = {"checkpoint": plan.spec.content_hash, "dynamic": list(plan.spec.dynamic),
           "static": list(plan.spec.static), "start": str(plan.times[0]),
           "chunks": plan.chunks, "space": space, "precision": precision,
           "tolerance": tolerance if precision == "auto" else None,
           "inputs": [features.attrs.get(storage.HASH_ATTR), statics.attrs.get(storage.HASH_ATTR)],
           "version": 1}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _template(plan: Plan, attrs: Mapping) -> xr.Dataset:
    units = dict(plan.spec.units).get(plan.spec.target, "m3 m-3")
    var = {"units": units, "long_name": f"soil moisture predicted by SoMo.ml ({plan.spec.target})"}
    sizes = {"time": plan.times.size, **{d: plan.dynamic.sizes[d] for d in plan.dims[1:]}}
    return template(plan.dims, sizes, plan.chunks, {"time": ("time", plan.times), **plan.coords},
                    {plan.spec.target: var}, attrs)


def predict_to_zarr(checkpoint: str, features: xr.Dataset | str, statics: xr.Dataset | str,
                    out: str, *, chunks: Mapping[str, int] | None = None, start=None, end=None,
                    precision: Precision = "auto", device: str = "auto",
                    batch_size: int | None = None, tolerance: float = TOLERANCE,
                    storage_options: Mapping | None = None,
                    client=None, resume: bool = True, append: bool = False,
                    overwrite: bool = False, config_hash: str | None = None,
                    progress: Callable[[int, int], Any] | None = None) -> PredictSummary:
    """Windowed SoMo.ml prediction into a Zarr store, chunk by chunk.

    Parameters
    ----------
    checkpoint : str
        SoMo.ml checkpoint directory (:func:`casm_cloud.somo.import_published`).
    features, statics : xarray.Dataset or str
        Daily dynamic features and static features (or Zarr URLs of them) over
        the same spatial dimensions (see :func:`casm_cloud.somo.predict`).
    out : str
        Output Zarr URL.
    chunks : mapping, optional
        Output chunk sizes (``time`` default 365 days; spatial: the features').
    start, end : optional
        First and last output day (default: the first day with a 365-day
        window, and the last forcing day).
    precision : {"auto", "fp32", "bf16", "tf32"}
        ``"auto"``: the fastest precision whose largest difference from fp32 on
        the run's first chunk, computed on a worker of the kind that runs the
        chunks, is within ``tolerance``; recorded in the store with that check
        (``casm_precision``, ``casm_precision_error``, ...), so resumed and
        appended runs keep it (:mod:`casm_cloud.inference.precision`).
    device : {"auto", "cpu", "cuda"}
    batch_size : int, optional
        Windows per forward (default 128 per torch thread on CPU, 16,384 on CUDA).
    tolerance : float
        Largest difference from fp32 ``"auto"`` accepts, in the target's units.
    storage_options : mapping, optional
        fsspec options of ``out``, the checkpoint and URL inputs.
    client : distributed.Client, optional
        One task per chunk on this cluster (GPU workers get ``GPU=1`` tasks).
    resume : bool
        Skip chunks recorded as finished by a run of the same configuration.
    append : bool
        Grow a store whose days are a prefix of this run's (the monthly update).
    overwrite : bool
        Replace a store of another configuration instead of refusing.
    config_hash : str, optional
        The runner's hash, recorded as ``casm_config_hash``.
    progress : callable, optional
        ``progress(done, total)`` after each chunk.

    Returns
    -------
    casm_cloud.inference.PredictSummary

    Raises
    ------
    casm_cloud.somo.features.FeatureError
        A missing or mis-unitised input, mismatched cells, or fewer than 364
        days of forcing before the first output day (nothing is written).
    casm_cloud.models.checkpoint.CheckpointError
        A checkpoint that is not a SoMo.ml EA-LSTM.
    casm_cloud.storage.StoreError
        ``out`` holds another configuration or other days.
    """
    so = dict(storage_options or {})
    features, statics = _opened(features, so), _opened(statics, so)
    plan = make_plan(checkpoint, features, statics, start=start, end=end, chunks=chunks,
                     storage_options=so)
    phash = _hash(plan, features, statics, precision, tolerance)
    hashes = {SOMO_HASH_ATTR: phash, storage.HASH_ATTR: config_hash or phash}
    stored = prepare_store(out, so, _template(plan, _attrs(plan, features, hashes)), hashes,
                           hash_attr=SOMO_HASH_ATTR, resume=resume, overwrite=overwrite,
                           append=append, what="SoMo.ml prediction")
    resources = task_resources(client, device)
    pieces, n_total = _pieces(plan, storage.ChunkRecord(out, so), resume)
    prec, said = pinned_precision(stored, precision), summary_line(stored or {})
    if prec is None:  # a new store: choose on the run's first chunk
        first = pieces[0] if pieces else None
        sample = first and region_sample(plan.spec, plan.dims, first.dynamic, first.static,
                                         batch_size)
        choice = resolve_for_run(precision, device, spec_probe(plan.spec, batch_size, device),
                                 tolerance=tolerance, sample=sample, client=client,
                                 resources=resources)
        set_attrs(out, so, choice.attrs())
        prec, said = choice.precision, summary_line(choice.attrs())
        log.info("somo predict %s: precision %s", out, said)
    task = _Task(plan.spec, plan.dims, out, so, device, prec, batch_size)
    skipped = n_total - len(pieces)
    log.info("somo predict %s: %d chunks, %d finished, %d to compute (%s)", out, n_total,
             skipped, len(pieces), prec)
    run_pieces(_run_piece, task, pieces, client=client, resources=resources,
               key=f"somo-predict-{phash[:8]}", skipped=skipped, n_total=n_total,
               progress=progress)
    storage.mark_complete(out, so, config_hash=hashes[storage.HASH_ATTR])
    return PredictSummary(url=out, config_hash=hashes[storage.HASH_ATTR], predict_hash=phash,
                          n_chunks=n_total, computed=len(pieces), skipped=skipped,
                          precision=said)


def _opened(ds: xr.Dataset | str, so: Mapping) -> xr.Dataset:
    return storage.open_zarr(ds, so) if isinstance(ds, str) else ds


def _attrs(plan: Plan, features: xr.Dataset, hashes: Mapping[str, str]) -> dict:
    attrs = {k: v for k, v in features.attrs.items() if k.startswith(("ease2_", "latlon_"))}
    attrs.update({"title": "soil moisture predicted by SoMo.ml (windowed EA-LSTM)",
                  "casm_checkpoint": plan.spec.path, **hashes})
    return attrs


def _pieces(plan: Plan, record: storage.ChunkRecord, resume: bool) -> tuple[list[_Piece], int]:
    """The unfinished chunks (culled lazy inputs each) and the number of chunks."""
    done = record.done() if resume else set()
    pieces, n_total = [], 0
    for index, region in plan.regions():
        n_total += 1
        key = _key(index, region)
        if record.key(key) not in done:
            dyn, sta = plan.inputs(region)
            pieces.append(_Piece(key, region, culled(dyn), culled(sta)))
    return pieces, n_total


def export_somo(product_url: str, out: str, storage_options=None, *, years=None) -> list[str]:
    """One netCDF per year and layer: ``<out>/SoMo.ml_v1_<layer>_<year>.nc``, the
    published files' names.

    Each file holds the layer's soil moisture and its structural uncertainty,
    written to a local scratch file first and then copied, so an interrupted
    export never leaves a half-written file under its final name.
    """
    import tempfile

    so = dict(storage_options or {})
    product = storage.open_zarr(product_url, so, require_complete=True)
    fs, root = storage.url_to_fs(out, so)
    fs.makedirs(root, exist_ok=True)
    written = []
    for year in np.unique(pd.DatetimeIndex(product["time"].values).year):
        if years is not None and year not in years:
            continue
        for layer in [v for v in product.data_vars if v.startswith("sm_l")]:
            unc = f"structural_uncertainty_{layer[-2:]}"
            part = product[[layer, unc]].sel(time=str(year)).load()
            part.attrs = {k: v for k, v in product.attrs.items()
                          if k != storage.COMPLETE_ATTR and not isinstance(v, bool)
                          and v is not None}  # netCDF attributes have no bool and no null
            for v in part.variables.values():
                v.encoding = {}
            enc = {v: {"zlib": True, "complevel": 4, "dtype": "float32"} for v in part.data_vars}
            name = f"SoMo.ml_v1_{layer}_{year}.nc"
            with tempfile.TemporaryDirectory(prefix="casm-somo-export-") as tmp:
                local = os.path.join(tmp, name)
                part.to_netcdf(local, encoding=enc, engine="netcdf4")
                fs.put_file(local, f"{root.rstrip('/')}/{name}")
            written.append(storage.join(out, name))
    return written

"""The entry point of inference: checks, hashing, the output store and the runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from casm_cloud import storage
from casm_cloud.inference.chunked import (
    culled,
    prepare_store,
    regions,
    run_pieces,
    set_attrs,
    task_resources,
    template,
)
from casm_cloud.inference.kernel import (
    _DEFAULT_BATCH,
    _DIMS,
    PARAM_FIELDS,
    PREDICT_HASH_ATTR,
    PRODUCT_VARIABLES,
    Device,
    Precision,
    PredictError,
    PredictSummary,
    _cached_checkpoint,
    _chunk_key,
    _Member,
    _Piece,
    _run_chunk,
    _Spec,
    chunk_sample,
)
from casm_cloud.inference.precision import (
    PRECISIONS,
    TOLERANCE,
    pinned_precision,
    resolve_for_run,
    summary_line,
)
from casm_cloud.inference.speed import Probe, cpu_has_amx
from casm_cloud.schema import apply_attrs

__all__ = ["predict_to_zarr", "predict_config_hash"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- checks, hashing
def _as_params(params: xr.Dataset | Mapping[str, xr.Dataset]) -> tuple[xr.Dataset, str]:
    """(parameters over ``variable, y, x`` with :data:`PARAM_FIELDS`, their identity)."""
    if isinstance(params, Mapping) and not isinstance(params, xr.Dataset):
        parts = [_as_params(p) for p in params.values()]
        if not parts:
            raise PredictError("params: an empty mapping; expected seasonal parameters of the "
                             "inputs and of the target")
        ds = xr.concat([p for p, _ in parts], dim="variable", data_vars="all",
                       coords="minimal", compat="override", join="override")
        return ds, "|".join(i for _, i in parts)
    if not isinstance(params, xr.Dataset):
        raise PredictError(f"params: expected an xarray.Dataset of seasonal parameters, "
                         f"got {type(params).__name__}")
    missing = [f for f in PARAM_FIELDS if f not in params.data_vars]
    if missing:
        raise PredictError(f"params: seasonal parameter fields {missing} are missing "
                         f"(have {sorted(params.data_vars)}); expected {list(PARAM_FIELDS)}")
    if "variable" not in params.dims:
        raise PredictError("params: no 'variable' dimension; fit the seasonal cycle on "
                         "ds.to_dataarray('variable') so each variable has its parameters")
    return params[list(PARAM_FIELDS)], _params_identity(params)


def _check_params(params: xr.Dataset, needed: Sequence[str], inputs: xr.Dataset) -> None:
    have = [str(v) for v in params["variable"].values]
    lack = [n for n in needed if n not in have]
    if lack:
        raise PredictError(f"params: no seasonal parameters for {lack} (have {have}); every TB "
                         "input and the target need a fitted seasonal cycle")
    if len(set(have)) != len(have):
        raise PredictError(f"params: variable names repeat: {have}")
    for dim in ("y", "x"):
        if params.sizes.get(dim) != inputs.sizes[dim]:
            raise PredictError(f"params: dimension {dim!r} has size {params.sizes.get(dim)}; "
                             f"the inputs have {inputs.sizes[dim]}")
        if dim in params.coords and not np.allclose(params[dim].values, inputs[dim].values):
            raise PredictError(f"params: coordinate {dim!r} differs from the inputs' (another "
                             "grid window?)")


def _features(inputs: xr.Dataset, meta: Mapping) -> tuple[list[str], list[str]]:
    """(features in model order, residual features) after checking names against the model."""
    from casm_cloud.models.checkpoint import check_inputs

    want = list(meta["inputs"])
    data = [str(n) for n in inputs.data_vars if "time" in inputs[n].dims]
    coords = [n for n in ("lat", "lon") if n in inputs.coords]
    have = data + coords
    # Ordered as the model wants where present, extras after, so check_inputs names
    # missing and unexpected inputs rather than their order (columns are picked by name).
    check_inputs(meta, [n for n in want if n in have] + [n for n in data if n not in want])
    return want, [n for n in want if n in data]


def _member_specs(ensemble: Sequence[str] | str, so: Mapping) -> tuple[list[_Member], dict]:
    """Load every member once (CPU, cached) to check it; return their specs and the meta."""
    paths = [ensemble] if isinstance(ensemble, str) else list(ensemble)
    if not paths:
        raise PredictError("ensemble: no checkpoint given")
    so_json = json.dumps(dict(so), sort_keys=True)
    ckpts = [_cached_checkpoint(str(p), "cpu", so_json) for p in paths]
    first = ckpts[0].meta
    members = []
    for c in ckpts:
        for key in ("inputs", "target"):
            if c.meta[key] != first[key]:
                raise PredictError(f"ensemble: member {c.path} has {key}={c.meta[key]!r}, "
                                 f"member {ckpts[0].path} has {first[key]!r}")
        mean, std = c.meta["scaler"]["mean"], c.meta["scaler"]["std"]
        names, target = list(c.meta["inputs"]), c.meta["target"]
        members.append(_Member(c.path, c.content_hash,
                               tuple(float(mean[n]) for n in names),
                               tuple(float(std[n]) for n in names),
                               float(mean[target]), float(std[target])))
    return members, first


def _params_identity(params: xr.Dataset) -> str:
    # A stored stage output carries its config hash; otherwise hash the values
    # (tokenize reads in-memory arrays, and only the graph names of lazy ones).
    token = params.attrs.get(storage.HASH_ATTR)
    if token:
        return str(token)
    import dask.base

    return dask.base.tokenize(params[[f for f in PARAM_FIELDS if f in params]])


def predict_config_hash(members: Sequence[str], params_identity: str, *, features: Sequence[str],
                        n_noise: int, noise_scale: float, chunks: Mapping[str, int],
                        precision: str, seed: int, grid: Sequence,
                        tolerance: float | None = None) -> str:
    """sha256 of everything that fixes the bits of the output (not where it runs).

    Parameters
    ----------
    members : sequence of str
        Content hashes of the ensemble members, in order.
    params_identity : str
        Config hash of the seasonal-parameter store, or a token of its values.
    features : sequence of str
    n_noise, noise_scale, chunks, precision, seed, tolerance
        As in :func:`predict_to_zarr` (the tolerance counts only under ``"auto"``).
    grid : sequence
        Anything identifying the spatial grid (sizes, first and last coordinates).

    Returns
    -------
    str
        Hex digest.
    """
    doc = {"members": list(members), "params": params_identity, "features": list(features),
           "n_noise": int(n_noise), "noise_scale": float(noise_scale),
           "chunks": {k: int(chunks[k]) for k in _DIMS}, "precision": precision,
           "seed": int(seed), "grid": [float(g) for g in grid], "version": 1,
           "tolerance": float(tolerance) if precision == "auto" and tolerance else None}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _output_chunks(inputs: xr.Dataset, chunks: Mapping[str, int] | None,
                   names: Sequence[str]) -> dict[str, int]:
    out = {d: inputs.sizes[d] for d in _DIMS}
    if chunks is None:
        for n in names:
            if n in inputs.data_vars and inputs[n].chunks is not None:
                c = dict(zip(inputs[n].dims, inputs[n].chunks, strict=True))
                out.update({d: int(c[d][0]) for d in _DIMS if d in c})
                break
    else:
        unknown = set(chunks) - set(_DIMS)
        if unknown:
            raise PredictError(f"chunks: unknown dimensions {sorted(unknown)}; expected {_DIMS}")
        out.update({d: int(v) if v not in (None, -1) else inputs.sizes[d]
                    for d, v in chunks.items()})
    if any(v < 1 for v in out.values()):
        raise PredictError(f"chunks {out}: sizes must be positive")
    return out


# --------------------------------------------------------------------------- the store
def _template(inputs: xr.Dataset, chunks: Mapping[str, int], attrs: Mapping) -> xr.Dataset:
    coords = {d: inputs[d] for d in _DIMS}
    for extra in ("lat", "lon", "crs"):
        if extra in inputs.coords or extra in inputs.data_vars:
            coords[extra] = inputs[extra].reset_coords(drop=True) if extra in inputs.data_vars \
                else inputs.coords[extra].variable
    ds = template(_DIMS, inputs.sizes, chunks, coords, dict.fromkeys(PRODUCT_VARIABLES, {}), {})
    ds = apply_attrs(ds, "product")
    if "crs" in ds.coords:
        for n in PRODUCT_VARIABLES:
            ds[n].attrs["grid_mapping"] = "crs"
    ds.attrs = dict(attrs)
    return ds


def _probe(meta: Mapping, batch_size: int | None, device: str) -> Probe:
    """The shapes ``precision="auto"`` measures: the members' network, one forward's rows."""
    rows = batch_size or (_DEFAULT_BATCH["cuda"] if device == "cuda" else _DEFAULT_BATCH["cpu"])
    return Probe.of(meta["architecture"], rows)


# --------------------------------------------------------------------------- the public entry
def predict_to_zarr(inputs: xr.Dataset | str, ensemble: Sequence[str] | str,
                    params: xr.Dataset | Mapping[str, xr.Dataset] | str, out: str, *,
                    n_noise: int = 10, noise_scale: float = 0.1, batch_size: int | None = None,
                    device: Device = "auto", precision: Precision = "auto",
                    tolerance: float = TOLERANCE, resume: bool = True, overwrite: bool = False,
                    append: bool = False,
                    chunks: Mapping[str, int] | None = None, seed: int = 0,
                    storage_options: Mapping | None = None, client=None,
                    config_hash: str | None = None,
                    progress: Callable[[int, int], Any] | None = None) -> PredictSummary:
    """Predict SM with an ensemble chunk by chunk into a Zarr store, with uncertainty.

    Parameters
    ----------
    inputs : xarray.Dataset or str
        Canonical TB dataset (lazy; ``time, y, x``; ``lat``/``lon``
        coordinates) or the URL of such a Zarr store.  Its variables with a
        ``time`` dimension must be exactly the model's TB inputs.
    ensemble : sequence of str
        Checkpoint directories (local paths or URLs), one per member.
    params : xarray.Dataset, mapping of Datasets, or str
        Seasonal parameters (``amplitude``, ``phase``, ``offset``,
        ``residual_std`` over ``variable, y, x``) of every TB input and of the
        target, e.g. ``{"inputs": smos_params, "target": smap_params}``.
    out : str
        Output Zarr URL (local path, ``gs://``, ``s3://``, ``memory://``).
    n_noise : int
        Noisy copies of the input per member (K).
    noise_scale : float
        Noise std as a fraction of each TB channel's residual std at the pixel.
    batch_size : int, optional
        Rows per forward pass (default 8192 on CPU, 65536 on CUDA); with the
        chunk size it bounds peak memory.
    device : {"auto", "cpu", "cuda"}
        ``"auto"``: CUDA where the worker has it.  With a ``client`` whose
        workers declare ``GPU`` resources, tasks need ``GPU=1``.
    precision : {"auto", "fp32", "bf16", "tf32"}
        ``"bf16"``: autocast to bfloat16; ``"tf32"``: TF32 matmuls (CUDA);
        ``"fp32"``: IEEE fp32 (TF32 off on CUDA).  ``"auto"``: the fastest of
        these whose largest difference from fp32 in ``sm`` on the run's first
        chunk, computed on a worker of the kind that runs the chunks, is within
        ``tolerance``; recorded in the store with that check (``casm_precision``,
        ``casm_precision_error``, ...), so resumed and appended runs keep it
        (:mod:`casm_cloud.inference.precision`).
    tolerance : float
        Largest difference from fp32 ``"auto"`` accepts, in m3 m-3.
    resume : bool
        Skip chunks recorded as finished by a run of the same configuration.
    overwrite : bool
        Replace a store written by another configuration instead of refusing.
    append : bool
        Grow the store's time axis when ``inputs`` extends the stored times
        (the monthly update); only new chunks (and a grown partial last time
        chunk) are computed.
    chunks : mapping, optional
        Output chunk sizes of ``time``, ``y``, ``x`` (default: the inputs' chunks).
    seed : int
        Base seed of the input noise.
    storage_options : mapping, optional
        fsspec options for ``out``, the checkpoints and URL inputs.
    client : distributed.Client, optional
        Run one task per chunk on this cluster; ``None`` runs in this process.
    config_hash : str, optional
        The pipeline's hash, recorded as ``casm_config_hash`` (default: the
        inference hash).
    progress : callable, optional
        Called as ``progress(done, total)`` after each finished chunk.

    Returns
    -------
    PredictSummary

    Raises
    ------
    casm_cloud.models.checkpoint.CheckpointError
        If a checkpoint's inputs differ from the data's variables.
    PredictError
        For a missing seasonal parameter, bad sizes or options, a CUDA request
        without a GPU.
    casm_cloud.storage.StoreError
        If ``out`` was written by a different configuration (and not
        ``overwrite``), or holds other times (and not ``append``).
    """
    so = dict(storage_options or {})
    _check_options(precision, device, n_noise, noise_scale, batch_size)
    if isinstance(inputs, str):
        inputs = storage.open_zarr(inputs, so)
    if isinstance(params, str):
        params = storage.open_zarr(params, so)
    for d in _DIMS:
        if d not in inputs.dims:
            raise PredictError(f"inputs: dimension {d!r} is missing (have {tuple(inputs.dims)})")
    members, meta = _member_specs(ensemble, so)
    features, residual = _features(inputs, meta)
    params, params_id = _as_params(params)
    _check_params(params, [*residual, meta["target"]], inputs)
    sizes = {d: inputs.sizes[d] for d in _DIMS}
    chunk_sizes = _output_chunks(inputs, chunks, residual)
    grid = [sizes["y"], sizes["x"], *(float(inputs[d][i]) for d in ("y", "x") for i in (0, -1))]
    phash = predict_config_hash([m.content_hash for m in members], params_id,
                                features=features, n_noise=n_noise, noise_scale=noise_scale,
                                chunks=chunk_sizes, precision=precision, seed=seed, grid=grid,
                                tolerance=tolerance)
    hashes = {PREDICT_HASH_ATTR: phash, storage.HASH_ATTR: config_hash or phash}
    attrs = _store_attrs(inputs, members, features, n_noise, noise_scale, seed, hashes)
    stored = prepare_store(out, so, _template(inputs, chunk_sizes, attrs), hashes,
                           hash_attr=PREDICT_HASH_ATTR, resume=resume, overwrite=overwrite,
                           append=append)
    resources = task_resources(client, device)
    spec = _Spec(members=tuple(members), features=tuple(features), residual=tuple(residual),
                 target=meta["target"], n_noise=int(n_noise),
                 noise_scale=float(noise_scale), seed=int(seed), batch_size=batch_size,
                 device=device, precision="fp32", out=out, storage_options=so)
    pieces, n_total = _pieces(inputs, params, features, sizes, chunk_sizes,
                              storage.ChunkRecord(out, so), resume)
    prec, said = pinned_precision(stored, precision), summary_line(stored or {})
    if prec is None:  # a new store: choose on the run's first chunk
        choice = resolve_for_run(precision, device, _probe(meta, batch_size, device),
                                 tolerance=tolerance,
                                 sample=chunk_sample(spec, pieces[0]) if pieces else None,
                                 client=client, resources=resources)
        set_attrs(out, so, choice.attrs())
        prec, said = choice.precision, summary_line(choice.attrs())
    _warn_slow_bf16(prec, device, client)
    spec = dataclasses.replace(spec, precision=prec)
    skipped = n_total - len(pieces)
    log.info("predict %s: %d chunks, %d finished, %d to compute (%s)", out, n_total, skipped,
             len(pieces), prec)
    run_pieces(_run_chunk, spec, pieces, client=client, resources=resources,
               key=f"casm-predict-{phash[:8]}", skipped=skipped, n_total=n_total,
               progress=progress)
    storage.mark_complete(out, so, config_hash=hashes[storage.HASH_ATTR])
    return PredictSummary(url=out, config_hash=hashes[storage.HASH_ATTR], predict_hash=phash,
                          n_chunks=n_total, computed=len(pieces), skipped=skipped,
                          precision=said)


def _check_options(precision: str, device: str, n_noise: int, noise_scale: float,
                   batch_size: int | None) -> None:
    if precision not in PRECISIONS:
        raise PredictError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    if device not in ("auto", "cpu", "cuda"):
        raise PredictError(f"device={device!r}: expected 'auto', 'cpu' or 'cuda'")
    if int(n_noise) < 1 or not noise_scale >= 0 or (batch_size is not None and batch_size < 1):
        raise PredictError(f"n_noise={n_noise}, noise_scale={noise_scale}, batch_size="
                         f"{batch_size}: expected n_noise >= 1, noise_scale >= 0, batch_size >= 1")


def _store_attrs(inputs: xr.Dataset, members: Sequence[_Member], features: Sequence[str],
                 n_noise: int, noise_scale: float, seed: int, hashes: Mapping) -> dict:
    attrs = {k: v for k, v in inputs.attrs.items() if k.startswith("ease2_")}
    attrs.update({
        "title": "soil moisture predicted by a deep ensemble (CASM method)",
        "casm_ensemble": json.dumps([m.path for m in members]),
        "casm_inputs": json.dumps(list(features)), "casm_n_noise": int(n_noise),
        "casm_noise_scale": float(noise_scale), "casm_seed": int(seed), **hashes,
    })
    return attrs


def _warn_slow_bf16(precision: str, device: str, client) -> None:
    if precision == "bf16" and device == "cpu" and client is None and not cpu_has_amx():
        warnings.warn("precision='bf16' on a CPU without AMX: bf16 autocast is slower than "
                      "fp32 here (precision='auto' picks fp32)", RuntimeWarning, stacklevel=3)


def _pieces(inputs: xr.Dataset, params: xr.Dataset, features: Sequence[str],
            sizes: Mapping[str, int], chunk_sizes: Mapping[str, int],
            record: storage.ChunkRecord, resume: bool) -> tuple[list[_Piece], int]:
    """The unfinished chunks (culled lazy inputs each) and the number of chunks."""
    done = record.done() if resume else set()
    src = inputs[[n for n in features if n in inputs.data_vars]]
    pieces, n_total = [], 0
    for index, region in regions(_DIMS, sizes, chunk_sizes):
        n_total += 1
        probe = _Piece(index, region, None, None)  # type: ignore[arg-type]
        if record.key(_chunk_key(probe)) in done:
            continue
        pieces.append(_Piece(index, region, culled(src.isel(region)),
                             culled(params.isel(y=region["y"], x=region["x"]))))
    return pieces, n_total

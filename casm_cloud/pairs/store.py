"""The sample table in Zarr: written with the training split's scaler, opened, scaled."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import dask
import numpy as np
import xarray as xr

from casm_cloud import storage
from casm_cloud.pairs.table import FEATURES_ATTR, OFFSETS_ATTR, SCALER_ATTR, TARGET_ATTR, PairsError

__all__ = ["open_pairs", "scaler_arrays", "write_pairs"]


def write_pairs(pairs: xr.Dataset, url: str, storage_options: Mapping | None = None, *,
                chunk_size: int = 65536, config_hash: str | None = None) -> str:
    """Write a sample table to Zarr and store the training split's scaler.

    Template first, then the regions (computed chunk by chunk by dask, in
    parallel where a scheduler allows), then the scaler and the completion
    mark, so an interrupted write never looks finished.

    Parameters
    ----------
    pairs : xarray.Dataset
        From :func:`casm_cloud.pairs.table.build_pairs`.
    url : str
        Store URL or path (replaced if it exists).
    storage_options : mapping, optional
    chunk_size : int
        Samples per Zarr chunk.
    config_hash : str, optional
        Recorded in the store's attributes.

    Returns
    -------
    str
        ``url``.

    Raises
    ------
    PairsError
        If the training split is empty.
    """
    offsets = json.loads(pairs.attrs[OFFSETS_ATTR])
    a, b = offsets["train"]
    if b <= a:
        raise PairsError("the training split is empty; lower val_fraction/test_fraction or use "
                         "a smaller block_size")
    ds = pairs.chunk({"sample": int(chunk_size), "feature": -1})
    storage.write_template(ds, url, storage_options, config_hash=config_hash)
    write = storage.region_writes(ds, url, storage_options)
    # Streamed sums over the training rows, computed in the same pass as the write.
    x = ds["features"].data[a:b].astype(np.float64)
    y = ds["target"].data[a:b].astype(np.float64)
    _, sx, sxx, sy, syy = dask.compute(write, x.sum(0), (x * x).sum(0), y.sum(), (y * y).sum())
    n = b - a
    names = list(pairs.attrs[FEATURES_ATTR])
    mean = {k: float(v) for k, v in zip(names, sx / n, strict=True)}
    std = {k: float(v) for k, v in zip(names, np.sqrt(np.maximum(sxx / n - (sx / n) ** 2, 0)), strict=True)}
    tname = pairs.attrs[TARGET_ATTR]
    mean[tname] = float(sy / n)
    std[tname] = float(math.sqrt(max(syy / n - (sy / n) ** 2, 0.0)))
    # A constant feature (std 0) is scaled by 1, not divided by zero.
    std = {k: (v if v > 0 else 1.0) for k, v in std.items()}
    storage.mark_complete(url, storage_options, config_hash=config_hash,
                          **{SCALER_ATTR: {"mean": mean, "std": std}})
    return str(url)


def open_pairs(url: str, storage_options: Mapping | None = None) -> xr.Dataset:
    """Open a finished sample table lazily (raises ``StoreError`` if unfinished)."""
    return storage.open_zarr(url, storage_options, require_complete=True)


def scaler_arrays(scaler: Mapping, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 arrays of ``names`` from a scaler dict.

    Raises
    ------
    PairsError
        If a name has no statistics.
    """
    lack = [n for n in names if n not in scaler["mean"] or n not in scaler["std"]]
    if lack:
        raise PairsError(f"scaler has no statistics for {lack}")
    return (np.asarray([scaler["mean"][n] for n in names], dtype=np.float32),
            np.asarray([scaler["std"][n] for n in names], dtype=np.float32))

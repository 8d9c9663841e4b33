"""Training samples: where every input and the target are valid at the same (time, y, x).

The sample table is built lazily, one source chunk at a time:

1. :func:`build_pairs` turns aligned gridded inputs and target into a lazy
   table with dims ``sample`` x ``feature``.  Inputs and target become
   residuals on the fly (value minus the stored seasonal cycle), so no
   residual cube is ever written.  The number of valid samples in a chunk is
   only known after reading it, and xarray needs the length of ``sample``, so
   ``build_pairs`` computes one small thing: the per-chunk, per-split counts
   (an int array of ``n_chunks x 3``, the data are read and dropped chunk by
   chunk).  With the counts, every chunk's samples get a known place in the
   table, and the table is a lazy dask array again.  Writing reads the
   source chunks a second time; that is the price of never holding more than
   a few chunks.
2. Samples are grouped by split (train, then val, then test), so a loader of
   one split reads one contiguous range.  Within a split, source chunks are
   placed in a seeded random order and samples are permuted within each
   chunk; :class:`~casm_cloud.pairs.loader.SampleLoader` adds a shuffle buffer over several table
   chunks in a new order every epoch.
3. :func:`~casm_cloud.pairs.store.write_pairs` writes the table template-first, then all regions,
   and computes the standard scaler of the training split (streamed sums)
   in the same pass; the scaler goes into the store's attributes, the
   completion mark last.

Splits (:mod:`casm_cloud.pairs.splits`): ``spatial_blocks`` (default) assigns whole ``block_size`` x
``block_size`` blocks of pixels to one split, so validation and test pixels
are unseen in training; ``random`` is the paper's 80/20 split with 20 % of
the training part for validation, decided per sample by a hash of its
(time, y, x) position so the labels do not depend on the chunking.
"""

from __future__ import annotations

import itertools
import json
from functools import partial
from typing import Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from casm_cloud.errors import UserError
from casm_cloud.pairs.splits import SPLITS, random_codes, split_map
from casm_cloud.seasonal import residual_values

__all__ = ["FEATURES_ATTR", "OFFSETS_ATTR", "SCALER_ATTR", "TARGET_ATTR", "PairsError",
           "build_pairs"]

FEATURES_ATTR = "features"
TARGET_ATTR = "target"
OFFSETS_ATTR = "split_offsets"
SCALER_ATTR = "scaler"
_PARAMS = ("amplitude", "phase", "offset")


class PairsError(UserError, ValueError):
    """Inputs, targets or sample tables that cannot make training samples."""


def _residuals(values: list[np.ndarray], params: np.ndarray | None, time: np.ndarray):
    """values minus cycle; ``params`` is (3, nvar, y, x) or None (values are residuals)."""
    out = np.stack(values).astype(np.float64)  # (nvar, t, y, x)
    if params is None:
        return out
    res = residual_values(np.moveaxis(out, 1, 0), params[0], params[1], params[2], time)
    return np.moveaxis(res, 0, 1)


def _gather_chunk(time, lat, lon, row0, col0, t0, shape, inputs, target, in_params, tg_params,
                  label_block, mode, val_fraction, test_fraction, seed, chunk_id):
    """Valid samples of one source chunk, by split: {code: (features, target, time, row, col)}.

    NumPy in, NumPy out; called inside the dask graph, one call per chunk.
    """
    x = _residuals(inputs, in_params, time)
    y = _residuals([target], tg_params, time)[0]
    valid = np.isfinite(y) & np.isfinite(x).all(axis=0)
    ti, yi, xi = np.nonzero(valid)
    if mode == "spatial_blocks":
        codes = label_block[yi, xi]
    else:
        ny, nx = shape[1], shape[2]
        flat = ((t0 + ti).astype(np.int64) * ny + (row0 + yi)) * nx + (col0 + xi)
        codes = random_codes(flat, seed, val_fraction, test_fraction)
    feats = np.concatenate([x[:, ti, yi, xi].T, lat[yi, None], lon[xi, None]], axis=1)
    rng = np.random.default_rng([seed, chunk_id])
    out = {}
    for code in range(len(SPLITS)):
        sel = np.flatnonzero(codes == code)
        sel = sel[rng.permutation(sel.size)]
        out[code] = (feats[sel].astype(np.float32), y[ti[sel], yi[sel], xi[sel]].astype(np.float32),
                     time[ti[sel]], (row0 + yi[sel]).astype(np.int32),
                     (col0 + xi[sel]).astype(np.int32))
    return out


def _count(packed: dict) -> np.ndarray:
    return np.asarray([packed[c][1].size for c in range(len(SPLITS))], dtype=np.int64)


def _params_array(params: xr.Dataset | None, names: list[str] | None, what: str):
    """(3, nvar, y, x) DataArray of (amplitude, phase, offset), or None."""
    if params is None:
        return None
    missing = [p for p in _PARAMS if p not in params]
    if missing:
        raise PairsError(f"{what} seasonal parameters lack {missing}; expected the output of "
                         f"casm_cloud.seasonal.fit_seasonal_cycle")
    arr = xr.concat([params[p] for p in _PARAMS], dim="param")
    if names is None:  # the target: no variable dim
        if "variable" in arr.dims:
            raise PairsError(f"{what} seasonal parameters have a 'variable' dim; select the "
                             f"target's variable first")
        arr = arr.expand_dims("variable", axis=1)
    else:
        if "variable" not in arr.dims:
            raise PairsError(f"{what} seasonal parameters need a 'variable' dim naming {names}")
        have = [str(v) for v in arr["variable"].values]
        lack = [n for n in names if n not in have]
        if lack:
            raise PairsError(f"{what} seasonal parameters have no {lack} (they have {have})")
        arr = arr.sel(variable=names)
    return arr.transpose("param", "variable", "y", "x")


def build_pairs(inputs: xr.Dataset, target: xr.DataArray,
                input_params: xr.Dataset | None = None, target_params: xr.Dataset | None = None,
                *, include_latlon: bool = True,
                split: Literal["spatial_blocks", "random"] = "spatial_blocks",
                block_size: int = 8, val_fraction: float = 0.2, test_fraction: float = 0.2,
                seed: int = 0) -> xr.Dataset:
    """Lazy sample table of every (time, y, x) where all inputs and the target are valid.

    Parameters
    ----------
    inputs : xarray.Dataset
        Input variables (time, y, x), e.g. ``tb_h``, ``tb_v``; dask-backed
        (chunked by the source's chunks; unchunked data are one chunk).
    target : xarray.DataArray
        Target (time, y, x), e.g. SMAP ``sm``, on the same coordinates.
    input_params, target_params : xarray.Dataset, optional
        Seasonal parameters (``amplitude``, ``phase``, ``offset``) from
        :func:`casm_cloud.seasonal.fit_seasonal_cycle`; ``input_params`` with a
        ``variable`` dim naming the inputs.  Features and target are then
        residuals (value minus cycle).  ``None``: the data are residuals already.
    include_latlon : bool
        Add ``lat`` and ``lon`` as the last two features (CASM does).
    split : {"spatial_blocks", "random"}
        How samples are dealt to train / val / test.
    block_size : int
        Block edge in pixels for ``spatial_blocks``.
    val_fraction : float
        Fraction of the non-test part used for validation.
    test_fraction : float
        Fraction held out for testing.
    seed : int
        Seeds the split and the order of samples.

    Returns
    -------
    xarray.Dataset
        Dims ``sample``, ``feature``: ``features`` (sample, feature) float32,
        ``target`` (sample) float32, ``split`` (sample) int8 codes of
        :data:`SPLITS`, ``time``, ``row``, ``col``, ``y``, ``x`` of each sample;
        attributes ``features``, ``target``, ``split_offsets``.  Lazy except
        for the per-chunk counts (see the module docstring).

    Raises
    ------
    PairsError
        If inputs and target are not on the same coordinates, a variable is
        not (time, y, x), parameters are missing, or no sample is valid.
    """
    ds, names, tname, in_p, tg_p = _aligned(inputs, target, input_params, target_params,
                                            split, val_fraction, test_fraction)
    labels = split_map(ds["y"].shape + ds["x"].shape, block_size=block_size,
                       val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    packed = _packed_chunks(ds, names, in_p, tg_p, labels, split, val_fraction, test_fraction,
                            seed)
    # The one compute of this stage: how many samples each chunk gives to each split.
    counts = np.stack(dask.compute(*[dask.delayed(_count)(p) for p in packed]))
    if counts.sum() == 0:
        raise PairsError(f"no valid samples: no (time, y, x) has all of {names} and {tname!r}")
    feat_names = [*names, *(["lat", "lon"] if include_latlon else [])]
    out, offsets = _sample_table(ds, packed, counts, len(names), feat_names, seed)
    out.attrs = {FEATURES_ATTR: feat_names, TARGET_ATTR: tname,
                 OFFSETS_ATTR: json.dumps(offsets), "split_mode": split,
                 "block_size": int(block_size), "val_fraction": float(val_fraction),
                 "test_fraction": float(test_fraction), "seed": int(seed),
                 "residuals": "features and target are residuals (value - seasonal cycle)"
                 if input_params is not None else "features and target as given",
                 "casm_kind": "pairs"}
    return out


def _aligned(inputs, target, input_params, target_params, split, val_fraction, test_fraction):
    """Inputs and target checked and joined into one (time, y, x) dask dataset (target as
    ``__target__``), with the input names, the target's name and the parameter arrays."""
    if split not in ("spatial_blocks", "random"):
        raise PairsError(f"split={split!r}: expected 'spatial_blocks' or 'random'")
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1):
        raise PairsError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: "
                         f"expected fractions in [0, 1)")
    names = [str(v) for v in inputs.data_vars]
    if not names:
        raise PairsError("inputs have no data variables")
    tname = str(target.name or "target")
    for n, v in [*((n, inputs[n]) for n in names), (tname, target)]:
        if set(v.dims) != {"time", "y", "x"}:
            raise PairsError(f"variable {n!r} has dims {v.dims}; expected (time, y, x)")
    try:
        inputs, target = xr.align(inputs, target.rename(tname), join="exact")
    except ValueError as err:
        raise PairsError(f"inputs and target {tname!r} are not on the same time/y/x "
                         f"coordinates: {err}") from None
    ds = inputs.assign({"__target__": target}).transpose("time", "y", "x")
    if not all(ds[v].chunks for v in ds.data_vars):
        ds = ds.chunk()
    ds = ds.unify_chunks()
    in_p = _params_array(input_params, names, "input")
    tg_p = _params_array(target_params, None, "target")
    for p, what in ((in_p, "input"), (tg_p, "target")):
        if p is not None and (p.sizes["y"], p.sizes["x"]) != (ds.sizes["y"], ds.sizes["x"]):
            raise PairsError(f"{what} seasonal parameters are {p.sizes['y']}x{p.sizes['x']}; "
                             f"the data are {ds.sizes['y']}x{ds.sizes['x']}")
    return ds, names, tname, in_p, tg_p


def _packed_chunks(ds, names, in_p, tg_p, labels, split, val_fraction, test_fraction, seed):
    """One delayed :func:`_gather_chunk` per (time, y, x) chunk, in C order."""
    time = ds["time"].values.astype("datetime64[ns]")
    lat = np.asarray(ds["lat"].values if "lat" in ds.coords else ds["y"].values, dtype=np.float64)
    lon = np.asarray(ds["lon"].values if "lon" in ds.coords else ds["x"].values, dtype=np.float64)
    shape = (ds.sizes["time"], ds.sizes["y"], ds.sizes["x"])
    blocks = {v: ds[v].data.to_delayed() for v in [*names, "__target__"]}
    tch, ych, xch = ds.chunks["time"], ds.chunks["y"], ds.chunks["x"]
    tst, yst, xst = (np.concatenate([[0], np.cumsum(c)]) for c in (tch, ych, xch))
    packed = []
    gather = dask.delayed(_gather_chunk, pure=True)
    for it, iy, ix in itertools.product(range(len(tch)), range(len(ych)), range(len(xch))):
        ts = slice(tst[it], tst[it + 1])
        ys, xs = slice(yst[iy], yst[iy + 1]), slice(xst[ix], xst[ix + 1])
        sub = [None if p is None else p.isel(y=ys, x=xs).data for p in (in_p, tg_p)]
        packed.append(gather(
            time[ts], lat[ys], lon[xs], int(ys.start), int(xs.start), int(ts.start),
            shape, [blocks[v][it, iy, ix] for v in names],
            blocks["__target__"][it, iy, ix], *sub, labels[ys, xs],
            split, val_fraction, test_fraction, seed, len(packed)))
    return packed


def _sample_table(ds, packed, counts, n_inputs, feat_names, seed):
    """The lazy sample table (without attributes) and each split's [start, stop) offsets:
    splits in :data:`SPLITS` order, chunks within a split in a seeded random order."""
    order = np.random.default_rng(seed).permutation(len(packed))
    nf = len(feat_names)
    cols: dict[str, list] = {k: [] for k in ("features", "target", "time", "row", "col", "split")}
    specs = {"features": ((nf,), np.float32), "target": ((), np.float32),
             "time": ((), "datetime64[ns]"), "row": ((), np.int32), "col": ((), np.int32)}
    offsets, start = {}, 0
    for code, sname in enumerate(SPLITS):
        n_split = int(counts[:, code].sum())
        offsets[sname] = [start, start + n_split]
        start += n_split
        for c in order:
            n = int(counts[c, code])
            if n == 0:
                continue
            part = packed[c][code]
            for j, key in enumerate(specs):
                tail, dtype = specs[key]
                arr = da.from_delayed(part[j], shape=(n, *tail) if key != "features"
                                      else (n, n_inputs + 2), dtype=dtype)
                cols[key].append(arr[:, :nf] if key == "features" else arr)
            cols["split"].append(da.full((n,), code, dtype=np.int8, chunks=n))
    cat = {k: da.concatenate(v) for k, v in cols.items()}
    out = xr.Dataset(
        {
            "features": (("sample", "feature"), cat["features"]),
            "target": ("sample", cat["target"]),
            "split": ("sample", cat["split"],
                      {"flag_values": np.arange(len(SPLITS), dtype=np.int8),
                       "flag_meanings": " ".join(SPLITS)}),
            "time": ("sample", cat["time"]),
            "row": ("sample", cat["row"], {"long_name": "row index in the window"}),
            "col": ("sample", cat["col"], {"long_name": "column index in the window"}),
        },
        coords={"feature": np.asarray(feat_names, dtype=object)},
    )
    out["y"] = ("sample", cat["row"].map_blocks(partial(np.take, ds["y"].values), dtype=np.float64),
                ds["y"].attrs)
    out["x"] = ("sample", cat["col"].map_blocks(partial(np.take, ds["x"].values), dtype=np.float64),
                ds["x"].attrs)
    return out, offsets

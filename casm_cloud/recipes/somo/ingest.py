"""SoMo.ml's input stages: ERA5 forcing, the static features, the ISMN targets."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import xarray as xr

from casm_cloud import storage
from casm_cloud.pieces import graph_tasks, steps_per_piece, write_pieces
from casm_cloud.recipes.somo._common import _K, LAYERS, _catalog, _open, _write_csv
from casm_cloud.recipes.stage import Context

# --------------------------------------------------------------------------- forcing
#: Most days of one piece of the forcing stage (and the time chunk of its stores): fewer
#: where a year's graph would exceed the piece runner's task budget (a large window).
PIECE_DAYS = 365


def forcing_params(r) -> dict:
    s, pr, w = r.sources, r.periods, r.model.window
    first = min(pr.training.start, pr.product.start)
    return dict(catalog=s.catalog, catalog_options=dict(s.storage_options), era5=s.era5,
                window=r.grid.window(), dynamic=list(r.model.dynamic),
                start=min(first - dt.timedelta(days=_K * (w - 1)), pr.climatology.start),
                end=max(pr.training.end, pr.product.end, pr.climatology.end),
                product_start=pr.product.start, lead_days=_K * (w - 1),
                climatology=[pr.climatology.start, pr.climatology.end])


def _era5(p: dict, end) -> xr.Dataset:
    """The ERA5 entry opened for the request: the window, the days from the lead-in to
    ``end`` and the variables the features and the layers need (pushed down to the adapter,
    so an ARCO store is cut before any dask array is built)."""
    from casm_cloud.catalog import open_source
    from casm_cloud.somo.features import DYNAMIC_FEATURES

    names = dict.fromkeys([*p["dynamic"], "tp", "snr"])
    variables = dict.fromkeys(v for n in names for v in DYNAMIC_FEATURES[n][2])
    return open_source(_catalog(p), p["era5"], window=p["window"], period=(p["start"], end),
                       variables=[*variables, "swvl1", "swvl2", "swvl3"])


def _forcing(p: dict, era5: xr.Dataset, start, end, chunk_days: int = PIECE_DAYS
             ) -> tuple[xr.Dataset, xr.Dataset]:
    from casm_cloud.somo.features import dynamic_features
    from casm_cloud.somo.targets import era5_layers

    # the next day's first stamp closes the last day's accumulations (ERA5's convention)
    era5 = era5.sel(time=slice(str(start), str(end + dt.timedelta(days=1)) + "T00:00:00"))
    names = list(dict.fromkeys([*p["dynamic"], "tp", "snr"]))
    days = slice(str(start), str(end))
    feats = dynamic_features(era5, variables=names).sel(time=days)
    layers = era5_layers(era5).sel(time=days)
    ny, nx = p["window"].shape
    ch = {"time": chunk_days, "y": min(ny, 64), "x": min(nx, 64)}
    out = []
    for ds in (feats, layers):
        ds = ds.chunk(ch)
        ds.attrs.update(p["window"].identity())
        for c in ("lat", "lon"):
            if c in era5.coords and c not in ds.coords:
                ds = ds.assign_coords({c: era5[c]})
        out.append(ds)
    return out[0], out[1]


def _days(ds: xr.Dataset) -> tuple[dt.date, dt.date]:
    t = pd.DatetimeIndex(ds["time"].values)
    return t[0].date(), t[-1].date()


def run_forcing(ctx: Context, p: dict) -> None:
    """ERA5 → daily dynamic features and ERA5 layer soil moisture on the window."""
    from casm_cloud.somo.features import FeatureError

    era5 = _era5(p, ctx.end(p["end"]))
    have = _days(era5)
    c0, c1 = p["climatology"]
    if c0 < have[0] or c1 > have[1]:
        raise FeatureError(f"periods.climatology {c0}..{c1} is outside the forcing: ERA5 entry "
                           f"{p['era5']!r} has days {have[0]}..{have[1]}")
    need = p["product_start"] - dt.timedelta(days=p["lead_days"])
    if need < have[0]:
        raise FeatureError(f"periods.product.start {p['product_start']}: the three layers' "
                           f"{p['lead_days']}-day lead-in needs forcing from {need}; ERA5 entry "
                           f"{p['era5']!r} starts {have[0]}")
    times = pd.date_range(max(p["start"], have[0]), ctx.end(p["end"]), freq="D").values
    day0 = pd.Timestamp(times[0]).date()
    days = steps_per_piece(lambda n: graph_tasks(*_forcing(
        p, era5, day0, day0 + dt.timedelta(days=n - 1), n)), PIECE_DAYS)

    def build(s: slice) -> dict:
        first, last = (pd.Timestamp(times[i]).date() for i in (s.start, s.stop - 1))
        feats, layers = _forcing(p, era5, first, last, days)
        if feats.sizes["time"] != s.stop - s.start:
            raise FeatureError(f"ERA5 entry {p['era5']!r}: days {first}..{last} give "
                               f"{feats.sizes['time']} daily values; expected "
                               f"{s.stop - s.start} (missing hours?)")
        return {"features": feats, "layers": layers}

    with ctx.chunk_bar("pieces") as progress:
        res = write_pieces(build, {"features": ctx.out("features.zarr"),
                                   "layers": ctx.out("era5_layers.zarr")}, times,
                           piece_days=days, config_hash=ctx.config_hash,
                           storage_options=ctx.so, client=ctx.client, progress=progress)
    ctx.say(f"{res['pieces']} pieces of {days} days ({res['skipped']} written before), "
            f"largest graph {res['largest_graph']} tasks")


def update_forcing(ctx: Context, p: dict) -> None:
    """Append the new days of the forcing (features and ERA5 layers)."""
    era5 = _era5(p, ctx.end(p["end"]))
    for name in ("features.zarr", "era5_layers.zarr"):
        url = ctx.out(name)
        last = pd.Timestamp(storage.open_zarr(url, ctx.so)["time"].values[-1]).date()
        end = min(ctx.end(p["end"]), _days(era5)[1])
        if end <= last:
            continue
        stored = storage.open_zarr(url, ctx.so)
        days = int(stored[next(iter(stored.data_vars))].chunks[0][0])  # the store's chunk
        feats, layers = _forcing(p, era5, last + dt.timedelta(days=1), end, days)
        new = feats if name == "features.zarr" else layers
        storage.append_time(new, url, ctx.so, config_hash=ctx.config_hash)


# --------------------------------------------------------------------------- statics
def _entries(static) -> list[str]:
    """``sources.static`` as a list of catalog entries."""
    return [static] if isinstance(static, str) else list(static)


def statics_params(r) -> dict:
    s, c = r.sources, r.periods.climatology
    return dict(catalog=s.catalog, catalog_options=dict(s.storage_options),
                static=_entries(s.static), window=r.grid.window(), start=c.start, end=c.end)


def run_statics(ctx: Context, p: dict) -> None:
    """The ten static features on the window (mean precipitation and aridity from ERA5),
    and ERA5's mean and std of each layer over the climatology (the targets' units).

    The static maps are the variables of the entries ``sources.static`` names, each opened
    on the window (the providers' ETOPO1 and GLDAS files, or one canonical store)."""
    from casm_cloud.catalog import open_source
    from casm_cloud.somo.features import reference_maps, static_features

    cat = _catalog(p)
    static = xr.merge([open_source(cat, name, window=p["window"]) for name in p["static"]],
                      compat="override", join="exact", combine_attrs="drop_conflicts")
    feats = _open(ctx, "forcing", "features.zarr")
    out = static_features(static, feats, start=str(p["start"]), end=str(p["end"]))
    out = out.merge(reference_maps(_open(ctx, "forcing", "era5_layers.zarr"),
                                   str(p["start"]), str(p["end"])).reset_coords(drop=True),
                    join="exact")
    out = out.assign_coords({c: feats[c] for c in ("lat", "lon") if c in feats.coords})
    out.attrs.update(p["window"].identity())
    ctx.write(out, ctx.out("statics.zarr"))


# --------------------------------------------------------------------------- targets
def targets_params(r) -> dict:
    return dict(stations=r.sources.stations, window=r.grid.window(),
                min_overlap=r.targets.min_overlap, min_subdaily=r.targets.min_subdaily,
                min_days=r.targets.min_days)


def run_targets(ctx: Context, p: dict) -> None:
    """ISMN → per cell and layer: daily, good-flagged, rescaled to ERA5, stations averaged."""
    import tempfile

    from casm_cloud.somo.targets import station_targets
    from casm_cloud.validation.stations import read_ismn
    from casm_cloud.validation.workflow import _local_stations

    with tempfile.TemporaryDirectory(prefix="casm-somo-ismn-") as meta:
        stations = read_ismn(_local_stations(p["stations"], ctx.so), depth=(0.0, 0.5), meta_path=meta)
    era5_sm = _open(ctx, "forcing", "era5_layers.zarr")
    targets, table = station_targets(stations, p["window"], era5_sm, min_overlap=p["min_overlap"],
                                     min_subdaily=p["min_subdaily"], min_days=p["min_days"])
    _write_csv(ctx.out("sensors.csv"), table, ctx.so)
    ctx.write(targets, ctx.out("targets.zarr"))
    ctx.summary["targets"] = {n: int((targets[f"n_stations_{n}"] > 0).sum()) for n in LAYERS}

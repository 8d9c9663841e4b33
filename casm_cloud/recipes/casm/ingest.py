"""The aggregate and seasonal stages: sources → n-day means (+ seasonal sums) → fits."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import storage
from casm_cloud.recipes.casm.common import _aggregate, _bins, _channels, _kinds, _next_bin
from casm_cloud.recipes.stage import Context

log = logging.getLogger(__name__)

#: Time chunks of an aggregate store in one piece of the aggregate stage.  A power of
#: two: the seasonal fit's binary tree over the chunks of the record then holds each
#: piece as one subtree, so the pieces' merged sums are the record's, bit for bit.
PIECE_CHUNKS = 4


def aggregate_params(r) -> dict:
    s, a = r.sources, r.aggregate
    return dict(catalog=s.catalog, catalog_options=dict(s.storage_options),
                entries={k: getattr(s, k) for k in _kinds(r)},
                channels={k: _channels(r, k) for k in _kinds(r)},
                era5=s.era5 if a.frozen_skt_k is not None else None,
                frozen_skt_k=a.frozen_skt_k, window=r.grid.window(), start=r.period.start,
                end=r.period.end, min_count=a.min_count, chunks=dict(r.predict.chunks),
                **_bins(r))


def _aggregated(p: dict, cat, kind: str, start, end) -> xr.Dataset | None:
    """Lazy n-day means of one source on the window, complete bins only (None: no bin)."""
    from casm_cloud.aggregate import source_means

    return source_means(cat, p["entries"][kind], window=p["window"], start=start, end=end,
                        variables=p["channels"][kind],
                        era5=p["era5"] if kind != "truth" else None,
                        frozen_skt_k=p["frozen_skt_k"], n_days=p["n_days"],
                        anchor=p["anchor"], min_count=p["min_count"], chunks=p["chunks"])


def _catalog(p: dict):
    from casm_cloud.catalog import open_catalog

    return open_catalog(p["catalog"], storage_options=p["catalog_options"])


def _sums_url(ctx: Context, stage: str, kind: str) -> str:
    """Where the aggregate stage keeps a source's seasonal partial sums."""
    return ctx.url(stage, f"{kind}_seasonal_sums.zarr")


def _piece_sums_url(ctx: Context, kind: str, i: int) -> str:
    """Where the aggregate stage keeps the seasonal partial sums of piece ``i``."""
    return ctx.out(f"{kind}_seasonal_sums_pieces", f"{i:05d}.zarr")


def _write_in_pieces(ctx: Context, p: dict, cat, kind: str, whole: xr.Dataset) -> None:
    """Write a source's n-day means piece by piece and, in the same tasks, their seasonal sums.

    A piece is :data:`PIECE_CHUNKS` time chunks of the store (docs/architecture.md,
    "Stages in pieces"); its means are made from the source opened over the piece's
    days only.  The task that holds a chunk of means writes it and adds it to the
    piece's sums (``lazy_sums(write_to=...)``), so the input is read once; each
    piece's sums are stored beside the sums store, and merged in piece order at the
    end (:func:`~casm_cloud.seasonal.merge_sums`) into the sums of the whole record,
    from which the seasonal stage finishes the fit.
    """
    from casm_cloud.pieces import template_like, write_pieces
    from casm_cloud.seasonal import lazy_sums, merge_sums, open_sums, write_sums

    url, times = ctx.out(f"{kind}.zarr"), whole["time"].values
    chunk = int(p["chunks"].get("time") or whole.chunksizes["time"][0])
    last_day = dt.timedelta(days=p["n_days"] - 1)

    def build(s: slice) -> dict:
        bins = times[s]
        first = max(p["start"], pd.Timestamp(bins[0]).date())
        ds = _aggregated(p, cat, kind, first, pd.Timestamp(bins[-1]).date() + last_day)
        if ds is None:  # no data in these days: NaN bins, as in the whole record
            ds = template_like(whole, bins, chunk)
        elif not np.array_equal(ds["time"].values, bins):  # no data in the first bins
            ds = ds.reindex(time=bins).chunk({"time": chunk})
        return {kind: ds}

    def writes(datasets: dict, s: slice):
        return lazy_sums(datasets[kind], write_to=url, storage_options=ctx.so,
                         region={"time": s})

    def keep(i: int, sums: xr.Dataset) -> None:
        write_sums(sums, _piece_sums_url(ctx, kind, i), ctx.so, config_hash=ctx.config_hash)

    with ctx.chunk_bar(f"{kind} pieces") as progress:
        res = write_pieces(build, {kind: url}, times, piece_days=PIECE_CHUNKS * chunk,
                           time_chunk=chunk, config_hash=ctx.config_hash,
                           storage_options=ctx.so, client=ctx.client, progress=progress,
                           writes=writes, on_piece=keep)
    ctx.say(f"{kind}: {res['pieces']} pieces of {PIECE_CHUNKS * chunk} bins "
            f"({res['skipped']} written before), largest graph {res['largest_graph']} tasks")
    urls = [_piece_sums_url(ctx, kind, i) for i in range(res["pieces"])]
    states = [storage.store_state(u, ctx.so) for u in urls]
    if not all(st["complete"] and st["config_hash"] == ctx.config_hash for st in states):
        # not expected (a piece is recorded after its sums): the seasonal stage then fits
        log.warning("aggregate: %s has pieces without stored seasonal sums", kind)
        storage.remove(_sums_url(ctx, ctx.stage, kind), ctx.so)
        return
    write_sums(merge_sums(open_sums(u, ctx.so) for u in urls),  # one piece at a time
               _sums_url(ctx, ctx.stage, kind), ctx.so, config_hash=ctx.config_hash)


def run_aggregate(ctx: Context, p: dict) -> None:
    """open → on the window → frozen-soil screen → anchored n-day means → Zarr (+ seasonal sums)."""
    cat, end = _catalog(p), ctx.end(p["end"])
    # Every source opened (lazily: cheap) before anything is written, so a bad entry
    # (missing files, wrong variables or grid, no data in the period) stops the stage
    # with one error and no output; its bins are the record's time axis.
    outs = {kind: _aggregated(p, cat, kind, p["start"], end) for kind in p["entries"]}
    for kind, out in outs.items():
        if out is None:
            log.warning("aggregate: %s has no complete %d-day bin in %s..%s; skipped", kind,
                        p["n_days"], p["start"], end)
            continue
        _write_in_pieces(ctx, p, cat, kind, out)


def update_aggregate(ctx: Context, p: dict) -> None:
    """Append the new complete bins of every source to its aggregate store."""
    cat, end = _catalog(p), ctx.end(p["end"])
    for kind in p["entries"]:
        url = ctx.out(f"{kind}.zarr")
        if not storage.store_state(url, ctx.so)["exists"]:
            continue
        new = _aggregated(p, cat, kind, _next_bin(ctx, p, url, "aggregate"), end)
        added = 0 if new is None else storage.append_time(new, url, ctx.so,
                                                          config_hash=ctx.config_hash)
        log.info("update: %s gained %d bins", kind, added)


def seasonal_params(r) -> dict:
    return dict(channels={k: _channels(r, k) for k in _kinds(r)}, min_obs=r.seasonal.min_obs)


def run_seasonal(ctx: Context, p: dict) -> None:
    """The seasonal-cycle parameters of every aggregated source.

    Finished from the partial sums the aggregate stage stored while it wrote
    the means (the aggregates are not read again); fitted from the stored
    aggregates (the CLI's ``seasonal``) where those sums do not serve: an
    older run root, a ``min_obs`` above what they keep, or aggregates grown by
    an update since.  Both give the same parameters.
    """
    from casm_cloud.seasonal import open_sums, params_from_sums, sums_usable, write_seasonal
    from casm_cloud.seasonal import seasonal_params as fit

    for kind, channels in p["channels"].items():
        url = ctx.url("aggregate", f"{kind}.zarr")
        if not storage.store_state(url, ctx.so)["complete"]:
            continue
        ds = _aggregate(ctx, kind, channels)
        sums = open_sums(_sums_url(ctx, "aggregate", kind), ctx.so)
        why = sums_usable(sums, ds, channels, min_obs=p["min_obs"])
        if why is None:
            params = params_from_sums(sums, channels, min_obs=p["min_obs"])
        else:
            log.info("seasonal: %s fitted from its aggregates (stored sums: %s)", kind, why)
            params = fit(ds, channels, min_obs=p["min_obs"])
        params.attrs.update({k: v for k, v in ds.attrs.items() if k.startswith("ease2_")})
        write_seasonal(params, ctx.out(f"{kind}.zarr"), storage_options=ctx.so,
                       config_hash=ctx.config_hash)

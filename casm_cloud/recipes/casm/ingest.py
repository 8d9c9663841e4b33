"""The aggregate and seasonal stages: sources → n-day means (+ seasonal sums) → fits."""

from __future__ import annotations

import logging

import xarray as xr

from casm_cloud import storage
from casm_cloud.recipes.casm.common import _aggregate, _bins, _channels, _kinds, _next_bin
from casm_cloud.recipes.stage import Context

log = logging.getLogger(__name__)


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


def _write_with_sums(ctx: Context, out: xr.Dataset, kind: str) -> None:
    """Write the n-day means and, in the same tasks, reduce them to the seasonal sums.

    The task that holds a chunk of means writes it and adds it to the sums
    (``lazy_sums(write_to=...)``), so the input is read once; the seasonal
    stage finishes the fit from the stored sums.
    """
    import dask

    from casm_cloud.seasonal import lazy_sums, write_sums

    url = ctx.out(f"{kind}.zarr")
    out = out.copy()
    for v in out.variables.values():
        v.encoding = {}
    storage.write_template(out, url, ctx.so, config_hash=ctx.config_hash)
    with ctx.tasks_bar():
        (sums,) = dask.compute(lazy_sums(out, write_to=url, storage_options=ctx.so))
    write_sums(sums, _sums_url(ctx, ctx.stage, kind), ctx.so, config_hash=ctx.config_hash)
    storage.mark_complete(url, ctx.so, config_hash=ctx.config_hash)


def run_aggregate(ctx: Context, p: dict) -> None:
    """open → on the window → frozen-soil screen → anchored n-day means → Zarr (+ seasonal sums)."""
    cat, end = _catalog(p), ctx.end(p["end"])
    # Every source opened (lazily: cheap) before anything is written, so a bad entry
    # (missing files, wrong variables or grid, no data in the period) stops the stage
    # with one error and no output.
    outs = {kind: _aggregated(p, cat, kind, p["start"], end) for kind in p["entries"]}
    for kind, out in outs.items():
        if out is None:
            log.warning("aggregate: %s has no complete %d-day bin in %s..%s; skipped", kind,
                        p["n_days"], p["start"], end)
            continue
        _write_with_sums(ctx, out, kind)


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

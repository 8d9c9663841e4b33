"""The CASM recipe (Skulovich & Gentine 2023) as stages on the runner.

Each stage is ``params(recipe) -> dict`` (exactly what it passes to library
code) and ``run(ctx, p)``: open its inputs, call library code, hand the lazy
result to storage.  The stage table (what each reads, writes and which recipe
keys it uses) is in docs/architecture.md, "The CASM recipe".

    aggregate → seasonal → pairs → train → predict_smos → transfer
              → predict_amsre → merge → validate → report → export

Modules, by stage group: :mod:`.ingest` (aggregate, seasonal), :mod:`.networks`
(pairs, train, predict_smos, transfer, predict_amsre), :mod:`.product` (merge,
validate, report, export), and :mod:`.common` (the recipe keys and stores they
share).  The runner looks :data:`STAGES`, :func:`check` and :func:`demo_sources`
up on this package.
"""

from __future__ import annotations

from casm_cloud import storage
from casm_cloud.recipes.casm.common import (  # noqa: F401  (tests and notebooks use these)
    DIRECT_NETS,
    SMAP_FROM,
    _channels,
    _kinds,
)
from casm_cloud.recipes.casm.ingest import (  # noqa: F401
    _aggregated,
    _catalog,
    aggregate_params,
    run_aggregate,
    run_seasonal,
    seasonal_params,
    update_aggregate,
)
from casm_cloud.recipes.casm.networks import (
    pairs_params,
    predict_amsre_params,
    predict_smos_params,
    run_pairs,
    run_predict_amsre,
    run_predict_smos,
    run_train,
    run_transfer,
    train_params,
    transfer_params,
)
from casm_cloud.recipes.casm.product import (
    export_params,
    merge_params,
    report_params,
    run_export,
    run_merge,
    run_report,
    run_validate,
    update_export,
    update_merge,
    validate_params,
)
from casm_cloud.recipes.stage import Stage

__all__ = ["STAGES", "check", "demo_sources"]


STAGES: tuple[Stage, ...] = (
    Stage("aggregate", (), aggregate_params, run_aggregate, update_aggregate),
    Stage("seasonal", ("aggregate",), seasonal_params, run_seasonal),
    Stage("pairs", ("aggregate", "seasonal"), pairs_params, run_pairs),
    Stage("train", ("pairs",), train_params, run_train),
    Stage("predict_smos", ("aggregate", "seasonal", "train"), predict_smos_params,
          run_predict_smos, run_predict_smos),
    Stage("transfer", ("aggregate", "seasonal", "train", "predict_smos"), transfer_params,
          run_transfer),
    Stage("predict_amsre", ("aggregate", "seasonal", "transfer"), predict_amsre_params,
          run_predict_amsre, run_predict_amsre),
    Stage("merge", ("predict_smos", "predict_amsre"), merge_params, run_merge, update_merge),
    Stage("validate", ("merge",), validate_params, run_validate, "rerun"),
    Stage("report", ("aggregate", "merge", "validate"), report_params, run_report, "rerun"),
    Stage("export", ("merge",), export_params, run_export, update_export),
)


# --------------------------------------------------------------------------- before a cluster
def check(r) -> None:
    """Everything cheap to check before a cluster starts: the catalog and its entries,
    the station folder (the run root is checked by the caller)."""
    from casm_cloud.catalog import CatalogError, check_login, list_sources, open_catalog

    s = r.sources
    if not storage.exists(s.catalog, s.storage_options):
        raise CatalogError(f"sources.catalog: no catalog at {s.catalog}")
    cat = open_catalog(s.catalog, storage_options=s.storage_options)
    entries = set(list_sources(cat))
    named = {f"sources.{k}": getattr(s, k) for k in (*_kinds(r), "era5") if getattr(s, k)}
    for key, entry in named.items():
        if entry not in entries:
            raise CatalogError(f"{key}: catalog {s.catalog} has no entry {entry!r}; "
                               f"it has {sorted(entries)}")
        check_login(cat, entry, key)
    if s.stations and not storage.exists(s.stations, s.storage_options):
        raise CatalogError(f"sources.stations: no ISMN folder or zip at {s.stations}")


def demo_sources(recipe, out: str) -> None:
    """Simulate the demo region into ``out/sources`` unless it is there already."""
    import time

    if storage.exists(recipe.sources.catalog):
        return
    from casm_cloud.simulate import write_simulation

    sources = storage.join(out, "sources")
    print(f"[casm-cloud] simulating the demo region into {sources} ...", flush=True)
    t0 = time.perf_counter()
    write_simulation(sources, region=recipe.grid.region, grid=recipe.grid.name,
                     start=str(recipe.period.start), end=str(recipe.period.end), seed=0,
                     amsre_ease1=True)
    print(f"[casm-cloud] simulate       done in {time.perf_counter() - t0:.1f} s", flush=True)

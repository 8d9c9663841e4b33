"""The SoMo.ml recipe (O & Orth 2021, Sci. Data 8, 170) as stages on the runner.

Each stage is ``params(recipe) -> dict`` (exactly what it passes to library
code) and ``run(ctx, p)``.  The stage table is in docs/architecture.md, "The
SoMo.ml recipe".

    forcing → statics → targets → train → predict → validate → importance → report
    → export

* ``forcing``: daily dynamic features and ERA5's layer soil moisture on the window;
* ``statics``: the ten static features (climatology over ``periods.climatology``);
* ``targets``: ISMN stations → daily, good-flagged, ERA5-rescaled layer targets per cell;
* ``train``: per layer (in order; layer k takes the simulated SM of the layers
  above as dynamic inputs), the CV folds and the final seeds as parallel
  tasks on the workers;
* ``predict``: per layer and seed, windowed prediction over the window; the
  product is the seeds' mean (``sm_l1..3``) and standard deviation
  (``structural_uncertainty_l1..3``);
* ``validate``: the CV table, the product at the station cells, the product
  against ERA5's own layers (every cell), and (on the simulator) the scores
  against the truth at cells no fold trained on;
* ``importance``: permutation importance of the inputs over the CV folds' models;
* ``report``: the SoMo.ml page; ``export``: one netCDF per year and layer.

Layer k's predictions start ``(3 − k) · (window − 1)`` days before the
product (and the training period), so that the layers below have complete
windows; the forcing starts ``3 · (window − 1)`` days before them.
"""

from __future__ import annotations

import datetime as dt

from casm_cloud import storage
from casm_cloud.errors import InputError
from casm_cloud.recipes.somo import ingest, products, train
from casm_cloud.recipes.somo._common import _K, LAYERS, _layer_start
from casm_cloud.recipes.somo.ingest import _entries
from casm_cloud.recipes.somo.products import importance_params, validate_params
from casm_cloud.recipes.somo.train import train_params
from casm_cloud.recipes.stage import Stage

__all__ = ["STAGES", "check", "demo_sources", "LAYERS", "train_params", "validate_params",
           "importance_params", "_layer_start"]

i, t, o = ingest, train, products
STAGES: tuple[Stage, ...] = (
    Stage("forcing", (), i.forcing_params, i.run_forcing, i.update_forcing),
    Stage("statics", ("forcing",), i.statics_params, i.run_statics),
    Stage("targets", ("forcing",), i.targets_params, i.run_targets),
    Stage("train", ("forcing", "statics", "targets"), t.train_params, t.run_train),
    Stage("predict", ("forcing", "statics", "train"), o.predict_params, o.run_predict, "rerun"),
    Stage("validate", ("targets", "train", "predict"), o.validate_params, o.run_validate,
          "rerun"),
    Stage("importance", ("targets", "train"), o.importance_params, o.run_importance),
    Stage("report", ("train", "predict", "validate", "importance"), o.report_params,
          o.run_report, "rerun"),
    Stage("export", ("predict",), o.export_params, o.run_export, o.update_export),
)
del i, t, o


# --------------------------------------------------------------------------- before a cluster
def check(r) -> None:
    """The catalog and its entries, the station folder, the feature names."""
    from casm_cloud.catalog import CatalogError, list_sources, open_catalog
    from casm_cloud.somo.features import DYNAMIC_FEATURES, PUBLISHED_STATIC

    s = r.sources
    if not storage.exists(s.catalog, s.storage_options):
        raise CatalogError(f"sources.catalog: no catalog at {s.catalog}")
    entries = set(list_sources(open_catalog(s.catalog, storage_options=s.storage_options)))
    for key, names in (("era5", [s.era5]), ("static", _entries(s.static)), ("truth", [s.truth]),
                       ("validation.references", list(r.validation.references.values()))):
        for entry in names:
            if entry and entry not in entries:
                where = key if "." in key else f"sources.{key}"
                raise CatalogError(f"{where}: catalog {s.catalog} has no entry "
                                   f"{entry!r}; it has {sorted(entries)}")
    if not storage.exists(s.stations, s.storage_options):
        raise CatalogError(f"sources.stations: no ISMN folder or zip at {s.stations}")
    bad = [n for n in r.model.dynamic if n not in DYNAMIC_FEATURES]
    if bad:
        raise InputError(f"model.dynamic: unknown feature(s) {bad}; expected some of "
                         f"{list(DYNAMIC_FEATURES)}")
    bad = [n for n in r.model.static if n not in PUBLISHED_STATIC]
    if bad:
        raise InputError(f"model.static: unknown feature(s) {bad}; expected some of "
                         f"{list(PUBLISHED_STATIC)}")


#: How the demo's simulated stations are laid out (several depths, shared cells).
DEMO_STATIONS = {"n_stations": 40, "shared_cells": 4}


def demo_sources(recipe, out: str) -> None:
    """Simulate the demo window on the recipe's grid into ``out/sources`` unless it is there."""
    import time

    if storage.exists(recipe.sources.catalog):
        return
    from casm_cloud.simulate import write_simulation
    from casm_cloud.simulate.stations import SOMO_DEPTHS

    g, pr, w = recipe.grid, recipe.periods, recipe.model.window
    first = min(pr.training.start, pr.product.start, pr.climatology.start) - \
        dt.timedelta(days=_K * (w - 1))
    last = max(pr.training.end, pr.product.end, pr.climatology.end)
    sources = storage.join(out, "sources")
    print(f"[casm-cloud] simulating the SoMo.ml demo window into {sources} ...", flush=True)
    t0 = time.perf_counter()
    window = {"lat": g.lat, "lon": g.lon} if g.lat is not None else {}
    write_simulation(sources, region=g.region or "demo", grid=g.name, start=str(first),
                     end=str(last), seed=0, sources=["truth", "era5", "static"],
                     station_depths=SOMO_DEPTHS, **DEMO_STATIONS, **window)
    print(f"[casm-cloud] simulate       done in {time.perf_counter() - t0:.1f} s", flush=True)

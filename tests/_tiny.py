"""The tiny recipes every whole-run test uses, defined once.

CASM: 6x6 EASE2 M25 cells over 2011-2015 (the AMSR-E, SMOS and SMAP eras and their
overlaps), tiny networks.  SoMo.ml: the tiny ERA5 0.25° window, 20-day windows, 8 hidden
units.  ``tests/conftest.py`` runs each once per session (``casm_reference``,
``somo_reference``); a test that changes a run works on a copy (:func:`copy_run`).
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import xarray as xr

from casm_cloud.config import recipe_from_dict

# ---- CASM --------------------------------------------------------------------------------
CASM_START, CASM_END, CASM_UNTIL = "2011-01-01", "2015-12-31", "2016-02-29"
CASM_PRODUCT_VARS = ["sm", "sm_residual", "seasonal_cycle", "structural_uncertainty",
                     "data_uncertainty", "source"]


def write_casm_sources(out) -> Path:
    """The simulated tiny region, one quarter past the recipe's period (for ``update``)."""
    from casm_cloud.simulate import write_simulation

    write_simulation(str(out), region="tiny", start=CASM_START, end="2016-03-31", seed=0,
                     amsre_ease1=True)
    return Path(out)


def casm_raw(sources: Path, root: Path) -> dict:
    """A CASM recipe sized for seconds: 6x6 cells, AMSR-E/SMOS/SMAP eras, tiny networks."""
    return {
        "name": "tiny", "run_root": str(Path(root) / "run"),
        "sources": {"catalog": str(sources / "catalog.yaml"), "truth": "truth",
                    "era5": "era5", "stations": str(sources / "stations")},
        "grid": {"name": "M25", "region": "tiny"},
        "period": {"start": CASM_START, "end": CASM_END},
        "periods": {"transfer": {"start": CASM_START, "end": "2011-10-03"}},
        "network": {"hidden": [32, 32, 32, 32]},
        "training": {"epochs": 4, "fine_tune_epochs": 2, "batch_size": 256, "lr": 0.003,
                     "patience": 2, "block_size": 2},
        "ensemble": {"members": 2, "n_noise": 3},
        "predict": {"chunks": {"time": 64, "y": 8, "x": 8}},
        "validation": {"min_obs": 20},
        "cluster": {"n_workers": 2, "threads_per_worker": 1},
    }


# ---- SoMo.ml -----------------------------------------------------------------------------
SOMO_END, SOMO_UNTIL = "2012-10-31", "2012-12-31"
SOMO_LAYERS = ("sm_l1", "sm_l2", "sm_l3")
SOMO_VARS = (*SOMO_LAYERS, *(f"structural_uncertainty_{n[-2:]}" for n in SOMO_LAYERS))


def write_somo_sources(out) -> Path:
    from casm_cloud.simulate import write_simulation
    from casm_cloud.simulate.stations import SOMO_DEPTHS

    write_simulation(str(out), region="tiny", grid="ERA5_0p25", start="2010-06-01",
                     end=SOMO_UNTIL, seed=0, sources=["truth", "era5", "static"],
                     n_stations=16, station_depths=SOMO_DEPTHS, shared_cells=2)
    return Path(out)


def somo_raw(sources: Path, root: Path, **sections) -> dict:
    raw = {
        "kind": "somo", "name": "tiny", "run_root": str(Path(root) / "run"),
        "sources": {"catalog": str(sources / "catalog.yaml"),
                    "stations": str(sources / "stations"), "truth": "truth"},
        "grid": {"name": "ERA5_0p25", "region": "tiny"},
        "periods": {"product": {"start": "2012-07-01", "end": SOMO_END},
                    "training": {"start": "2011-01-01", "end": SOMO_END},
                    "climatology": {"start": "2011-01-01", "end": SOMO_END}},
        "model": {"hidden": 8, "window": 20},
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.02, "samples_per_epoch": 256},
        "cv": {"folds": 3, "block_size": 2},
        "ensemble": {"members": 2},
        "predict": {"chunks": {"time": 64, "y": 8, "x": 8}, "device": "cpu"},
        "validation": {"min_obs": 20},
        "cluster": {"n_workers": 2, "threads_per_worker": 1},
    }
    raw.update(sections)
    return raw


# ---- both --------------------------------------------------------------------------------
@contextmanager
def local_client(n_workers: int = 2):
    """A LocalCluster of ``n_workers`` processes of one thread, as the recipes ask for."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def product(recipe) -> xr.Dataset:
    """A run's product, loaded with plain xarray (no casm_cloud reader)."""
    return xr.open_zarr(recipe.output("product"), consolidated=False).load()


def copy_run(recipe, root: Path, **changes):
    """A run's outputs copied under ``root``, its recipe changed by ``{"section.key": v}``."""
    shutil.copytree(Path(recipe.run_root), Path(root) / "run")
    raw = recipe.model_dump(mode="json")
    raw.update(run_root=str(Path(root) / "run"), outputs={})
    for key, value in changes.items():
        section, name = key.split(".")
        raw[section] = {**raw[section], name: value}
    return recipe_from_dict(raw)

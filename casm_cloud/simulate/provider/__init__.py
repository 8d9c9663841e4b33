"""The simulated world in the providers' own layouts: the files a user downloads.

``write_simulation(out, layout="provider")`` writes the canonical stores of
the simulation first (one streamed computation, as the canonical layout),
then turns each sensor's store into its provider's files, reading the store
in blocks of days:

======  ==================================================  ==================================
source  layout (module)                                     catalog entry (adapter)
======  ==================================================  ==================================
smap    SPL3SMP / SPL3SMP_E HDF5, M36 / M09 (:mod:`.smap`)  ``smap``, ``smap_e`` (``smap_l3``)
smos    CATDS L3TB daily netCDF, M25 (:mod:`.smos`)         ``smos`` (``smos_l3tb``)
amsre   NSIDC-0301 daily flat binaries, EASE-Grid v1        ``amsre`` (``amsre_nsidc0301``)
amsr2   CETB NSIDC-0630 daily netCDF, M25 (:mod:`.amsr`)    ``amsr2`` (``amsr2_cetb``)
era5    ARCO Zarr v3 and CDS netCDF, hourly 0.25°           ``era5`` (``era5_arco``),
        (:mod:`.era5`)                                      ``era5_cds`` (``era5_cds``)
static  ETOPO1 GMT4 netCDF (1-arc-minute) and the GLDAS     ``etopo1`` (``etopo1``),
        static netCDF files, 0.25° (:mod:`.statics`)        ``gldas_static`` (``gldas_static``)
======  ==================================================  ==================================

The truth has no provider product and stays a canonical Zarr store, as do the
static maps beside their provider files (the canonical ``static`` entry has
every static variable; the provider files have what ETOPO1 and GLDAS give); the stations are an ISMN download folder in both layouts.  The
entries use the adapters and options of ``catalogs/*.yaml``; only the paths
differ (and the ERA5 entries store the simulation's window, which an open
without one returns).  docs/real_data.md maps each layout onto the real
product.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import xarray as xr

from casm_cloud import storage
from casm_cloud.simulate.provider.amsr import write_amsr2, write_amsre
from casm_cloud.simulate.provider.era5 import FORMATS as ERA5_FORMATS
from casm_cloud.simulate.provider.era5 import write_era5
from casm_cloud.simulate.provider.smap import write_smap
from casm_cloud.simulate.provider.smos import write_smos
from casm_cloud.simulate.provider.statics import write_statics

__all__ = ["WRITERS", "ERA5_FORMATS", "write_provider_files"]

#: canonical kind -> writer(ds, out, storage_options, **options) -> catalog entries
WRITERS: dict[str, Callable[..., dict]] = {
    "smap": write_smap,
    "smos": write_smos,
    "amsre": write_amsre,
    "amsr2": write_amsr2,
    "era5": write_era5,
}


def write_provider_files(stores: Mapping[str, str], out: str,
                         storage_options: Mapping | None = None, *, static: xr.Dataset,
                         seed: int = 0, era5_formats: Sequence[str] = ERA5_FORMATS,
                         window_options: Mapping | None = None) -> dict[str, tuple]:
    """Write the provider files of every finished canonical store in ``stores``, and the
    static maps' ETOPO1 and GLDAS files.

    Parameters
    ----------
    stores : mapping of str to str
        Canonical kind -> URL of its complete store (kinds without a writer
        are skipped).
    out : str
        Output folder or URL (the files go into per-product folders under it).
    static : xarray.Dataset
        The simulation's static maps (their provider files; ERA5's surface
        pressure needs the elevation).
    seed : int
        Seeds the providers' flags (quality, RFI, sample counts).
    era5_formats : sequence of str
        ERA5 layouts to write (:data:`ERA5_FORMATS`).
    window_options : mapping
        The simulation's window as adapter options (stored in the ERA5 entries).

    Returns
    -------
    dict
        Entry name -> ``(adapter, relative URL, options, description)``.
    """
    so = dict(storage_options or {})
    entries: dict[str, tuple] = write_statics(static, out, so)
    for kind, url in stores.items():
        if kind not in WRITERS:
            continue
        ds = storage.open_zarr(url, so, require_complete=True)
        if kind == "era5":
            entries.update(write_era5(ds, out, so, static=static, formats=era5_formats,
                                      window_options=window_options))
        else:
            entries.update(WRITERS[kind](ds, out, so, seed=seed))
    return entries

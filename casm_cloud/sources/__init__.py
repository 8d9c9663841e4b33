"""Source adapters: one per provider format, each a plain function.

Every adapter has the signature::

    fn(urlpath, *, storage_options=None, **options) -> xarray.Dataset

and returns the canonical, lazy (dask-backed) dataset of docs/science.md, "Data model",
validated with :func:`casm_cloud.schema.validate`.  Credentials come only
from ``storage_options`` or the environment, never from a catalog.

The registry maps a name to ``"module:function"`` so that importing this
package imports no reader (h5py, cfgrib, gcsfs stay unloaded until used).
Catalog entries (``casm_cloud.catalog``) name adapters from this registry;
the pipeline can call them directly without intake.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import xarray as xr

__all__ = ["ADAPTERS", "get_adapter", "open_source_url"]

#: adapter name -> "module:function" (imported on first use)
ADAPTERS: dict[str, str] = {
    "canonical_zarr": "casm_cloud.sources.canonical:open_canonical_zarr",
    "smap_l3": "casm_cloud.sources.smap:open_smap_l3",
    "smos_l3tb": "casm_cloud.sources.smos:open_smos_l3tb",
    "amsre_nsidc0301": "casm_cloud.sources.amsr:open_amsre_nsidc0301",
    "amsr2_cetb": "casm_cloud.sources.amsr:open_amsr2_cetb",
    "era5_arco": "casm_cloud.sources.era5.arco:open_era5_arco",
    "era5_cds": "casm_cloud.sources.era5.cds:open_era5_cds",
    "tuw_ts": "casm_cloud.sources.tuw_ts:open_tuw_ts",
    "etopo1": "casm_cloud.sources.statics:open_etopo1",
    "gldas_static": "casm_cloud.sources.statics:open_gldas_static",
}


def get_adapter(name: str) -> Callable[..., xr.Dataset]:
    """The adapter function registered under ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`ADAPTERS`.

    Returns
    -------
    callable
        ``fn(urlpath, *, storage_options=None, **options) -> xarray.Dataset``.

    Raises
    ------
    KeyError
        If no adapter of that name is registered (the message lists them).
    """
    try:
        target = ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown source adapter {name!r}; expected one of {sorted(ADAPTERS)}") from None
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def open_source_url(adapter: str, urlpath, *, storage_options=None, **options) -> xr.Dataset:
    """Open ``urlpath`` with the adapter named ``adapter`` (no catalog needed)."""
    return get_adapter(adapter)(urlpath, storage_options=storage_options, **options)

"""ERA5: the public ARCO Zarr on Google Cloud, and CDS netCDF / GRIB files.

Two adapters (``era5_arco`` and ``era5_cds`` in :data:`casm_cloud.sources.ADAPTERS`),
one per way ERA5 is distributed:
:func:`~casm_cloud.sources.era5.arco.open_era5_arco` (ARCO-layout Zarr stores) and
:func:`~casm_cloud.sources.era5.cds.open_era5_cds` (CDS downloads); both hand
the fields to :mod:`~casm_cloud.sources.era5.fields` (names, units, ``q``, the
window, hourly -> daily).

Both adapters return daily fields on a grid window with the canonical
short names (docs/science.md, "Data model"): ``t2m``, ``skt``, ``q``, ``tp``, ``ssr``,
``ssrd``, ``str``, ``swvl1..3``.  The window is one of an EASE2 grid
(regridded) or of ERA5's own grid ``grid="ERA5_0p25"``
(:class:`casm_cloud.grid.LatLonGrid`; cells are selected, not interpolated).

* Variable mapping: ARCO-ERA5 uses long names (``2m_temperature``,
  ``total_precipitation``, ``volumetric_soil_water_layer_1`` …); CDS files use
  the ECMWF short names.  Near-surface specific humidity ``q`` is not a
  single-level ERA5 field; it is derived from 2 m dewpoint and surface
  pressure with the saturation vapour pressure of the IFS (Tetens, over
  water: ``e = 611.21 exp(17.502 (Td - 273.16) / (Td - 32.19))`` Pa; IFS
  Documentation CY41R2 Part IV, eq. 7.5) and ``q = 0.622 e / (p - 0.378 e)``.
* Hourly -> daily (SoMo.ml): instantaneous variables are the mean of at
  least ``min_count`` (default 6) hourly values of the UTC day; the
  accumulated ones (``tp``, ``ssr``, ``ssrd``, ``str``: hourly accumulations over the
  hour *ending* at the stamp) are moved to the hour they accumulate over
  and summed to a daily total, as ``mean × values per day`` so that a day with
  a few missing hours is not biased low (still at least ``min_count``).
  Data already daily (or coarser) is not aggregated.
* Regridding to the window happens on the hourly fields, chunk by chunk,
  before the daily aggregation, so a global one-hour-per-chunk store is
  reduced to the window at once (``casm_cloud.regrid``).
* Units are checked against the ECMWF units (``K``, ``m``, ``J m**-2``,
  ``m**3 m**-3``, ``Pa``): wrong units are an error.
"""

"""The paper's consistency checks of a CASM run, from the run's own data (no truth).

* the product against SMAP over their overlap: R and residual R
  (:func:`~casm_cloud.report.scores.scores_against_truth` with SMAP's n-day
  means as the reference: the same medians of per-pixel
  :func:`~casm_cloud.validation.metrics.pearson_r` and the same seasonal
  residual);
* the two networks (``nn_amsre`` and ``nn_smos``) over the times both
  predicted (the AMSR-E/SMOS overlap): full and residual R, as the paper's
  Fig. S7;
* the step at each sensor change in the product's mean residual from its own
  seasonal cycle (``sm − seasonal_cycle``;
  :func:`~casm_cloud.validation.consistency.consistency_steps`);
* the structural uncertainty per era: the median cell of each cell's median
  over the era.

See docs/science.md (the report's checks).
"""

from __future__ import annotations

from collections.abc import Mapping

import dask
import numpy as np
import xarray as xr

from casm_cloud.report.scores import ReportError, era_masks, scores_against_truth
from casm_cloud.validation.consistency import consistency_steps

__all__ = ["data_checks"]


def _pair(a: xr.Dataset, b: xr.Dataset, variable: str, b_variable: str, min_obs: int) -> dict:
    """R, residual R, ubRMSE and bias of ``a`` against ``b``; an empty dict without overlap."""
    try:
        s = scores_against_truth(a[[variable]], b, variable=variable, truth_variable=b_variable,
                                 sensor_changes={}, eras={}, min_obs=min_obs)
    except ReportError:
        return {}
    return {k: s[k] for k in ("R", "residual_R", "ubRMSE", "bias", "n_pixels")}


def data_checks(product: xr.Dataset, *, smap: xr.Dataset | None = None,
                networks: Mapping[str, xr.Dataset] | None = None,
                sensor_changes: Mapping[str, str] | None = None,
                eras: Mapping[str, str | None] | None = None, variable: str = "sm",
                smap_variable: str = "sm", window_days: float = 365.0,
                min_obs: int = 40) -> dict:
    """The checks a run's report shows without a truth.

    Parameters
    ----------
    product : xarray.Dataset
        The merged product (``sm``, ``seasonal_cycle``, ``structural_uncertainty``).
    smap : xarray.Dataset, optional
        SMAP's n-day means on the product's grid (the aggregate stage's ``smap.zarr``).
    networks : mapping of name -> Dataset, optional
        Each network's predictions (``predict_amsre/nn_amsre.zarr``,
        ``predict_smos/nn_smos.zarr``); two are compared over their common times.
    sensor_changes : mapping of label -> date, optional
        Where to measure the steps (none: no steps).
    eras : mapping of label -> first day, optional
        The eras of the structural-uncertainty table.
    window_days, min_obs : as in :func:`~casm_cloud.report.scores.scores_against_truth`.

    Returns
    -------
    dict
        ``vs_smap`` (``R``, ``residual_R``, ``ubRMSE``, ``bias``, ``n_pixels``;
        empty without SMAP or overlap), ``networks`` (the same of the first
        network against the second, plus ``names``, ``start``, ``end``),
        ``steps`` (``{label: step of the mean residual}``), ``uncertainty``
        (``{era: median cell of the era's medians}``).
    """
    out: dict = {"vs_smap": {}, "networks": {}, "steps": {}, "uncertainty": {}}
    if smap is not None and smap_variable in smap.data_vars:
        out["vs_smap"] = _pair(product, smap, variable, smap_variable, min_obs)
    nets = dict(networks or {})
    if len(nets) >= 2:
        (na, a), (nb, b) = list(nets.items())[:2]
        common = np.intersect1d(a["time"].values, b["time"].values)
        if common.size:
            scores = _pair(a.sel(time=common), b.sel(time=common), variable, variable, min_obs)
            if scores:
                out["networks"] = {"names": f"{na} vs {nb}",
                                   "start": str(common.min().astype("datetime64[D]")),
                                   "end": str(common.max().astype("datetime64[D]")), **scores}
    if sensor_changes and "seasonal_cycle" in product.data_vars:
        table = consistency_steps(product[variable], product["seasonal_cycle"],
                                  list(sensor_changes.values()), window_days=window_days)
        out["steps"] = {k: float(s) for k, s in zip(sensor_changes, table["step"], strict=True)}
    if "structural_uncertainty" in product.data_vars and eras:
        su = product["structural_uncertainty"]
        masks = era_masks(su["time"].values, eras)
        cells = dask.compute(*[su.isel(time=xr.DataArray(m, dims="time")).median("time")
                               for m, _, _ in masks.values()])
        out["uncertainty"] = {k: float(np.nanmedian(np.asarray(v))) if np.isfinite(v).any()
                              else float("nan") for k, v in zip(masks, cells, strict=True)}
    return out

"""Triple collocation: error estimates of three collocated series, vectorised over stations.

Triple collocation (TC; Gruber et al. 2016, "Recent advances in (soil moisture)
triple collocation analysis", Int. J. Appl. Earth Obs. 45, 200-211) takes three
series of one signal with independent, zero-mean errors (here: a product,
ERA5 and the in-situ station, ``docs/science.md``, "Validate") and estimates
each one's error from their covariances alone, no truth needed.

The definitions are pytesmo's ``pytesmo.metrics.tcol_metrics`` (version
0.18), which ``tests/test_validation_tcol.py`` checks to 1e-10 on real series:
pytesmo takes one station's three 1-D arrays, :func:`triple_collocation`
whole labelled arrays, every dimension but ``dim`` kept (stations, cells),
lazily when the inputs are dask-backed.  Per station only the days where all
three are finite count; fewer than ``min_obs`` give NaN.

With the sample covariances ``C`` (``ddof=1``, as ``numpy.cov``) and ``j, k``
the other two series of ``i``::

    err_var_i = C_ii - C_ij C_ik / C_jk
    snr_i     = -10 log10 | |C_ii C_jk / (C_ij C_ik)| - 1 |      (dB)
    beta_i    = C_rk / C_ik   (k: neither i nor the reference r; beta_r = 1)
    err_std_i = sqrt(err_var_i) * beta_i    (in the reference's units, pytesmo's
                                             "scaled" error; NaN where err_var_i < 0)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from casm_cloud.validation.exceptions import ValidationError

__all__ = ["triple_collocation"]


def _inputs(series: Sequence[xr.DataArray], names: Sequence[str], dim: Hashable
            ) -> list[xr.DataArray]:
    for name, da in zip(names, series, strict=True):
        if not isinstance(da, xr.DataArray):
            raise TypeError(f"{name} must be an xarray.DataArray, got {type(da).__name__}")
        if dim not in da.dims:
            raise ValidationError(f"{name} has no dimension {dim!r} (dims: {da.dims})")
    return list(xr.align(*(da.astype(np.float64) for da in series), join="inner"))


def triple_collocation(x: xr.DataArray, y: xr.DataArray, z: xr.DataArray, *,
                       dim: Hashable = "time", ref: int | str = 0, min_obs: int = 10,
                       names: Sequence[str] = ("x", "y", "z")) -> xr.Dataset:
    """TC error, signal-to-noise ratio and scaling of three collocated series.

    Parameters
    ----------
    x, y, z : xarray.DataArray
        The three series (e.g. product, ERA5, in-situ) with ``dim``; other
        dimensions (``station`` …) broadcast; aligned by an inner join.
    dim : hashable
        The dimension the covariances run over.
    ref : int or str
        The series (index or name) whose units ``err_std`` is given in
        (pytesmo's ``ref_ind``).
    min_obs : int
        Fewest days with all three finite (pytesmo's validation framework: 10).
    names : three str
        Labels of the ``series`` coordinate.

    Returns
    -------
    xarray.Dataset
        ``snr`` (dB), ``err_std`` (error standard deviation scaled to ``ref``),
        ``err_var`` (each series' own error variance, unscaled) and ``beta``
        (``series_scaled = series * beta``) over ``(series, ...)``, and ``n``
        (the days used) over the other dimensions; NaN where ``n < min_obs``.

    Raises
    ------
    TypeError
        An input is not a DataArray.
    ValidationError
        An input lacks ``dim``, ``names`` are not three, or ``ref`` is not one
        of them.
    """
    names = [str(n) for n in names]
    if len(names) != 3 or len(set(names)) != 3:
        raise ValidationError(f"names={names!r}: expected three different labels")
    r = names.index(ref) if isinstance(ref, str) and ref in names else ref
    if not isinstance(r, (int, np.integer)) or not 0 <= r <= 2:
        raise ValidationError(f"ref={ref!r}: expected 0, 1, 2 or one of {names}")
    s = _inputs((x, y, z), names, dim)
    ok = s[0].notnull() & s[1].notnull() & s[2].notnull()
    n = ok.sum(dim)
    d = [v.where(ok) - v.where(ok).mean(dim) for v in s]
    cov = {}
    for i in range(3):
        for j in range(i, 3):
            cov[i, j] = cov[j, i] = (d[i] * d[j]).sum(dim) / (n - 1)
    snr, err_var, beta = [], [], []
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        ratio = abs(cov[i, i] * cov[j, k] / (cov[i, j] * cov[i, k]))
        snr.append(-10 * np.log10(abs(ratio - 1)))
        err_var.append(cov[i, i] - cov[i, j] * cov[i, k] / cov[j, k])
        beta.append(xr.ones_like(n, dtype=np.float64) if i == r
                    else cov[r, 3 - r - i] / cov[i, 3 - r - i])
    series = xr.DataArray(names, dims="series")
    ds = xr.Dataset({"snr": xr.concat(snr, series), "err_var": xr.concat(err_var, series),
                     "beta": xr.concat(beta, series)})
    ds["err_std"] = ds["err_var"].where(ds["err_var"] >= 0) ** 0.5 * ds["beta"]
    ds = ds.where(n >= int(min_obs))
    ds["n"] = n
    ds = ds.assign_coords(series=names)[["snr", "err_std", "err_var", "beta", "n"]]
    ds["snr"].attrs = {"units": "dB", "long_name": "signal-to-noise ratio"}
    ds["err_std"].attrs = {"long_name": f"error standard deviation in the units of {names[r]}"}
    ds["err_var"].attrs = {"long_name": "error variance in the series' own units"}
    ds["beta"].attrs = {"long_name": f"scaling to {names[r]} (scaled = series * beta)"}
    ds["n"].attrs = {"long_name": "days with all three series finite"}
    ds.attrs = {"method": "triple collocation (pytesmo.metrics.tcol_metrics)",
                "reference": names[r]}
    return ds

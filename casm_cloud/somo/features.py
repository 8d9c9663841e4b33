"""SoMo.ml inputs: daily dynamic features from hourly ERA5, and the static features.

Dynamic features (O & Orth 2021, Sci. Data 8, 170, table 1), UTC days, in the
paper's units:

=========  ================  ==========================================  =========
name       units             from ERA5                                   daily
=========  ================  ==========================================  =========
t2m        K                 2 m temperature                             mean
tp         mm day-1          total precipitation                         sum
log_tp     1                 ln(1 + tp / (mm day-1))                     of the sum
snr        MJ m-2 day-1      surface net radiation ``ssr + str``         sum
ssrd       MJ m-2 day-1      surface solar radiation downwards           sum
q          kg kg-1           2 m specific humidity from d2m and sp       mean
skt        K                 skin temperature                            mean
=========  ================  ==========================================  =========

Means need at least ``min_count`` (6) hourly values; sums are
``mean × 24`` over the valid hours (:func:`casm_cloud.sources.era5.fields.daily_from_hourly`,
which also moves each accumulation to the hour it accumulates over).  ``q``
is computed per hour (:func:`casm_cloud.sources.era5.fields.specific_humidity`,
Tetens' formula with the IFS constants) and then averaged.

Static features, in the published order: ``elevation``, ``elevation_std``
(m), ``mean_precip`` (mm yr-1), ``aridity`` (net radiation as mm of
evaporation over precipitation, λ = 2.45 MJ kg-1: Budyko's radiative dryness
index), ``clay``, ``sand``, ``silt``, ``porosity_top``, ``porosity_mid``,
``vegetation_class``.  ``mean_precip`` and ``aridity`` come from the daily
ERA5 features over a climatology period (:func:`climatology`); the rest from a
canonical ``static`` dataset.

Everything here is lazy: xarray arithmetic on dask arrays, one time chunk at
a time, with any spatial dimensions (a grid window or a list of stations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import schema
from casm_cloud.errors import UserError
from casm_cloud.sources._common import norm_units
from casm_cloud.sources.era5.fields import ARCO_NAMES, daily_from_hourly, specific_humidity

__all__ = ["FeatureError", "DYNAMIC_FEATURES", "PUBLISHED_DYNAMIC", "PUBLISHED_STATIC",
           "LATENT_HEAT", "dynamic_features", "climatology", "static_features",
           "reference_names", "reference_maps", "REFERENCE_STD_FLOOR"]

#: Least ERA5 layer standard deviation (m3 m-3) a target is standardised by.
REFERENCE_STD_FLOOR = 1e-3

#: Latent heat of vaporisation (MJ kg-1, FAO-56 at 20 °C): 1 MJ m-2 evaporates 1/λ mm.
LATENT_HEAT = 2.45

#: Daily dynamic features: name -> (units, long name, ERA5 inputs).
DYNAMIC_FEATURES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "t2m": ("K", "2 metre temperature (daily mean)", ("t2m",)),
    "tp": ("mm day-1", "total precipitation (daily sum)", ("tp",)),
    "log_tp": ("1", "ln(1 + daily precipitation in mm)", ("tp",)),
    "snr": ("MJ m-2 day-1", "surface net radiation ssr + str (daily sum)", ("ssr", "str")),
    "ssrd": ("MJ m-2 day-1", "surface solar radiation downwards (daily sum)", ("ssrd",)),
    "q": ("kg kg-1", "2 metre specific humidity (daily mean)", ("q",)),
    "skt": ("K", "skin temperature (daily mean)", ("skt",)),
}
#: The published model's dynamic inputs, in its order.
PUBLISHED_DYNAMIC: tuple[str, ...] = ("log_tp", "t2m", "snr", "ssrd", "q", "skt")
#: The published model's static inputs, in its order.
PUBLISHED_STATIC: tuple[str, ...] = ("elevation", "elevation_std", "mean_precip", "aridity",
                                     "clay", "sand", "silt", "porosity_top", "porosity_mid",
                                     "vegetation_class")
_FROM_CLIMATOLOGY = ("mean_precip", "aridity")
_ERA5_UNITS = {"t2m": "K", "skt": "K", "tp": "m", "ssr": "J m-2", "str": "J m-2",
               "ssrd": "J m-2", "q": "kg kg-1", "d2m": "K", "sp": "Pa"}


class FeatureError(UserError, ValueError):
    """Forcing or static input that cannot make the SoMo.ml features (names the variable)."""


def _check(ds: xr.Dataset, name: str, units: str, where: str) -> xr.DataArray:
    if name not in ds.data_vars:
        raise FeatureError(f"{where}: missing variable {name!r} (have {sorted(map(str, ds.data_vars))})")
    got = ds[name].attrs.get("units")
    if norm_units(got) != units:
        raise FeatureError(f"{where}: variable {name!r} has units {got!r}; expected {units!r}")
    return ds[name]


def _step_seconds(ds: xr.Dataset, where: str) -> int:
    if "time" not in ds.dims or ds.sizes["time"] < 2:
        raise FeatureError(f"{where}: need a 'time' dimension with at least two steps")
    steps = np.diff(ds["time"].values).astype("timedelta64[s]").astype(np.int64)
    return int(np.median(steps))


def dynamic_features(era5: xr.Dataset, *, variables: Sequence[str] | None = None,
                     min_count: int = 6) -> xr.Dataset:
    """UTC-daily SoMo.ml dynamic features from hourly (or daily) ERA5, lazily.

    Parameters
    ----------
    era5 : xarray.Dataset
        ERA5 with a ``time`` dimension and any spatial dimensions, short names
        (or ARCO long names) in ECMWF units: ``t2m``, ``skt`` (K), ``tp`` (m),
        ``ssr``, ``str``, ``ssrd`` (J m-2), and ``q`` (kg kg-1) or ``d2m`` (K)
        with ``sp`` (Pa).  Hourly data are aggregated; daily data (canonical
        ``era5`` datasets) are converted only.
    variables : sequence of str, optional
        Features to make (default :data:`PUBLISHED_DYNAMIC` plus ``tp``).
    min_count : int
        Least valid hourly values of a day.

    Returns
    -------
    xarray.Dataset
        float32 features in :data:`DYNAMIC_FEATURES` units, daily ``time``.

    Raises
    ------
    FeatureError
        A missing ERA5 variable, wrong units, an unknown feature or a time
        step longer than a day.
    """
    where = "ERA5 forcing"
    names = list(variables) if variables is not None else [*PUBLISHED_DYNAMIC, "tp"]
    unknown = [n for n in names if n not in DYNAMIC_FEATURES]
    if unknown:
        raise FeatureError(f"unknown dynamic feature(s) {unknown}; expected some of "
                           f"{list(DYNAMIC_FEATURES)}")
    ds = era5.rename({k: v for k, v in ARCO_NAMES.items() if k in era5.data_vars})
    need = sorted({v for n in names for v in DYNAMIC_FEATURES[n][2]})
    src = {}
    for v in need:
        if v == "q" and "q" not in ds.data_vars and {"d2m", "sp"} <= set(ds.data_vars):
            src["q"] = specific_humidity(_check(ds, "d2m", "K", where), _check(ds, "sp", "Pa", where))
            continue
        if v == "q" and "q" not in ds.data_vars:
            raise FeatureError(f"{where}: missing variable 'q' (or 'd2m' and 'sp' to derive it; "
                               f"have {sorted(map(str, ds.data_vars))})")
        src[v] = _check(ds, v, _ERA5_UNITS[v], where)
    step = _step_seconds(ds, where)
    if step > 86400:
        raise FeatureError(f"{where}: time step of {step / 86400:g} days; expected hourly or daily")
    daily = daily_from_hourly(xr.Dataset(src), min_count=min_count)
    # accumulations are moved back one step: the first stamp's would open the day before
    first = np.datetime64(ds["time"].values[0], "D")
    return _convert(daily.sel(time=slice(first, None)), names)


def _convert(daily: xr.Dataset, names: Sequence[str]) -> xr.Dataset:
    tp_mm = (daily["tp"] * 1000.0).clip(min=0.0) if "tp" in daily else None
    make = {
        "t2m": lambda: daily["t2m"],
        "skt": lambda: daily["skt"],
        "q": lambda: daily["q"],
        "tp": lambda: tp_mm,
        "log_tp": lambda: np.log1p(tp_mm),
        "snr": lambda: (daily["ssr"] + daily["str"]) / 1e6,
        "ssrd": lambda: daily["ssrd"] / 1e6,
    }
    out = xr.Dataset()
    for n in names:
        units, long_name, _ = DYNAMIC_FEATURES[n]
        out[n] = make[n]().astype(np.float32).assign_attrs(units=units, long_name=long_name)
    drop = [c for c in out.coords if c not in out.dims and "time" in out[c].dims]
    return out.drop_vars(drop)


def _daily_tp(features: xr.Dataset) -> xr.DataArray:
    if "tp" in features.data_vars:
        return _check(features, "tp", "mm day-1", "features")
    return np.expm1(_check(features, "log_tp", "1", "features"))


def _period(ds: xr.Dataset, start, end, what: str) -> xr.Dataset:
    """``ds`` over the inclusive days ``start``..``end`` (None: open), not empty."""
    lo = None if start is None else pd.Timestamp(start)
    hi = None if end is None else pd.Timestamp(end) + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    sub = ds.sel(time=slice(lo, hi))
    if sub.sizes.get("time", 0) == 0:
        raise FeatureError(f"{what}: no days in the climatology period {start}..{end}")
    return sub


def climatology(features: xr.Dataset, start=None, end=None) -> xr.Dataset:
    """Mean annual precipitation and aridity from daily features over a period (lazy).

    ``mean_precip = 365.25 · mean(tp)`` (mm yr-1) and
    ``aridity = max(mean(snr), 0) / λ / mean(tp)`` with λ = 2.45 MJ kg-1
    (Budyko 1974's radiative dryness index: net radiation as the depth of water
    it could evaporate, over precipitation; NaN where it never rains).

    Parameters
    ----------
    features : xarray.Dataset
        Daily features with ``tp`` (or ``log_tp``) and ``snr``.
    start, end : str or datetime-like, optional
        The climatology period (inclusive days; default: all of ``features``).

    Returns
    -------
    xarray.Dataset
        ``mean_precip`` and ``aridity`` over the spatial dimensions, float32.

    Raises
    ------
    FeatureError
        A missing feature, wrong units or an empty period.
    """
    sub = _period(features, start, end, "features")
    p = _daily_tp(sub).mean("time")
    rn = _check(sub, "snr", "MJ m-2 day-1", "features").mean("time").clip(min=0.0)
    out = xr.Dataset({
        "mean_precip": (365.25 * p).astype(np.float32),
        "aridity": (rn / LATENT_HEAT / p.where(p > 0)).astype(np.float32),
    })
    for n in out.data_vars:
        out[n].attrs = schema.spec("static", n).attrs()
    out.attrs["climatology_period"] = f"{sub['time'].values[0]!s:.10}/{sub['time'].values[-1]!s:.10}"
    return out


def static_features(static: xr.Dataset, features: xr.Dataset | None = None, *, start=None,
                    end=None, climate: xr.Dataset | None = None) -> xr.Dataset:
    """The ten SoMo.ml static features in the published order (lazy).

    Parameters
    ----------
    static : xarray.Dataset
        A canonical ``static`` dataset (catalog entry or simulator): the
        features other than ``mean_precip`` and ``aridity``, in schema units.
    features : xarray.Dataset, optional
        Daily dynamic features for :func:`climatology` over ``start``..``end``.
    start, end : optional
        The climatology period.
    climate : xarray.Dataset, optional
        A ready :func:`climatology` result instead of ``features``.

    Returns
    -------
    xarray.Dataset
        Variables :data:`PUBLISHED_STATIC`, float32, on ``static``'s spatial dims.

    Raises
    ------
    FeatureError
        A missing static variable, wrong units, or spatial coordinates of
        ``static`` and ``features`` that differ.
    """
    if climate is None:
        if features is None:
            raise FeatureError("static_features: give daily features (or climate=) for "
                               "mean_precip and aridity")
        climate = climatology(features, start, end)
    parts = []
    for n in PUBLISHED_STATIC:
        src, where = (climate, "climatology") if n in _FROM_CLIMATOLOGY else (static, "static")
        parts.append(_check(src, n, schema.spec("static", n).units, where).astype(np.float32))
    try:
        parts = xr.align(*parts, join="exact")
    except ValueError as err:
        raise FeatureError(f"static and ERA5 features are on different cells: {err}") from None
    out = xr.Dataset({n: p for n, p in zip(PUBLISHED_STATIC, parts, strict=True)})
    out.attrs = {k: v for k, v in static.attrs.items() if k.endswith(("_grid", "_offset"))}
    return out


def feature_units(names: Sequence[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Units of dynamic and static feature names (extra inputs from ``extra`` or SM)."""
    out = {}
    for n in names:
        if extra and n in extra:
            out[n] = extra[n]
        elif n in DYNAMIC_FEATURES:
            out[n] = DYNAMIC_FEATURES[n][0]
        elif n in schema.KINDS["static"][0]:
            out[n] = schema.spec("static", n).units
        elif n.startswith("sm"):
            out[n] = "m3 m-3"
        else:
            raise FeatureError(f"no units known for input {n!r}; pass units={{{n!r}: ...}}")
    return out


def reference_names(layer: str) -> tuple[str, str]:
    """The statics' names of ERA5's mean and standard deviation of ``layer`` (the units a
    layer's network learns its target in: docs/science.md, "The target's units")."""
    return f"era5_mean_{layer}", f"era5_std_{layer}"


def reference_maps(era5_layers: xr.Dataset, start=None, end=None) -> xr.Dataset:
    """ERA5's per-cell mean and standard deviation of each layer over a period (lazy).

    The ISMN targets are rescaled to these moments of their ERA5 cell
    (:mod:`casm_cloud.somo.targets`), so a network that learns
    ``(target − mean) / std`` learns only what the rescaling leaves to it; the
    product is ``mean + std · output`` (std floored at :data:`REFERENCE_STD_FLOOR`).
    """
    sub = _period(era5_layers, start, end, "ERA5 layers")
    out = {}
    for layer in sub.data_vars:
        mean, std = reference_names(str(layer))
        attrs = {"units": "m3 m-3", "period": f"{start}..{end}"}
        out[mean] = sub[layer].mean("time").astype("float32").assign_attrs(
            attrs, long_name=f"ERA5 {layer} mean")
        out[std] = np.maximum(sub[layer].std("time"), REFERENCE_STD_FLOOR).astype(
            "float32").assign_attrs(attrs, long_name=f"ERA5 {layer} standard deviation")
    return xr.Dataset(out)

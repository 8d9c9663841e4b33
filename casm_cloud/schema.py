"""The canonical data model: variables, units, valid ranges; ``validate``.

Every source adapter and the simulator return datasets in this form
(docs/science.md, "Data model"): dimensions ``time, y, x`` (or ``y, x`` for static maps) on a
window of a named grid (EASE2, or ERA5's 0.25° lat/lon for SoMo.ml), float32 variables with CF ``units``/``long_name``/
``standard_name``.  Wrong units are an error, never a silent conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from casm_cloud.errors import UserError

__all__ = [
    "SchemaError",
    "VarSpec",
    "KINDS",
    "AMSR_CHANNELS",
    "validate",
    "apply_attrs",
    "spec",
]


class SchemaError(UserError, ValueError):
    """A dataset that does not follow the canonical data model."""


@dataclass(frozen=True)
class VarSpec:
    units: str
    long_name: str
    valid_range: tuple[float, float]
    standard_name: str | None = None
    dims: tuple[str, ...] = ("time", "y", "x")
    categorical: bool = False  # class codes: regridded by nearest neighbour, never averaged

    def attrs(self) -> dict:
        a = {"units": self.units, "long_name": self.long_name,
             "valid_min": self.valid_range[0], "valid_max": self.valid_range[1]}
        if self.standard_name:
            a["standard_name"] = self.standard_name
        return a


_TB_STD = "brightness_temperature"
_TB_RANGE = (0.0, 350.0)


def _tb(freq: str, pol: str, angle: float) -> VarSpec:
    return VarSpec("K", f"brightness temperature {freq} GHz {pol}-pol at {angle}°",
                   _TB_RANGE, _TB_STD)


#: AMSR-E / AMSR2 channels: name -> (frequency GHz, polarisation).
AMSR_CHANNELS: dict[str, tuple[float, str]] = {
    f"tb_{f}{p}": (ghz, p.upper())
    for f, ghz in (("06", 6.925), ("10", 10.65), ("18", 18.7), ("23", 23.8), ("36", 36.5),
                   ("89", 89.0))
    for p in ("h", "v")
}

_SM = dict(units="m3 m-3", valid_range=(0.0, 1.0),
           standard_name="volume_fraction_of_condensed_water_in_soil")

_ERA5 = {
    "t2m": VarSpec("K", "2 metre temperature", (150.0, 350.0), "air_temperature"),
    "skt": VarSpec("K", "skin temperature", (150.0, 360.0), "surface_temperature"),
    "tp": VarSpec("m", "total precipitation (daily sum)", (0.0, 2.0), "lwe_thickness_of_precipitation_amount"),
    "q": VarSpec("kg kg-1", "specific humidity (near surface)", (0.0, 0.1), "specific_humidity"),
    "ssr": VarSpec("J m-2", "surface net solar radiation (daily sum)", (0.0, 5e7),
                   "surface_net_downward_shortwave_flux_integral_wrt_time"),
    "ssrd": VarSpec("J m-2", "surface solar radiation downwards (daily sum)", (0.0, 5e7),
                    "integral_wrt_time_of_surface_downwelling_shortwave_flux_in_air"),
    # net thermal (longwave) radiation at the surface: negative where the surface loses heat
    "str": VarSpec("J m-2", "surface net thermal radiation (daily sum)", (-3e7, 1e7),
                   "surface_net_downward_longwave_flux_integral_wrt_time"),
    **{f"swvl{i}": VarSpec(long_name=f"volumetric soil water layer {i}", **_SM) for i in (1, 2, 3)},
}

_STATIC_DIMS = ("y", "x")
_STATIC = {
    "clay": VarSpec("1", "clay fraction", (0.0, 1.0), dims=_STATIC_DIMS),
    "sand": VarSpec("1", "sand fraction", (0.0, 1.0), dims=_STATIC_DIMS),
    "silt": VarSpec("1", "silt fraction", (0.0, 1.0), dims=_STATIC_DIMS),
    "porosity": VarSpec("m3 m-3", "soil porosity", (0.0, 1.0), dims=_STATIC_DIMS),
    "porosity_top": VarSpec("m3 m-3", "soil porosity of the topsoil (0-30 cm)", (0.0, 1.0),
                            dims=_STATIC_DIMS),
    "porosity_mid": VarSpec("m3 m-3", "soil porosity of the subsoil (30-100 cm)", (0.0, 1.0),
                            dims=_STATIC_DIMS),
    "elevation": VarSpec("m", "mean elevation", (-500.0, 9000.0), "surface_altitude",
                         dims=_STATIC_DIMS),
    "elevation_std": VarSpec("m", "standard deviation of elevation", (0.0, 3000.0),
                             dims=_STATIC_DIMS),
    "vegetation_class": VarSpec("1", "dominant vegetation class (IGBP)", (0.0, 17.0),
                                dims=_STATIC_DIMS, categorical=True),
    "mean_precip": VarSpec("mm yr-1", "mean annual precipitation", (0.0, 15000.0),
                           dims=_STATIC_DIMS),
    # Budyko's radiative dryness index: net radiation as mm of evaporation / precipitation
    "aridity": VarSpec("1", "aridity index (Rn / (lambda P))", (0.0, 200.0), dims=_STATIC_DIMS),
    "land_mask": VarSpec("1", "land mask (1 land, 0 water)", (0.0, 1.0), "land_binary_mask",
                         dims=_STATIC_DIMS, categorical=True),
}

#: kind -> (required variables, optional variables)
KINDS: dict[str, tuple[dict[str, VarSpec], dict[str, VarSpec]]] = {
    "smos": ({"tb_h": _tb("1.4", "H", 42.5), "tb_v": _tb("1.4", "V", 42.5)}, {}),
    "amsre": ({}, {k: _tb(f"{f:g}", p, 55.0) for k, (f, p) in AMSR_CHANNELS.items()}),
    "amsr2": ({}, {k: _tb(f"{f:g}", p, 55.0) for k, (f, p) in AMSR_CHANNELS.items()}),
    "smap": ({"sm": VarSpec(long_name="SMAP surface soil moisture", **_SM)}, {}),
    "era5": ({}, _ERA5),
    "static": (_STATIC, {}),
    "truth": ({f"sm_l{i}": VarSpec(long_name=f"true soil moisture layer {i} ({d})", **_SM)
               for i, d in ((1, "0-10 cm"), (2, "10-30 cm"), (3, "30-50 cm"))}, {}),
    "product": (
        {"sm": VarSpec(long_name="soil moisture", **_SM)},
        {
            "sm_residual": VarSpec("m3 m-3", "soil moisture anomaly from the seasonal cycle",
                                   (-1.0, 1.0)),
            "seasonal_cycle": VarSpec("m3 m-3", "seasonal cycle of soil moisture", (0.0, 1.0)),
            "structural_uncertainty": VarSpec("m3 m-3", "structural (ensemble) uncertainty",
                                              (0.0, 1.0)),
            "data_uncertainty": VarSpec("m3 m-3", "data (input noise) uncertainty", (0.0, 1.0)),
        },
    ),
}
# Sources with at least one of their optional variables required.
_NEED_ONE = {"amsre", "amsr2", "era5"}


def spec(kind: str, name: str) -> VarSpec:
    """The VarSpec of variable ``name`` in ``kind``."""
    req, opt = _kind(kind)
    try:
        return {**req, **opt}[name]
    except KeyError:
        raise SchemaError(
            f"{kind}: variable {name!r} is not canonical; expected one of "
            f"{sorted({**req, **opt})}"
        ) from None


def _kind(kind: str):
    try:
        return KINDS[kind]
    except KeyError:
        raise SchemaError(f"unknown source kind {kind!r}; expected one of {sorted(KINDS)}") from None


def apply_attrs(ds: xr.Dataset, kind: str) -> xr.Dataset:
    """Set the canonical CF attributes on every known variable of ``ds``."""
    req, opt = _kind(kind)
    specs = {**req, **opt}
    ds = ds.copy()
    for name in ds.data_vars:
        if name in specs:
            ds[name].attrs.update(specs[name].attrs())
    return ds


def validate(ds: xr.Dataset, kind: str, *, grid=None, values: str = "auto") -> xr.Dataset:
    """Check that ``ds`` is a canonical dataset of ``kind``; return it unchanged.

    Parameters
    ----------
    ds : xarray.Dataset
    kind : {"smos", "amsre", "amsr2", "smap", "era5", "static", "truth", "product"}
    grid : EASE2Grid or GridWindow, optional
        If given, ``y``/``x`` must be exactly this grid's cell centres.
        Datasets on a provider grid (:data:`NATIVE_GRIDS`: dims
        ``latitude, longitude`` or ``row, col`` instead of ``y, x``) pass
        without the EASE2 check, unless ``grid`` is given.
    values : {"auto", "all", "none"}
        Range check of the data: ``"all"`` reads everything; ``"auto"`` reads
        in-memory variables fully and only the first chunk of dask-backed
        ones (so validating a lazy, global dataset stays cheap); ``"none"``
        skips it.

    Raises
    ------
    SchemaError
        Naming the variable and what was expected: missing variable, wrong
        units, wrong dimensions or grid, non-monotonic or duplicate times,
        values far outside the physical range.
    """
    req, opt = _kind(kind)
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"{kind}: expected an xarray.Dataset, got {type(ds).__name__}")
    for name in req:
        if name not in ds.data_vars:
            raise SchemaError(f"{kind}: missing variable {name!r} (have {sorted(ds.data_vars)})")
    if kind in _NEED_ONE and not any(n in ds.data_vars for n in opt):
        raise SchemaError(
            f"{kind}: none of the canonical variables {sorted(opt)} is present "
            f"(have {sorted(ds.data_vars)})"
        )
    specs = {**req, **opt}
    native = _native_dims(ds)
    if native is not None and grid is not None:
        raise SchemaError(f"{kind}: on a provider grid {native}; expected the EASE2 window {grid!r}")
    for name, sp in specs.items():
        if name not in ds.data_vars:
            continue
        da = ds[name]
        expected = sp.dims if native is None else tuple(
            {"y": native[0], "x": native[1]}.get(d, d) for d in sp.dims)
        units = da.attrs.get("units")
        if units != sp.units:
            raise SchemaError(
                f"{kind}: variable {name!r} has units {units!r}; expected {sp.units!r}"
            )
        if tuple(da.dims) != expected:
            raise SchemaError(
                f"{kind}: variable {name!r} has dimensions {tuple(da.dims)}; expected {expected}"
            )
    if native is None:
        _check_spatial(ds, kind, grid)
    if "time" in ds.dims:
        _check_time(ds, kind)
    if values != "none":
        for name, sp in specs.items():
            if name in ds.data_vars:
                _check_range(ds[name], kind, name, sp, full=values == "all")
    return ds


#: Provider grids a source may keep before regridding (``casm_cloud.regrid``):
#: ERA5's regular lat/lon and AMSR-E's EASE-Grid v1.  Their dimensions stand
#: in for (y, x) and the EASE2 grid check is skipped; units and ranges still apply.
NATIVE_GRIDS: dict[tuple[str, str], str] = {
    ("latitude", "longitude"): "regular latitude/longitude",
    ("row", "col"): "EASE-Grid v1 global 25 km (EPSG:3410)",
}


def _native_dims(ds: xr.Dataset) -> tuple[str, str] | None:
    if "y" in ds.dims or "x" in ds.dims:
        return None
    for pair in NATIVE_GRIDS:
        if set(pair) <= set(ds.dims):
            return pair
    return None


def _check_spatial(ds: xr.Dataset, kind: str, grid) -> None:
    for dim in ("y", "x"):
        if dim not in ds.coords:
            raise SchemaError(f"{kind}: missing coordinate {dim!r} (grid cell centres)")
    y = np.asarray(ds["y"].values)
    if y.size > 1 and not np.all(np.diff(y) < 0):
        raise SchemaError(f"{kind}: coordinate 'y' must decrease (north to south)")
    x = np.asarray(ds["x"].values)
    if x.size > 1 and not np.all(np.diff(x) > 0):
        raise SchemaError(f"{kind}: coordinate 'x' must increase (west to east)")
    if grid is None and ("ease2_grid" in ds.attrs or "latlon_grid" in ds.attrs):
        from casm_cloud.grid import GridError, GridWindow

        try:
            grid = GridWindow.from_attrs(ds.attrs, (y.size, x.size))
        except GridError as err:
            raise SchemaError(f"{kind}: {err}") from None
    if grid is not None:
        if grid.shape != (y.size, x.size):
            raise SchemaError(
                f"{kind}: grid shape {(y.size, x.size)} does not match {grid!r} {grid.shape}"
            )
        tol = 1e-3 * grid.cell_size
        if not (np.allclose(y, grid.y, atol=tol, rtol=0) and np.allclose(x, grid.x, atol=tol, rtol=0)):
            raise SchemaError(f"{kind}: y/x are not the cell centres of {grid!r}")


def _check_time(ds: xr.Dataset, kind: str) -> None:
    if "time" not in ds.coords:
        raise SchemaError(f"{kind}: dimension 'time' has no coordinate")
    t = ds["time"].values
    if not np.issubdtype(t.dtype, np.datetime64):
        raise SchemaError(f"{kind}: coordinate 'time' has dtype {t.dtype}; expected datetime64")
    if t.size > 1:
        d = np.diff(t.astype("datetime64[ns]").astype(np.int64))
        if np.any(d == 0):
            i = int(np.flatnonzero(d == 0)[0])
            raise SchemaError(f"{kind}: duplicate time {t[i]} in coordinate 'time'")
        if np.any(d < 0):
            i = int(np.flatnonzero(d < 0)[0])
            raise SchemaError(
                f"{kind}: coordinate 'time' is not increasing ({t[i]} then {t[i + 1]})"
            )


def _check_range(da: xr.DataArray, kind: str, name: str, sp: VarSpec, full: bool) -> None:
    data = da.data
    if hasattr(data, "dask") and not full:
        data = data.blocks[(0,) * data.ndim]
    arr = np.asarray(data)
    if arr.size == 0:
        return
    lo, hi = sp.valid_range
    span = hi - lo
    # "far outside": beyond 10 % of the span, so retrieval noise near the
    # edges (e.g. SM slightly below 0) passes but wrong units do not.
    with np.errstate(invalid="ignore"):
        vmin, vmax = np.nanmin(arr) if np.isfinite(arr).any() else np.nan, np.nanmax(arr) if np.isfinite(arr).any() else np.nan
    if np.isfinite(vmin) and (vmin < lo - 0.1 * span or vmax > hi + 0.1 * span):
        raise SchemaError(
            f"{kind}: variable {name!r} has values in [{vmin:.4g}, {vmax:.4g}] {sp.units}; "
            f"expected within [{lo:g}, {hi:g}]"
        )

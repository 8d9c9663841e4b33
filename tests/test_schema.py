import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.grid import EASE2Grid
from casm_cloud.schema import SchemaError, apply_attrs, validate

WIN = EASE2Grid("M36").window(lat=(35, 40), lon=(-101, -95))


def _smos(n_time=5, **over):
    coords = {k: v for k, v in WIN.coords().items()}
    coords["time"] = pd.date_range("2015-01-01", periods=n_time)
    shape = (n_time, *WIN.shape)
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {name: (("time", "y", "x"), rng.uniform(180, 280, shape).astype("float32"))
         for name in ("tb_h", "tb_v")},
        coords=coords, attrs=WIN.identity(),
    )
    ds = apply_attrs(ds, "smos")
    for k, v in over.items():
        ds[k] = v
    return ds


def test_valid_dataset_passes_and_is_returned():
    ds = _smos()
    assert validate(ds, "smos") is ds
    validate(ds.chunk({"time": 2}), "smos", grid=WIN)


def test_missing_variable():
    with pytest.raises(SchemaError, match="missing variable 'tb_v'"):
        validate(_smos().drop_vars("tb_v"), "smos")


def test_amsr_needs_one_channel():
    with pytest.raises(SchemaError, match="none of the canonical variables"):
        validate(_smos(), "amsr2")


def test_wrong_units_are_an_error_not_a_conversion():
    ds = _smos()
    ds["tb_h"].attrs["units"] = "degC"
    with pytest.raises(SchemaError, match="'tb_h' has units 'degC'; expected 'K'"):
        validate(ds, "smos")


def test_wrong_dimensions():
    ds = _smos()
    ds = ds.assign(tb_h=ds["tb_h"].transpose("y", "x", "time"))
    with pytest.raises(SchemaError, match=r"'tb_h' has dimensions \('y', 'x', 'time'\)"):
        validate(ds, "smos")


def test_wrong_grid():
    ds = _smos()
    other = EASE2Grid("M36").window(lat=(36, 41), lon=(-101, -95))
    with pytest.raises(SchemaError, match="cell centres|shape"):
        validate(ds, "smos", grid=other)
    bad = ds.assign_coords(x=ds.x + 1000.0)
    with pytest.raises(SchemaError, match="not the cell centres"):
        validate(bad, "smos")
    flipped = ds.isel(y=slice(None, None, -1))
    with pytest.raises(SchemaError, match="'y' must decrease"):
        validate(flipped, "smos")


def test_time_must_be_increasing_unique_datetime():
    ds = _smos()
    with pytest.raises(SchemaError, match="duplicate time"):
        validate(ds.isel(time=[0, 1, 1, 2]), "smos")
    with pytest.raises(SchemaError, match="not increasing"):
        validate(ds.isel(time=[0, 2, 1]), "smos")
    with pytest.raises(SchemaError, match="expected datetime64"):
        validate(ds.assign_coords(time=np.arange(5)), "smos")


def test_values_far_outside_physical_range():
    ds = _smos()
    ds["tb_h"] = ds["tb_h"] - 273.15  # Celsius labelled as K
    ds["tb_h"].attrs["units"] = "K"
    with pytest.raises(SchemaError, match=r"'tb_h' has values in \[-9"):
        validate(ds, "smos")
    # dask-backed: the first chunk is checked without reading everything
    with pytest.raises(SchemaError, match="'tb_h' has values"):
        validate(ds.chunk({"time": 1}), "smos")
    validate(ds, "smos", values="none")


def test_unknown_kind():
    with pytest.raises(SchemaError, match="unknown source kind 'modis'"):
        validate(_smos(), "modis")


def test_somo_variables_are_canonical():
    """ERA5 net thermal radiation and the SoMo.ml statics (two porosities, mm yr-1, Budyko)."""
    from casm_cloud import schema

    sp = schema.spec("era5", "str")
    assert sp.units == "J m-2" and sp.valid_range[0] < 0 < sp.valid_range[1]
    static = schema.KINDS["static"][0]
    assert {"porosity_top", "porosity_mid", "mean_precip", "aridity"} <= set(static)
    assert static["mean_precip"].units == "mm yr-1"
    assert "Rn" in static["aridity"].long_name

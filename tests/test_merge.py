import numpy as np
import pandas as pd
import pytest
import xarray as xr

from casm_cloud.errors import UserError
from casm_cloud.grid import EASE2Grid
from casm_cloud.merge import SOURCE_CODES, merge_eras, to_casm_layout

WIN = EASE2Grid("M36").window(lat=(35, 38), lon=(-100, -97))
VARS = ("sm", "sm_residual", "seasonal_cycle", "structural_uncertainty", "data_uncertainty")


def _era(start, n, value):
    times = pd.date_range(start, periods=n, freq="3D")
    shape = (n, *WIN.shape)
    ds = xr.Dataset({v: (("time", "y", "x"), np.full(shape, value, "float32"),
                         {"units": "m3 m-3"}) for v in VARS},
                    coords={"time": times, **WIN.coords()}, attrs=WIN.identity())
    return ds.chunk({"time": 2})


def test_overlap_is_the_mean_and_source_says_who():
    a = _era("2010-01-01", 6, 0.2)   # AMSR-E era
    s = _era("2010-01-10", 6, 0.3)   # SMOS era, overlaps 3 bins
    s["sm"][0, 0, 0] = np.nan        # a gap in SMOS inside the overlap
    out = merge_eras({"nn_amsre": a, "nn_smos": s})
    assert out.sizes["time"] == 9
    sm = out.sm.values
    src = out.source.values
    assert np.allclose(sm[:3], 0.2) and (src[:3] == SOURCE_CODES["nn_amsre"]).all()
    assert np.allclose(sm[4:6], 0.25) and (src[4:6] == 3).all()
    assert sm[3, 0, 0] == pytest.approx(0.2) and src[3, 0, 0] == 1   # SMOS gap
    assert np.allclose(sm[6:], 0.3) and (src[6:] == SOURCE_CODES["nn_smos"]).all()
    assert "flag_meanings" in out.source.attrs


def test_merge_is_lazy_and_checks_inputs():
    out = merge_eras({"nn_smos": _era("2015-01-01", 4, 0.1)})
    assert out.sm.chunks is not None
    with pytest.raises(ValueError, match="expected eras"):
        merge_eras({"nn_amsr2": _era("2015-01-01", 4, 0.1)})


def test_casm_layout():
    out = to_casm_layout(merge_eras({"nn_smos": _era("2015-01-01", 4, 0.1)}))
    assert set(out.data_vars) == {"CASM_soil_moisture", "seasonal_cycle",
                                  "structural_uncertainty", "data_uncertainty"}
    assert out.CASM_soil_moisture.dims == ("date", "lat", "lon")
    np.testing.assert_allclose(out.lat.values, WIN.lat)
    np.testing.assert_allclose(out.lon.values, WIN.lon)


def _product_store(url, so=None):
    product = merge_eras({"nn_smos": _era("2015-12-20", 8, 0.25)})  # 2015-12-20 .. 2016-01-10
    product.to_zarr(url, mode="w", consolidated=False, zarr_format=3, storage_options=so)
    return product


@pytest.mark.parametrize("where", ["local", "memory"])
def test_export_casm_writes_one_netcdf_per_year(tmp_path, where):
    import fsspec

    from casm_cloud.merge import export_casm

    if where == "local":
        product_url, out = str(tmp_path / "product.zarr"), str(tmp_path / "export")
    else:
        product_url, out = "memory://exp-test/product.zarr", "memory://exp-test/export"
    product = _product_store(product_url)
    written = export_casm(product_url, out)
    assert written == [f"{out}/CASM_SM_2015.nc", f"{out}/CASM_SM_2016.nc"]
    fs, _ = fsspec.core.url_to_fs(out)
    local = tmp_path / "2016.nc"
    fs.get_file(written[1], str(local))
    with xr.open_dataset(local) as ds:
        assert ds.CASM_soil_moisture.dims == ("date", "lat", "lon")
        assert ds.sizes["date"] == int((product.time.dt.year == 2016).sum())
        np.testing.assert_allclose(ds.CASM_soil_moisture.values, 0.25)
        np.testing.assert_allclose(ds.lat.values, WIN.lat)
    assert export_casm(product_url, str(tmp_path / "only"), years=[2016]) == [
        f"{tmp_path / 'only'}/CASM_SM_2016.nc"]
    if where == "memory":
        fsspec.filesystem("memory").rm("/exp-test", recursive=True)


def test_export_casm_refuses_what_is_not_a_product(tmp_path):
    from casm_cloud.merge import export_casm
    from casm_cloud.storage import StoreError

    out = tmp_path / "export"
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("not a store")
    for url, why in [(str(tmp_path / "missing.zarr"), "nothing is there"),
                     (str(tmp_path / "folder"), r"it is not a Zarr store \(no zarr.json or .zgroup\)")]:
        with pytest.raises(StoreError, match=f"{url} is not a product: {why}; expected a "
                                             "product Zarr store"):
            export_casm(url, str(out))
    other = str(tmp_path / "other.zarr")
    xr.Dataset({"tb_h": (("time", "y", "x"), np.zeros((2, *WIN.shape), "float32"))},
               coords={"time": pd.date_range("2015-01-01", periods=2), **WIN.coords()}
               ).to_zarr(other, zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match=r"other.zarr is not a product: it lacks the variable"
                                         r"\(s\) \['sm', .*\(has \['tb_h'\]\)"):
        export_casm(other, str(out))
    assert not out.exists()  # nothing written
    with pytest.raises(UserError, match="lacks the variable"):
        to_casm_layout(xr.Dataset())


def test_merge_errors_are_user_errors():
    from casm_cloud.merge import MergeError

    with pytest.raises(MergeError, match="expected eras"):
        merge_eras({})
    assert issubclass(MergeError, UserError) and issubclass(MergeError, ValueError)

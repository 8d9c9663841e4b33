import numpy as np
import pytest
import xarray as xr

from casm_cloud.grid import REGIONS, EASE2Grid, GridError, GridWindow


def test_m25_cell_centres_equal_catds_grid(real_data):
    ds = xr.open_dataset(real_data / "smos" / "Grid_Point_Mask_USGS.nc")
    g = EASE2Grid("M25")
    assert g.shape == (ds.sizes["lat"], ds.sizes["lon"]) == (584, 1388)
    # CATDS stores float32 latitudes from south to north.
    np.testing.assert_allclose(g.lat[::-1], ds["lat"].values, atol=1e-5, rtol=0)
    np.testing.assert_allclose(g.lon, ds["lon"].values, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "shape", "cell", "ul_lat"),
    [
        # NSIDC EASE2_M36km.gpd / EASE2_M09km.gpd / EASE2_M25km.gpd
        ("M36", (406, 964), 36032.220840584, 85.0445664),
        ("M09", (1624, 3856), 9008.055210146, 85.0445664),
        ("M25", (584, 1388), 25025.2600081, None),  # centres checked against CATDS
    ],
)
def test_grids_match_nsidc_definitions(name, shape, cell, ul_lat):
    g = EASE2Grid(name)
    assert g.shape == shape
    assert g.cell_size == pytest.approx(cell, rel=1e-12)
    # Upper-left corner x = -ncols/2 * cell, y = nrows/2 * cell.
    assert g.x[0] - cell / 2 == pytest.approx(-shape[1] / 2 * cell, abs=1e-6)
    assert g.y[0] + cell / 2 == pytest.approx(shape[0] / 2 * cell, abs=1e-6)
    assert np.all(np.diff(g.y) < 0) and np.all(np.diff(g.x) > 0)
    assert g.lon[0] == pytest.approx(-180 + 180 / shape[1], abs=1e-7)
    # All three grids share the same outer extent: latitude of the top edge.
    if ul_lat is None:
        return
    from pyproj import Transformer

    _, lat_edge = Transformer.from_crs("EPSG:6933", "EPSG:4326", always_xy=True).transform(
        0.0, shape[0] / 2 * cell)
    assert lat_edge == pytest.approx(ul_lat, abs=1e-4)


def test_nested_grids_share_cell_edges():
    m36, m09 = EASE2Grid("M36"), EASE2Grid("M09")
    np.testing.assert_allclose(m09.x[1::4] + m09.cell_size / 2, m36.x, atol=1e-6)


def test_window_and_to_rowcol_roundtrip():
    g = EASE2Grid("M25")
    w = g.window(lat=(35, 40), lon=(-101, -95))
    assert isinstance(w, GridWindow)
    assert w.lat.min() >= 35 and w.lat.max() <= 40
    assert w.lon.min() >= -101 and w.lon.max() <= -95
    np.testing.assert_array_equal(w.x, g.x[w.col_slice])
    np.testing.assert_array_equal(w.y, g.y[w.row_slice])
    yy, xx = np.meshgrid(w.lat, w.lon, indexing="ij")
    rows, cols = w.to_rowcol(yy, xx)
    np.testing.assert_array_equal(rows, np.arange(w.shape[0])[:, None] + 0 * cols)
    np.testing.assert_array_equal(cols, np.arange(w.shape[1])[None, :] + 0 * rows)
    grows, gcols = g.to_rowcol(yy, xx)
    np.testing.assert_array_equal(grows - w.row_slice.start, rows)
    lat, lon = REGIONS["hawaii"]
    assert g.window_by_name("hawaii") == g.window(lat=lat, lon=lon)


def test_to_rowcol_rejects_points_outside():
    w = EASE2Grid("M25").window_by_name("hawaii")
    with pytest.raises(GridError, match="outside"):
        w.to_rowcol([19.5, 45.0], [-155.5, 10.0])
    with pytest.raises(GridError, match="outside"):
        EASE2Grid("M36").to_rowcol(89.0, 0.0)
    with pytest.raises(GridError, match="finite"):
        EASE2Grid("M36").to_rowcol(np.nan, 0.0)


def test_bad_names_and_windows():
    with pytest.raises(GridError, match="unknown EASE2 grid 'M42'"):
        EASE2Grid("M42")
    with pytest.raises(GridError, match="unknown region 'atlantis'"):
        EASE2Grid("M25").window_by_name("atlantis")
    with pytest.raises(GridError, match="south < north"):
        EASE2Grid("M25").window(lat=(40, 35), lon=(0, 1))


def test_crs_attrs_are_cf_grid_mapping():
    a = EASE2Grid("M36").crs_attrs()
    assert a["grid_mapping_name"] == "lambert_cylindrical_equal_area"
    assert a["standard_parallel"] == 30.0
    assert "6933" in a["crs_wkt"]

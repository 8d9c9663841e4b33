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


# ---- ERA5's regular 0.25° lat/lon grid -------------------------------------------------------
def test_era5_grid_cells_equal_the_real_era5_file(real_data):
    from casm_cloud.grid import LatLonGrid

    ds = xr.open_dataset(real_data / "era5" / "ERA5_AN_20100101_0000.nc")
    g = LatLonGrid("ERA5_0p25")
    assert g.shape == (601, 1440) and g.cell_size == 0.25 and g.kind == "latlon"
    # ECMWF's grid: 90 .. -90 by 0.25, longitudes 0 .. 359.75; ours stops at 60 S, from -180
    np.testing.assert_array_equal(g.lat, ds["latitude"].values[:601])
    np.testing.assert_array_equal(np.mod(g.lon, 360.0), np.roll(ds["longitude"].values, 720))
    assert g.lat[-1] == -60.0 and g.lon[0] == -180.0 and g.lon[-1] == 179.75
    np.testing.assert_array_equal(g.y, g.lat)
    np.testing.assert_array_equal(g.x, g.lon)


def test_era5_grid_has_the_ease2_api():
    from casm_cloud import schema
    from casm_cloud.grid import LatLonGrid

    g = LatLonGrid("ERA5_0p25")
    for name in ("demo", "tiny"):
        w = g.window_by_name(name)
        (s, n), (west, east) = REGIONS[name]
        assert w.lat.min() == s and w.lat.max() == n and w.lon.min() == west and w.lon.max() == east
    w = g.window_by_name("tiny")
    assert w.shape == (7, 7) and repr(w) == "GridWindow('ERA5_0p25', rows=206:213, cols=324:331)"
    assert GridWindow.from_attrs(w.identity(), w.shape) == w
    assert w.identity() == {"latlon_grid": "ERA5_0p25", "latlon_row_offset": 206,
                            "latlon_col_offset": 324}
    assert w.parent == g and g.window(lat=(37, 38.5), lon=(-99, -97.5)) == w
    # nearest cell, with longitudes in either convention
    rows, cols = w.to_rowcol([37.1, 38.4], [-98.88, 360 - 97.6])
    np.testing.assert_array_equal(rows, [6, 0])
    np.testing.assert_array_equal(cols, [0, 6])
    r, c = g.to_rowcol(-60.1, 179.9)          # 179.9 E is nearest to -180 (col 0)
    assert (int(r), int(c)) == (600, 0)
    with pytest.raises(GridError, match="outside"):
        g.to_rowcol(-70.0, 0.0)
    a = w.crs_attrs()
    assert a["epsg_code"] == "EPSG:4326" and a["grid_mapping_name"] == "latitude_longitude"
    c = w.coords()
    assert set(c) == {"y", "x", "lat", "lon"} and c["y"][2]["units"] == "degrees_north"
    # the canonical schema checks windows of it as it does EASE2 windows
    ds = xr.Dataset({"clay": (("y", "x"), np.full(w.shape, 0.2, np.float32), {"units": "1"})},
                    coords=c, attrs=w.identity())
    schema._check_spatial(ds, "static", None)
    with pytest.raises(schema.SchemaError, match="not the cell centres"):
        schema._check_spatial(ds.assign_coords(x=ds.x + 0.1), "static", w)
    with pytest.raises(GridError, match="unknown lat/lon grid"):
        LatLonGrid("ERA5_1p0")

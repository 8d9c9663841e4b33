"""Catalogs: intake-2 entries -> adapters -> canonical lazy datasets."""

import inspect
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from casm_cloud import catalog, schema
from casm_cloud.grid import EASE2Grid
from casm_cloud.sources import ADAPTERS, get_adapter

REPO = Path(__file__).resolve().parents[1]


def _smos(seed=0, n_time=4):
    win = EASE2Grid("M25").window_by_name("tiny")
    rng = np.random.default_rng(seed)
    shape = (n_time, *win.shape)
    ds = xr.Dataset(
        {v: (("time", "y", "x"), rng.uniform(180, 290, shape).astype("float32"))
         for v in ("tb_h", "tb_v")},
        coords={"time": pd.date_range("2015-04-01", periods=n_time), **win.coords()},
        attrs=win.identity(),
    )
    return schema.apply_attrs(ds, "smos").chunk({"time": 2})


@pytest.fixture
def smos_store(tmp_path):
    root = tmp_path / "sim"
    ds = _smos()
    ds.to_zarr(root / "sources" / "smos.zarr", consolidated=False, zarr_format=3)
    return root, ds


def test_roundtrip_relative_and_moved(smos_store, tmp_path):
    root, ds = smos_store
    entry = catalog.make_entry("canonical_zarr", "sources/smos.zarr", kind="smos",
                               description="simulated SMOS")
    path = catalog.write_catalog({"smos": entry}, str(root / "catalog.yaml"))
    text = Path(path).read_text()
    assert "{CATALOG_DIR}/sources/smos.zarr" in text and str(root) not in text
    assert catalog.list_sources(path) == ["smos"]
    assert catalog.describe_sources(path)["smos"]["kind"] == "smos"
    # the folder moves: the relative entry follows it
    moved = tmp_path / "elsewhere"
    shutil.move(str(root), moved)
    out = catalog.open_source(str(moved / "catalog.yaml"), "smos")
    assert out.tb_h.chunks is not None  # lazy
    xr.testing.assert_identical(out.tb_h.load(), ds.tb_h.load())


def test_overrides_and_variables(smos_store):
    root, _ = smos_store
    path = catalog.write_catalog(
        {"smos": catalog.make_entry("canonical_zarr", str(root / "sources" / "smos.zarr"),
                                    kind="smos")},
        str(root / "c.yaml"))
    cat = catalog.open_catalog(path)
    # the store is validated whole, then cut to the variables asked for
    assert list(catalog.open_source(cat, "smos", variables=["tb_h"]).data_vars) == ["tb_h"]
    with pytest.raises(catalog.SourceError, match="entry 'smos'.*not in the store"):
        catalog.open_source(cat, "smos", variables=["tb_x"])


def test_errors_are_clear(tmp_path, smos_store):
    root, _ = smos_store
    with pytest.raises(catalog.CatalogError, match="unknown adapter 'nope'"):
        catalog.make_entry("nope", "x.zarr")
    with pytest.raises(catalog.CatalogError, match=r"does not accept option\(s\) \['colour'\]"):
        catalog.make_entry("canonical_zarr", "x.zarr", kind="smos", colour="red")
    with pytest.raises(catalog.CatalogError, match="credential"):
        catalog.make_entry("canonical_zarr", "gs://b/x.zarr", kind="smos",
                           storage_options={"token": "/home/me/key.json"})
    with pytest.raises(catalog.CatalogError, match=r"client_kwargs\.headers\.Authorization"):
        catalog.make_entry("canonical_zarr", "https://h/x.zarr", kind="smos",
                           storage_options={"client_kwargs": {"headers": {"Authorization": "b"}}})
    assert catalog.make_entry("canonical_zarr", "https://h/x.zarr", kind="smos",
                              storage_options={"client_kwargs": {"trust_env": True}})
    assert catalog.make_entry("canonical_zarr", "https://h/x.zarr", kind="smos",
                              storage_options={"login": "earthdata"})  # a name, not a secret
    with pytest.raises(catalog.CatalogError, match="login"):
        catalog.make_entry("canonical_zarr", "https://h/x.zarr", kind="smos",
                           storage_options={"login": "alice"})
    with pytest.raises(catalog.CatalogError, match="password"):
        catalog.make_entry("canonical_zarr", "https://me:pw@host/x.zarr", kind="smos")
    assert catalog.make_entry("canonical_zarr", "gs://b/x.zarr", kind="smos",
                              storage_options={"token": "anon"})
    with pytest.raises(FileNotFoundError, match="no catalog at"):
        catalog.open_catalog(str(tmp_path / "missing.yaml"))
    path = catalog.write_catalog(
        {"a": catalog.make_entry("canonical_zarr", "sources/smos.zarr", kind="smos")},
        str(root / "c.yaml"))
    with pytest.raises(catalog.CatalogError, match=r"no source 'b'; it has \['a'\]"):
        catalog.open_source(path, "b")
    with pytest.raises(catalog.CatalogError, match="no entries"):
        catalog.write_catalog({}, str(root / "e.yaml"))


def test_registry_points_at_real_functions():
    for name in ADAPTERS:
        fn = get_adapter(name)
        params = inspect.signature(fn).parameters
        assert list(params)[0] == "urlpath", name
        assert params["storage_options"].kind is inspect.Parameter.KEYWORD_ONLY, name
    with pytest.raises(KeyError, match="unknown source adapter"):
        get_adapter("nope")


def _catalog_files():
    return sorted((REPO / "catalogs").glob("*.yaml"))


@pytest.mark.parametrize("path", _catalog_files(), ids=lambda p: p.name)
def test_every_shipped_catalog_entry_is_valid(path):
    """Every entry names a registered adapter with options it accepts, and no secret."""
    raw = yaml.safe_load(path.read_text())
    assert raw.get("version") == 2, f"{path.name}: not an intake-2 native catalog"
    cat = catalog.open_catalog(str(path))
    assert cat.entries, f"{path.name} has no entries"
    for name, ent in cat.entries.items():
        kw = dict(ent.kwargs)
        adapter = kw.pop("adapter")
        urlpath = kw.pop("urlpath")
        so = kw.pop("storage_options", None)
        catalog._check_options(adapter, kw, f"{path.name}:{name}")
        catalog._check_no_secrets(urlpath, so, f"{path.name}:{name}")


# ---------------------------------------------------------------------- local stand-ins
# Every shipped entry opened against small files/stores written here in its provider's
# layout: cloud.yaml's at its own URL patterns (host and bucket mapped to a local folder,
# the {date:...} folders of the period expanded), the other catalogs' through urlpath.

DAYS = pd.date_range("2016-01-01", periods=2)
TINY = EASE2Grid("M25").window_by_name("tiny")


def _box(grid, margin=1.5):
    (s, n), (w, e) = (37.0, 38.5), (-99.0, -97.5)
    return EASE2Grid(grid).window(lat=(s - margin, n + margin), lon=(w - margin, e + margin))


def _smap_file(path, day):
    import h5py

    win = _box("M09" if "_E_" in path.name else "M36")
    lat, lon = np.meshgrid(win.lat, win.lon, indexing="ij")
    rows, cols = np.meshgrid(np.arange(win.row_slice.start, win.row_slice.stop),
                             np.arange(win.col_slice.start, win.col_slice.stop), indexing="ij")
    with h5py.File(path, "w") as f:
        for group, suf in (("Soil_Moisture_Retrieval_Data_AM", ""),
                           ("Soil_Moisture_Retrieval_Data_PM", "_pm")):
            g = f.create_group(group)
            g.create_dataset(f"soil_moisture{suf}", data=np.full(win.shape, 0.2 + 0.01 * day,
                                                                  np.float32)
                             ).attrs.update({"_FillValue": np.array([-9999.0]),
                                             "units": np.bytes_("cm**3/cm**3")})
            g.create_dataset(f"retrieval_qual_flag{suf}", data=np.zeros(win.shape, np.uint16))
            g.create_dataset(f"latitude{suf}", data=lat.astype(np.float32))
            g.create_dataset(f"longitude{suf}", data=lon.astype(np.float32))
            g.create_dataset(f"EASE_row_index{suf}", data=rows.astype(np.uint16))
            g.create_dataset(f"EASE_column_index{suf}", data=cols.astype(np.uint16))


def _smos_file(path, day):
    from casm_cloud.sources.smos import ANGLE_CLASSES

    win = _box("M25")
    shape = (len(ANGLE_CLASSES), win.shape[0], win.shape[1])
    tb = np.full(shape, 250.0 + day, np.float32)
    ds = xr.Dataset({f"BT_{p}": (("inc", "lat", "lon"), tb, {"units": "K"}) for p in "HV"} |
                    {"Nviews": (("inc", "lat", "lon"), np.full(shape, 10, np.int16)),
                     "Nb_RFI_Flags": (("inc", "lat", "lon"), np.zeros(shape, np.int16))},
                    coords={"inc": np.asarray(ANGLE_CLASSES, "f4"),
                            "lat": win.lat[::-1].astype("f4"), "lon": win.lon.astype("f4")})
    ds.to_netcdf(path, engine="h5netcdf")


def _amsre_files(folder, day):
    from casm_cloud.regrid import EASE1_GLOBAL as g

    doy = pd.Timestamp(day).day_of_year
    for ff, pol in (("10", "V"), ("18", "H"), ("36", "H"), ("89", "V")):
        np.full(g["nrows"] * g["ncols"], 2500 + doy, "<u2").tofile(
            folder / f"ID2r3-AMSRE-ML{day:%Y}{doy:03d}D.v03.{ff}{pol}")


def _amsr2_files(folder, day):
    win = _box("M25")
    for chan in ("10.7V", "18.7H", "36.5H", "89.0V"):
        xr.Dataset({"TB": (("time", "y", "x"), np.full((1, *win.shape), 250.0, "f4"),
                           {"units": "K"})},
                   coords={"time": [day], "y": win.y, "x": win.x}).to_netcdf(
            folder / f"NSIDC0630_GRD_EASE2_T25km_GCOMW1_AMSR2_D_{chan}_{day:%Y%m%d}_v1.3.nc",
            engine="h5netcdf")


_FILES = {"smap_l3": ("SMAP_L3_SM_P{e}_{d:%Y%m%d}_R19240_001.h5", _smap_file),
          "smos_l3tb": ("SM_RE07_MIR_CDF3T{o}_{d:%Y%m%d}T000000_{d:%Y%m%d}T235959_700_001_7"
                        ".DBL.nc", _smos_file)}


def _write_files(adapter, folder, day, entry):
    folder.mkdir(parents=True, exist_ok=True)
    if adapter == "amsre_nsidc0301":
        _amsre_files(folder, day)
    elif adapter == "amsr2_cetb":
        _amsr2_files(folder, day)
    else:
        name, fn = _FILES[adapter]
        e = "_E" if "SMP_E" in entry["urlpath"] else ""
        fn(folder / name.format(d=day, e=e, o=entry.get("orbit") or "A"), day.day)


def _era5_store(url, short_names: bool):
    t = pd.date_range(DAYS[0], periods=49, freq="h")
    lat, lon = np.linspace(90, -90, 181), np.arange(360.0)
    names = {"skt": "skin_temperature", "t2m": "2m_temperature"}
    tdim = "valid_time" if short_names else "time"
    ds = xr.Dataset({(k if short_names else v): ((tdim, "latitude", "longitude"),
                                                 np.full((t.size, 181, 360), 270.0, "f4"),
                                                 {"units": "K"}) for k, v in names.items()},
                    coords={tdim: t, "latitude": lat, "longitude": lon})
    # consolidated, as both public ARCO stores are (an open reads one metadata document)
    ds.chunk({tdim: 49 if short_names else 1, "latitude": 32 if short_names else -1,
              "longitude": 32 if short_names else -1}).to_zarr(url, zarr_format=3,
                                                                consolidated=True)


def _local(url: str, root: Path) -> str:
    return str(root / url.split("://", 1)[1]) if "://" in url else url


def _standin(adapter: str, entry: dict, root: Path) -> str:
    """Write a stand-in for ``entry``; return the urlpath that reaches it locally."""
    url = entry["urlpath"]
    if adapter == "era5_arco":
        _era5_store(_local(url, root), short_names="ecmwf" in url)
        return _local(url, root)
    if adapter in ("etopo1", "gldas_static"):  # the simulator's ETOPO1 and GLDAS files
        from casm_cloud.simulate import simulate
        from casm_cloud.simulate.provider.statics import ETOPO1_PATH, write_statics

        static = simulate(TINY, "2016-01-01", "2016-01-01", 0, sources=["truth", "static"])
        write_statics(static["static"], str(root))
        return str(root / (ETOPO1_PATH if adapter == "etopo1" else "gldas/GLDASp4_*_025d.nc4"))
    if adapter == "era5_cds":
        d = root / "cds"
        d.mkdir(parents=True)
        _era5_store(str(d / "tmp.zarr"), short_names=False)
        ds = xr.open_zarr(d / "tmp.zarr", consolidated=True).rename({"2m_temperature": "t2m",
                                                  "skin_temperature": "skt"})
        ds.load().to_netcdf(d / "ERA5_2016.nc", engine="h5netcdf")
        return str(d / "ERA5_*.nc")
    for day in DAYS:
        local = _local(url.replace("{date", "{d") .format(d=day) if "{date" in url else url,
                       root)
        folder = Path(posixpath_dirname(local).replace("*", f"{day:%Y.%m.%d}"))
        _write_files(adapter, folder, day, entry)
    return _local(url, root)


def posixpath_dirname(p: str) -> str:
    return p.rsplit("/", 1)[0]


_VARS = {"smap_l3": ["sm"], "smos_l3tb": ["tb_h", "tb_v"], "amsre_nsidc0301": ["tb_10v"],
         "amsr2_cetb": ["tb_10v"], "era5_arco": ["skt"], "era5_cds": ["skt"],
         "etopo1": ["elevation_std"], "gldas_static": ["vegetation_class"]}


@pytest.mark.parametrize("path", [p for p in _catalog_files() if p.name != "demo.yaml"],
                         ids=lambda p: p.name)
def test_every_shipped_entry_opens_a_local_standin(path, tmp_path):
    """Window, period and variables go to the adapter; the result is on the window."""
    cat = catalog.open_catalog(str(path))
    for name, ent in cat.entries.items():
        kw = dict(ent.kwargs)
        adapter = kw["adapter"]
        root = tmp_path / name
        urlpath = _standin(adapter, kw, root)
        # the entry's own URL pattern (date folders, globs), its host mapped to the stand-in
        ds = catalog.open_source(cat, name, window=TINY, period=("2016-01-01", "2016-01-02"),
                                 variables=_VARS[adapter], urlpath=urlpath)
        assert list(ds.data_vars) == _VARS[adapter], name
        assert ds.sizes["y"] == TINY.shape[0] and ds.sizes["x"] == TINY.shape[1], name
        np.testing.assert_allclose(ds["y"].values, TINY.y)
        assert "time" not in ds[_VARS[adapter][0]].dims or ds.sizes["time"] == 2, name
        assert np.isfinite(ds[_VARS[adapter][0]].values).any(), name

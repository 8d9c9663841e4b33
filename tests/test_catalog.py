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
    with pytest.raises(schema.SchemaError, match="missing variable 'tb_v'"):
        catalog.open_source(cat, "smos", variables=["tb_h"])
    with pytest.raises(schema.SchemaError, match="not in the store"):
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
    with pytest.raises(catalog.CatalogError, match="password"):
        catalog.make_entry("canonical_zarr", "https://me:pw@host/x.zarr", kind="smos")
    assert catalog.make_entry("canonical_zarr", "gs://b/x.zarr", kind="smos",
                              storage_options={"token": "anon"})
    with pytest.raises(FileNotFoundError, match="no catalog at"):
        catalog.open_catalog(str(tmp_path / "missing.yaml"))
    path = catalog.write_catalog(
        {"a": catalog.make_entry("canonical_zarr", "sources/smos.zarr", kind="smos")},
        str(root / "c.yaml"))
    with pytest.raises(KeyError, match=r"no source 'b'; it has \['a'\]"):
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

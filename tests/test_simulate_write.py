"""Writing the simulation: Zarr stores, ISMN stations, catalog, CLI errors."""

from __future__ import annotations

import numpy as np
import pytest

from casm_cloud import storage
from casm_cloud.cli import main
from casm_cloud.grid import EASE2Grid
from casm_cloud.simulate import simulate, simulate_stations, write_ismn, write_simulation

SMALL = {"time": 60, "y": 4, "x": 4}


def _read_ismn(path, meta):
    from ismn.interface import ISMN_Interface

    return ISMN_Interface(str(path), meta_path=str(meta))


def test_stations_read_by_ismn(tmp_path):
    window = EASE2Grid("M25").window_by_name("tiny")
    out = simulate(window, "2016-01-01", "2016-06-30", seed=4, chunks=SMALL,
                   sources=["truth", "static"])
    st = simulate_stations(out["truth"], n_stations=3, seed=4, static=out["static"].compute())
    assert st.sm.dims == ("station", "time") and st.sizes["time"] == 24 * 181 + 1  # hourly, 2016-01-01 00:00 .. 06-30 00:00
    write_ismn(st, str(tmp_path / "stations"))
    ismn = _read_ismn(tmp_path / "stations", tmp_path / "meta")
    assert list(ismn.networks) == ["SIMNET"]
    net = ismn["SIMNET"]
    assert sorted(net.stations) == ["S001", "S002", "S003"]
    truth = out["truth"].sm_l1.compute()
    for k, name in enumerate(sorted(net.stations)):
        station = net[name]
        sensor = next(iter(station.sensors.values()))
        data = sensor.read_data()
        assert len(data) > 3000
        flags = data["soil_moisture_flag"].value_counts()
        assert flags.index[0] == "G" and "D06" in flags.index
        assert station.lat == pytest.approx(float(st.lat[k]), abs=1e-4)
        assert sensor.depth.start == 0.0 and sensor.depth.end == 0.05
        # the point series follows its cell (daily means), apart from spikes
        good = data[data["soil_moisture_flag"] == "G"]["soil_moisture"]
        daily = good.resample("D").mean()
        cell = truth.isel(y=int(st.cell_y[k]), x=int(st.cell_x[k])).to_series()
        both = daily.to_frame("p").join(cell.rename("c"), how="inner").dropna()
        assert np.corrcoef(both.p, both.c)[0, 1] > 0.6
    # static metadata is read too
    meta = net[sorted(net.stations)[0]].sensors
    md = next(iter(meta.values())).metadata.to_dict()
    assert "clay_fraction" in md and "sand_fraction" in md


def test_write_simulation_catalog(tmp_path):
    from casm_cloud.catalog import list_sources, open_catalog, open_source

    out = tmp_path / "sim"
    path = write_simulation(str(out), region="tiny", start="2015-03-01", end="2015-06-30",
                            seed=1, chunks=SMALL, n_stations=2)
    assert path == str(out / "catalog.yaml")
    cat = open_catalog(path)
    assert sorted(list_sources(cat)) == ["amsr2", "era5", "smap", "smos", "static", "truth"]
    for name in list_sources(cat):
        assert storage.store_state(str(out / f"{name}.zarr"))["complete"]
        ds = open_source(cat, name)
        assert ds.attrs["ease2_grid"] == "M25"
    ref = simulate(EASE2Grid("M25").window_by_name("tiny"), "2015-03-01", "2015-06-30", seed=1,
                   chunks=SMALL, sources=["smap"])["smap"]
    np.testing.assert_array_equal(open_source(cat, "smap").sm.values, ref.sm.values)
    assert open_source(cat, "smap").sm.chunks[0][0] == SMALL["time"]
    ismn = _read_ismn(out / "stations", tmp_path / "meta")
    assert len(ismn["SIMNET"].stations) == 2
    # the shipped demo catalog points where `casm-cloud simulate`/`demo` write
    import shutil
    from pathlib import Path

    demo = tmp_path / "repo"
    (demo / "catalogs").mkdir(parents=True)
    shutil.copy(Path(__file__).parents[1] / "catalogs" / "demo.yaml", demo / "catalogs")
    shutil.copytree(out, demo / "casm-demo" / "sources")
    demo_cat = open_catalog(str(demo / "catalogs" / "demo.yaml"))
    assert set(list_sources(demo_cat)) == {"truth", "era5", "static", "smos", "amsre", "amsr2",
                                           "smap"}
    np.testing.assert_array_equal(open_source(demo_cat, "smap").sm.values, ref.sm.values)
    # the folder is relocatable: the catalog names its stores relatively
    moved = tmp_path / "moved"
    out.rename(moved)
    assert open_source(open_catalog(str(moved / "catalog.yaml")), "truth").sizes["time"] == 122


def test_write_simulation_native_grids_to_memory_url():
    url = "memory://casm-sim-test"
    path = write_simulation(url, region="tiny", start="2010-01-01", end="2010-01-31", seed=2,
                            chunks=SMALL, era5_native=True, amsre_ease1=True, n_stations=1)
    assert path == f"{url}/catalog.yaml" and storage.exists(path)
    era5 = storage.open_zarr(f"{url}/era5.zarr", require_complete=True)
    amsre = storage.open_zarr(f"{url}/amsre.zarr", require_complete=True)
    assert era5.t2m.dims == ("time", "latitude", "longitude")
    assert amsre.tb_10v.dims == ("time", "row", "col") and amsre.lat.dims == ("row", "col")
    # the catalog opens them (validated on their provider grids) and regrid
    # brings them back to the window, close to the EASE2 simulation
    from casm_cloud.catalog import open_catalog, open_source
    from casm_cloud.regrid import regrid_to_window

    window = EASE2Grid("M25").window_by_name("tiny")
    ref = simulate(window, "2010-01-01", "2010-01-31", seed=2, chunks=SMALL,
                   sources=["era5", "amsre"])
    cat = open_catalog(path)
    for name, var, tol in (("era5", "t2m", 0.5), ("amsre", "tb_36h", 1.5)):
        back = regrid_to_window(open_source(cat, name), window)
        assert back[var].dims == ("time", "y", "x")
        assert float(abs(back[var] - ref[name][var]).mean()) < tol
    storage.remove(url)


def test_failed_write_leaves_nothing_looking_complete(tmp_path, monkeypatch):
    import dask

    out = tmp_path / "sim"
    write_simulation(str(out), region="tiny", start="2015-04-01", end="2015-04-20",
                     chunks=SMALL, n_stations=1)
    assert (out / "catalog.yaml").exists()

    def boom(*args, **kwargs):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(dask, "compute", boom)
    with pytest.raises(RuntimeError, match="worker lost"):
        write_simulation(str(out), region="tiny", start="2015-04-01", end="2015-04-30",
                         chunks=SMALL, n_stations=1)
    assert not (out / "catalog.yaml").exists()
    for name in ("truth", "smos", "smap"):
        state = storage.store_state(str(out / f"{name}.zarr"))
        assert state["exists"] and not state["complete"]


@pytest.mark.parametrize("args, message", [
    (["--region", "atlantis"], "unknown region 'atlantis'"),
    (["--grid", "M99"], "unknown EASE2 grid 'M99'"),
    (["--start", "2015-02-01", "--end", "2015-01-01"], "is before start"),
    (["--start", "2015-13-45"], "start='2015-13-45' is not a date"),
])
def test_cli_bad_input_one_line(tmp_path, capsys, args, message):
    base = {"--out": str(tmp_path / "o"), "--start": "2015-01-01", "--end": "2015-01-10",
            "--region": "tiny"}
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    argv = ["simulate"] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("casm-cloud: error:") and message in err[0]
    assert not (tmp_path / "o" / "catalog.yaml").exists()


def test_cli_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["simulate", "--out", str(blocker / "sim"), "--region", "tiny", "--start",
               "2015-01-01", "--end", "2015-01-05"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write to output" in err[0]


def test_cli_simulate_writes_catalog(tmp_path, capsys):
    rc = main(["simulate", "--out", str(tmp_path / "s"), "--region", "tiny", "--start",
               "2016-05-01", "--end", "2016-05-10", "--stations", "1"])
    assert rc == 0
    assert capsys.readouterr().out.strip() == f"catalog: {tmp_path / 's' / 'catalog.yaml'}"

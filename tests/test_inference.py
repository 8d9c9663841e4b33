"""Chunked ensemble inference: science, resumability, routing, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from casm_cloud import inference, storage
from casm_cloud.grid import EASE2Grid
from casm_cloud.models import DenseNet
from casm_cloud.models.checkpoint import CheckpointError, save_checkpoint
from casm_cloud.schema import validate
from casm_cloud.seasonal import cycle_values
from casm_cloud.testing import make_tb_dataset

INPUTS = ["tb_h", "tb_v", "lat", "lon"]
TIMES = pd.date_range("2016-01-01", periods=24, freq="3D")


@pytest.fixture(scope="module")
def window():
    return EASE2Grid("M25").window_by_name("tiny")  # 6 x 6 cells


@pytest.fixture(scope="module")
def tb(window):
    return make_tb_dataset(window, TIMES, kind="smos", seed=3, time_chunk=4).chunk(
        {"y": 3, "x": 6})


def _params(window, names=("tb_h", "tb_v", "sm"), seed=1) -> xr.Dataset:
    """Seasonal parameters as fit_seasonal_cycle returns them (variable, y, x)."""
    rng = np.random.default_rng(seed)
    shape = (len(names), *window.shape)
    is_sm = np.array([n == "sm" for n in names])[:, None, None]
    return xr.Dataset(
        {"amplitude": (("variable", "y", "x"), np.where(is_sm, 0.05, 6.0) * rng.uniform(0.5, 1, shape)),
         "phase": (("variable", "y", "x"), rng.uniform(-np.pi, np.pi, shape)),
         "offset": (("variable", "y", "x"), np.where(is_sm, 0.25, 255.0) + rng.normal(0, 0.01, shape)),
         "residual_std": (("variable", "y", "x"), np.where(is_sm, 0.04, 2.5) * rng.uniform(0.5, 1.5, shape)),
         "n_obs": (("variable", "y", "x"), np.full(shape, 60)),
         "method": (("variable", "y", "x"), np.zeros(shape, dtype=np.int8))},
        coords={"variable": list(names), "y": window.y, "x": window.x},
    )


@pytest.fixture(scope="module")
def params(window):
    return _params(window)


def _save_members(root, n=3, inputs=INPUTS, hidden=(16, 16)) -> list[str]:
    paths = []
    for k in range(n):
        torch.manual_seed(100 + k)
        model = DenseNet(len(inputs), hidden=hidden)
        scaler = {"mean": {"tb_h": 0.0, "tb_v": 0.0, "lat": 37.7, "lon": -98.2, "sm": 0.0,
                           "tb_10v": 0.0},
                  "std": {"tb_h": 2.5, "tb_v": 2.5, "lat": 0.5, "lon": 0.5, "sm": 0.04,
                          "tb_10v": 2.0}}
        paths.append(save_checkpoint(model, str(root / f"member{k}"),
                                     {"inputs": list(inputs), "target": "sm", "scaler": scaler,
                                      "seed": 100 + k}))
    return paths


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    return _save_members(tmp_path_factory.mktemp("ens"))


def _bits(ds):
    return {n: ds[n].values.view(np.uint32) for n in inference.PRODUCT_VARIABLES}


def test_product_matches_a_direct_ensemble_forward(tmp_path, tb, params, members):
    out = str(tmp_path / "p.zarr")
    summary = inference.predict_to_zarr(tb, members, params, out, n_noise=3, noise_scale=0.0,
                                        device="cpu")
    assert summary.computed == summary.n_chunks == 6 * 2 and summary.skipped == 0
    ds = storage.open_zarr(out, require_complete=True).compute()
    validate(ds, "product")
    assert ds["sm"].attrs["units"] == "m3 m-3" and ds["sm"].attrs["grid_mapping"] == "crs"
    assert ds.attrs["ease2_grid"] == "M25"

    # Reference: every member on the clean residuals, computed here without the package.
    t = tb["time"].values
    res = {n: tb[n].values - cycle_values(params.amplitude.sel(variable=n).values,
                                          params.phase.sel(variable=n).values,
                                          params.offset.sel(variable=n).values, t)
           for n in ("tb_h", "tb_v")}
    shape = res["tb_h"].shape
    lat = np.broadcast_to(tb.lat.values[None, :, None], shape)
    lon = np.broadcast_to(tb.lon.values[None, None, :], shape)
    x = np.stack([res["tb_h"], res["tb_v"], lat, lon], -1).reshape(-1, 4)
    mean, std = np.array([0, 0, 37.7, -98.2]), np.array([2.5, 2.5, 0.5, 0.5])
    valid = np.isfinite(x).all(1)
    outs = []
    for p in members:
        torch.manual_seed(100 + int(p[-1]))
        model = DenseNet(4, hidden=(16, 16))
        with torch.no_grad():
            y = model(torch.from_numpy(((x[valid] - mean) / std).astype(np.float32)))
        outs.append(y.numpy().ravel() * 0.04)
    outs = np.stack(outs)
    want = np.full(x.shape[0], np.nan)
    want[valid] = outs.mean(0)
    np.testing.assert_allclose(ds.sm_residual.values.ravel(), want, rtol=1e-5, atol=1e-6)
    struct = np.full(x.shape[0], np.nan)
    struct[valid] = outs.std(0)
    np.testing.assert_allclose(ds.structural_uncertainty.values.ravel(), struct, rtol=1e-4,
                               atol=1e-6)
    cyc = cycle_values(params.amplitude.sel(variable="sm").values,
                       params.phase.sel(variable="sm").values,
                       params.offset.sel(variable="sm").values, t).ravel()
    np.testing.assert_allclose(ds.sm.values.ravel(), want + cyc, rtol=1e-5, atol=1e-6)
    # no noise: no data uncertainty; cells without valid input stay NaN everywhere
    assert np.nanmax(ds.data_uncertainty.values) < 1e-12
    for name in inference.PRODUCT_VARIABLES:
        assert np.array_equal(np.isnan(ds[name].values.ravel()), ~valid), name
    assert 0 < valid.mean() < 1


def test_data_uncertainty_grows_with_noise(tmp_path, tb, params, members):
    unc = []
    for scale in (0.05, 0.1):
        out = str(tmp_path / f"n{scale}.zarr")
        inference.predict_to_zarr(tb, members, params, out, n_noise=8, noise_scale=scale,
                                  device="cpu")
        unc.append(storage.open_zarr(out)["data_uncertainty"].values)
    assert np.nanmin(unc[0]) > 0
    # small noise: the network is locally linear, so the spread doubles with the noise
    ratio = np.nanmedian(unc[1] / unc[0])
    assert 1.8 < ratio < 2.2


def test_rerun_skips_finished_chunks_and_gives_same_bits(tmp_path, tb, params, members):
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    s1 = inference.predict_to_zarr(tb, members, params, a, n_noise=4, device="cpu")
    inference.predict_to_zarr(tb, members, params, b, n_noise=4, device="cpu", batch_size=7)
    s2 = inference.predict_to_zarr(tb, members, params, a, n_noise=4, device="cpu")
    assert s2.computed == 0 and s2.skipped == s1.n_chunks
    assert s2.predict_hash == s1.predict_hash
    # batch size is not part of the configuration: other batches agree to float rounding
    da, db = storage.open_zarr(a).compute(), storage.open_zarr(b).compute()
    for name in inference.PRODUCT_VARIABLES:
        np.testing.assert_allclose(da[name].values, db[name].values, rtol=1e-5, atol=1e-7)


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import casm_cloud
    from casm_cloud.inference import predict_to_zarr

    inputs, params, out, pause = sys.argv[1:5]

    def progress(done, total):
        if done == int(pause):
            print("PAUSED", flush=True)
            time.sleep(600)  # killed here by the test

    predict_to_zarr(inputs, sys.argv[5:], params, out, n_noise=4, device="cpu",
                    progress=progress)
""")


def test_sigkill_then_resume_is_bit_identical(tmp_path, tb, params, members):
    inp, par = str(tmp_path / "in.zarr"), str(tmp_path / "params.zarr")
    tb.to_zarr(inp, consolidated=False, zarr_format=3)
    params.to_zarr(par, consolidated=False, zarr_format=3)
    out, ref = str(tmp_path / "killed.zarr"), str(tmp_path / "ref.zarr")
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), inp, par, out, "5", *members],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "PAUSED"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert storage.store_state(out)["complete"] is False  # unfinished, and it says so
    record = storage.ChunkRecord(out)
    first = {k: json.loads(record._fs.cat(f"{record._root}/{k}")) for k in record.done()}
    assert len(first) == 5 and {v["pid"] for v in first.values()} == {proc.pid}

    summary = inference.predict_to_zarr(inp, members, par, out, n_noise=4, device="cpu")
    assert (summary.skipped, summary.computed) == (5, summary.n_chunks - 5)
    after = {k: json.loads(record._fs.cat(f"{record._root}/{k}")) for k in record.done()}
    for k, v in first.items():
        assert after[k] == v  # not recomputed: same process id and finishing time
    assert {v["pid"] for k, v in after.items() if k not in first} == {os.getpid()}
    assert storage.store_state(out)["complete"]

    inference.predict_to_zarr(inp, members, par, ref, n_noise=4, device="cpu")
    got, want = _bits(storage.open_zarr(out)), _bits(storage.open_zarr(ref))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_append_grows_time_and_matches_a_full_run(tmp_path, tb, params, members):
    out, full = str(tmp_path / "grow.zarr"), str(tmp_path / "full.zarr")
    kw = dict(n_noise=3, device="cpu", chunks={"time": 5, "y": 6, "x": 6})
    s0 = inference.predict_to_zarr(tb.isel(time=slice(0, 16)), members, params, out, **kw)
    assert s0.n_chunks == 4  # 5 + 5 + 5 + 1
    with pytest.raises(storage.StoreError, match="append=True"):
        inference.predict_to_zarr(tb, members, params, out, **kw)
    s1 = inference.predict_to_zarr(tb, members, params, out, append=True, **kw)
    # only the grown partial chunk (15..19) and the new one (20..23) are computed
    assert (s1.n_chunks, s1.skipped, s1.computed) == (5, 3, 2)
    inference.predict_to_zarr(tb, members, params, full, **kw)
    grown, ref = storage.open_zarr(out, require_complete=True), storage.open_zarr(full)
    np.testing.assert_array_equal(grown.time.values, tb.time.values)
    for name, bits in _bits(ref).items():
        np.testing.assert_array_equal(_bits(grown)[name], bits)


def test_bf16_is_close_to_fp32(tmp_path, tb, params, members):
    res = {}
    for prec in ("fp32", "bf16"):
        out = str(tmp_path / f"{prec}.zarr")
        inference.predict_to_zarr(tb, members, params, out, n_noise=2, device="cpu",
                                  precision=prec)
        res[prec] = storage.open_zarr(out)["sm"].values
    diff = res["bf16"] - res["fp32"]
    assert np.array_equal(np.isnan(res["bf16"]), np.isnan(res["fp32"]))
    assert 0 < np.sqrt(np.nanmean(diff ** 2)) < 2e-3


def test_auto_keeps_bf16_where_faster_and_within_tolerance(tmp_path, tb, params, members,
                                                            monkeypatch):
    """CASM's dense networks pass the check: auto takes bf16 where it is faster (pretended
    here) and records the largest difference from fp32 it measured on the first chunk."""
    from casm_cloud.inference import speed

    kw = dict(n_noise=2, device="cpu", chunks={"time": 5, "y": 4, "x": 4})
    runs = {}
    for prec in ("fp32", "bf16"):
        runs[prec] = str(tmp_path / f"{prec}.zarr")
        inference.predict_to_zarr(tb, members, params, runs[prec], precision=prec, **kw)
    monkeypatch.setattr(speed, "_may_use_bf16", lambda device: True)
    monkeypatch.setattr(speed, "_bf16_faster", lambda device, probe: True)
    monkeypatch.setattr(speed, "MIN_WIDTH", 1)
    out = str(tmp_path / "auto.zarr")
    s = inference.predict_to_zarr(tb, members, params, out, **kw)
    got = storage.open_zarr(out)
    first = (slice(0, 5), slice(0, 4), slice(0, 4))
    a, b = (storage.open_zarr(runs[p])["sm"].values[first].astype(np.float64) for p in runs)
    assert got.attrs["casm_precision"] == "bf16" and s.precision.startswith("bf16 (max |diff|")
    assert got.attrs["casm_precision_error"] == pytest.approx(np.nanmax(np.abs(a - b)), rel=1e-6)
    assert 0 < got.attrs["casm_precision_error"] <= got.attrs["casm_precision_tolerance"] == 1e-3
    assert got.attrs["casm_precision_samples"] == np.isfinite(a).sum() > 0
    np.testing.assert_array_equal(_bits(got)["sm"], _bits(storage.open_zarr(runs["bf16"]))["sm"])


def test_gpu_tasks_run_only_on_the_gpu_worker(tmp_path, tb, params, members):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, resources={"GPU": 1},
                      dashboard_address=":0", memory_limit="2GiB") as cluster:
        spec = dict(next(iter(cluster.worker_spec.values())))
        spec["options"] = {k: v for k, v in spec["options"].items() if k != "resources"}
        cluster.worker_spec["cpu-only"] = spec
        cluster.scale(2)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=60)
            workers = client.scheduler_info(n_workers=-1)["workers"]
            gpu = [a for a, w in workers.items() if w.get("resources", {}).get("GPU")]
            cpu = [a for a in workers if a not in gpu]
            assert len(gpu) == len(cpu) == 1
            out = str(tmp_path / "cluster.zarr")
            s = inference.predict_to_zarr(tb, members, params, out, n_noise=2, device="auto",
                                          client=client)
            record = storage.ChunkRecord(out)
            infos = [json.loads(record._fs.cat(f"{record._root}/{k}")) for k in record.done()]
            assert len(infos) == s.n_chunks == 12
            assert {i["worker"] for i in infos} == set(gpu)
            # models were loaded on the GPU worker only, once per member, then reused
            cache = client.run(lambda: inference._cached_checkpoint.cache_info()._asdict())
            assert cache[gpu[0]]["currsize"] == len(members) and cache[gpu[0]]["hits"] > 0
            assert cache[cpu[0]]["currsize"] == 0
    local = str(tmp_path / "local.zarr")
    inference.predict_to_zarr(tb, members, params, local, n_noise=2, device="cpu")
    for name, bits in _bits(storage.open_zarr(local)).items():
        np.testing.assert_array_equal(_bits(storage.open_zarr(out))[name], bits)


def test_checkpoint_inputs_that_differ_from_the_data(tmp_path, tb, params):
    other = _save_members(tmp_path, n=1, inputs=["tb_h", "tb_10v", "lat", "lon"])
    out = str(tmp_path / "x.zarr")
    with pytest.raises(CheckpointError, match=r"missing \['tb_10v'\].*unexpected \['tb_v'\]"):
        inference.predict_to_zarr(tb, other, params, out, device="cpu")
    assert not storage.exists(out)


def test_missing_seasonal_parameter(tmp_path, window, tb, members):
    out = str(tmp_path / "x.zarr")
    with pytest.raises(ValueError, match=r"no seasonal parameters for \['tb_v'\]"):
        inference.predict_to_zarr(tb, members, _params(window, ("tb_h", "sm")), out)
    with pytest.raises(ValueError, match=r"no seasonal parameters for \['sm'\]"):
        inference.predict_to_zarr(tb, members, {"inputs": _params(window, ("tb_h", "tb_v"))},
                                  out)
    bad = _params(window).drop_vars("residual_std")
    with pytest.raises(ValueError, match=r"fields \['residual_std'\] are missing"):
        inference.predict_to_zarr(tb, members, bad, out)
    assert not storage.exists(out)


def test_store_of_another_configuration_is_refused(tmp_path, tb, params, members):
    out = str(tmp_path / "o.zarr")
    inference.predict_to_zarr(tb, members, params, out, n_noise=2, device="cpu")
    before = _bits(storage.open_zarr(out))
    with pytest.raises(storage.StoreError, match="different prediction configuration"):
        inference.predict_to_zarr(tb, members, params, out, n_noise=3, device="cpu")
    with pytest.raises(storage.StoreError, match="different prediction configuration"):
        inference.predict_to_zarr(tb, members[:2], params, out, n_noise=2, device="cpu")
    after = _bits(storage.open_zarr(out))
    for name in before:  # untouched
        np.testing.assert_array_equal(after[name], before[name])
    s = inference.predict_to_zarr(tb, members, params, out, n_noise=3, device="cpu",
                                  overwrite=True)
    assert s.computed == s.n_chunks and storage.store_state(out)["complete"]


def test_output_that_is_not_a_prediction_is_refused(tmp_path, tb, params, members):
    # another stage's Zarr store at the output path: refused, left as it was
    other = str(tmp_path / "tb.zarr")
    tb.to_zarr(other, consolidated=False, zarr_format=3)
    with pytest.raises(storage.StoreError, match="different prediction configuration"):
        inference.predict_to_zarr(tb, members, params, other, n_noise=2, device="cpu")
    assert set(storage.open_zarr(other).data_vars) == set(tb.data_vars)
    # a folder with other files, and a plain file: refused, not deleted
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    plain = tmp_path / "out.zarr"
    plain.write_text("not a store")
    for out in (folder, plain):
        with pytest.raises(storage.StoreError, match="not a Zarr store"):
            inference.predict_to_zarr(tb, members, params, str(out), n_noise=2, device="cpu")
    assert (folder / "notes.txt").read_text() == "keep me" and plain.read_text() == "not a store"
    # an empty folder is a fine place for a new store
    empty = tmp_path / "empty"
    empty.mkdir()
    s = inference.predict_to_zarr(tb, members, params, str(empty), n_noise=2, device="cpu")
    assert s.computed == s.n_chunks and storage.store_state(str(empty))["complete"]


def test_cli_predict(tmp_path, tb, params, members, capsys):
    from casm_cloud.cli import main

    inp, par = str(tmp_path / "in.zarr"), str(tmp_path / "params.zarr")
    tb.to_zarr(inp, consolidated=False, zarr_format=3)
    params.to_zarr(par, consolidated=False, zarr_format=3)
    out = str(tmp_path / "cli.zarr")
    def argv(n_noise):
        return ["predict", "--inputs", inp, "--params", par, "--out", out, "--device", "cpu",
                "--n-noise", str(n_noise), "--ensemble", *members]

    assert main(argv(2)) == 0
    assert "12 chunks" in capsys.readouterr().out
    assert storage.store_state(out)["complete"]
    assert main(argv(3)) == 2
    assert "different prediction configuration" in capsys.readouterr().err


def test_auto_precision_is_fp32_bit_for_bit_on_a_cpu_without_amx(tmp_path, tb, params, members,
                                                                    monkeypatch):
    from casm_cloud.inference import speed

    kw = dict(n_noise=2, device="cpu")
    ref = str(tmp_path / "fp32.zarr")
    inference.predict_to_zarr(tb, members, params, ref, precision="fp32", **kw)
    want = _bits(storage.open_zarr(ref))
    if speed.cpu_has_amx():
        # An AMX machine may measure bf16 faster; pretend this one has none.
        monkeypatch.setattr(speed, "cpu_has_amx", lambda: False)
    out = str(tmp_path / "auto.zarr")
    s = inference.predict_to_zarr(tb, members, params, out, **kw)     # the default: auto
    got = storage.open_zarr(out)
    assert got.attrs["casm_precision"] == "fp32"
    assert got.attrs["casm_precision_requested"] == "auto"
    for name in inference.PRODUCT_VARIABLES:
        np.testing.assert_array_equal(_bits(got)[name], want[name])
    # the request, not the decision, is in the hash: "auto" and "fp32" are other stores
    assert s.predict_hash != storage.open_zarr(ref).attrs[inference.PREDICT_HASH_ATTR]
